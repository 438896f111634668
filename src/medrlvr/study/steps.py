"""The study as steps: what each arm trains and evaluates, in dependency order, each with a completion marker.

Study directory::

    study.yaml                  the resolved study config (a rerun with other settings is refused by key)
    steps/<step>.done           one marker per finished step (JSON: the step, its wall time)
    arms/<arm>-s<seed>/         an SFT output directory or an RL run directory (``final/`` is the trained model)
    arms/<arm>-s<seed>.yaml     an RL arm's resolved TrainConfig (``medrlvr train --config`` / ``verl prepare``)
    evals/<arm>[-s<seed>]-<mode>/  a resumable ``medrlvr eval`` output directory (completions, results.json)
    study.json, study.md, accuracy.png, dynamics.png, study.html, timing.json   (:mod:`medrlvr.study.collect`)

Steps (:func:`plan`): ``train/sft-s0`` (SFT with its lr grid), ``train/rlvr-s0`` (the local trainer; with
``nproc`` > 1 through torchrun), for ``backend: verl`` ``prepare/...``, ``train/...`` (``medrlvr verl launch``)
and ``export/...`` (verl's model merger to ``final/``), and ``eval/<arm>/<mode>`` for every arm and mode on every
benchmark. A step that is not marked done is run again: the trainer resumes from its newest complete checkpoint
(a run without one restarts, its directory cleared), the evaluator from its saved completions, SFT from the start
(it is deterministic). Every evaluation uses the same questions, option orders and per-question sampling seeds.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medrlvr import fileio, rundir
from medrlvr.study.config import RLArm, StudyConfig, StudyConfigError, build_study

STUDY_FILE = "study.yaml"
STEPS_DIR = "steps"
ARMS_DIR = "arms"
EVALS_DIR = "evals"


@dataclass
class Step:
    """One unit of work: ``id`` (``train/rlvr-s0``), what it waits for, and the command that runs it alone."""

    id: str
    kind: str                    # train | eval | prepare | export
    arm: str
    instance: str                # base, sft-s0, rlvr-s1, ...
    seed: int | None
    mode: str | None = None
    needs: list[str] = field(default_factory=list)
    command: str = ""
    runs: str = ""               # what the command runs (verl, torchrun), for the plan


def instance_name(arm: str, seed: int | None) -> str:
    return arm if seed is None else f"{arm}-s{seed}"


def marker(out: Path, step_id: str) -> Path:
    return out / STEPS_DIR / (step_id.replace("/", "__") + ".done")


def is_done(out: Path, step_id: str) -> bool:
    return marker(out, step_id).is_file()


def arm_dir(out: Path, instance: str) -> Path:
    return out / ARMS_DIR / instance


def eval_dir(out: Path, instance: str, mode: str) -> Path:
    return out / EVALS_DIR / f"{instance}-{mode}"


def model_of(cfg: StudyConfig, out: Path, arm: str, instance: str) -> str:
    """The model an arm's evaluations load: the study's model for ``base``, else the arm's ``final/``."""
    return cfg.model if arm == "base" else str(arm_dir(out, instance) / rundir.FINAL)


def _q(p: Any) -> str:
    return shlex.quote(str(p))


