"""Experiment trackers: TensorBoard, Weights & Biases and MLflow behind one small interface.

A training run names its trackers in ``report_to`` (default ``["tensorboard"]``). Each one receives, from the main
rank only:

- :meth:`Tracker.log_config`: the resolved configuration, once at the start;
- :meth:`Tracker.log_scalars`: the numbers of each ``metrics.jsonl`` row at its global ``step`` (the x axis);
  booleans, strings and non-finite numbers are left out, as ``metrics.jsonl`` is the source of truth;
- :meth:`Tracker.log_alert`: each monitor alert as it is raised, at the step that raised it (the row
  ``alerts.jsonl`` gets);
- :meth:`Tracker.log_samples`: a table of sampled completions (step, question id, stage, reward, correct,
  format, predicted and gold letter, flags, completion; :func:`sample_table`);
- :meth:`Tracker.close`.

Backends:

``tensorboard``
    ``RUN/tb/`` through ``torch.utils.tensorboard`` (scalars only; alerts and samples stay in the JSONL files).
    A resumed run passes ``purge_step`` so TensorBoard hides the steps that were re-run.
``wandb``
    ``wandb.init(dir=RUN, project=..., name=..., config=...)``: the run directory is ``RUN/wandb/``; the mode
    follows ``WANDB_MODE`` (``offline`` writes everything locally, ``wandb sync RUN/wandb/offline-run-*``
    uploads it later). Alerts are ``run.alert`` (a W&B notification when online) and a row of the ``alerts``
    table; samples are a ``wandb.Table`` logged under ``samples`` at their step.
``mlflow``
    ``MlflowClient`` on ``MLFLOW_TRACKING_URI`` when set, else a SQLite store in the run directory
    (``sqlite:///RUN/mlflow/mlflow.db``, artifacts in ``RUN/mlflow/artifacts``; MLflow 3 keeps its ``file:`` store
    in maintenance mode and refuses it without ``MLFLOW_ALLOW_FILE_STORE=true``). The config is the run's
    parameters and a ``config.yaml`` artifact; alerts are ``alerts/*.json`` artifacts (and the ``alerts`` tag
    counts them); samples are ``samples/step_N.json`` tables (``MlflowClient.load_table`` reads them).

``wandb`` and ``mlflow`` are optional extras (``pip install medrlvr[wandb]``, ``medrlvr[mlflow]``) imported only
when asked for; :func:`check_installed` refuses a missing one before any model loads. A resumed run starts a
new W&B / MLflow run named ``NAME (resumed at step N)``: both refuse steps lower than ones already logged,
and the resumed run re-logs the steps after its checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

TRACKERS = ("tensorboard", "wandb", "mlflow")
EXTRAS = {"wandb": "wandb", "mlflow": "mlflow"}   # tracker -> the package (and medrlvr extra) it needs
TABLE_COLUMNS = ("step", "id", "stage", "reward", "correct", "format_ok", "pred", "gold", "flags", "finish_reason",
                 "completion")
DEFAULT_PROJECT = "medrlvr"


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple of known tracker names, each once; ``ValueError`` naming an unknown one."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for n in names:
        if n not in TRACKERS:
            raise ValueError(f"config 'report_to': unknown tracker {n!r}; known: {', '.join(TRACKERS)}")
        if n not in out:
            out.append(n)
    return tuple(out)


def check_installed(names: Sequence[str]) -> None:
    """``ValueError`` (one line) when a tracker of ``names`` needs a package that is not installed: asking for
    W&B without ``wandb`` fails before training starts, not at the first logged step."""
    for n in check_names(names):
        pkg = EXTRAS.get(n)
        if pkg and importlib.util.find_spec(pkg) is None:
            raise ValueError(f"config 'report_to': {n} needs the '{pkg}' package, which is not installed "
                             f"(pip install 'medrlvr[{pkg}]')")


def scalars(rec: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row that trackers plot: ints and finite floats, never ``step`` or booleans."""
    return {k: v for k, v in rec.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def sample_table(rows: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    """``samples.jsonl`` rows as table rows in :data:`TABLE_COLUMNS` order; ``stage`` is the training stage of
    :func:`medrlvr.analysis.stages.classify_sample` (the report's and the monitors' classification)."""
    from medrlvr.analysis.stages import classify_sample

    out = []
    for r in rows:
        stage = classify_sample(r)
        out.append([r.get("step"), str(r.get("id")), stage, r.get("reward"), bool(r.get("correct")),
                    bool(r.get("format_ok")), r.get("pred"), r.get("gold"), ",".join(r.get("flags") or []),
                    r.get("finish_reason"), r.get("completion")])
    return out


class Tracker:
    """One backend. Every method may be called on the main rank only; the default does nothing."""

    name = "none"

    def log_config(self, config: Mapping[str, Any]) -> None:
        pass

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        pass

    def log_alert(self, alert: Mapping[str, Any], step: int) -> None:
        pass

    def log_samples(self, table: list[list[Any]], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    """``RUN/tb/`` event files, opened at the first scalars (as before trackers existed); without TensorBoard
    installed it stays silent (the JSONL files are the source of truth)."""

    name = "tensorboard"

    def __init__(self, run_dir: Path, purge_step: int | None = None):
        self.path, self.purge_step, self._w = Path(run_dir) / "tb", purge_step, None

    def _writer(self):
        if self._w is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: TensorBoard hides the steps after the resumed checkpoint (they were re-run)
                self._w = SummaryWriter(str(self.path), purge_step=self.purge_step)
            except Exception:  # tensorboard missing
                self._w = False
        return self._w or None

    def log_scalars(self, values, step):
        w = self._writer()
        if w:
            for k, v in values.items():
                w.add_scalar(k, v, step)
            w.flush()

    def close(self):
        if self._w:
            self._w.close()
            self._w = None   # a later call (another train() of the same trainer) reopens the directory


class WandbTracker(Tracker):
    """A W&B run in ``RUN/wandb/`` (mode from ``WANDB_MODE``, see the module doc)."""

    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, project: str):
        import wandb

        self._wandb = wandb
        self._init = {"project": project, "name": run_name, "dir": str(run_dir), "reinit": "create_new",
                      "job_type": "train"}
        self._run = wandb.init(**self._init)
        self.id = self._run.id
        self._alerts: list[list[Any]] = []

    @property
    def run(self):
        """The W&B run; after :meth:`close` (another ``train()`` of the same trainer) the same run, resumed."""
        if self._run is None:
            self._run = self._wandb.init(id=self.id, resume="allow", **self._init)
        return self._run

    def log_config(self, config):
        self.run.config.update(dict(config), allow_val_change=True)

    def log_scalars(self, values, step):
        self.run.log(dict(values), step=step)

    def log_alert(self, alert, step):
        text = str(alert.get("evidence") or json.dumps(dict(alert), default=str))
        self.run.alert(title=str(alert.get("monitor", "alert"))[:63], text=text, level="WARN")
        self._alerts.append([alert.get("onset_step", step), str(alert.get("monitor")), text])
        self.run.log({"alerts": self._wandb.Table(columns=["step", "monitor", "evidence"], data=list(self._alerts))},
                     step=step)

    def log_samples(self, table, step):
        self.run.log({"samples": self._wandb.Table(columns=list(TABLE_COLUMNS), data=table)}, step=step)

    def close(self):
        if self._run is not None:
            self._run.finish()
            self._run = None


_MLFLOW_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


class MlflowTracker(Tracker):
    """An MLflow run through ``MlflowClient`` (store: ``MLFLOW_TRACKING_URI``, else SQLite in the run dir)."""

    name = "mlflow"

    def __init__(self, run_dir: Path, run_name: str, project: str, tracking_uri: str | None = None):
        import os

        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir).resolve()
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:
            (run_dir / "mlflow").mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}"
            artifacts = (run_dir / "mlflow" / "artifacts").as_uri()
        self.tracking_uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(project)
        eid = exp.experiment_id if exp else self.client.create_experiment(project, artifact_location=artifacts)
        self.experiment_id = eid
        self.run_id = self.client.create_run(eid, run_name=run_name, tags={"medrlvr.run_dir": str(run_dir)}).info.run_id
        self._n_alerts = 0

    def log_config(self, config):
        from mlflow.entities import Param

        import yaml

        flat = {_MLFLOW_KEY.sub("_", k): json.dumps(v) if isinstance(v, (dict, list, tuple)) else str(v)
                for k, v in config.items()}
        params = [Param(k, v[:6000]) for k, v in flat.items()]
        for i in range(0, len(params), 100):   # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_text(self.run_id, yaml.safe_dump(dict(config), sort_keys=False), "config.yaml")

    def log_scalars(self, values, step):
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        ms = [Metric(_MLFLOW_KEY.sub("_", k), float(v), ts, int(step)) for k, v in values.items()]
        for i in range(0, len(ms), 1000):
            self.client.log_batch(self.run_id, metrics=ms[i:i + 1000])

    def log_alert(self, alert, step):
        self._n_alerts += 1
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(alert.get("monitor", "alert")))
        self.client.log_dict(self.run_id, dict(alert), f"alerts/{self._n_alerts:03d}_{name}.json")
        self.client.set_tag(self.run_id, "alerts", str(self._n_alerts))

    def log_samples(self, table, step):
        cols = {c: [row[i] for row in table] for i, c in enumerate(TABLE_COLUMNS)}
        self.client.log_table(self.run_id, cols, f"samples/step_{int(step)}.json")

    def close(self):
        self.client.set_terminated(self.run_id)


