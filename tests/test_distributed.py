"""Data parallelism on CPU (gloo): 2 processes started by torchrun against 1 process at the same global batch.

One torchrun (tests/dist_worker.py) runs the 2-process jobs one after another: GRPO and PPO, with DDP and
with FSDP2, plus a GRPO run stopped after step 2; `medrlvr train --nproc 2 --resume` then finishes that
one. The 1-process references run in this process. The `tiny` random model scores -1 everywhere under
the paper's reward, so the runs use the `shaped` reward and an entropy bonus, and assert that the weights
moved by far more than the tolerance.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medrlvr import algos
from medrlvr.train import distributed
from medrlvr.train.config import build_config
from medrlvr.models import load_policy
from medrlvr.rollout import SamplingParams, make_engine
from medrlvr.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_worker.py")
TOL = 1e-5
BASE = {"model": "tiny", "engine": "hf",   # one engine for every parallel mode (auto: fast unsharded on CPU)
        "train_data": "starter:train", "eval_data": "starter:test", "eval_limit": 4,
        "prompts_per_step": 4, "samples_per_prompt": 2, "max_new_tokens": 12, "micro_batch_size": 2,
        "lr": 1e-4, "critic_lr": 1e-4, "reward_scheme": "shaped", "entropy_coef": 0.01, "max_steps": 3,
        "save_every": 0}
GRPO = {**BASE, "algo": "grpo", "kl_coef": 0.0}
PPO = {**BASE, "algo": "ppo", "kl_coef": 0.01,   # reference + KL in the reward, critic, whitened GAE
       "eval_limit": 5, "eval_samples": 2, "eval_temperature": 1.0}   # sampled final evaluation, 3 + 2 questions
GRPO4 = {**GRPO, "max_steps": 4, "save_every": 1, "keep_checkpoints": 4}
TIMING_KEYS = ("rollout_s", "update_s", "tokens_per_s")
EVAL = {"benchmarks": ["starter:test"], "limit": 5, "batch_size": 2, "max_new_tokens": 6, "bootstrap": 0,
        "engine": "hf", "progress": False, "n_samples": 2}   # 3 batches over 2 ranks, sampled (seeded per batch)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun(spec: dict, path: Path, timeout: float = 600):
    path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
           str(path)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _assert_same_metrics(m1: list[dict], m2: list[dict]):
    assert len(m1) == len(m2) and m1
    for r1, r2 in zip(m1, m2):
        assert set(r1) == set(r2), (set(r1) ^ set(r2))
        for k, v in r1.items():
            if k in TIMING_KEYS:
                continue
            if isinstance(v, float):
                assert r2[k] == pytest.approx(v, abs=TOL, rel=1e-5), (r1["step"], k, v, r2[k])
            else:
                assert r2[k] == v, (r1["step"], k, v, r2[k])


def _policy_sd(t: Trainer) -> dict:
    return {k: v.detach().clone() for k, v in t.policy.state_dict().items() if k != "lm_head.weight"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    jobs = [{"config": GRPO4, "output": str(d / "grpo_ddp")},
            {"config": {**PPO, "parallel": "ddp"}, "output": str(d / "ppo_ddp")},
            {"config": {**GRPO4, "parallel": "fsdp2"}, "output": str(d / "grpo_fsdp2"), "max_steps": 3},
            {"config": {**PPO, "parallel": "fsdp2"}, "output": str(d / "ppo_fsdp2")},
            {"config": GRPO4, "output": str(d / "grpo_stopped"), "max_steps": 2},
            {"eval": {**EVAL, "output_dir": str(d / "eval_2p")}}]
    p = _torchrun({"jobs": jobs}, d / "spec.json")
    assert p.returncode == 0, p.stderr[-4000:]
    torch.set_num_threads(1)
    ref = {}
    t = Trainer(build_config(GRPO4), d / "grpo_1p", quiet=True)
    t.train(3)
    ref["grpo"] = (_policy_sd(t), None, _metrics(d / "grpo_1p"))
    initial = Trainer(build_config(GRPO4), d / "init", quiet=True)
    ref["initial"] = _policy_sd(initial)
    t = Trainer(build_config(PPO), d / "ppo_1p", quiet=True)
    t.train()
    ref["ppo"] = (_policy_sd(t), {k: v.detach().clone() for k, v in t.critic.state_dict().items()},
                  _metrics(d / "ppo_1p"))
    return d, ref


@pytest.mark.parametrize("algo,parallel", [("grpo", "ddp"), ("grpo", "fsdp2"), ("ppo", "ddp"), ("ppo", "fsdp2")])
def test_two_processes_equal_one(runs, algo, parallel):
    d, ref = runs
    sd1, critic1, m1 = ref[algo]
    run = d / f"{algo}_{parallel}"
    ck = run / "checkpoints" / "step_3"
    if algo == "grpo":   # runs of a 4-step config (the DDP one is the resume test's reference): step 3
        sd2 = load_file(str(ck / "policy" / "model.safetensors"))
        m2 = _metrics(run)[:3]
    else:                # 3-step runs with the final (sharded) evaluation
        sd2 = load_file(str(run / "final" / "model.safetensors"))
        m2 = _metrics(run)
    diff = _max_diff(sd1, sd2)
    moved = _max_diff(sd1, ref["initial"])
    print(f"{algo} {parallel}: max |w_2proc - w_1proc| = {diff:.3g}, max |w - w_init| = {moved:.3g}")
    assert moved > 20 * TOL          # the weights did move (3 steps at lr 1e-4: ~3e-4)
    assert diff <= TOL
    if critic1 is not None:
        c2 = load_file(str(ck / "critic.safetensors"))
        assert _max_diff(critic1, c2) <= TOL
    _assert_same_metrics(m1, m2)
    assert ("eval_accuracy" in m2[-1]) == (algo == "ppo")
    if algo == "ppo":   # the sharded sampled evaluation: 5 questions (rank 1's slice padded), 2 answers each
        assert m2[-1]["eval_n"] == 5 and m2[-1]["eval_samples"] == 2 and m2[-1]["eval_answered_n"] <= 10
        assert m2[-1]["eval_temperature"] == 1.0
    # rank 0 wrote every rank's samples, in global order, and every rank's RNG state
    s1 = (d / f"{algo}_1p" / "samples.jsonl").read_text().splitlines()
    s2 = (run / "samples.jsonl").read_text().splitlines()[:len(s1)]
    assert [json.loads(x) for x in s1] == [json.loads(x) for x in s2]
    st = torch.load(ck / "trainer_state.pt", weights_only=True)
    assert st["world_size"] == 2 and len(st["rng_ranks"]) == 2 and st["sharded_optimizer"] == (parallel == "fsdp2")


def test_two_process_resume_equals_uninterrupted(runs):
    """Stopped after step 2, resumed with `medrlvr train --nproc 2 --resume` (torchrun through the CLI)
    to step 4: the same weights and log as the uninterrupted 2-process run; then the same checkpoint
    resumed by 1 process (another world size) also gives that run."""
    d, _ = runs
    stopped = d / "grpo_stopped"
    assert json.loads((stopped / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    other_ws = d / "grpo_resumed_1p"
    shutil.copytree(stopped, other_ws)
    (d / "grpo4.yaml").write_text(json.dumps(GRPO4))   # JSON is YAML
    cmd = [sys.executable, "-m", "medrlvr", "train", "--nproc", "2", "--config", str(d / "grpo4.yaml"),
           "--output", str(stopped), "--resume"]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    full = d / "grpo_ddp"
    w_full = load_file(str(full / "final" / "model.safetensors"))
    assert _max_diff(w_full, load_file(str(stopped / "final" / "model.safetensors"))) <= 1e-6
    _assert_same_metrics(_metrics(full), _metrics(stopped))

    torch.set_num_threads(1)
    t = Trainer(build_config(GRPO4), other_ws, resume=True, quiet=True)
    assert t.step == 2
    t.train()
    assert _max_diff(w_full, _policy_sd(t)) <= TOL
    _assert_same_metrics(_metrics(full), _metrics(other_ws))


def test_failing_rank_ends_the_job(tmp_path):
    """Rank 1 raises in step 2's update while rank 0 waits in a collective: torchrun's agent kills rank 0
    and exits non-zero, naming rank 1 and its error, long before the process-group timeout."""
    cfg = {**GRPO, "dist_timeout_s": 300}
    t0 = time.monotonic()
    p = _torchrun({"jobs": [{"config": cfg, "output": str(tmp_path / "run"), "fail": [1, 2]}]}, tmp_path / "s.json",
                  timeout=240)
    elapsed = time.monotonic() - t0
    assert p.returncode != 0
    err = p.stderr
    assert "injected failure on rank 1 at step 2" in err
    assert "rank      : 1" in err or "rank: 1" in err, err[-3000:]
    assert elapsed < 120, elapsed


def test_sharded_medrlvr_eval_equals_one_process(runs):
    """`medrlvr eval` under torchrun: rank r generates batches r, r + 2, ...; rank 0 writes every row and
    the results, which equal a 1-process evaluation."""
    from medrlvr.eval.benchmark import evaluate

    d, _ = runs
    model, tok = load_policy("tiny")
    res1 = evaluate(model, tok, **{**EVAL, "output_dir": str(d / "eval_1p")})
    f1, f2 = d / "eval_1p" / "starter_test.completions.jsonl", d / "eval_2p" / "starter_test.completions.jsonl"
    assert len(f2.read_text().splitlines()) == 5
    assert sorted(f1.read_text().splitlines()) == sorted(f2.read_text().splitlines())
    res2 = json.loads((d / "eval_2p" / "results.json").read_text())
    assert res2["starter:test"] == json.loads(json.dumps(res1["starter:test"]))


def test_nproc_refuses_an_unsplittable_batch(capsys):
    from medrlvr.cli import main

    assert main(["train", "--config", "tiny", "--nproc", "3", "--output", "/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert "prompts_per_step" in err and "3 processes" in err


def test_nproc_below_one_is_refused(capsys, tmp_path):
    from medrlvr.cli import main

    assert main(["train", "--config", "tiny", "--nproc", "0", "--output", str(tmp_path / "r")]) == 2
    assert "--nproc" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_config_refusals():
    cfg = build_config("tiny", ["dynamic_sampling=true"])
    cfg.world_size = 2
    with pytest.raises(ValueError, match="dynamic_sampling"):
        distributed.check_config(cfg)
    cfg = build_config("tiny", ["parallel=fsdp2", "engine=fast"])
    cfg.world_size = 2
    with pytest.raises(ValueError, match="engine"):
        distributed.check_config(cfg)
    with pytest.raises(ValueError, match="parallel"):
        build_config("tiny", ["parallel=zero3"])


# ------------------------------------------------------------------------------------------ pure parts
def test_shard_range_covers_in_order():
    for n in range(0, 11):
        for w in range(1, 5):
            parts = [distributed.shard_range(n, r, w) for r in range(w)]
            assert [i for lo, hi in parts for i in range(lo, hi)] == list(range(n))
            assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


def test_prompt_seed_distinct():
    seeds = {distributed.prompt_seed(s, st, i) for s in range(3) for st in range(5) for i in range(8)}
    assert len(seeds) == 3 * 5 * 8


def test_single_process_helpers_match_algos():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g)
    mask = (torch.rand(5, 7, generator=g) > 0.3).float()
    assert torch.allclose(distributed.global_whiten(x, mask), algos.masked_whiten(x, mask), atol=1e-6)
    assert distributed.global_masked_mean(x, mask) == pytest.approx(float(algos.masked_mean(x, mask)), abs=1e-6)
    s = distributed.Sums()
    s.add("a", 3.0, 2.0)
    s.add("a", 1.0, 2.0)
    assert s.means() == {"a": 1.0}


def test_micro_batch_weights_give_the_global_token_mean():
    """Micro-batch losses weighted by loss_weight sum to the aggregate over the whole mini-batch (so the
    accumulated gradient does not depend on how the batch is cut, across micro-batches or ranks)."""
    g = torch.Generator().manual_seed(1)
    lm = torch.randn(8, 6, generator=g)
    mask = (torch.rand(8, 6, generator=g) > 0.4).float()
    mask[3] = 0  # an empty response
    for agg in algos.AGG_MODES[:3]:
        whole = algos.aggregate_loss(lm, mask, agg)
        cnt = distributed.mini_batch_count(mask, agg)
        parts = sum(algos.aggregate_loss(lm[i:i + 3], mask[i:i + 3], agg) * distributed.loss_weight(mask[i:i + 3], cnt, agg)
                    for i in range(0, 8, 3))
        assert float(parts) == pytest.approx(float(whole), abs=1e-6), agg


@pytest.mark.parametrize("engine", ["hf", "fast"])
def test_prompt_seeds_make_samples_independent_of_the_batch(engine):
    """With per-prompt seeds, a prompt's samples are the same alone or with other prompts in the call."""
    torch.manual_seed(0)
    model, tok = load_policy("tiny")
    e = make_engine(engine, model, tok)
    prompts = ["Question: what is 2 + 2? Answer:", "The capital of France is", "Q: list three colours.\nA:"]
    params = SamplingParams(max_new_tokens=8, temperature=1.0, stop=(), prompt_seeds=(11, 22, 33))
    together = e.generate(prompts, 3, params)
    alone = e.generate(prompts[1:2], 3, SamplingParams(**{**params.__dict__, "prompt_seeds": (22,)}))
    assert [c.token_ids for c in together[1]] == [c.token_ids for c in alone[0]]
    assert len({tuple(c.token_ids) for c in together[1]}) > 1   # the group's samples differ from each other
    other = e.generate(prompts[1:2], 3, SamplingParams(**{**params.__dict__, "prompt_seeds": (23,)}))
    assert [c.token_ids for c in other[0]] != [c.token_ids for c in alone[0]]
