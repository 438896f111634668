"""Experiment trackers (medrlvr.tracking): a tiny run with ``report_to: [wandb, mlflow]`` writes an offline W&B run
and an MLflow run in its run directory, read back here with each library's own reader: the W&B run's records
(the ``.wandb`` file's protobuf ``Record`` messages, W&B's own schema) and its table files, and MLflow's
``MlflowClient``. No network: W&B in offline mode, MLflow on a SQLite store in the run directory."""

import glob
import json
import struct
import subprocess
import sys

import pytest

from medrlvr import tracking
from medrlvr.cli import main
from medrlvr.rundir import read_jsonl
from medrlvr.train.config import build_config


def _tiny(**kw):
    # the paper's reward on the random tiny model: every group has zero variance, so no_learning_signal fires at
    # step 2 with monitor.k=2 (an alert to forward)
    base = {"reward_scheme": "paper", "max_steps": 3, "eval_every": 0, "save_every": 0, "prompts_per_step": 2,
            "samples_per_prompt": 2, "max_new_tokens": 8, "eval_limit": 2, "monitor": {"k": 2, "entropy_min": 0.0}}
    return build_config("tiny", {**base, **kw})


def wandb_records(path):
    """The protobuf records of a ``.wandb`` file. wandb 0.31 no longer ships a Python reader of it (its Go core
    writes it), so this reads the framing, LevelDB's log format (W&B's documented choice: a 7-byte header
    ``:W&B`` + magic + version, 32 KiB blocks, each record ``crc32 | length | type`` then its bytes), and parses
    each record with wandb's own ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, chunks, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:            # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if n == 0 and kind == 0:
            pos += left
            continue
        part, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 1:
            chunks.append(part)
        elif kind == 2:
            buf = part
        elif kind == 3:
            buf += part
        elif kind == 4:
            chunks.append(buf + part)
            buf = b""
    out = []
    for c in chunks:
        r = pb.Record()
        r.ParseFromString(c)
        out.append(r)
    return out


@pytest.fixture
def tracked_run(tmp_path_factory, monkeypatch, one_thread):
    from medrlvr.train.trainer import Trainer

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path_factory.mktemp("tracked")
    t = Trainer(_tiny(report_to=["tensorboard", "wandb", "mlflow"], log_samples_every=2), out, quiet=True)
    t.train()
    return out, t


def test_wandb_offline_run_holds_scalars_config_alerts_and_sample_table(tracked_run):
    out, t = tracked_run
    metrics, _ = read_jsonl(out / "metrics.jsonl")
    files = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1                               # the W&B run lives inside the run directory
    recs = wandb_records(files[0])
    history = {}
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history[row["_step"]] = row
    assert sorted(history) == [m["step"] for m in metrics] == [1, 2, 3]   # global step is the x axis
    for m in metrics:
        for k, v in tracking.scalars(m).items():
            assert history[m["step"]][k] == pytest.approx(v, rel=1e-12, abs=0), k
    config = {u.key: json.loads(u.value_json) for r in recs if r.WhichOneof("record_type") == "config"
              for u in r.config.update}
    assert config["report_to"] == ["tensorboard", "wandb", "mlflow"] and config["seed"] == t.cfg.seed
    assert config["monitor"] == {"k": 2, "entropy_min": 0.0}
    # the sample table of step 2 (log_samples_every=2): W&B's table file holds samples.jsonl's rows of that step
    tables = glob.glob(str(out / "wandb" / "offline-run-*" / "files" / "media" / "table" / "samples_*.table.json"))
    assert len(tables) == 1
    tab = json.loads(open(tables[0]).read())
    assert tab["columns"] == list(tracking.TABLE_COLUMNS)
    samples = [s for s in read_jsonl(out / "samples.jsonl")[0] if s["step"] == 2]
    col = tab["columns"].index
    assert [(r[col("step")], r[col("id")], r[col("reward")], r[col("completion")]) for r in tab["data"]] == \
           [(2, s["id"], s["reward"], s["completion"]) for s in samples]
    assert all(r[col("stage")] for r in tab["data"])
    # the alert raised at step 2: a row of the alerts table at that step
    alerts = read_jsonl(out / "alerts.jsonl")[0]
    assert [a["monitor"] for a in alerts] == ["no_learning_signal"]
    assert history[2]["alerts/nrows"] == 1 and "alerts/nrows" not in history[1]


def test_mlflow_run_holds_scalars_config_alerts_and_sample_table(tracked_run):
    from mlflow.tracking import MlflowClient

    out, t = tracked_run
    metrics, _ = read_jsonl(out / "metrics.jsonl")
    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("medrlvr")
    (run,) = client.search_runs([exp.experiment_id])
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == out.resolve().name
    for key in ("reward_mean", "entropy", "format_valid"):
        hist = client.get_metric_history(rid, key)
        assert [(h.step, h.value) for h in sorted(hist, key=lambda h: h.step)] == \
               [(m["step"], pytest.approx(m[key])) for m in metrics]
    params = run.data.params
    assert params["algo"] == t.cfg.algo and params["report_to"] == '["tensorboard", "wandb", "mlflow"]'
    arts = {a.path for a in client.list_artifacts(rid)}
    assert {"config.yaml", "samples", "alerts"} <= arts
    import yaml
    from mlflow.artifacts import load_text

    assert yaml.safe_load(load_text(f"{run.info.artifact_uri}/config.yaml")) == t.cfg.to_dict()
    table = client.load_table(exp.experiment_id, "samples/step_2.json", run_ids=[rid])
    samples = [s for s in read_jsonl(out / "samples.jsonl")[0] if s["step"] == 2]
    assert list(table["id"]) == [s["id"] for s in samples]
    assert list(table["reward"]) == [s["reward"] for s in samples]
    assert [a.path for a in client.list_artifacts(rid, "alerts")] == ["alerts/001_no_learning_signal.json"]
    assert run.data.tags["alerts"] == "1"


def test_tensorboard_stays_the_default_and_none_is_possible(tmp_path, one_thread):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from medrlvr.train.trainer import Trainer

    cfg = _tiny(max_steps=2)
    assert cfg.report_to == ("tensorboard",)
    Trainer(cfg, tmp_path / "a", quiet=True).train()
    acc = EventAccumulator(str(tmp_path / "a" / "tb"))
    acc.Reload()
    metrics, _ = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    assert [e.step for e in acc.Scalars("reward_mean")] == [1, 2]
    assert [e.value for e in acc.Scalars("entropy")] == pytest.approx([m["entropy"] for m in metrics], rel=1e-6)
    Trainer(_tiny(max_steps=1, report_to=[]), tmp_path / "b", quiet=True).train()
    assert not (tmp_path / "b" / "tb").exists() and (tmp_path / "b" / "metrics.jsonl").is_file()


def test_unknown_or_missing_tracker_is_one_line_and_exit_2_before_training(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", "--config", "tiny", "--output", str(out), "report_to=[wandb,neptune]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "medrlvr: error: config 'report_to': unknown tracker 'neptune'; known: tensorboard, wandb, mlflow"
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    assert main(["train", "--config", "tiny", "--output", str(out), "report_to=[mlflow]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["medrlvr: error: config 'report_to': mlflow needs the 'mlflow' package, which is not installed "
                   "(pip install 'medrlvr[mlflow]')"]
    assert not out.exists()                      # refused before anything was loaded or written


def test_trackers_are_imported_only_when_asked_for():
    code = ("import sys, medrlvr.train.trainer, medrlvr.tracking, medrlvr.cli; "
            "print(sorted(m for m in ('wandb', 'mlflow') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_scalars_keep_finite_numbers_only():
    rec = {"step": 3, "a": 1, "b": 0.5, "c": float("nan"), "d": True, "e": "x", "f": None, "g": float("inf")}
    assert tracking.scalars(rec) == {"a": 1, "b": 0.5}
