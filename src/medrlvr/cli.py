"""``medrlvr`` command line: ``data``, ``train``, ``demo``, ``eval``, ``sft``, ``compare``, ``report``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path


def _data_root_arg(p):
    p.add_argument("--data-root", default=None,
                   help="folder with medqa/, mmlu_pro/, ... (default: $MEDRLVR_DATA_ROOT, else ../shared/data)")


# ------------------------------------------------------------------------------------------ data
def cmd_data_stats(a) -> int:
    from .data import BENCHMARKS, load_benchmark

    names = a.benchmarks.split(",") if a.benchmarks else list(BENCHMARKS)
    out = {}
    for spec in names:
        s = load_benchmark(spec, a.data_root, skip_invalid=a.skip_invalid)
        out[spec] = {
            "count": len(s),
            "split": s.name.split(":")[-1],
            "options_histogram": dict(sorted(Counter(r.n_options for r in s).items())),
            "gold_distribution": dict(sorted(Counter(r.gold for r in s).items())),
            "skipped": len(s.skipped),
            "warnings": len(s.warnings),
        }
    if a.json:
        print(json.dumps(out, indent=None if a.compact else 2))
        return 0
    w = max(len(n) for n in out)
    print(f"{'benchmark':<{w}}  {'split':<6} {'count':>6}  options  gold letters")
    for n, d in out.items():
        oh = " ".join(f"{k}:{v}" for k, v in d["options_histogram"].items())
        gd = " ".join(f"{k}:{v}" for k, v in d["gold_distribution"].items())
        extra = f"  ({d['skipped']} skipped)" if d["skipped"] else ""
        extra += f"  ({d['warnings']} with duplicate option texts)" if d["warnings"] else ""
        print(f"{n:<{w}}  {d['split']:<6} {d['count']:>6}  {oh}  {gd}{extra}")
    return 0


def cmd_data_validate(a) -> int:
    from .data import DataError, load_any

    try:
        s = load_any(a.source, a.data_root, a.columns, skip_invalid=True)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for sk in s.skipped:
        print(f"invalid: {sk}")
    for w in s.warnings:
        print(f"warning: {w}")
    print(f"{s.name}: {len(s)} valid, {len(s.skipped)} invalid, {len(s.warnings)} with warnings")
    return 1 if s.skipped else 0


def cmd_data_show(a) -> int:
    from .data import load_any
    from .prompts import render

    tok = None
    if a.template == "chat":
        from .models import load_tokenizer

        tok = load_tokenizer(a.model)
    s = load_any(a.source, a.data_root, a.columns, skip_invalid=a.skip_invalid)
    for r in s.records[: a.n]:
        print(f"===== {r.id} (gold {r.gold}: {r.gold_text})")
        print(render(r, a.template, tok, prefill_think=not a.no_prefill))
        print()
    return 0


def cmd_data_export(a) -> int:
    from .data import load_any
    from .export import export

    s = load_any(a.source, a.data_root, a.columns, skip_invalid=a.skip_invalid)
    if s.skipped:
        print(f"note: {len(s.skipped)} invalid records skipped (see `medrlvr data validate`)", file=sys.stderr)
    p = export(s.records, a.format, a.out, template=a.template, prefill_think=not a.no_prefill)
    print(f"wrote {len(s)} records to {p} ({a.format})")
    if a.format == "openrlhf":
        from .integrations.openrlhf import write_reward_file
        from .prompts import response_prefix

        rf = write_reward_file(p.parent / "medrlvr_openrlhf_reward.py",
                               prefill=response_prefix(a.template, not a.no_prefill) or None)
        print(f"wrote {rf} (OpenRLHF: --remote_rm_url {rf} --input_key input --label_key label)")
    return 0


# ----------------------------------------------------------------------------------------- train
def cmd_train(a) -> int:
    from .config import build_config
    from .train import train

    cfg = build_config(a.config, a.overrides + ([f"max_steps={a.max_steps}"] if a.max_steps else []))
    if a.data_root:
        cfg.data_root = a.data_root
    out = Path(a.output or f"runs/{Path(a.config).stem}")
    allow = tuple(k.strip() for x in a.allow_change for k in x.split(",") if k.strip())
    if a.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start torchrun for this node, which runs this command
        from . import distributed

        cfg.world_size = a.nproc
        distributed.check_config(cfg)  # refuse a batch that cannot be split before starting anything
        return distributed.launch(a.nproc, _strip_nproc(a.argv))
    t = train(cfg, out, resume=a.resume, allow_change=allow)
    if t.is_main:
        print(f"run directory: {out} ({t.step} steps, {t.skipped_steps} skipped)")
    return 0


def _strip_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for x in argv:
        if skip:
            skip = False
        elif x == "--nproc":
            skip = True
        elif not x.startswith("--nproc="):
            out.append(x)
    return out


def cmd_report(a) -> int:
    from .analysis.report import build_report

    p = build_report(a.run_dir)
    print(f"report: {p}")
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(a.output, data_root=a.data_root, overrides=a.overrides, max_steps=a.max_steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medrlvr", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("data", help="inspect, validate, render and export question sets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("stats", help="count, option-count histogram and gold-letter distribution per benchmark")
    _data_root_arg(s)
    s.add_argument("--benchmarks", default=None, help="comma-separated names (default: all)")
    s.add_argument("--json", action="store_true", help="one JSON object keyed by benchmark name")
    s.add_argument("--compact", action="store_true", help="with --json: on one line")
    s.add_argument("--skip-invalid", action="store_true")
    s.set_defaults(func=cmd_data_stats)
    for name, fn, hlp in (("validate", cmd_data_validate, "check every record; exit 1 if any is invalid"),
                          ("show", cmd_data_show, "print rendered prompts"),
                          ("export", cmd_data_export, "write verl / TRL / OpenRLHF data files")):
        x = dsub.add_parser(name, help=hlp)
        x.add_argument("source", help="benchmark name[:split], a file (.jsonl/.json/.csv/.parquet) or hub:ID")
        _data_root_arg(x)
        x.add_argument("--columns", default=None, help="column map for files, e.g. question=q,options=A|B|C|D,gold=ans")
        if name != "validate":
            x.add_argument("--skip-invalid", action="store_true", help="load the valid records, report the others")
            x.add_argument("--template", default="r1-zero", choices=["r1-zero", "chat", "direct"])
            x.add_argument("--no-prefill", action="store_true", help="do not end the prompt with <think>")
        if name == "show":
            x.add_argument("--n", type=int, default=3)
            x.add_argument("--model", default="smollm2-135m", help="tokenizer for --template chat")
        if name == "export":
            x.add_argument("--format", required=True, choices=["verl", "trl", "openrlhf"])
            x.add_argument("--out", required=True)
        x.set_defaults(func=fn)

    t = sub.add_parser("train", help="RL training (PPO / GRPO family)")
    t.add_argument("--config", required=True, help="preset (tiny, cpu-demo, paper-3b) or a YAML file")
    t.add_argument("--output", default=None, help="run directory (default runs/<config>)")
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    t.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: accept a changed config KEY (repeatable; recorded in config_changes.jsonl)")
    t.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this node: starts torchrun (torch.distributed.run); "
                        "multi-node: call torchrun yourself (README, Distributed training)")
    _data_root_arg(t)
    t.add_argument("overrides", nargs="*", help="key=value config overrides")
    t.set_defaults(func=cmd_train)

    dm = sub.add_parser("demo", help="the main job: evaluate, train cpu-demo, evaluate again, report")
    dm.add_argument("--output", default="runs/demo")
    dm.add_argument("--max-steps", type=int, default=None)
    _data_root_arg(dm)
    dm.add_argument("overrides", nargs="*", help="key=value overrides of the cpu-demo preset")
    dm.set_defaults(func=cmd_demo)

    r = sub.add_parser("report", help="write report.html for a run directory")
    r.add_argument("run_dir")
    r.set_defaults(func=cmd_report)

    from . import compare, evaluate, sft
    from .integrations import verl as verl_integration

    for mod in (evaluate, sft, compare, verl_integration):
        mod.add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from .data import DataError

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"medrlvr: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # full disk, read-only or missing directory: one line naming the path
        msg = f"{e.strerror}: {e.filename}" if e.filename and e.strerror else (e.strerror or str(e))
        print(f"medrlvr: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
