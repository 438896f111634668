"""Reliability of a training run: crash-safe checkpoints and logs, resume that finds a complete
checkpoint and refuses config drift, finite weights, strict JSON, and one-line errors (exit 2) for bad input.

Crashes are simulated in-process at the named fault points of :mod:`medrlvr.fileio` (a hook raising
:class:`~medrlvr.fileio.SimulatedCrash`, which no clean-up handler catches, so the disk is left as a kill
would leave it); ``bench/crash_resume.py`` does the same with real SIGKILLs at random moments. All runs
use the random ``tiny`` model with an entropy bonus so that the weights move (asserted)."""

from __future__ import annotations

import builtins
import errno
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medrlvr import cli, fileio
from medrlvr.train.config import build_config
from medrlvr.models import make_tiny_model
from medrlvr.reward import RewardResult, parse
from medrlvr.train.trainer import Trainer

TIMING = {"rollout_s", "update_s", "tokens_per_s"}
BASE = {"max_steps": 2, "eval_every": 0, "save_every": 1, "eval_limit": 1, "max_new_tokens": 6,
        "prompts_per_step": 2, "samples_per_prompt": 2, "micro_batch_size": 4, "reward_scheme": "shaped",
        "entropy_coef": 0.05, "lr": 1e-3}


def _cfg(**kw):
    return build_config("tiny", {**BASE, **kw})


def _trainer(out, tok, resume=False, allow=(), **kw):
    cfg = _cfg(**kw)
    model = make_tiny_model(seed=cfg.seed, vocab_size=len(tok))
    model.config.pad_token_id = tok.pad_token_id
    kw = {"allow_change": allow} if allow else {}
    return Trainer(cfg, out, resume=resume, model=model, tokenizer=tok, quiet=True, **kw)