def plan(cfg: StudyConfig, out: str | Path) -> list[Step]:
    """Every step of the study in dependency order (a step's ``needs`` come before it)."""
    out = Path(out)
    me = f"medrlvr study step {_q(out)}"
    steps: list[Step] = []

    def evals(arm: str, inst: str, seed: int | None, needs: list[str]) -> None:
        for mode in cfg.arms()[arm].modes:
            sid = f"eval/{inst}/{mode}"
            steps.append(Step(sid, "eval", arm, inst, seed, mode, list(needs), f"{me} {sid}"))

    if cfg.base is not None:
        evals("base", "base", None, [])
    for seed in cfg.seeds:
        if cfg.sft is not None:
            inst = instance_name("sft", seed)
            sid = f"train/{inst}"
            steps.append(Step(sid, "train", "sft", inst, seed, command=f"{me} {sid}"))
            evals("sft", inst, seed, [sid])
        for name, arm in cfg.rl_arms().items():
            inst = instance_name(name, seed)
            d, y = arm_dir(out, inst), out / ARMS_DIR / f"{inst}.yaml"
            if arm.backend == "verl":
                prep, tr, ex = f"prepare/{inst}", f"train/{inst}", f"export/{inst}"
                tc = cfg.train_config(name, seed)
                steps.append(Step(prep, "prepare", name, inst, seed, runs="verl prepare",
                                  command=f"medrlvr verl prepare --config {_q(y)} --out {_q(d)} "
                                          f"--gpus-per-node {arm.nproc}"))
                steps.append(Step(tr, "train", name, inst, seed, needs=[prep],
                                  command=f"medrlvr verl launch {_q(d)}", runs="verl (GPUs)"))
                actor = d / "checkpoints" / f"global_step_{tc.max_steps}" / "actor"
                steps.append(Step(ex, "export", name, inst, seed, needs=[tr],
                                  command=f"python -m verl.model_merger merge --backend fsdp --local_dir {_q(actor)} "
                                          f"--target_dir {_q(d / rundir.FINAL)}", runs="verl model merger"))
                evals(name, inst, seed, [ex])
            else:
                sid = f"train/{inst}"
                runs = (f"torchrun: medrlvr train --config {y} --output {d} --nproc {arm.nproc}"
                        if arm.nproc > 1 else "")
                steps.append(Step(sid, "train", name, inst, seed, command=f"{me} {sid}", runs=runs))
                evals(name, inst, seed, [sid])
    return steps


# ------------------------------------------------------------------------------------------ the directory
def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): d}


