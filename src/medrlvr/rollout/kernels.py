"""The fast engine's C++ kernels (``csrc/decode_attention.cpp``): built on first use, loaded with ctypes.

:func:`decode_kernel` compiles the file with ``g++ -O3 -march=native -fopenmp`` into
``$MEDRLVR_CACHE/kernels/decode_attention_<hash>.so`` (the hash covers the source, the compiler, the flags and
the CPU's flags, so a library is only reused on the same CPU) and returns the loaded library, or ``None`` when
it cannot be built (no compiler, not Linux) or ``MEDRLVR_FAST_KERNELS=0``; :func:`decode_kernel_reason` says why.
The library exports ``fr_decode_attn``, ``fr_add_rmsnorm`` and ``fr_silu_mul`` in ``_bf16`` and ``_f32`` forms.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch


_KERNEL_SRC = Path(__file__).with_name("csrc") / "decode_attention.cpp"


_KERNEL_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")


_kernel_state: dict = {}


_kernel_lock = threading.Lock()


def _cpu_key() -> str:
    """The machine and its CPU flags: a library built with ``-march=native`` is only reused on the same CPU."""
    from medrlvr.hardware import cpu_flags

    return f"{platform.machine()}|{' '.join(sorted(cpu_flags()))}"


def _build_kernel() -> ctypes.CDLL:
    from medrlvr.models import cache_dir

    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C++ compiler (g++) found")
    src = _KERNEL_SRC.read_text()
    key = hashlib.sha256("\n".join([src, cxx, " ".join(_KERNEL_FLAGS), _cpu_key()]).encode()).hexdigest()[:16]
    out = cache_dir() / "kernels" / f"decode_attention_{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            so = Path(tmp) / "k.so"
            proc = subprocess.run([cxx, *_KERNEL_FLAGS, str(_KERNEL_SRC), "-o", str(so)], capture_output=True,
                                  text=True, timeout=300, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"kernel build failed: {proc.stderr[-800:]}")
            os.replace(so, out)   # atomic: concurrent builders never load a half-written file
    lib = ctypes.CDLL(str(out))   # torch is loaded first: the library's OpenMP is the one torch uses
    if lib.fr_abi_version() != 2:
        raise RuntimeError(f"{out}: unexpected kernel ABI version")
    sigs = {"fr_decode_attn": [ctypes.c_void_p] * 11 + [ctypes.c_int] * 7 + [ctypes.c_float],
            "fr_add_rmsnorm": [ctypes.c_void_p] * 4 + [ctypes.c_int] * 2 + [ctypes.c_float],
            "fr_silu_mul": [ctypes.c_void_p] * 2 + [ctypes.c_int] * 2}
    for base, args in sigs.items():
        for sfx in ("bf16", "f32"):
            fn = getattr(lib, f"{base}_{sfx}")
            fn.argtypes, fn.restype = args, None
    return lib


def decode_kernel():
    """The fused decode-attention library (``csrc/decode_attention.cpp``, ctypes), built on first use with
    ``g++ -O3 -march=native`` and cached per source and CPU under ``$MEDRLVR_CACHE/kernels``; ``None`` when it
    cannot be built (no compiler, not Linux) or ``MEDRLVR_FAST_KERNELS=0``. :func:`decode_kernel_reason` says why."""
    with _kernel_lock:
        if "lib" not in _kernel_state:
            lib, why = None, ""
            if os.environ.get("MEDRLVR_FAST_KERNELS", "1").lower() in ("0", "false", "no", "off"):
                why = "disabled by MEDRLVR_FAST_KERNELS=0"
            else:
                try:
                    lib = _build_kernel()
                except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
                    why = str(e)[-500:] or type(e).__name__
            _kernel_state["lib"], _kernel_state["why"] = lib, why
        return _kernel_state["lib"]


def decode_kernel_reason() -> str:
    """Why :func:`decode_kernel` is ``None`` ("" when the kernel is available)."""
    decode_kernel()
    return _kernel_state["why"]


def ptr(x: torch.Tensor) -> int:
    """The address of ``x``'s data, as the kernels take it."""
    return x.data_ptr()