def _metrics(run):
    return [{k: v for k, v in json.loads(ln).items() if k not in TIMING}
            for ln in (Path(run) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _final(run):
    return load_file(str(Path(run) / "final" / "model.safetensors"))


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _CrashAt:
    """Fault hook: raise SimulatedCrash at the n-th time ``label`` is reached; records every label."""

    def __init__(self, label=None, n=1):
        self.label, self.n, self.seen, self.fired = label, n, [], False

    def __call__(self, label):
        self.seen.append(label)
        if label == self.label and self.seen.count(label) == self.n:
            self.fired = True
            raise fileio.SimulatedCrash(label)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer):
    """An uninterrupted 2-step run, the fault labels it passed, and its initial weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("ref")
    hook = _CrashAt()
    fileio.HOOK = hook
    try:
        t = _trainer(run, tokenizer)
        init = {k: v.detach().clone() for k, v in t.policy.state_dict().items()}
        t.train()
    finally:
        fileio.HOOK = None
        torch.set_num_threads(threads)
    yield run, hook.seen, init


def _run_to_completion(out, tok, crash: _CrashAt | None, monkeypatch):
    """Train with ``crash`` armed (from scratch, or resumed when a checkpoint exists), then resume
    until done: what a user does after a kill."""
    monkeypatch.setattr(fileio, "HOOK", crash)
    try:
        _trainer(out, tok).train()
    except fileio.SimulatedCrash:
        pass
    monkeypatch.setattr(fileio, "HOOK", None)
    assert crash is None or crash.fired
    resumable = (Path(out) / "checkpoints").is_dir() and any((Path(out) / "checkpoints").glob("step_*/step"))
    _trainer(out, tok, resume=resumable).train()


def test_weights_move(reference):
    run, _, init = reference
    assert not _same(init, _final(run)), "the entropy bonus should move the tiny model's weights"


SAVE_POINTS = ["log.samples", "log.metrics", "ckpt.start", "ckpt.policy", "ckpt.tokenizer", "ckpt.state",
               "ckpt.written", "ckpt.replaced", "ckpt.latest.written", "ckpt.latest.replaced", "final.start",
               "final.written", "final.replaced"]


@pytest.mark.parametrize("label", SAVE_POINTS)
def test_crash_at_each_file_op_of_a_save_resumes_identically(label, reference, tokenizer, tmp_path, monkeypatch,
                                                             one_thread):
    """A crash at each file operation of the second step's logging and save (and of the final save):
    the resumed run ends with the uninterrupted run's weights and metrics."""
    run, seen, _ = reference
    assert label in seen
    n = 1 if label.startswith("final") else 2
    _run_to_completion(tmp_path, tokenizer, _CrashAt(label, n), monkeypatch)
    assert _same(_final(run), _final(tmp_path))
    assert _metrics(run) == _metrics(tmp_path)
    assert not list((tmp_path / "checkpoints").glob("*.tmp")) and not (tmp_path / "checkpoints" / "latest.tmp").exists()


def test_crash_while_resume_rewrites_the_logs(reference, tokenizer, tmp_path, monkeypatch, one_thread):
    """Killed during step 2's save (metrics hold step 2), then killed again while the resume drops that
    line: the logs keep their history (the old code truncated them in place: 0 bytes) and a third start
    finishes identically."""
    run, _, _ = reference
    monkeypatch.setattr(fileio, "HOOK", _CrashAt("ckpt.policy", 2))
    with pytest.raises(fileio.SimulatedCrash):
        _trainer(tmp_path, tokenizer).train()
    before = (tmp_path / "metrics.jsonl").read_text()
    monkeypatch.setattr(fileio, "HOOK", _CrashAt("resume.metrics.jsonl.written"))
    with pytest.raises(fileio.SimulatedCrash):
        _trainer(tmp_path, tokenizer, resume=True)
    assert (tmp_path / "metrics.jsonl").read_text() == before and len(before.splitlines()) == 2
    monkeypatch.setattr(fileio, "HOOK", None)
    _trainer(tmp_path, tokenizer, resume=True).train()
    assert _same(_final(run), _final(tmp_path)) and _metrics(run) == _metrics(tmp_path)


def _crash_on_truncating_write(monkeypatch, names):
    """Any open(..., "w") of a file in ``names`` truncates it and then 'dies' (implementation-agnostic)."""
    real = io.open

    def fake(file, mode="r", *a, **k):
        f = real(file, mode, *a, **k)
        if "w" in mode and Path(str(file)).name in names:
            f.close()
            raise fileio.SimulatedCrash(f"truncated {file}")
        return f

    monkeypatch.setattr(io, "open", fake)
    monkeypatch.setattr(builtins, "open", fake)


def test_resume_never_truncates_logs_in_place(reference, tokenizer, tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(fileio, "HOOK", _CrashAt("ckpt.policy", 2))
    with pytest.raises(fileio.SimulatedCrash):
        _trainer(tmp_path, tokenizer).train()
    before = {n: (tmp_path / n).read_bytes() for n in ("metrics.jsonl", "samples.jsonl")}
    monkeypatch.setattr(fileio, "HOOK", None)
    with monkeypatch.context() as m:
        _crash_on_truncating_write(m, {"metrics.jsonl", "samples.jsonl"})
        try:
            _trainer(tmp_path, tokenizer, resume=True)
        except fileio.SimulatedCrash:
            pass
    for n, b in before.items():  # step 1's lines survive (step 2's may be dropped), never an empty file
        step1 = [x for x in b.decode().splitlines() if json.loads(x)["step"] == 1]
        after = (tmp_path / n).read_text().splitlines()
        assert step1 and after[: len(step1)] == step1, f"{n} was truncated in place"


def test_tensorboard_drops_the_steps_resume_reruns(reference, tokenizer, tmp_path, monkeypatch, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = reference
    monkeypatch.setattr(fileio, "HOOK", _CrashAt("ckpt.start", 2))   # step 2 logged, its save killed
    with pytest.raises(fileio.SimulatedCrash):
        _trainer(tmp_path, tokenizer).train()
    monkeypatch.setattr(fileio, "HOOK", None)
    _trainer(tmp_path, tokenizer, resume=True).train()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    ev = acc.Scalars("reward_mean")
    assert [e.step for e in ev] == [1, 2]                     # step 2 once, not once per attempt
    assert [e.value for e in ev] == pytest.approx([m["reward_mean"] for m in _metrics(run)])


# ------------------------------------------------------------------------------ pointer and fallback
@pytest.mark.parametrize("damage", ["empty", "missing", "deleted_dir", "incomplete_dir"])
def test_resume_falls_back_to_the_newest_complete_checkpoint(damage, reference, tokenizer, tmp_path, capsys,
                                                             one_thread):
    run, _, _ = reference
    shutil.copytree(run, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "final")
    ck = tmp_path / "checkpoints"
    assert (ck / "latest").read_text() == "step_2"
    if damage == "empty":          # what the old in-place write left after a kill
        (ck / "latest").write_text("")
    elif damage == "missing":
        (ck / "latest").unlink()
    elif damage == "deleted_dir":
        (ck / "latest").write_text("step_7")
    else:
        (ck / "step_2" / "step").unlink()   # step_2's save never finished
    t = _trainer(tmp_path, tokenizer, resume=True)
    want = 1 if damage == "incomplete_dir" else 2
    assert t.step == want
    assert "newest complete checkpoint" in capsys.readouterr().err
    t.train()
    assert _same(_final(run), _final(tmp_path)) and _metrics(run) == _metrics(tmp_path)


def test_latest_pointer_is_replaced_atomically(tokenizer, tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(fileio, "HOOK", _CrashAt("ckpt.latest.written", 2))
    with pytest.raises(fileio.SimulatedCrash):
        _trainer(tmp_path, tokenizer).train()
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_1"  # the old pointer, whole


def test_failed_save_leaves_no_tmp_and_one_line_error(tmp_path, monkeypatch, capsys, one_thread):
    """Full disk while writing the weights (safetensors raises its own error type): exit 2, one line
    naming the checkpoint, no step_N.tmp left filling the disk."""
    import transformers.modeling_utils as mu
    from safetensors import SafetensorError

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(mu, "safe_save_file", full)
    rc = cli.main(["train", "--config", "tiny", "--output", str(tmp_path), "max_steps=1", "eval_limit=1",
                   "max_new_tokens=4", "prompts_per_step=1", "samples_per_prompt=2", "micro_batch_size=2"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "error" in x.lower()]
    assert rc == 2 and "Traceback" not in err and len(lines) == 1, lines
    assert lines[0].startswith("medrlvr: error: ") and "No space left on device" in lines[0] and "step_1" in lines[0]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


# ------------------------------------------------------------------------------------ config drift
@pytest.fixture
def saved_run(reference, tmp_path):
    run, _, _ = reference
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("change", [{"lr": 5e-4}, {"seed": 3}, {"samples_per_prompt": 4},
                                    {"reward_scheme": "paper"}, {"train_data": "starter:test"}])
def test_resume_refuses_a_changed_config(change, saved_run, tokenizer):
    (key, new), = change.items()
    with pytest.raises(ValueError, match=rf"{key}: .* -> {new!r}.*--allow-change {key}"):
        _trainer(saved_run, tokenizer, resume=True, **change)


def test_resume_refuses_algo_change_even_when_allowed(saved_run, tokenizer):
    with pytest.raises(ValueError, match="algo: 'grpo' -> 'ppo' cannot change on resume"):
        _trainer(saved_run, tokenizer, resume=True, allow=("algo",), algo="ppo")


def test_allowed_change_applies_and_is_recorded(saved_run, tokenizer, one_thread):
    t = _trainer(saved_run, tokenizer, resume=True, allow=("lr",), lr=5e-4, max_steps=3)
    assert t.opt.param_groups[0]["lr"] == 5e-4 and t.sched.get_last_lr()[0] == 5e-4  # not the restored 1e-3
    rec = [json.loads(x) for x in (saved_run / "config_changes.jsonl").read_text().splitlines()]
    assert rec[-1]["resumed_at_step"] == 2 and rec[-1]["changes"] == {"lr": {"saved": 1e-3, "now": 5e-4},
                                                                      "max_steps": {"saved": 2, "now": 3}}
    assert build_config(str(saved_run / "config.yaml")).lr == 5e-4
    hist = t.train()
    assert [h["step"] for h in hist] == [3] and hist[0]["lr"] == 5e-4


def test_resume_accepts_a_change_that_does_not_alter_training(saved_run, tokenizer):
    t = _trainer(saved_run, tokenizer, resume=True, save_every=2, on_alert="stop")
    assert t.step == 2 and not (saved_run / "config_changes.jsonl").exists()


def test_raising_max_steps_on_resume_is_recorded(saved_run, tokenizer):
    """A finished run trains on only when max_steps is raised, and the raise is recorded as a config change."""
    t = _trainer(saved_run, tokenizer, resume=True)
    assert t.train() == [] and t.step == 2                      # reached max_steps: nothing more
    t = _trainer(saved_run, tokenizer, resume=True, max_steps=3)
    rec = [json.loads(x) for x in (saved_run / "config_changes.jsonl").read_text().splitlines()]
    assert rec[-1]["changes"] == {"max_steps": {"saved": 2, "now": 3}}


def test_cli_resume_with_changed_lr_exits_2(saved_run, capsys):
    rc = cli.main(["train", "--config", "tiny", "--output", str(saved_run), "--resume", "lr=5e-4"])
    err = capsys.readouterr().err
    assert rc == 2 and "lr: 0.001 -> 0.0005" in err and "--allow-change lr" in err


# ------------------------------------------------------------------------------ values and weights
@pytest.mark.parametrize("yaml_line,key", [
    ("lr: .nan", "lr"), ("lr: .inf", "lr"), ("max_grad_norm: .nan", "max_grad_norm"), ("kl_coef: .inf", "kl_coef"),
    ("temperature: .nan", "temperature"), ("keep_checkpoints: -1", "keep_checkpoints"), ("lr: 1.0e+30", "lr"),
    ("samples_per_prompt: 2.5", "samples_per_prompt"), ("stop: 5", "stop"), ("top_p: 1.5", "top_p"),
    ("top_p: 0", "top_p"), ("reward_scheme: nope", "reward_scheme"), ("adam_betas: [0.9, .nan]", "adam_betas"),
    ("dual_clip: .inf", "dual_clip"), ("max_steps: 2.0", "max_steps"),
    ("eval_samples: 0", "eval_samples"), ("eval_samples: 4", "eval_samples"),   # 4 greedy copies: refused
    ("eval_temperature: -1", "eval_temperature"), ("stop_answered: 1.5", "stop_answered"),
    ("stop_patience: 0", "stop_patience"),
])
def test_nonsense_values_are_refused_by_key(tmp_path, yaml_line, key):
    p = tmp_path / "c.yaml"
    p.write_text("model: tiny\n" + yaml_line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{p}:2: config '{key}'")):   # the file, its line, the key
        build_config(str(p))


def test_config_file_errors_name_the_file_and_line_unless_an_override_set_the_value(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: tiny\n\nmonitor:\n  echo_rate: 0.2\n  k: 0\nbogus: 1\n")
    with pytest.raises(ValueError, match=re.escape(f"{p}:6: unknown config key 'bogus'")):
        build_config(str(p))
    p.write_text("model: tiny\n\nmonitor:\n  echo_rate: 0.2\n  k: 0\n")
    with pytest.raises(ValueError, match=re.escape(f"{p}:5: config 'monitor.k': must be >= 1, got 0")):
        build_config(str(p))
    with pytest.raises(ValueError, match=r"^config 'monitor.k': must be >= 1, got -1$"):   # the override's value
        build_config(str(p), ["monitor.k=-1"])
    p.write_text("model: tiny\nlr: 0.5\n")
    with pytest.raises(ValueError, match=r"^config 'lr': must be in \(0, 1\], got 7.0$"):
        build_config(str(p), ["lr=7"])
    with pytest.raises(ValueError, match=r"^config 'lr'"):                                 # a preset: no file
        build_config("tiny", ["lr=7"])
    p.write_text("model: tiny\nlr: abc\n")                  # a file value that cannot be read is the file's, override or not
    with pytest.raises(ValueError, match=re.escape(f"{p}:2: config 'lr': expected a number")):
        build_config(str(p), ["lr=0.1"])


def test_non_finite_weights_stop_training_and_are_never_checkpointed(tokenizer, tmp_path, monkeypatch, one_thread):
    t = _trainer(tmp_path, tokenizer, max_steps=3)
    real = t.opt.step
    calls = []

    def poisoned_step(*a, **k):   # the second update overflows one weight (as lr=1e30 did)
        out = real(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                next(t.policy.parameters()).view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(t.opt, "step", poisoned_step)
    with pytest.raises(FloatingPointError, match="not finite after the update"):
        t.train()
    ck = tmp_path / "checkpoints"
    assert sorted(p.name for p in ck.glob("step_*")) == ["step_1"] and (ck / "latest").read_text() == "step_1"
    assert all(torch.isfinite(v).all() for v in load_file(str(ck / "step_1" / "policy" / "model.safetensors")).values())


def test_finite_check_names_a_nan_weight_and_ignores_an_overflowing_sum(tokenizer, tmp_path, one_thread):
    """The weight check sums each tensor first: a NaN is found and named by the exact pass; finite weights whose
    total overflows to inf do not stop training."""
    t = _trainer(tmp_path, tokenizer, max_steps=1)
    assert t.opt.param_groups[0]["fused"] is True            # plain CPU parameters: torch's fused AdamW
    name, p = next((n, q) for n, q in t.policy.named_parameters() if q.requires_grad and q.dim() == 2)
    with torch.no_grad():
        keep = p.view(-1)[:2].clone()
        p.view(-1)[:2] = 3e38                       # finite, but their sum is inf
        t._check_finite_weights()
        p.view(-1)[1] = float("nan")
        with pytest.raises(FloatingPointError, match=f"weight {name} is not finite"):
            t._check_finite_weights()
        p.view(-1)[:2] = keep


# -------------------------------------------------------------------------------------- strict JSON
def test_metrics_are_strict_json_with_a_nonfinite_flag(tokenizer, tmp_path, one_thread):
    def nan_reward(response, rec):
        return RewardResult(reward=float("nan"), format_ok=False, pred=None, correct=False, flags=[],
                            parsed=parse(response))

    t = _trainer(tmp_path, tokenizer, max_steps=1, save_every=0)
    t.reward_fn = nan_reward
    t.train()

    def refuse(c):
        raise AssertionError(f"bare {c} in a JSON line")

    for name in ("metrics.jsonl", "samples.jsonl"):
        recs = [json.loads(x, parse_constant=refuse) for x in (tmp_path / name).read_text().splitlines()]
        assert recs and recs[0]["reward" if name == "samples.jsonl" else "reward_mean"] is None
        assert "reward" in recs[0]["nonfinite"] or "reward_mean" in recs[0]["nonfinite"]


# ------------------------------------------------------------------------------------ CLI errors
def _train_cli(out, *args):
    return ["train", "--config", "tiny", "--output", str(out), "max_steps=1", "eval_limit=1", "max_new_tokens=4",
            *args]


@pytest.mark.parametrize("args,needle", [
    (["stop=5"], "'stop'"), (["samples_per_prompt=2.5"], "'samples_per_prompt'"),
    (["reward_scheme=nope"], "'reward_scheme'"), (["top_p=1.5"], "'top_p'"), (["lr=.nan"], "'lr'"),
    (["keep_checkpoints=-1"], "'keep_checkpoints'"), (["lr=1e30"], "'lr'"),
    (["model=/nonexistent/model/dir"], "/nonexistent/model/dir"),
    (["model=runs/nope/final"], "no such directory"),
])
def test_bad_config_table_exits_2_with_the_key(args, needle, tmp_path, capsys, monkeypatch):
    """Every case fails in one line naming the key, before any model loads (and never reaching the Hub)."""
    import transformers

    def no_load(*a, **k):
        raise AssertionError("a model or tokenizer was loaded (or the Hub asked)")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_load)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    rc = cli.main(_train_cli(tmp_path / "out", *args))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert "Traceback" not in err[0]


def test_unwritable_output_dir_exits_2(tmp_path, capsys, monkeypatch, one_thread):
    """Root ignores chmod, so two other unwritable outputs: a path under a regular file, and a directory
    whose writes fail with EROFS (a read-only mount, simulated at open())."""
    f = tmp_path / "file"
    f.write_text("x")
    rc = cli.main(_train_cli(f / "run"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(f / "run") in err[0], err

    ro = tmp_path / "ro"
    ro.mkdir()
    real = io.open

    def erofs(file, mode="r", *a, **k):
        if any(c in mode for c in "wax") and str(file).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real(file, mode, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(io, "open", erofs)
        m.setattr(builtins, "open", erofs)
        rc = cli.main(_train_cli(ro, "prompts_per_step=1", "samples_per_prompt=2", "micro_batch_size=2"))
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("medrlvr: error")]
    assert rc == 2 and len(err) == 1 and "Read-only file system" in err[0] and str(ro) in err[0], err


def test_cli_errors_in_a_real_process(tmp_path):
    """The same from a shell: exit status 2, one stderr line, no traceback."""
    for args, needle in ((["stop=5"], "'stop'"), (["model=./no/such/model"], "no such directory")):
        p = subprocess.run([sys.executable, "-m", "medrlvr.cli", *_train_cli(tmp_path / "o", *args)],
                           capture_output=True, text=True, timeout=300)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr


# ------------------------------------------------------------------------------ eval completions
def _completions(tmp_path, lines: bytes) -> Path:
    d = tmp_path / "ev"
    d.mkdir()
    (d / "starter_test.completions.jsonl").write_bytes(lines)
    return d


ROW = {"id": "q1", "variant": 0, "samples": [{"correct": True, "pred": "A", "format_ok": True}]}


def test_eval_completions_torn_utf8_last_line_is_dropped_and_counted(tmp_path, capsys):
    from medrlvr.eval.benchmark import read_rows

    good = (json.dumps(ROW) + "\n").encode()
    torn = good.replace(b"q1", b"q2")[:-3] + "é".encode()[:1]   # a line cut inside a two-byte character
    d = _completions(tmp_path, good + torn)
    p = d / "starter_test.completions.jsonl"
    rows = read_rows(p)
    assert list(rows) == [("q1", 0)] and p.read_bytes() == good
    assert "dropped a torn last line" in capsys.readouterr().err


@pytest.mark.parametrize("bad,needle", [
    ({"id": "q2", "variant": 0}, "line 2: no 'samples' field"),
    (b"\xff\xfe{}", "line 2: not UTF-8"),
    (b"{not json", "line 2: not JSON"),
])
def test_eval_cli_bad_completions_line_exits_2(bad, needle, tmp_path, capsys):
    line = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
    d = _completions(tmp_path, (json.dumps(ROW) + "\n").encode() + line + b"\n")
    rc = cli.main(["eval", "--model", "tiny", "--benchmarks", "starter:test", "--limit", "1", "--output", str(d),
                   "--quiet", "--bootstrap", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and needle in err[-1] and "starter_test.completions.jsonl" in err[-1], err


# ------------------------------------------------------------------------------ SIGINT / SIGTERM
class _SignalAt:
    """Fault hook: deliver ``sig`` to this process the first time ``label`` is reached (as Ctrl-C would)."""

    def __init__(self, label, sig):
        self.label, self.sig, self.fired = label, sig, False

    def __call__(self, label):
        if label == self.label and not self.fired:
            self.fired = True
            import signal

            signal.raise_signal(self.sig)


@pytest.mark.parametrize("label,sig", [("log.metrics", "SIGINT"),      # at the step boundary (step 1 logged)
                                       ("step.update", "SIGINT"),      # mid-step (between rollout and update)
                                       ("step.update", "SIGTERM")])
def test_interrupt_checkpoints_and_resume_equals_an_uninterrupted_run(label, sig, reference, tokenizer, tmp_path,
                                                                      monkeypatch, one_thread):
    """SIGINT/SIGTERM during step 1 (no checkpoint planned: save_every=0): the step finishes, a checkpoint is
    written, TrainingInterrupted says how to continue; resuming ends with the uninterrupted run's weights and
    metrics. The signal handlers are restored afterwards."""
    import signal

    from medrlvr.train.trainer import TrainingInterrupted

    run, _, _ = reference
    before = signal.getsignal(signal.SIGINT)
    hook = _SignalAt(label, getattr(signal, sig))
    monkeypatch.setattr(fileio, "HOOK", hook)
    with pytest.raises(TrainingInterrupted) as e:
        _trainer(tmp_path, tokenizer, save_every=0).train()
    monkeypatch.setattr(fileio, "HOOK", None)
    assert hook.fired and e.value.step == 1 and signal.getsignal(signal.SIGINT) is before
    assert (tmp_path / "checkpoints" / "step_1" / "step").is_file()
    assert e.value.line() == (f"interrupted at step 1 of 2; checkpoint written; continue with: "
                              f"medrlvr train --resume --output {tmp_path}")
    _trainer(tmp_path, tokenizer, resume=True, save_every=0).train()
    assert _same(_final(run), _final(tmp_path)) and _metrics(run) == _metrics(tmp_path)


def test_cli_ctrl_c_prints_one_line_and_exits_130(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setattr(fileio, "HOOK", _SignalAt("step.update", __import__("signal").SIGINT))
    out = tmp_path / "run"
    rc = cli.main(["train", "--config", "tiny", "--output", str(out), "max_steps=3", "max_new_tokens=4",
                   "eval_limit=1", "eval_every=0", "save_every=0"])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err
    assert f"medrlvr: interrupted at step 1 of 3; checkpoint written; continue with: medrlvr train --resume " \
           f"--output {out}" in err
    monkeypatch.setattr(fileio, "HOOK", None)
    assert cli.main(["train", "--resume", "--output", str(out)]) == 0     # no --config: the run's config.yaml
    cap = capsys.readouterr()
    assert "resuming from step 1 of 3" in cap.err
    # tiny's random model cannot answer: its no_learning_signal alert is named as expected, monitor exits 0
    assert "no_learning_signal alert expected" in cap.out
    assert cli.main(["monitor", str(out)]) == 0 and "[expected:" in capsys.readouterr().out
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_interrupted_before_the_first_step_says_to_start_again():
    from medrlvr.train.trainer import TrainingInterrupted

    line = TrainingInterrupted(0, 4, Path("runs/x"), None).line("medrlvr train --config tiny --output runs/x")
    assert "start again without --resume: medrlvr train --config tiny --output runs/x" in line


def test_resume_without_a_checkpoint_says_to_start_again(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("model: tiny\n")
    rc = cli.main(["train", "--resume", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "start it again without --resume" in err and len(err.strip().splitlines()) == 1


def test_cli_resume_with_the_preset_keeps_the_runs_max_steps(saved_run, capsys):
    """The saved run stopped at max_steps 2; resuming with --config tiny (whose max_steps is 4) trains nothing
    more: only --max-steps changes a resumed run's length."""
    before = (saved_run / "metrics.jsonl").read_text()
    over = [f"{k}={v}" for k, v in BASE.items() if k != "max_steps"]
    assert cli.main(["train", "--config", "tiny", "--output", str(saved_run), "--resume", *over]) == 0
    assert "resuming from step 2 of 2" in capsys.readouterr().err
    assert (saved_run / "metrics.jsonl").read_text() == before


def test_a_second_ctrl_c_abandons_the_step_and_says_what_is_left(tmp_path, monkeypatch, capsys, one_thread):
    """A KeyboardInterrupt inside step 2 (what a second Ctrl-C raises) after step 1's checkpoint: exit 130, one
    line pointing at --resume, the checkpoint intact; before any checkpoint: start again, with --overwrite."""
    class _Abandon:
        def __init__(self, n):
            self.n, self.seen = n, 0

        def __call__(self, label):
            if label == "step.update":
                self.seen += 1
                if self.seen == self.n:
                    raise KeyboardInterrupt

    out = tmp_path / "run"
    args = ["train", "--config", "tiny", "--output", str(out), "max_steps=3", "max_new_tokens=4", "eval_limit=1",
            "save_every=1"]
    monkeypatch.setattr(fileio, "HOOK", _Abandon(2))
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"continue with: medrlvr train --resume --output {out}" in err
    assert (out / "checkpoints" / "step_1" / "step").is_file()
    monkeypatch.setattr(fileio, "HOOK", _Abandon(1))
    assert cli.main([*args[:5], "--overwrite", *args[5:]]) == 130
    err = capsys.readouterr().err
    assert "nothing saved; start again with: medrlvr train --config tiny" in err and "--overwrite" in err
