"""``medrlvr`` command line: ``data``, ``train``, ``demo``, ``eval``, ``sft``, ``compare``, ``report``, ``study``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from medrlvr.argtypes import positive_int


def _data_root_arg(p):
    p.add_argument("--data-root", default=None,
                   help="folder with medqa/, mmlu_pro/, ... (default: $MEDRLVR_DATA_ROOT, else ../shared/data)")


# ----------------------------------------------------------------------------------------- train
def cmd_train(a) -> int:
    from medrlvr.train.config import build_config
    from medrlvr.train.trainer import TrainingInterrupted, train

    overrides = a.overrides + ([f"max_steps={a.max_steps}"] if a.max_steps else [])
    if a.resume and a.overwrite:
        raise ValueError("--resume and --overwrite exclude each other: continue the run, or replace it")
    from medrlvr import rundir

    if a.config is None and not (a.resume and a.output):
        raise ValueError("--config is required (a preset: tiny, cpu-demo, paper-3b, or a YAML file); "
                         "only --resume --output DIR reads the run's own config.yaml")
    out = Path(a.output) if a.output else Path("runs") / Path(a.config).stem   # the default run directory
    saved = out / rundir.CONFIG
    if a.config is None:
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {saved} does not exist: {a.output} is not a run directory")
        cfg = build_config(str(saved), overrides)
    else:
        cfg = build_config(a.config, overrides)
        if a.resume and not any(o.split("=", 1)[0].strip() == "max_steps" for o in overrides) and saved.is_file():
            import yaml   # the run's own length: only --max-steps (or max_steps=) changes it on resume

            old = (yaml.safe_load(saved.read_text(encoding="utf-8")) or {}).get("max_steps")
            if isinstance(old, int) and not isinstance(old, bool) and old >= 1:
                cfg.max_steps = old
    if a.data_root:
        cfg.data_root = a.data_root
    if a.print_config:
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    allow = tuple(k.strip() for x in a.allow_change for k in x.split(",") if k.strip())
    if a.nproc > 1 and "WORLD_SIZE" not in os.environ:  # start torchrun for this node, which runs this command
        from medrlvr.train import distributed
        from medrlvr.tracking import check_installed

        check_installed(cfg.report_to)  # a missing tracker package: refused before any process starts

        cfg.world_size = a.nproc
        distributed.check_config(cfg)  # refuse a batch that cannot be split before starting anything
        return distributed.launch(a.nproc, _strip_nproc(a.argv))
    again = " ".join(["medrlvr", *(x for x in a.argv if x != "--resume")]
                     + ([] if "--overwrite" in a.argv else ["--overwrite"]))   # the directory holds the config
    try:
        t = train(cfg, out, resume=a.resume, allow_change=allow, overwrite=a.overwrite)
    except TrainingInterrupted as e:
        if e.is_main:
            print(f"medrlvr: {e.line(again)}", file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:   # before the loop, or a second Ctrl-C that abandoned a step
        from medrlvr.train.resume import complete_checkpoints

        if complete_checkpoints(out / rundir.CHECKPOINTS):
            print(f"medrlvr: interrupted; the step in progress was abandoned, the last checkpoint is intact; "
                  f"continue with: medrlvr train --resume --output {out}", file=sys.stderr, flush=True)
        else:
            print("medrlvr: interrupted before the first checkpoint; nothing saved; start again"
                  + ("" if a.resume else f" with: {again}"), file=sys.stderr, flush=True)
        return 130
    if t.is_main:
        from medrlvr.monitor import EXPECTED_ALERTS
        raised = {r.get("monitor") for r in rundir.read_alerts(out)}
        note = "".join(f"; {k} alert {v}" for k, v in EXPECTED_ALERTS.get(cfg.model, {}).items() if k in raised)
        print(f"run directory: {out} ({t.step} steps, {t.skipped_steps} skipped){note}")
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

    build_report(a.run_dir)   # prints the path it wrote
    return 0


def cmd_demo(a) -> int:
    from medrlvr.demo import run_demo

    run_demo(a.output, data_root=a.data_root, overrides=a.overrides, max_steps=a.max_steps)
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``medrlvr CMD: error: ...; see --help``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Help text with each option's default appended, unless it is None/False or the text already gives one."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if (h is argparse.SUPPRESS or d in (None, False, argparse.SUPPRESS) or d == [] or "default" in h
                or not action.option_strings):
            return h
        return f"{h} (default: %(default)s)" if h else "default: %(default)s"


def _all_parsers(p: argparse.ArgumentParser):
    """``p`` and every sub-parser below it."""
    yield p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sp in dict.fromkeys(a.choices.values()):
                yield from _all_parsers(sp)


def build_parser() -> argparse.ArgumentParser:
    from medrlvr import __version__

    p = _Parser(prog="medrlvr", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--version", action="version", version=f"medrlvr {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    from medrlvr.data.commands import add_cli as add_data_cli

    add_data_cli(sub)

    t = sub.add_parser("train", help="RL training (PPO / GRPO family)")
    t.add_argument("--config", default=None,
                   help="preset (tiny: a smoke test on a random-weight model; cpu-demo; paper-3b) or a YAML file; "
                        "with --resume the run's own config.yaml is used when omitted")
    t.add_argument("--output", default=None, help="run directory (default runs/<config>)")
    t.add_argument("--max-steps", type=positive_int, default=None,
                   help="override max_steps; with --resume, raising it trains on (recorded as a config change)")
    t.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    t.add_argument("--overwrite", action="store_true",
                   help="remove an existing run in --output first (without it, a non-empty directory is refused)")
    t.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    t.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: accept a changed config KEY (repeatable; recorded in config_changes.jsonl)")
    t.add_argument("--nproc", type=positive_int, default=1,
                   help="data-parallel processes on this node: starts torchrun (torch.distributed.run); "
                        "multi-node: call torchrun yourself (docs/guides/distributed.md)")
    _data_root_arg(t)
    t.add_argument("overrides", nargs="*", help="key=value config overrides")
    t.set_defaults(func=cmd_train)

    dm = sub.add_parser("demo", help="the main job: evaluate, train cpu-demo, evaluate again, report")
    dm.add_argument("--output", default="runs/demo", help="demo directory")
    dm.add_argument("--max-steps", type=positive_int, default=None, help="override the preset's max_steps")
    _data_root_arg(dm)
    dm.add_argument("overrides", nargs="*", help="key=value overrides of the cpu-demo preset")
    dm.set_defaults(func=cmd_demo)

    r = sub.add_parser("report", help="write report.html for a run directory")
    r.add_argument("run_dir")
    r.set_defaults(func=cmd_report)

    from medrlvr import card, monitor, sft
    from medrlvr.eval import benchmark as evaluate, compare
    from medrlvr.integrations import verl as verl_integration
    from medrlvr.study import commands as study

    for mod in (evaluate, sft, compare, verl_integration, monitor, card, study):
        mod.add_cli(sub)
    for sp in _all_parsers(p):  # one-line usage errors and defaults in every --help, the later-added commands too
        sp.__class__ = _Parser
        sp.formatter_class = _HelpFormatter
    return p


def main(argv: list[str] | None = None) -> int:
    from medrlvr.data import DataError

    from medrlvr.monitor import ALERT_EXIT_CODE, MonitorStop

    if (sys.argv[1:] if argv is None else argv) == ["--version"]:   # before the parser imports torch (seconds)
        from medrlvr import __version__

        print(f"medrlvr {__version__}")
        return 0
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:   # --help, or a usage error already printed in one line: its exit code
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("medrlvr: interrupted", file=sys.stderr)
        return 130
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
