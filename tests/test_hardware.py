"""bf16 is chosen only where it is native; the env override wins."""

import pytest

from medrlvr import hardware
from medrlvr.config import build_config


def test_env_override(monkeypatch):
    monkeypatch.setenv("MEDRLVR_BF16", "1")
    assert hardware.fast_bf16("cpu") is True
    monkeypatch.setenv("MEDRLVR_BF16", "0")
    assert hardware.fast_bf16("cpu") is False


def test_cpu_flags_decide(monkeypatch):
    monkeypatch.delenv("MEDRLVR_BF16", raising=False)
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert hardware.fast_bf16("cpu") is False
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert hardware.fast_bf16("cpu") is True


def test_autocast_auto_follows_the_hardware(tmp_path, monkeypatch):
    from medrlvr.train import Trainer

    cfg = build_config("tiny", {"autocast_bf16": "auto", "max_steps": 1, "eval_limit": 1})
    for env, want in (("0", False), ("1", True)):
        monkeypatch.setenv("MEDRLVR_BF16", env)
        assert Trainer(cfg, tmp_path / env, quiet=True).use_autocast is want


@pytest.mark.parametrize("value", ["maybe", "yes please"])
def test_autocast_bad_value(value):
    with pytest.raises(ValueError, match="autocast_bf16"):
        build_config("tiny", {"autocast_bf16": value})


def test_fast_engine_auto_dtype_follows_the_same_decision(monkeypatch):
    from medrlvr.fast_rollout import auto_dtype
    from medrlvr.models import load_policy

    model, _ = load_policy("tiny", seed=0)
    for env, want in (("0", "fp32"), ("1", "bf16")):
        monkeypatch.setenv("MEDRLVR_BF16", env)
        assert auto_dtype(model) == want