def load_saved(out: str | Path) -> StudyConfig:
    """The study config saved in a study directory."""
    p = Path(out) / STUDY_FILE
    if not p.is_file():
        raise FileNotFoundError(f"{out} holds no study ({STUDY_FILE} is missing)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise StudyConfigError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise StudyConfigError(f"{p}: expected a mapping of study config keys")
    try:
        return build_study(data)
    except StudyConfigError as e:
        raise StudyConfigError(f"{p}: {e}".replace(": dict:", ":")) from None


def init_dir(cfg: StudyConfig, out: str | Path) -> Path:
    """Create the study directory or accept it when it holds this same study. Refuses (nothing written) a
    directory that holds a study with other settings (the keys named) or anything else that is not a study."""
    out = Path(out)
    saved = out / STUDY_FILE
    new = cfg.to_dict()
    if saved.is_file():
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        a, b = _flat(old), _flat(new)
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if diff:
            shown = "; ".join(f"{k} (saved {a.get(k)!r}, now {b.get(k)!r})" for k in diff[:5])
            more = f" and {len(diff) - 5} more" if len(diff) > 5 else ""
            raise StudyConfigError(f"{out} holds another study: {shown}{more}; use another --output, or resume it "
                                   f"with its own settings (medrlvr study --output {out} --resume)")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StudyConfigError(f"{out} is not empty and holds no study ({STUDY_FILE}); give a new or empty "
                               "--output directory")
    out.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_text(saved, yaml.safe_dump(new, sort_keys=False), label="study.config")
    for inst_name, arm in cfg.rl_arms().items():
        for seed in cfg.seeds:
            inst = instance_name(inst_name, seed)
            (out / ARMS_DIR).mkdir(exist_ok=True)
            from medrlvr.train.config import save_config

            save_config(cfg.train_config(inst_name, seed), out / ARMS_DIR / f"{inst}.yaml")
    return out


# ------------------------------------------------------------------------------------------ checks
class Workspace:
    """What the steps of one process share: the loaded benchmarks (ID first, then OOD), by key."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self._sets: dict[str, list] | None = None
        self.distribution: dict[str, str] = {}

    def benchmarks(self) -> dict[str, list]:
        """Every benchmark, loaded once; a benchmark that does not load is a :class:`StudyConfigError` naming it."""
        if self._sets is None:
            from medrlvr.data import DataError
            from medrlvr.eval.benchmark import resolve_benchmarks

            cfg = self.cfg
            sets: dict[str, list] = {}
            for key, specs, dist in (("id_benchmarks", cfg.id_benchmarks, "id"),
                                     ("ood_benchmarks", cfg.ood_benchmarks, "ood")):
                for spec in specs:
                    try:
                        got = resolve_benchmarks([spec], cfg.data_root, cfg.columns)
                    except (DataError, ValueError, FileNotFoundError, OSError) as e:
                        raise StudyConfigError(f"study config '{key}': {spec!r} does not load: {e}") from None
                    for k, v in got.items():
                        if k in sets:
                            raise StudyConfigError(f"study config '{key}': {spec!r} is benchmark {k!r} again")
                        sets[k] = v[: cfg.eval.limit] if cfg.eval.limit else v
                        self.distribution[k] = dist
            self._sets = sets
        return self._sets


def check_prompts(cfg: StudyConfig, ws: Workspace) -> None:
    """Render one question with every arm's prompts with the model's tokenizer: an arm whose mode the model
    cannot run (``chat`` / ``direct-chat`` without a chat template) is refused before anything trains."""
    from medrlvr.models import load_tokenizer
    from medrlvr.prompts import render

    try:
        tok = load_tokenizer(cfg.model)
    except (OSError, ValueError) as e:
        raise StudyConfigError(f"study config 'model': {e}") from None
    rec = next(iter(ws.benchmarks().values()))[0]
    for name, arm in cfg.arms().items():
        key = name if name in ("base", "sft", "rlvr") else f"extra_arms.{name}"
        for mode in arm.modes:
            t, pre = prompt_of(cfg, name, mode)
            try:
                render(rec, t, tok, pre)
            except ValueError as e:
                field_ = "direct_template" if mode != "cot" else ("overrides.template" if isinstance(arm, RLArm)
                                                                   else "template")
                raise StudyConfigError(f"study config '{key}.{field_}': mode {mode} cannot run on {cfg.model}: "
                                       f"{e}") from None


def prompt_of(cfg: StudyConfig, arm_name: str, mode: str) -> tuple[str, bool]:
    """``(template, prefill_think)`` of an arm's evaluation in ``mode``: the arm's ``direct_template`` for
    ``direct`` / ``loglik``; for ``cot`` the base/SFT arm's ``template``, an RL arm's training template."""
    arm = cfg.arms()[arm_name]
    if mode != "cot":
        return arm.direct_template, False
    if isinstance(arm, RLArm):
        tc = cfg.train_config(arm_name, cfg.seeds[0])
        return tc.template, tc.prefill_think
    return arm.template, arm.prefill_think


# ------------------------------------------------------------------------------------------ running
def _has_checkpoint(run_dir: Path) -> bool:
    from medrlvr.train.resume import complete_checkpoints

    return bool(complete_checkpoints(run_dir / rundir.CHECKPOINTS))


def run_step(cfg: StudyConfig, out: Path, step: Step, ws: Workspace, quiet: bool = False) -> float:
    """Run one step (resuming what a killed attempt saved) and mark it done; returns its wall seconds."""
    t0 = time.perf_counter()
    if step.kind == "eval":
        _run_eval(cfg, out, step, ws, quiet)
    elif step.kind == "train" and step.arm == "sft":
        from medrlvr.sft import sft

        sft(cfg.sft_config(step.seed), arm_dir(out, step.instance), quiet=quiet)
    elif step.kind == "train" and cfg.rl_arms()[step.arm].backend == "local":
        _run_rl(cfg, out, step, quiet)
    else:  # verl steps: their own commands, on the GPU nodes
        if step.kind == "prepare":
            from medrlvr.integrations.verl import prepare
            from medrlvr.train.config import build_config

            arm = cfg.rl_arms()[step.arm]
            prepare(build_config(str(out / ARMS_DIR / f"{step.instance}.yaml")), arm_dir(out, step.instance),
                    gpus_per_node=arm.nproc)
        else:
            raise StudyConfigError(f"step {step.id} runs on verl's GPU nodes: `{step.command}` (then mark it done "
                                   f"with `medrlvr study step {out} {step.id} --done`)")
    dt = time.perf_counter() - t0
    mark_done(out, step, dt)
    return dt


def mark_done(out: Path, step: Step, wall_s: float | None) -> None:
    m = marker(out, step.id)
    m.parent.mkdir(parents=True, exist_ok=True)
    fileio.atomic_write_text(m, json.dumps({"step": step.id, "wall_s": None if wall_s is None else round(wall_s, 2),
                                            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n",
                             label="study.marker")


def _run_rl(cfg: StudyConfig, out: Path, step: Step, quiet: bool) -> None:
    arm = cfg.rl_arms()[step.arm]
    d = arm_dir(out, step.instance)
    resume = _has_checkpoint(d)
    if not resume and d.exists():
        shutil.rmtree(d)   # an attempt killed before its first checkpoint: start afresh
    if arm.nproc > 1:
        import subprocess

        cmd = [sys.executable, "-m", "medrlvr", "train", "--config", str(out / ARMS_DIR / f"{step.instance}.yaml"),
               "--output", str(d), "--nproc", str(arm.nproc)] + (["--resume"] if resume else [])
        rc = subprocess.call(cmd)
        if rc:
            raise RuntimeError(f"step {step.id}: `{' '.join(cmd)}` exited with {rc}")
    else:
        from medrlvr.train.trainer import train

        train(cfg.train_config(step.arm, step.seed), d, resume=resume, quiet=quiet)
    from medrlvr.analysis.report import build_report

    build_report(d, quiet=True)


def _run_eval(cfg: StudyConfig, out: Path, step: Step, ws: Workspace, quiet: bool) -> None:
    import torch

    from medrlvr.eval.benchmark import EvalConfig, evaluate
    from medrlvr.models import load_policy

    e = cfg.eval
    model_path = model_of(cfg, out, step.arm, step.instance)
    template, prefill = prompt_of(cfg, step.arm, step.mode)
    sets = ws.benchmarks()
    ec = EvalConfig(mode=step.mode, template=template, prefill_think=prefill,
                    n_samples=1 if step.mode == "loglik" else e.n_samples,
                    temperature=0.0 if step.mode == "loglik" else e.temperature,
                    max_new_tokens=e.max_new_tokens if step.mode == "cot" else None, seed=e.seed,
                    question_seeds=True, engine=e.engine, bootstrap=e.bootstrap, batch_size=e.batch_size or None,
                    output_dir=eval_dir(out, step.instance, step.mode), model_name=step.instance,
                    progress=not quiet)
    model, tok = load_policy(model_path, cfg.dtype, seed=0)
    if torch.cuda.is_available():
        model = model.to("cuda")
    evaluate(model, tok, sets, ec)


def pending(cfg: StudyConfig, out: Path) -> list[Step]:
    return [s for s in plan(cfg, out) if not is_done(out, s.id)]


def format_plan(cfg: StudyConfig, out: Path) -> str:
    """The plan as text: one block per step with its state, command and the steps it waits for."""
    lines = []
    steps = plan(cfg, out)
    for i, s in enumerate(steps, 1):
        state = "done" if is_done(out, s.id) else "todo"
        lines.append(f"{i:2d}. {s.id}  [{state}]" + (f"  needs: {', '.join(s.needs)}" if s.needs else ""))
        lines.append(f"    {s.command}")
        if s.runs and not s.runs.startswith("verl"):
            lines.append(f"    (runs {s.runs})")
    lines.append(f"{len(steps) + 1:2d}. collect  needs: every eval step (partial tables "
                 "from whatever has finished)")
    lines.append(f"    medrlvr study collect {_q(out)}")
    return "\n".join(lines)


