"""``medrlvr study``: the command line of the study (run, plan, collect, one step)."""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = """medrlvr study --config PRESET|FILE --output DIR [key=value ...] [--resume]
       medrlvr study --output DIR --resume          (continue a study with its saved config)
       medrlvr study plan DIR [--config C [key=value ...]]   (each step's command and what it waits for)
       medrlvr study collect DIR                    (tables and figures from whatever has finished)
       medrlvr study step DIR STEP [--done]         (run one step; --done marks a step run elsewhere done)"""


def _config(a, words: list[str]):
    from medrlvr.study.config import StudyConfigError, build_study
    from medrlvr.study.steps import load_saved

    for w in words:
        if "=" not in w:
            raise StudyConfigError(f"{w!r} is neither a study command (plan, collect, step) nor key=value")
    if a.config:
        return build_study(a.config, words)
    if a.output and (Path(a.output) / "study.yaml").is_file():
        if words:
            raise StudyConfigError("overrides need --config (a saved study is resumed with its own settings)")
        return load_saved(a.output)
    raise StudyConfigError("give --config PRESET|FILE (study presets: study-cpu, paper-3b), or --resume with the "
                           "--output of a saved study")


def cmd_study(a) -> int:
    from medrlvr.study.collect import collect
    from medrlvr.study.config import StudyConfigError
    from medrlvr.study.run import run_study
    from medrlvr.study.steps import Workspace, format_plan, init_dir, load_saved, mark_done, plan, run_step

    words = list(a.words)
    verb = words[0] if words and words[0] in ("plan", "collect", "step") else None
    if verb:
        if len(words) < 2:
            raise StudyConfigError(f"study {verb}: give the study directory (medrlvr study --help)")
        out = Path(words[1])
        if verb == "plan":
            cfg = _config(a, words[2:]) if a.config else load_saved(out)
            if a.config:
                init_dir(cfg, out)
            print(format_plan(cfg, out))
            return 0
        cfg = load_saved(out)
        if verb == "collect":
            collect(out, cfg, quiet=a.quiet)
            return 0
        if len(words) != 3:
            raise StudyConfigError("study step: give the study directory and one step id (medrlvr study --help)")
        steps = {s.id: s for s in plan(cfg, out)}
        if words[2] not in steps:
            raise StudyConfigError(f"study step: no step {words[2]!r} in {out}; the steps: {', '.join(steps)}")
        s = steps[words[2]]
        if a.done:
            mark_done(out, s, None)
            print(f"[study] {s.id} marked done")
            return 0
        from medrlvr.study.steps import is_done

        missing = [n for n in s.needs if not is_done(out, n)]
        if missing:
            raise StudyConfigError(f"study step {s.id}: waits for {', '.join(missing)}")
        dt = run_step(cfg, out, s, Workspace(cfg), quiet=a.quiet)
        print(f"[study] {s.id} done in {dt:.0f} s")
        return 0
    if not a.output:
        raise StudyConfigError("--output DIR is required (medrlvr study --help)")
    if a.resume and not a.config and not (Path(a.output) / "study.yaml").is_file():
        raise FileNotFoundError(f"--resume: {a.output} holds no study (study.yaml is missing)")
    cfg = _config(a, words)
    data = run_study(cfg, a.output, quiet=a.quiet)
    if data["missing"]:
        print(f"[study] not finished: {', '.join(data['missing'])}", file=sys.stderr)
    return 0


def add_cli(subparsers):
    """Register ``study`` on an argparse ``subparsers`` object; returns the sub-parser."""
    s = subparsers.add_parser("study", help="the paper's study: base vs SFT vs RLVR, ID and OOD, paired tests "
                                            "(resumable; plan / collect / step)",
                              usage=USAGE, description="The paper's study as one resumable command: base vs SFT "
                              "vs RLVR on the same questions, in and out of distribution, with paired tests "
                              "(docs/guides/study.md).")
    s.add_argument("--config", default=None, help="study preset (study-cpu, paper-3b) or a study YAML file")
    s.add_argument("--output", default=None, help="the study directory")
    s.add_argument("--resume", action="store_true",
                   help="continue the study in --output (rerunning the same command does the same)")
    s.add_argument("--done", action="store_true", help="with `step`: mark the step done (it ran elsewhere)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("words", nargs="*", help="plan DIR | collect DIR | step DIR STEP | key=value overrides")
    s.set_defaults(func=cmd_study)
    return s
