"""``medrlvr verl prepare|launch``: write a verl run directory for a medrlvr config, and start it.

``prepare(cfg, out)`` writes::

    DIR/train.parquet      the exact question stream ``medrlvr train`` would use (max_steps x prompts_per_step
                           rows, per-epoch permutation and option shuffle of :class:`medrlvr.train.stream.PromptStream`),
                           so verl reads it in order (data.shuffle=False)
    DIR/val.parquet        the first eval_limit eval questions (all when 0)
    DIR/medrlvr_reward.py  verl's custom reward function (``compute_score``), medrlvr's scheme and pre-fill baked in
    DIR/agent_loops.yaml   verl agent loop ``medrlvr_single_turn``: the rendered prompt verbatim, the stop strings
    DIR/config.yaml        the resolved medrlvr TrainConfig (shown by the report)
    DIR/medrlvr_verl.json  the marker the report detects: verl version, overrides, scheme, template
    DIR/run.sh             ``python -m verl.trainer.main_ppo <overrides>`` (one node), extra args are appended
    DIR/run_multinode.sh   the same through a Ray cluster: ``head`` / ``worker HEAD_IP`` / ``submit``
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from medrlvr.integrations.verl.mapping import (AGENT_LOOP_NAME, FIELD_MAP, MARKER, VERL_VERSION, check_mappable,
                                               verl_overrides, verl_row)
from medrlvr import rundir
from medrlvr.argtypes import positive_int
from medrlvr.prompts import render, response_prefix
from medrlvr.train.config import TrainConfig, build_config, save_config
from medrlvr.train.stream import stream_for


def _write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def training_stream(cfg: TrainConfig, records) -> list:
    """The questions ``medrlvr train`` would draw, step by step, for ``max_steps`` steps (one rank), its
    curriculum (filter, easy-to-hard order, pools) included."""
    k = cfg.max_steps * cfg.prompts_per_step * ((cfg.max_refill_rounds + 1) if cfg.dynamic_sampling else 1)
    return stream_for(cfg, records).take(k)


REWARD_FILE = '''"""verl custom reward function, written by `medrlvr verl prepare` (medrlvr {version}, verl {verl}).

verl loads it with reward.custom_reward_function.path=<this file> name=compute_score; medrlvr must be
importable on every node that computes rewards.
"""
from medrlvr.integrations.verl import compute_score as _compute_score

SCHEME = {scheme!r}
PREFILL = {prefill!r}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return _compute_score(data_source, solution_str, ground_truth, extra_info, scheme=SCHEME, prefill=PREFILL)
'''


AGENT_LOOPS_FILE = """# verl agent loops, written by `medrlvr verl prepare`
- name: {name}
  _target_: medrlvr.integrations.verl.agent_loop.MedrlvrSingleTurnAgentLoop
  stop: {stop}
"""


def max_prompt_tokens(prompts: Sequence[str], model: str, model_path: str | None = None) -> tuple[int, str]:
    """Longest prompt in tokens with the model's tokenizer: ``model_path`` when it is a local directory, else
    ``model`` (a local directory, an alias, or a Hub id in the local cache or reachable). verl 0.9.1's agent loop
    left-truncates a prompt longer than ``data.max_prompt_length`` with only a warning, so the length must be
    counted in the model's tokens; without its tokenizer this refuses (``FileNotFoundError``) rather than guess."""
    from medrlvr.models import load_tokenizer

    src = model_path if model_path and Path(model_path).expanduser().is_dir() else model
    try:
        tok = load_tokenizer(src)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"verl prepare counts prompt lengths with the model's tokenizer, which cannot be "
                                f"loaded here ({e}); pass --model-path to a local copy of the model") from None
    longest = 0
    for i in range(0, len(prompts), 1024):
        enc = tok(list(prompts[i:i + 1024]), add_special_tokens=False)["input_ids"]
        longest = max(longest, max(map(len, enc)))
    return longest, "tokens"


