"""``medrlvr`` command line: ``data``, ``train``, ``demo``, ``eval``, ``sft``, ``compare``, ``report``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _data_root_arg(p):
    p.add_argument("--data-root", default=None,
                   help="folder with medqa/, mmlu_pro/, ... (default: $MEDRLVR_DATA_ROOT, else ../shared/data)")


# ----------------------------------------------------------------------------------------- train
def cmd_train(a) -> int:
    from medrlvr.train.config import build_config
    from medrlvr.train.trainer import train

    cfg = build_config(a.config, a.overrides + ([f"max_steps={a.max_steps}"] if a.max_steps else []))
    if a.data_root:
        cfg.data_root = a.data_root
    out = Path(a.output or f"runs/{Path(a.config).stem}")
    allow = tuple(k.strip() for x in a.allow_change for k in x.split(",") if k.strip())
    if a.nproc < 1:
        raise ValueError(f"--nproc: the number of processes must be >= 1, got {a.nproc}")
    if a.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start torchrun for this node, which runs this command
        from medrlvr.train import distributed

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
    from medrlvr.analysis.report import build_report

    p = build_report(a.run_dir)
    print(f"report: {p}")
    return 0


def cmd_demo(a) -> int:
    from medrlvr.demo import run_demo

    run_demo(a.output, data_root=a.data_root, overrides=a.overrides, max_steps=a.max_steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medrlvr", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    from medrlvr.data.commands import add_cli as add_data_cli

    add_data_cli(sub)

    t = sub.add_parser("train", help="RL training (PPO / GRPO family)")
    t.add_argument("--config", required=True, help="preset (tiny, cpu-demo, paper-3b) or a YAML file")
    t.add_argument("--output", default=None, help="run directory (default runs/<config>)")
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    t.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: accept a changed config KEY (repeatable; recorded in config_changes.jsonl)")
    t.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes on this node: starts torchrun (torch.distributed.run); "
                        "multi-node: call torchrun yourself (docs/guides/distributed.md)")
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

    from medrlvr import monitor, sft
    from medrlvr.eval import benchmark as evaluate, compare
    from medrlvr.integrations import verl as verl_integration

    for mod in (evaluate, sft, compare, verl_integration, monitor):
        mod.add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from medrlvr.data import DataError

    from medrlvr.monitor import ALERT_EXIT_CODE, MonitorStop

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except MonitorStop as e:
        print(f"medrlvr: {e}", file=sys.stderr)
        return ALERT_EXIT_CODE
    except (DataError, ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"medrlvr: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # full disk, read-only or missing directory: one line naming the path
        msg = f"{e.strerror}: {e.filename}" if e.filename and e.strerror else (e.strerror or str(e))
        print(f"medrlvr: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
