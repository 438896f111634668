"""What the hardware does fast: one place that decides whether bf16 pays on this device.

bf16 is a large win only where the hardware has native bf16 arithmetic: CUDA GPUs of compute capability
8.0+ and x86 CPUs with AVX512-BF16 or AMX-BF16. Elsewhere PyTorch emulates it, and on a CPU without
those instructions bf16 linear layers run several times slower than fp32 (``python bench/rollout.py bf16``
measures it; evidence: docs/decisions/bf16-and-hardware.md). Every "auto" dtype choice in medrlvr (training
autocast, the fast rollout engine) goes through :func:`fast_bf16`. ``MEDRLVR_BF16=1`` / ``=0`` overrides the
detection.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpuinfo(*keys: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line starting with one of ``keys`` (Linux); None elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(keys):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (Linux); empty where it cannot be read."""
    return frozenset((_cpuinfo("flags", "Features") or "").split())


def cpu_model() -> str:
    """The CPU's model name, for every figure a benchmark prints (a figure means little without its CPU)."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """True when bf16 matmuls are native (faster than fp32) on ``device``."""
    env = os.environ.get("MEDRLVR_BF16", "").strip().lower()
    if env in ("1", "true", "yes"):
        return True
    if env in ("0", "false", "no"):
        return False
    dev = torch.device(device).type
    if dev == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev == "cpu" and platform.machine().lower() in ("x86_64", "amd64"):
        return any(f in cpu_flags() for f in BF16_CPU_FLAGS)
    return False


def use_autocast(setting: bool | str, device: str | torch.device = "cpu") -> bool:
    """Whether to run under bf16 autocast: ``"auto"`` where bf16 is native (:func:`fast_bf16`), else the setting
    (as :func:`medrlvr.train.config.autocast_setting` normalised it)."""
    return fast_bf16(device) if setting == "auto" else bool(setting)


def describe() -> str:
    """One line for logs: the CPU capability torch sees and whether bf16 is native."""
    cap = torch.backends.cpu.get_cpu_capability()
    return f"cpu {platform.machine()} {cap}, native bf16: {'yes' if fast_bf16('cpu') else 'no'}"


def adamw_kwargs(params) -> dict:
    """``{"fused": True}`` where torch's fused AdamW can update ``params`` (all plain float tensors on one CPU or
    CUDA device; not FSDP2's DTensor shards), else ``{}`` (torch's default implementation). Same update rule;
    one pass over each parameter instead of about ten (evidence: docs/decisions/bf16-and-hardware.md)."""
    params = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    if not params:
        return {}
    dev = {p.device for p in params}
    if len(dev) != 1 or next(iter(dev)).type not in ("cpu", "cuda"):
        return {}
    if any(type(p).__name__ == "DTensor" or hasattr(p, "to_local") or not p.is_floating_point() for p in params):
        return {}
    return {"fused": True}


TRAIN_ATTN_CHOICES = ("eager", "sdpa")


def train_attn_implementation(device: str | torch.device = "cpu") -> str | None:
    """The Hugging Face attention implementation for the *training* forwards (the rollout engines have their own):
    ``eager`` on the CPU, ``None`` (keep the model's own, SDPA or flash) elsewhere; ``MEDRLVR_TRAIN_ATTN=eager|sdpa``
    overrides. On the CPU, torch's SDPA kernel is slow at RL's shapes (a few hundred queries per row against a
    few hundred keys with a padding mask: its backward runs far below the GEMM rate), while eager's two matmuls
    and a softmax run at the GEMM rate; evidence: docs/decisions/bf16-and-hardware.md."""
    env = os.environ.get("MEDRLVR_TRAIN_ATTN", "").strip().lower()
    if env:
        if env not in TRAIN_ATTN_CHOICES:
            raise ValueError(f"MEDRLVR_TRAIN_ATTN={env!r}: choose one of {', '.join(TRAIN_ATTN_CHOICES)}")
        return env
    return "eager" if torch.device(device).type == "cpu" else None


def set_attn_implementation(model, impl: str | None) -> None:
    """Switch ``model`` (a transformers model, or a peft wrapper around one: peft forwards both attributes to the
    wrapped model) to attention ``impl``; ``None`` keeps it. Older transformers (no ``set_attn_implementation``)
    get the config attribute their layers read."""
    if impl is None:
        return
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(impl)
    else:
        model.config._attn_implementation = impl
