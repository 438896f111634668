"""`medrlvr report` on a verl run directory whose dumps and metrics are written by verl's own writers."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq

from medrlvr.analysis.report import build_report
from medrlvr.rundir import read_jsonl
from medrlvr.integrations.verl import compute_score
from medrlvr.reward import join_prefill, score

OUTS = [" Aspirin blocks COX-1. </think> <answer> {g} </answer>", " hmm </think> <answer> {w} </answer>",
        " no format here", "First I reason at length about the options here. <think> x </think> <answer> {g} </answer>",
        " {g} </think> <answer> {g} </answer>", " ok </think> <answer> {g} </answer> trailing words"]


def test_report_from_verl_writers(tmp_path):
    from conftest import prepare_dir
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils.tracking import FileLogger

    cfg, d = prepare_dir(tmp_path / "run", max_steps=2, prompts_per_step=3, samples_per_prompt=2, mini_batch_size=6)
    rows = pq.read_table(d / "train.parquet").to_pylist()
    vrows = pq.read_table(d / "val.parquet").to_pylist()
    os.environ["VERL_FILE_LOGGER_PATH"] = str(d / "metrics.jsonl")
    flog = FileLogger("medrlvr", "test")
    expect = []
    for step in (1, 2):
        batch = [r for r in rows[(step - 1) * 3: step * 3] for _ in range(2)]  # rollout.n = 2 per prompt
        outs = [OUTS[(i + step) % len(OUTS)].format(g=r["reward_model"]["ground_truth"],
                                                  w="A" if r["reward_model"]["ground_truth"] != "A" else "B")
                for i, r in enumerate(batch)]
        res = [compute_score(r["data_source"], o, r["reward_model"]["ground_truth"], r["extra_info"]) for r, o in zip(batch, outs)]
        PPOTrainer._write_generations([r["prompt"][0]["content"] for r in batch], outs,
                                      [r["reward_model"]["ground_truth"] for r in batch], [x["score"] for x in res],
                                      {"uid": [f"u{i // 2}_0_{i % 2}" for i in range(len(batch))]},
                                      str(d / "rollouts"), step)
        expect += [(o, r) for o, r in zip(outs, batch)]
        flog.log({"critic/score/mean": sum(x["score"] for x in res) / len(res), "response_length/mean": 12.0 + step,
                  "actor/entropy": 1.5 - 0.1 * step, "actor/pg_clipfrac": 0.01, "actor/reward_kl_penalty": 0.002 * step},
                 step)
    vouts = [OUTS[i % len(OUTS)].format(g=r["reward_model"]["ground_truth"], w="A") for i, r in enumerate(vrows)]
    vres = [compute_score(r["data_source"], o, r["reward_model"]["ground_truth"], r["extra_info"]) for r, o in zip(vrows, vouts)]
    extra = {k: [x[k] for x in vres] for k in vres[0] if k != "score"}
    PPOTrainer._write_generations([r["prompt"][0]["content"] for r in vrows], vouts,
                                  [r["reward_model"]["ground_truth"] for r in vrows], [x["score"] for x in vres],
                                  extra | {"uid": [f"v{i}" for i in range(len(vrows))]}, str(d / "validation"), 2)
    flog.log({"val-core/starter/acc/mean@1": sum(x["acc"] for x in vres) / len(vres)}, 2)
    flog.finish()

    html = build_report(d, quiet=True).read_text()
    samples, bad = read_jsonl(d / "medrlvr_view" / "samples.jsonl")
    assert bad == 0 and len(samples) == len(expect) == 12
    for s, (o, r) in zip(samples, expect):
        want = score(join_prefill(o), r["reward_model"]["ground_truth"], r["extra_info"]["n_options"],
                     options=json.loads(r["extra_info"]["options"]))
        assert (s["reward"], s["format_ok"], s["pred"], s["flags"]) == (want.reward, want.format_ok, want.pred, want.flags)
        assert s["id"] == r["extra_info"]["id"] and s["n_options"] == r["extra_info"]["n_options"]
    assert any("reasoning_before_think" in s["flags"] for s in samples)
    assert any("trailing_text" in s["flags"] for s in samples)
    metrics, _ = read_jsonl(d / "medrlvr_view" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert metrics[1]["kl"] == 0.004 and metrics[1]["response_tokens"] == 14.0
    assert metrics[1]["eval_accuracy"] == sum(x["acc"] for x in vres) / len(vres)
    res = json.loads((d / "medrlvr_view" / "eval_step_2" / "results.json").read_text())
    assert res["verl-validation"]["n"] == len(vrows)
    for part in ("stage distribution vs step", "hacking rates vs step", "training metrics vs step", "verl-validation"):
        assert part in html, part
    assert "samples.jsonl not found" not in html
