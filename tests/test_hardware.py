"""bf16 is chosen only where it is native; the env override wins."""

import pytest
import torch

from medrlvr import hardware
from medrlvr.train.config import build_config


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
    from medrlvr.train.trainer import Trainer

    cfg = build_config("tiny", {"autocast_bf16": "auto", "max_steps": 1, "eval_limit": 1})
    for env, want in (("0", False), ("1", True)):
        monkeypatch.setenv("MEDRLVR_BF16", env)
        assert Trainer(cfg, tmp_path / env, quiet=True).use_autocast is want


@pytest.mark.parametrize("value", ["maybe", "yes please"])
def test_autocast_bad_value(value):
    with pytest.raises(ValueError, match="autocast_bf16"):
        build_config("tiny", {"autocast_bf16": value})


def test_fast_engine_auto_dtype_follows_the_same_decision(monkeypatch):
    from medrlvr.rollout.fast import auto_dtype
    from medrlvr.models import load_policy

    model, _ = load_policy("tiny", seed=0)
    for env, want in (("0", "fp32"), ("1", "bf16")):
        monkeypatch.setenv("MEDRLVR_BF16", env)
        assert auto_dtype(model) == want


def test_adamw_fused_where_it_can_run():
    """Plain CPU float parameters get torch's fused AdamW, which updates them as the default one does; integer
    tensors, several devices or sharded parameters fall back to the default."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))]
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    start = [x.detach().clone() for x in a]
    assert hardware.adamw_kwargs(a) == {"fused": True}
    assert hardware.adamw_kwargs([{"params": a}, {"params": b}]) == {"fused": True}
    assert hardware.adamw_kwargs([torch.zeros(3, dtype=torch.long)]) == {}
    assert hardware.adamw_kwargs([torch.zeros(3, device="meta")]) == {}
    fused = torch.optim.AdamW(a, lr=1e-2, weight_decay=0.1, **hardware.adamw_kwargs(a))
    plain = torch.optim.AdamW(b, lr=1e-2, weight_decay=0.1)
    for step in range(5):
        g = [torch.randn_like(x) for x in a]
        for x, y, gx in zip(a, b, g):
            x.grad, y.grad = gx.clone(), gx.clone()
        fused.step()
        plain.step()
    for x, y, x0 in zip(a, b, start):
        assert torch.allclose(x, y, atol=1e-6)
        assert not torch.allclose(x, x0, atol=1e-3)              # the parameters did move


def test_training_attention_is_eager_on_cpu_with_an_override(tmp_path, monkeypatch):
    from medrlvr.train.trainer import Trainer

    monkeypatch.delenv("MEDRLVR_TRAIN_ATTN", raising=False)
    assert hardware.train_attn_implementation("cpu") == "eager"
    assert hardware.train_attn_implementation("cuda") is None      # GPUs keep SDPA / flash
    cfg = build_config("tiny", {"max_steps": 1, "eval_limit": 1})
    assert Trainer(cfg, tmp_path / "a", quiet=True).policy.config._attn_implementation == "eager"
    lora = Trainer(build_config("tiny", {"max_steps": 1, "eval_limit": 1, "lora": True}), tmp_path / "l", quiet=True)
    assert lora.policy.get_base_model().config._attn_implementation == "eager"     # through the peft wrapper
    monkeypatch.setenv("MEDRLVR_TRAIN_ATTN", "sdpa")
    assert Trainer(cfg, tmp_path / "b", quiet=True).policy.config._attn_implementation == "sdpa"
    monkeypatch.setenv("MEDRLVR_TRAIN_ATTN", "flash")
    with pytest.raises(ValueError, match="MEDRLVR_TRAIN_ATTN='flash'"):
        hardware.train_attn_implementation("cpu")


def test_eager_and_sdpa_training_forwards_agree():
    """The choice is a speed path: in fp32 both give the same log-probs and gradients (padding mask included)."""
    from medrlvr.train.forward import pack, response_logprobs
    from medrlvr.models import load_policy

    model, tok = load_policy("tiny", seed=2)
    prompts = [[5, 6, 7, 8], [5, 6, 7, 8], [9, 10]]
    resps = [[11, 12, 13], [14], [15, 16]]
    out = {}
    for impl in ("sdpa", "eager"):
        hardware.set_attn_implementation(model, impl)
        for share in (False, True):
            model.zero_grad(set_to_none=True)
            lp, _ = response_logprobs(model, pack(prompts, resps, tok.pad_token_id, share_prompt=share))
            lp.sum().backward()
            out[impl, share] = (lp.detach(), model.get_input_embeddings().weight.grad.clone())
    for share in (False, True):
        (a, ga), (b, gb) = out["sdpa", share], out["eager", share]
        assert float((a - b).abs().max()) < 1e-5
        assert float((ga - gb).abs().max()) < 1e-5 * float(ga.abs().max())


def test_autocast_setting_and_its_resolution(monkeypatch):
    """One normaliser for the RL and SFT configs' autocast_bf16, and one rule for "auto" (fast_bf16)."""
    from medrlvr.train.config import autocast_setting

    assert [autocast_setting(v) for v in (True, False, " Auto", "TRUE", "false")] == [True, False, "auto", True, False]
    for bad in ("maybe", "", 1, None):
        with pytest.raises(ValueError, match="true, false or auto"):
            autocast_setting(bad)
    for env, expect in (("1", True), ("0", False)):
        monkeypatch.setenv("MEDRLVR_BF16", env)
        assert hardware.use_autocast("auto") is expect
        assert hardware.use_autocast(True) is True and hardware.use_autocast(False) is False
