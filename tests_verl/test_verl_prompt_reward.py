"""Prompt fidelity through verl's dataset + agent loop, and the reward through verl's loader + reward manager."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from medrlvr.data import load_benchmark
from medrlvr.prompts import render
from medrlvr.reward import FLAGS, join_prefill, score


class FakeServer:
    """Stands in for verl's LLM server client: records the request, answers with fixed token ids."""

    def __init__(self, answer_ids):
        self.answer_ids, self.calls = answer_ids, []

    async def generate(self, *, request_id, prompt_ids, sampling_params, **kw):
        from verl.workers.rollout.replica import TokenOutput

        self.calls.append({"prompt_ids": list(prompt_ids), "sampling_params": dict(sampling_params)})
        return TokenOutput(token_ids=list(self.answer_ids), log_probs=None)


def _agent_loop(cfg, server, model_config):
    import hydra

    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap
    from verl.utils.dataset.rl_dataset import get_dataset_class

    (entry,) = OmegaConf.load(cfg.actor_rollout_ref.rollout.agent.agent_loop_config_path)
    assert entry.name == cfg.actor_rollout_ref.rollout.agent.default_agent_loop
    return hydra.utils.instantiate(  # as AgentLoopWorker._run_agent_loop does
        config=entry, trainer_config=DictConfigWrap(config=cfg), server_manager=server,
        tokenizer=model_config.tokenizer, processor=None, hf_model_type=model_config.hf_config.model_type,
        dataset_cls=get_dataset_class(cfg.data), data_config=DictConfigWrap(cfg.data), tools=ToolListWrap([]))


@pytest.fixture(scope="module")
def verl_cfg(ppo_run, compose):
    _, d = ppo_run
    return compose(json.loads((d / "medrlvr_verl.json").read_text())["overrides"])


def test_prompt_ids_equal_our_rendered_prompt(ppo_run, verl_cfg, tokenizer):
    """RLHFDataset(train.parquet) -> verl's model config tokenizer -> our agent loop -> the ids sent to the server."""
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.dataset.rl_dataset import RLHFDataset

    cfg, d = ppo_run
    mc = omega_conf_to_dataclass(verl_cfg.actor_rollout_ref.model)  # HFModelConfig, custom_chat_template applied
    ds = RLHFDataset(str(d / "train.parquet"), mc.tokenizer, verl_cfg.data)
    from medrlvr.train.stream import PromptStream

    stream = PromptStream(load_benchmark("starter:train").records, cfg.seed, cfg.shuffle_options).take(len(ds))
    answer = tokenizer(" reasons </think> <answer> B </answer>", add_special_tokens=False)["input_ids"]
    for i in (0, 1, len(ds) - 1):
        item = ds[i]
        ours = tokenizer(render(stream[i], "r1-zero", prefill_think=True), add_special_tokens=False)["input_ids"]
        server = FakeServer(answer)
        loop = _agent_loop(verl_cfg, server, mc)
        out = loop.loop.run_until_complete(loop.run({"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": False},
                                                    raw_prompt=item["raw_prompt"]))
        assert server.calls[0]["prompt_ids"] == ours  # token for token
        assert list(out.prompt_ids) == ours and list(out.response_ids) == answer
        sp = server.calls[0]["sampling_params"]
        assert sp["stop"] == ["</answer>"] and sp["include_stop_str_in_output"] is True
    # the check can fail: the tokenizer's own chat template gives other ids
    plain = mc.tokenizer.__class__.from_pretrained(mc.local_tokenizer_path)
    other = plain.apply_chat_template(ds[0]["raw_prompt"], tokenize=True, add_generation_prompt=True)
    other = other["input_ids"] if isinstance(other, dict) else other
    assert list(other) != tokenizer(render(stream[0], "r1-zero"), add_special_tokens=False)["input_ids"]


RESPONSES = [  # completions after the pre-filled "<think>"
    " The drug inhibits COX irreversibly. </think> <answer> C </answer>",
    " Hmm. </think> <answer> A </answer>",
    " no tags at all, just rambling",
    " short </think> <answer> C </answer> and more text after",
    "Step by step I decide on C. <think> ok </think> <answer> C </answer>",
    " C </think> <answer> C </answer>",
    " thinking about it carefully </think> <answer>",
]


def test_reward_manager_scores_equal_medrlvr(ppo_run, verl_cfg, tokenizer):
    """verl's custom-reward loader + naive reward manager on made-up responses == medrlvr.reward.score."""
    from verl import DataProto
    from verl.trainer.ppo.reward import load_reward_manager

    import pyarrow.parquet as pq

    _, d = ppo_run
    rows = pq.read_table(d / "train.parquet").to_pylist()[: len(RESPONSES)]
    mgr = load_reward_manager(verl_cfg, tokenizer)
    assert type(mgr).__name__ == "NaiveRewardManager"
    for row, resp in zip(rows, RESPONSES):
        p_ids = tokenizer(row["prompt"][0]["content"], add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(resp, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        pad = 3  # right padding of the response, as verl pads
        resp_t = torch.tensor(r_ids + [tokenizer.pad_token_id] * pad)
        mask = torch.tensor([1] * len(p_ids) + [1] * len(r_ids) + [0] * pad)
        data = DataProto.from_dict(
            tensors={"prompts": torch.tensor([p_ids]), "responses": resp_t[None], "attention_mask": mask[None]},
            non_tensors={"data_source": np.array([row["data_source"]], dtype=object),
                         "reward_model": np.array([row["reward_model"]], dtype=object),
                         "extra_info": np.array([dict(row["extra_info"])], dtype=object)})
        out = mgr.loop.run_until_complete(mgr.run_single(data))
        info = row["extra_info"]
        want = score(join_prefill(tokenizer.decode(r_ids, skip_special_tokens=True)), row["reward_model"]["ground_truth"],
                     info["n_options"], "paper", options=json.loads(info["options"]))
        assert out["reward_score"] == want.reward
        extra = out["reward_extra_info"]
        assert extra["score"] == want.reward and extra["format_ok"] == want.format_ok
        assert extra["pred"] == (want.pred or "") and extra["correct"] == want.correct and extra["acc"] == float(want.correct)
        assert {f for f in FLAGS if extra[f]} == set(want.flags)
    # the batch exercises all three reward levels and some flags
    assert {score(join_prefill(r), "C", 4).reward for r in RESPONSES} >= {-1.0, 0.0, 1.0}


def test_qwen_family_builder_gives_the_same_prompt_ids(ppo_run, verl_cfg, tokenizer):
    """Qwen2.5 (model_type qwen2) gets verl's Qwen Continuous Token builder; SmolLM2's tokenizer has the same
    ChatML <|im_end|> token it requires, so that builder's prompt path is checked here too."""
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    _, d = ppo_run
    mc = omega_conf_to_dataclass(verl_cfg.actor_rollout_ref.model)
    ds = RLHFDataset(str(d / "val.parquet"), mc.tokenizer, verl_cfg.data)
    import pyarrow.parquet as pq

    rows = pq.read_table(d / "val.parquet").to_pylist()
    for family in ("qwen2", "llama"):
        b = create_continuous_token_builder(mc.tokenizer, hf_model_type=family,
                                            chat_template_kwargs=verl_cfg.data.apply_chat_template_kwargs)
        for i in range(3):
            ours = tokenizer(rows[i]["prompt"][0]["content"], add_special_tokens=False)["input_ids"]
            assert b.build_initial_tokens(ds[i]["raw_prompt"]) == ours, (family, i)
        if family == "qwen2":
            assert type(b).__name__ == "QwenContinuousTokenBuilder"
