"""The command line as a new user meets it: every numeric option validated (a generic walk over the whole parser,
so commands added later are covered), ``--version``, ``train --print-config``, "did you mean", defaults in
``--help``, the rollout engine chosen for the device, a non-empty run directory refused."""

from __future__ import annotations

import argparse

import pytest
import yaml

from medrlvr import argtypes, cli
from medrlvr.rollout import choose_engine


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the top-level parser and every sub-parser."""
    yield path, parser
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from _walk(sp, path + (name,))


def _minimal_argv(parser: argparse.ArgumentParser) -> list[str]:
    """Values for the required options and positionals, so that only the option under test can fail."""
    argv = []
    for a in parser._actions:
        if a.option_strings and a.required:  # a required number gets a valid one (1), anything else "x"
            value = "1" if a.type in argtypes.NUMERIC_TYPES else (str(list(a.choices)[0]) if a.choices else "x")
            argv += [a.option_strings[0], value]
        elif not a.option_strings and a.nargs in (None, 1) and not isinstance(a, argparse._SubParsersAction):
            argv.append("x")
    return argv


def _numeric_options():
    out = []
    for path, p in _walk(cli.build_parser()):
        for a in p._actions:
            if a.option_strings and a.type is not None and (a.type in (int, float) or a.type in argtypes.NUMERIC_TYPES):
                out.append((path, p, a))
    return out


def test_the_walk_finds_the_numeric_options():
    found = {(" ".join(path), a.option_strings[0]) for path, _, a in _numeric_options()}
    assert {("eval", "--limit"), ("eval", "--batch-size"), ("sft", "--max-steps"), ("eval", "--n-samples"),
            ("train", "--max-steps"), ("data contamination", "--threshold")} <= found
    assert len(found) >= 25


@pytest.mark.parametrize("value", ["-1", "0"])
def test_every_numeric_option_refuses_a_negative_and_a_zero_where_zero_makes_no_sense(value, capsys):
    """Each numeric option of each command: a plain int/float type is a gap; -1 is refused by every one, 0 by
    those without a stated zero meaning; the refusal is one line naming the option, exit 2."""
    checked = 0
    for path, p, a in _numeric_options():
        opt = a.option_strings[0]
        assert a.type not in (int, float), f"{' '.join(path)} {opt}: unvalidated {a.type.__name__} option"
        if value == "0" and a.type.zero_ok:
            continue
        with pytest.raises(SystemExit) as e:
            cli.build_parser().parse_args([*path, *_minimal_argv(p), opt, value])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2, (path, opt)
        assert len(err) == 1 and opt in err[0] and value in err[0], (path, opt, err)
        checked += 1
    assert checked >= (25 if value == "-1" else 15)


def test_version(capsys):
    from medrlvr import __version__

    assert cli.main(["--version"]) == 0 and capsys.readouterr().out.strip() == f"medrlvr {__version__}"
    with pytest.raises(SystemExit) as e:              # also through the parser (e.g. with other arguments)
        cli.build_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"medrlvr {__version__}"


def test_print_config_prints_the_resolved_config_and_exits(tmp_path, capsys):
    rc = cli.main(["train", "--config", "tiny", "--print-config", "--output", str(tmp_path / "r"), "lr=3e-4",
                   "--max-steps", "7"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert rc == 0 and cfg["lr"] == 3e-4 and cfg["max_steps"] == 7 and cfg["model"] == "tiny"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv,hint", [(["--config", "tinyy"], "did you mean 'tiny'"),
                                       (["--config", "tiny", "lrr=1e-4"], "did you mean 'lr'")])
def test_did_you_mean(argv, hint, capsys):
    assert cli.main(["train", *argv, "--print-config"]) == 2
    assert hint in capsys.readouterr().err


def test_help_shows_defaults_and_every_option_has_help():
    for path, p in _walk(cli.build_parser()):
        text = " ".join(p.format_help().split())   # unwrapped
        for a in p._actions:
            if a.option_strings and a.help is None and not isinstance(a, argparse._VersionAction):
                pytest.fail(f"{' '.join(path)} {a.option_strings[0]} has no help")
        if path == ("eval",):
            assert "(default: 1000)" in text and "(default: cot)" in text
        if path == ("data", "show"):
            assert "(default: 3)" in text


def test_engine_auto_is_fast_on_cpu_and_hf_on_cuda():
    import torch

    assert choose_engine("auto", torch.device("cpu")) == "fast"
    assert choose_engine("auto", torch.device("cuda", 0)) == "hf"
    assert choose_engine("auto", "cuda:1") == "hf"
    assert choose_engine("auto", "cpu", sharded=True) == "hf"
    assert choose_engine("fast", "cuda") == "fast" and choose_engine("hf", "cpu") == "hf"   # explicit: as asked


def test_every_preset_uses_an_engine_that_starts_on_either_device():
    from medrlvr.train.config import PRESETS, build_config

    for name in PRESETS:
        eng = build_config(name).engine
        assert eng in ("auto", "hf"), f"preset {name}: engine {eng!r} cannot start on one of CPU/CUDA"


def test_fast_engine_asked_for_on_cuda_is_refused_in_one_clear_message(monkeypatch):
    """The fast engine's refusal for a model that is not on the CPU names the hf engine (CPU stand-in: the
    weights' device is reported as CUDA)."""
    import torch

    from medrlvr.models import load_tokenizer, make_tiny_model
    from medrlvr.rollout import UnsupportedModelError, make_engine

    tok = load_tokenizer("tiny")
    m = make_tiny_model(vocab_size=len(tok))
    w = m.model.embed_tokens.weight
    monkeypatch.setattr(type(w), "device", property(lambda self: torch.device("cuda", 0)))
    with pytest.raises(UnsupportedModelError, match="runs on CPU; use engine 'hf'"):
        make_engine("fast", m, tok)


def test_a_new_run_refuses_a_non_empty_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    rc = cli.main(["train", "--config", "tiny", "--output", str(run), "max_steps=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "is not empty" in err and "--resume" in err and "--overwrite" in err
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'   # untouched
    assert cli.main(["train", "--config", "tiny", "--output", str(run), "--resume", "--overwrite"]) == 2


def test_overwrite_removes_the_old_run_first(tmp_path, capsys):
    from medrlvr.train.trainer import claim_run_dir

    run = tmp_path / "run"
    (run / "checkpoints" / "step_9").mkdir(parents=True)
    claim_run_dir(run, overwrite=True)
    assert not run.exists() and "removed the old run" in capsys.readouterr().err
    claim_run_dir(tmp_path / "new")            # missing or empty: fine
    (tmp_path / "empty").mkdir()
    claim_run_dir(tmp_path / "empty")


def test_resume_without_config_needs_a_run_directory(tmp_path, capsys):
    assert cli.main(["train", "--resume"]) == 2
    assert "--config is required" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--output", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
