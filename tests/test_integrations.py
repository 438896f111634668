"""medrlvr.integrations (verl prepare / mapping, OpenRLHF reward) in the main environment; the checks against
verl's own code are in tests_verl/ (make test-verl)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from medrlvr.cli import main
from medrlvr.train.config import TrainConfig, build_config
from medrlvr.data import load_benchmark
from medrlvr.integrations import openrlhf
from medrlvr.integrations import verl as iv
from medrlvr.prompts import render
from medrlvr.reward import FLAGS, join_prefill, score
from medrlvr.train.stream import PromptStream

SMALL = ["model=smollm2-135m", "train_data=starter:train", "eval_data=starter:test", "max_steps=3",
         "prompts_per_step=4", "samples_per_prompt=2", "mini_batch_size=8", "micro_batch_size=2", "eval_limit=5"]


@pytest.mark.parametrize("over,key", [(["kl_estimator=k3"], "kl_estimator"), (["critic=shared"], "critic"),
                                      (["vf_coef=1.0"], "vf_coef"), (["lr_schedule=linear"], "lr_schedule"),
                                      (["grpo_eps=0.01"], "grpo_eps"), (["sample_every=2"], "sample_every"),
                                      (["mini_batch_size=3", "samples_per_prompt=3", "prompts_per_step=4",
                                        "micro_batch_size=1"], None)])
def test_unmappable_values_are_refused_by_name(tmp_path, capsys, over, key):
    rc = main(["verl", "prepare", "--config", "paper-3b", "--out", str(tmp_path / "x"), *SMALL, *over])
    err = capsys.readouterr().err
    if key is None:  # 3 samples per prompt with mini-batch 3: fine (1 prompt per mini-batch)
        assert rc == 0
        return
    assert rc == 2 and f"config '{key}'" in err and "Traceback" not in err
    assert not (tmp_path / "x" / "run.sh").exists()


def test_every_field_is_in_the_mapping_and_the_docs_table():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    missing = [n for n in names if n not in iv.FIELD_MAP]
    assert not missing, (f"TrainConfig field(s) {missing} have no verl mapping: add them to "
                         "medrlvr.integrations.verl.FIELD_MAP")
    # the verl guide shows the table generated from mapping_table() when the site is built (docs/hooks.py)
    root = Path(__file__).parents[1]
    guide = (root / "docs" / "guides" / "verl.md").read_text(encoding="utf-8")
    assert "<!-- generated: verl-mapping -->" in guide
    spec = importlib.util.spec_from_file_location("docs_hooks", root / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.expand_markers(guide, "guides/verl.md")
    table = iv.mapping_table().splitlines()
    assert all(line in page.splitlines() for line in table) and len(table) == len(names) + 2
    for name in ("model", "kl_estimator", "dual_clip", "loss_agg", "temperature", "stop"):
        assert any(line.startswith(f"| `{name}` |") for line in table), name


def test_prepare_writes_the_training_stream_and_entry_points(tmp_path):
    cfg = build_config("paper-3b", SMALL)
    d = iv.prepare(cfg, tmp_path / "run")
    for f in ("train.parquet", "val.parquet", "medrlvr_reward.py", "agent_loops.yaml", "run.sh", "run_multinode.sh",
              "config.yaml", iv.MARKER):
        assert (d / f).is_file(), f
    rows = pq.read_table(d / "train.parquet").to_pylist()
    stream = PromptStream(load_benchmark("starter:train").records, cfg.seed, cfg.shuffle_options).take(12)
    assert [r["prompt"][0]["content"] for r in rows] == [render(r) for r in stream]
    assert [r["reward_model"]["ground_truth"] for r in rows] == [r.gold for r in stream]
    assert len(pq.read_table(d / "val.parquet")) == 5
    run_sh = (d / "run.sh").read_text()
    assert "python3 -m verl.trainer.main_ppo" in run_sh and "algorithm.adv_estimator=gae" in run_sh
    assert "algorithm.use_kl_in_reward=True" in run_sh and "algorithm.kl_penalty=kl" in run_sh
    multi = (d / "run_multinode.sh").read_text()
    assert "ray start --head" in multi and "ray job submit" in multi and "trainer.nnodes=2" in multi
    # the reward entry point, loaded from its file as verl does (by path)
    import importlib.util

    spec = importlib.util.spec_from_file_location("r", d / "medrlvr_reward.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = rows[0]
    info = r["extra_info"]
    resp = " reasoning </think> <answer> " + r["reward_model"]["ground_truth"] + " </answer>"
    got = mod.compute_score(r["data_source"], resp, r["reward_model"]["ground_truth"], info)
    want = score(join_prefill(resp), r["reward_model"]["ground_truth"], info["n_options"],
                 options=json.loads(info["options"]))
    assert got["score"] == want.reward == 1.0 and got["correct"] is True and set(FLAGS) <= set(got)


def test_option_text_answer_uses_the_options(tmp_path):
    rec = load_benchmark("starter:train").records[0]
    info = {"n_options": rec.n_options, "options": json.dumps(rec.options)}
    got = iv.compute_score("starter", f" x y z </think> <answer> {rec.gold_text} </answer>", rec.gold, info)
    assert got["score"] == 1.0 and got["pred"] == rec.gold


def test_tiny_model_refused(tmp_path, capsys):
    assert main(["verl", "prepare", "--config", "tiny", "--out", str(tmp_path / "t")]) == 2
    assert "config 'model'" in capsys.readouterr().err


def test_openrlhf_reward_func_called_as_openrlhf_does():
    """queries = tokenizer.batch_decode(prompt ids + response ids, skip_special_tokens=False), left-padded."""
    from medrlvr.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    recs = load_benchmark("starter:test").records[:4]
    resps = [" because </think> <answer> {g} </answer>", " nope", " a </think> <answer> {w} </answer>",
             "Long reasoning placed before the tags, step by step. <think> ok </think> <answer> {g} </answer>"]
    prompts = [render(r) for r in recs]
    resps = [t.format(g=r.gold, w="A" if r.gold != "A" else "B") for t, r in zip(resps, recs)]
    ids = [tok(p, add_special_tokens=False)["input_ids"] + tok(x, add_special_tokens=False)["input_ids"]
           + [tok.eos_token_id] for p, x in zip(prompts, resps)]
    width = max(map(len, ids))
    queries = tok.batch_decode([[tok.pad_token_id] * (width - len(i)) + i for i in ids], skip_special_tokens=False)
    out = openrlhf.reward_func(queries, prompts, [r.gold for r in recs])
    want = [score(join_prefill(x), r.gold, r.n_options, options=r.options) for x, r in zip(resps, recs)]
    assert out["rewards"].tolist() == [w.reward for w in want]
    assert out["scores"].tolist() == [float(w.correct) for w in want]
    assert out["extra_logs"]["reasoning_before_think"].tolist() == [float("reasoning_before_think" in w.flags) for w in want]
    assert {w.reward for w in want} == {-1.0, 0.0, 1.0}


def test_export_openrlhf_writes_the_reward_file(tmp_path, capsys):
    out = tmp_path / "o" / "medqa.jsonl"
    assert main(["data", "export", "starter:test", "--format", "openrlhf", "--out", str(out)]) == 0
    rf = out.parent / "medrlvr_openrlhf_reward.py"
    import importlib.util

    spec = importlib.util.spec_from_file_location("rf", rf)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    row = json.loads(out.read_text().splitlines()[0])
    q = row["input"] + f" ok </think> <answer> {row['label']} </answer><|im_end|>"
    assert mod.reward_func([q], [row["input"]], [row["label"]])["rewards"].tolist() == [1.0]


def test_launch_dry_run_and_bad_dir(tmp_path, capsys):
    d = iv.prepare(build_config("paper-3b", SMALL), tmp_path / "run")
    assert main(["verl", "launch", "--dry-run", str(d), "trainer.total_training_steps=1"]) == 0
    out = capsys.readouterr().out
    assert "run.sh" in out and "trainer.total_training_steps=1" in out
    assert main(["verl", "launch", str(tmp_path)]) == 2
    assert "not a directory written by `medrlvr verl prepare`" in capsys.readouterr().err


def test_prompt_length_bound_is_checked(tmp_path, capsys):
    d = iv.prepare(build_config("paper-3b", SMALL), tmp_path / "ok")
    m = json.loads((d / iv.MARKER).read_text())
    from medrlvr.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m")
    rows = pq.read_table(d / "train.parquet").to_pylist() + pq.read_table(d / "val.parquet").to_pylist()
    longest = max(len(tok(r["prompt"][0]["content"], add_special_tokens=False)["input_ids"]) for r in rows)
    assert m["longest_prompt"] == [longest, "tokens"] and m["max_prompt_length"] >= longest
    rc = main(["verl", "prepare", "--config", "paper-3b", "--out", str(tmp_path / "x"), "--max-prompt-length",
               str(longest - 1), *SMALL])
    assert rc == 2 and "--max-prompt-length" in capsys.readouterr().err


def test_verl_reward_entry_point_does_not_import_torch():
    """The reward file verl loads imports ``medrlvr.integrations.verl``: that must stay light (no torch)."""
    import subprocess
    import sys

    code = ("import sys; from medrlvr.integrations.verl import compute_score; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_export_lm_eval_task_dir(tmp_path, capsys):
    """``--format lm-eval``: a task directory with the questions as JSONL (our direct prompt, lm-eval's medqa prompt,
    the letters and the gold index) and two multiple-choice task YAMLs over it (lm-eval itself runs it in
    tests_lmeval/); ``--limit`` keeps the first N, and 0 is refused with one line."""
    import yaml

    from medrlvr.integrations.lmeval import lm_eval_medqa_prompt, task_name
    from medrlvr.prompts import direct

    out = tmp_path / "task"
    assert main(["data", "export", "starter:test", "--format", "lm-eval", "--out", str(out), "--limit", "5"]) == 0
    assert "--tasks medrlvr_starter_test" in capsys.readouterr().out
    t = task_name("starter:test")
    recs = load_benchmark("starter:test").records[:5]
    rows = [json.loads(x) for x in (out / f"{t}.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [str(r.id) for r in recs]
    for row, rec in zip(rows, recs):
        assert row["prompt"] == direct(rec) and row["lmeval_prompt"] == lm_eval_medqa_prompt(rec)
        assert row["choices"][row["gold_index"]] == rec.gold == row["gold"] and row["choices"] == list(rec.options)

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))
    for name, field in ((t, "prompt"), (f"{t}_lmeval_prompt", "lmeval_prompt")):
        y = yaml.load((out / f"{name}.yaml").read_text(), Loader=Loader)
        assert y["task"] == name and y["output_type"] == "multiple_choice" and y["doc_to_text"] == field
        assert (y["doc_to_choice"], y["doc_to_target"], y["target_delimiter"]) == ("choices", "gold_index", " ")
        assert y["custom_dataset"] == ("function", "medrlvr_lmeval_data.load")
        assert y["dataset_kwargs"] == {"data_file": f"{t}.jsonl"}
    assert (out / "medrlvr_lmeval_data.py").is_file()
    assert main(["data", "export", "starter:test", "--format", "lm-eval", "--out", str(out), "--limit", "0"]) == 2
    assert "argument --limit: must be >= 1, got 0" in capsys.readouterr().err.strip()