class Trackers:
    """The trackers of one run, called together (:func:`open_trackers`). Empty on ranks other than 0."""

    def __init__(self, trackers: Sequence[Tracker] = ()):
        self.trackers = list(trackers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.trackers)

    def get(self, name: str) -> Tracker | None:
        return next((t for t in self.trackers if t.name == name), None)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_config(config)

    def log_scalars(self, rec: Mapping[str, Any], step: int) -> None:
        """The numbers of ``rec`` (:func:`scalars`) at ``step``."""
        values = scalars(rec)
        if values:
            for t in self.trackers:
                t.log_scalars(values, step)

    def log_alert(self, alert: Any, step: int) -> None:
        """One alert (an object with ``to_dict()``, or its row) raised at ``step``."""
        row = alert.to_dict() if hasattr(alert, "to_dict") else dict(alert)
        for t in self.trackers:
            t.log_alert(row, step)

    def log_samples(self, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        """``samples.jsonl`` rows of one step, as a table (:func:`sample_table`), to every tracker that keeps
        tables (W&B, MLflow)."""
        targets = [t for t in self.trackers if t.name != "tensorboard"]
        if rows and targets:
            table = sample_table(rows)
            for t in targets:
                t.log_samples(table, step)

    def close(self) -> None:
        """Flush and close every tracker (a later call reopens TensorBoard's writer and W&B's run)."""
        for t in self.trackers:
            t.close()


def open_trackers(names: Sequence[str], run_dir: str | Path, run_name: str | None = None,
                  project: str = DEFAULT_PROJECT, resume_step: int | None = None) -> Trackers:
    """Open the trackers ``names`` for the run directory ``run_dir`` (see the module doc); ``resume_step``: the
    step a resumed run continues from (TensorBoard's purge step, the W&B / MLflow run's name)."""
    run_dir = Path(run_dir)
    check_installed(names)
    name = run_name or run_dir.resolve().name
    if resume_step is not None:
        name = f"{name} (resumed at step {resume_step})"
    out: list[Tracker] = []
    for n in check_names(names):
        if n == "tensorboard":
            out.append(TensorBoardTracker(run_dir, None if resume_step is None else resume_step + 1))
        elif n == "wandb":
            out.append(WandbTracker(run_dir, name, project))
        else:
            out.append(MlflowTracker(run_dir, name, project))
    return Trackers(out)