def prepare(cfg: TrainConfig, out: str | Path, *, nnodes: int = 1, gpus_per_node: int = 8, rollout: str = "vllm",
            max_prompt_length: int | None = None, model_path: str | None = None) -> Path:
    """Write a verl run directory for ``cfg`` (see the module docstring). Returns its path."""
    from medrlvr.data import load_any
    from medrlvr.models import TINY_ALIAS, resolve_model_path

    check_mappable(cfg)
    if cfg.model == TINY_ALIAS and model_path is None:
        raise ValueError("config 'model' = 'tiny': the random tiny model has no checkpoint directory for verl; "
                         "pass a Hugging Face directory or smollm2-135m")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = None
    if cfg.template == "chat":
        from medrlvr.models import load_tokenizer

        tok = load_tokenizer(cfg.model)
    train = load_any(cfg.train_data, cfg.data_root, cfg.columns, split=None)
    ev = load_any(cfg.eval_data, cfg.data_root, cfg.columns, split=None)
    for s in (train, ev):
        if s.skipped:
            print(f"note: {s.name}: {len(s.skipped)} invalid records skipped (see `medrlvr data validate`)",
                  file=sys.stderr)
    if not train.records:
        raise ValueError(f"config 'train_data': {cfg.train_data!r} has no valid records")
    stream = training_stream(cfg, train.records)
    ev_recs = ev.records[: cfg.eval_limit] if cfg.eval_limit else ev.records
    tr_rows = [verl_row(r, render(r, cfg.template, tok, prefill_think=cfg.prefill_think), i, "train", cfg.prefill_think) for i, r in enumerate(stream)]
    va_rows = [verl_row(r, render(r, cfg.template, tok, prefill_think=cfg.prefill_think), i, "val", cfg.prefill_think) for i, r in enumerate(ev_recs)]
    _write_parquet(tr_rows, out / "train.parquet")
    _write_parquet(va_rows, out / "val.parquet")
    prompts = sorted({r["prompt"][0]["content"] for r in tr_rows + va_rows})
    longest, unit = max_prompt_tokens(prompts, cfg.model, model_path)  # every distinct prompt: verl would cut a longer one
    if max_prompt_length is None:
        max_prompt_length = int(math.ceil(longest / 64) * 64)
    elif max_prompt_length < longest:
        raise ValueError(f"--max-prompt-length {max_prompt_length}: the longest prompt has {longest} {unit}; "
                         "verl would cut it (left truncation)")
    mpath = model_path or resolve_model_path(cfg.model)
    overrides = verl_overrides(cfg, out, model_path=mpath, max_prompt_length=max_prompt_length, nnodes=nnodes,
                               gpus_per_node=gpus_per_node, rollout=rollout)
    from medrlvr import __version__ as medrlvr_version

    (out / "medrlvr_reward.py").write_text(REWARD_FILE.format(
        version=medrlvr_version, verl=VERL_VERSION, scheme=cfg.reward_scheme,
        prefill=response_prefix(cfg.template, cfg.prefill_think) or None), encoding="utf-8")
    (out / "agent_loops.yaml").write_text(AGENT_LOOPS_FILE.format(
        name=AGENT_LOOP_NAME, stop=json.dumps(list(cfg.stop))), encoding="utf-8")
    save_config(cfg, out / rundir.CONFIG)
    marker = {"verl_version": VERL_VERSION, "medrlvr_version": medrlvr_version, "model_path": mpath,
              "reward_scheme": cfg.reward_scheme, "template": cfg.template, "prefill_think": cfg.prefill_think,
              "train_rows": len(tr_rows), "val_rows": len(va_rows), "max_prompt_length": max_prompt_length,
              "longest_prompt": [longest, unit], "nnodes": nnodes, "gpus_per_node": gpus_per_node,
              "rollout": rollout, "overrides": overrides}
    (out / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
    _write_scripts(out, overrides, nnodes, gpus_per_node)
    return out


def _shell(word: str) -> str:
    if all(c.isalnum() or c in "-_./=:+,@%" for c in word):
        return word
    if not any(c in word for c in '"$`\\!'):
        return '"' + word + '"'
    return shlex.quote(word)


def _command(overrides: list[str]) -> str:
    return "python3 -m verl.trainer.main_ppo \\\n  " + " \\\n  ".join(_shell(o) for o in overrides) + ' \\\n  "$@"'


RUN_SH = """#!/usr/bin/env bash
# verl {verl} run of a medrlvr config, written by `medrlvr verl prepare` (one node, {gpus} GPUs).
# Extra arguments are appended as verl overrides: ./run.sh trainer.total_training_steps=10
set -euo pipefail
cd "$(dirname "$0")"
export VERL_FILE_LOGGER_PATH="$PWD/metrics.jsonl"
{cmd}
"""


RUN_MULTI_SH = """#!/usr/bin/env bash
# verl {verl} on a Ray cluster of {nnodes} nodes x {gpus} GPUs, written by `medrlvr verl prepare`.
#   on the head node:        ./run_multinode.sh head
#   on every other node:     ./run_multinode.sh worker HEAD_IP
#   then, on the head node:  ./run_multinode.sh submit [verl overrides ...]
# This directory must be at the same path on every node (shared filesystem), with medrlvr and verl installed.
set -euo pipefail
cd "$(dirname "$0")"
PORT="${{RAY_PORT:-6379}}"
case "${{1:-}}" in
  head)   ray start --head --port="$PORT" --num-gpus={gpus} --dashboard-host=0.0.0.0 ;;
  worker) ray start --address="$2:$PORT" --num-gpus={gpus} ;;
  submit) shift
    ray job submit --address="${{RAY_DASHBOARD:-http://127.0.0.1:8265}}" --working-dir=. \\
      --runtime-env-json='{{"env_vars": {{"VERL_FILE_LOGGER_PATH": "'"$PWD"'/metrics.jsonl"}}}}' -- \\
      {cmd} ;;
  *) echo "usage: $0 head | worker HEAD_IP | submit [overrides...]" >&2; exit 2 ;;
esac
"""


def _write_scripts(out: Path, overrides: list[str], nnodes: int, gpus: int) -> None:
    single = [o for o in overrides if not o.startswith(("trainer.nnodes=", "trainer.n_gpus_per_node="))]
    single += ["trainer.nnodes=1", f"trainer.n_gpus_per_node={gpus}"]
    multi = [o for o in overrides if not o.startswith("trainer.nnodes=")] + [f"trainer.nnodes={max(nnodes, 2)}"]
    for name, text in (("run.sh", RUN_SH.format(verl=VERL_VERSION, gpus=gpus, cmd=_command(single))),
                       ("run_multinode.sh", RUN_MULTI_SH.format(verl=VERL_VERSION, gpus=gpus, nnodes=max(nnodes, 2),
                                                                cmd=_command(multi).replace("\n", "\n    ")))):
        p = out / name
        p.write_text(text, encoding="utf-8")
        p.chmod(0o755)


def launch(run_dir: str | Path, extra: Sequence[str] = (), dry_run: bool = False) -> int:
    """Run ``DIR/run.sh`` with extra verl overrides (verl must be importable by ``python3``)."""
    d = Path(run_dir)
    if not (d / MARKER).is_file() or not (d / "run.sh").is_file():
        raise FileNotFoundError(f"{d}: not a directory written by `medrlvr verl prepare` (no {MARKER} / run.sh)")
    cmd = ["bash", str(d / "run.sh"), *extra]
    if dry_run:
        print(" ".join(shlex.quote(c) for c in cmd))
        return 0
    probe = subprocess.run(["python3", "-c", "import verl, sys; sys.stdout.write(verl.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise ValueError(f"verl is not importable by python3 here: pip install 'verl[vllm]=={VERL_VERSION}'")
    if probe.stdout.strip() != VERL_VERSION:
        print(f"warning: verl {probe.stdout.strip()} installed; the mapping is tested against {VERL_VERSION}",
              file=sys.stderr)
    return subprocess.call(cmd)


def _cmd_prepare(a) -> int:
    cfg = build_config(a.config, a.overrides)
    if a.data_root:
        cfg.data_root = a.data_root
    out = prepare(cfg, a.out, nnodes=a.nnodes, gpus_per_node=a.gpus_per_node, rollout=a.rollout,
                  max_prompt_length=a.max_prompt_length, model_path=a.model_path)
    m = json.loads((out / MARKER).read_text(encoding="utf-8"))
    for f in ("engine", "share_prompt", "autocast_bf16"):
        print(f"note: {f}={getattr(cfg, f)!r}: {FIELD_MAP[f][1]}")
    print(f"wrote {out}: train.parquet ({m['train_rows']} rows), val.parquet ({m['val_rows']} rows), "
          f"data.max_prompt_length={m['max_prompt_length']} (longest prompt {m['longest_prompt'][0]} "
          f"{m['longest_prompt'][1]}), run.sh, run_multinode.sh (verl {VERL_VERSION})")
    print(f"next: medrlvr verl launch {out}   (or: bash {out}/run.sh); then: medrlvr report {out}")
    return 0


def _cmd_launch(a) -> int:
    return launch(a.run_dir, a.overrides, dry_run=a.dry_run)


def add_cli(sub) -> None:
    """``medrlvr verl prepare|launch``."""
    v = sub.add_parser("verl", help=f"run a medrlvr config on verl {VERL_VERSION} (prepare, launch)")
    vs = v.add_subparsers(dest="verl_cmd", required=True)
    p = vs.add_parser("prepare", help="write train/val parquet, the reward entry point and run.sh")
    p.add_argument("--config", required=True, help="preset (paper-3b, cpu-demo, ...) or a YAML file")
    p.add_argument("--out", required=True, help="the verl run directory to write")
    p.add_argument("--nnodes", type=positive_int, default=1, help="nodes (run_multinode.sh uses at least 2)")
    p.add_argument("--gpus-per-node", type=positive_int, default=8, help="GPUs per node")
    p.add_argument("--rollout", default="vllm", choices=["vllm", "sglang"], help="verl rollout engine")
    p.add_argument("--max-prompt-length", type=positive_int, default=None,
                   help="data.max_prompt_length (default: the longest prompt, rounded up to 64)")
    p.add_argument("--model-path", default=None, help="model directory as the GPU nodes see it (default: model)")
    p.add_argument("--data-root", default=None,
                   help="folder with medqa/, mmlu_pro/, ... (default: $MEDRLVR_DATA_ROOT, else ../shared/data)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the medrlvr config")
    p.set_defaults(func=_cmd_prepare)
    la = vs.add_parser("launch", help="run DIR/run.sh where verl is installed (extra args: verl overrides)")
    la.add_argument("run_dir")
    la.add_argument("--dry-run", action="store_true", help="print the command only")
    la.add_argument("overrides", nargs="*", help="verl overrides appended to the command (key=value)")
    la.set_defaults(func=_cmd_launch)
