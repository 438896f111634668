"""OpenRLHF reward function (``--remote_rm_url /path/to/medrlvr_openrlhf_reward.py``).

OpenRLHF (the framework Med-RLVR used) loads a Python file given as ``--remote_rm_url`` and calls its
``reward_func(queries, prompts, labels, **kwargs)`` on a batch: ``queries`` are prompt + response decoded
*with* special tokens (left padding, the EOS token), ``prompts`` the prompt strings, ``labels`` the
``--label_key`` column. It expects ``{"rewards": Tensor, "scores": Tensor, "extra_logs": {name: Tensor}}``.

This module strips the prompt (and padding before it, special tokens after the response), joins the
``<think>`` pre-fill, and scores with :func:`medrlvr.reward.score`. ``labels`` are the gold letter
(``medrlvr data export --format openrlhf`` writes ``label``), or a JSON object
``{"gold", "n_options", "options"}``; without them the options are read from the prompt's ``X. text`` lines.
``scores`` (OpenRLHF's dynamic-filtering signal in [0, 1]) is ``correct``; ``extra_logs`` holds
``format_ok``, ``correct`` and every hacking flag, per sample.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from medrlvr.prompts import THINK_PREFILL, parse_options

_TRAILING_SPECIAL = re.compile(r"(?:\s*(?:<\|[^|<>]{1,40}\|>|</s>|<pad>|<eos>|<\|endoftext\|>))+\s*$")

REWARD_FILE = '''"""OpenRLHF reward function, written by medrlvr {version}: --remote_rm_url <this file> --label_key label."""
from medrlvr.integrations.openrlhf import make_reward_func

reward_func = make_reward_func(scheme={scheme!r}, prefill={prefill!r})
'''


def strip_prompt(query: str, prompt: str) -> str:
    """The response inside an OpenRLHF query: text after the prompt, without trailing special tokens."""
    i = query.find(prompt) if prompt else -1
    if i >= 0:
        resp = query[i + len(prompt):]
    else:  # decoding can change the prompt's start (BOS, padding): anchor on its last 64 characters
        tail = prompt[-64:]
        j = query.rfind(tail) if tail else -1
        resp = query[j + len(tail):] if j >= 0 else query
    return _TRAILING_SPECIAL.sub("", resp)


def _label(label: Any, prompt: str) -> tuple[str, int, dict[str, str]]:
    gold, n, opts = label, None, None
    if isinstance(label, str) and label.strip().startswith("{"):
        try:
            d = json.loads(label)
            gold, n, opts = d.get("gold"), d.get("n_options"), d.get("options")
        except ValueError:
            pass
    elif isinstance(label, dict):
        gold, n, opts = label.get("gold"), label.get("n_options"), label.get("options")
    if not opts:
        opts = parse_options(prompt or "")
    return str(gold).strip().upper(), int(n or len(opts) or 5), dict(opts)


def make_reward_func(scheme: str = "paper", prefill: str | None = THINK_PREFILL) -> Callable[..., dict[str, Any]]:
    """An OpenRLHF ``reward_func`` for ``scheme`` (the pre-fill joined back unless ``prefill`` is empty)."""
    from medrlvr.reward import FLAGS, join_prefill, score

    def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any], **kwargs: Any):
        import torch

        if len(queries) != len(prompts) or len(queries) != len(labels):
            raise ValueError(f"reward_func: {len(queries)} queries, {len(prompts)} prompts, {len(labels)} labels")
        rewards, correct, fmt = [], [], []
        flags = {f: [] for f in FLAGS}
        for q, p, lab in zip(queries, prompts, labels):
            resp = strip_prompt(q, p)
            if prefill:
                resp = join_prefill(resp, prefill)
            gold, n, opts = _label(lab, p)
            r = score(resp, gold, n, scheme=scheme, options=opts or None, prefill=None)
            rewards.append(r.reward)
            correct.append(float(r.correct))
            fmt.append(float(r.format_ok))
            for f in FLAGS:
                flags[f].append(float(f in r.flags))
        t = lambda xs: torch.tensor(xs, dtype=torch.float32)  # noqa: E731
        return {"rewards": t(rewards), "scores": t(correct),
                "extra_logs": {"format_ok": t(fmt), "correct": t(correct), **{f: t(v) for f, v in flags.items()}}}

    reward_func.__name__ = "reward_func"
    return reward_func


reward_func = make_reward_func()
"""The paper scheme with the ``<think>`` pre-fill."""


def write_reward_file(path, scheme: str = "paper", prefill: str | None = THINK_PREFILL):
    from pathlib import Path

    from medrlvr import __version__

    p = Path(path)
    p.write_text(REWARD_FILE.format(version=__version__, scheme=scheme, prefill=prefill), encoding="utf-8")
    return p


LAUNCH = """ray job submit --address="http://127.0.0.1:8265" -- python3 -m openrlhf.cli.train_ppo_ray \\
  --ref_num_nodes 1 --ref_num_gpus_per_node 8 --critic_num_nodes 1 --critic_num_gpus_per_node 8 \\
  --actor_num_nodes 1 --actor_num_gpus_per_node 8 --vllm_num_engines 8 --vllm_tensor_parallel_size 1 \\
  --colocate_all_models --pretrain Qwen/Qwen2.5-3B --prompt_data medqa_train.jsonl \\
  --input_key input --label_key label --remote_rm_url medrlvr_openrlhf_reward.py \\
  --advantage_estimator gae --init_kl_coef 0.001 --actor_learning_rate 1e-6 --critic_learning_rate 1e-5 \\
  --rollout_batch_size 256 --n_samples_per_prompt 1 --train_batch_size 64 --micro_train_batch_size 8 \\
  --micro_rollout_batch_size 16 --prompt_max_len 1024 --generate_max_len 1024 --temperature 1.0 \\
  --eps_clip 0.2 --value_clip 0.5 --kl_estimator k1 --gamma 1 --lambd 1 \\
  --max_epochs 1 --num_episodes 25 --bf16 --gradient_checkpointing --save_path ckpt/medrlvr-ppo"""
"""The documented PPO launch (docs/guides/verl.md): flag names read in OpenRLHF's
``openrlhf/cli/train_ppo_ray.py`` argument parser (not run: OpenRLHF needs GPUs and DeepSpeed)."""
