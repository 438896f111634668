"""Crash-safe writes for run directories, strict JSON lines, and fault injection to test both.

* :func:`atomic_write_text` / :func:`atomic_write_lines`: write ``NAME.tmp`` beside the target, flush and
  ``fsync`` it, ``os.replace`` it over the target, ``fsync`` the directory. A kill at any moment leaves
  either the old file or the new one, never a truncated one.
* :func:`atomic_write_dir`: build a directory as ``NAME.tmp`` and rename it into place. A failed build
  (full disk, read-only directory) removes ``NAME.tmp`` and raises :class:`SaveError` naming the target,
  so a failed save neither leaves the disk full nor a traceback.
* :func:`strict_json`: JSON without bare ``NaN``/``Infinity`` (not JSON, refused by strict readers):
  non-finite numbers become ``null`` and their keys are listed under ``"nonfinite"``.
* :func:`fault`: a named point between two file operations of a save. Tests set :data:`HOOK` (called
  with the label); the crash benchmark sets ``MEDRLVR_FAULT=ACTION:LABEL[:N]`` where ACTION is
  ``kill`` (SIGKILL this process, as a power cut would) or ``enospc`` (raise ``OSError(ENOSPC)``),
  LABEL a label or ``*`` (any), N the N-th matching point of the process (default 1).
  ``MEDRLVR_FAULT_TRACE=FILE`` appends every label reached to FILE (to enumerate the points).

Simplification: the directory ``fsync`` is skipped where the platform cannot open a directory (Windows).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HOOK: Callable[[str], None] | None = None
"""Called with each fault label when set (tests: raise at a chosen point)."""

_counts: dict[str, int] = {}


class SaveError(OSError):
    """A checkpoint, log or model could not be written; the message names the path."""


class SimulatedCrash(BaseException):
    """Raised by a test :data:`HOOK` to stop at a fault point leaving the disk as a kill would: no
    clean-up handler here catches it (it is not an ``Exception``)."""


def fault(label: str) -> None:
    """A named point between two file operations (see the module doc); a no-op unless armed."""
    trace = os.environ.get("MEDRLVR_FAULT_TRACE")
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(label + "\n")
    if HOOK is not None:
        HOOK(label)
    spec = os.environ.get("MEDRLVR_FAULT")
    if not spec:
        return
    action, _, rest = spec.partition(":")
    want, _, nth = rest.partition(":")
    if want not in ("*", label):
        return
    key = want
    _counts[key] = _counts.get(key, 0) + 1
    if _counts[key] != int(nth or 1):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), label)


def fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_lines(path: str | os.PathLike, lines: Iterable[str], label: str = "file") -> None:
    """Replace ``path`` by ``lines`` (each written followed by ``"\\n"``) atomically."""
    atomic_write_text(path, "".join(ln + "\n" for ln in lines), label)


def atomic_write_text(path: str | os.PathLike, text: str, label: str = "file") -> None:
    """Replace ``path`` by ``text`` atomically (temp file, fsync, ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        fault(f"{label}.written")
        os.replace(tmp, path)
        fault(f"{label}.replaced")
        fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise SaveError(e.errno, f"cannot write {path}: {e.strerror or e}") from e


def _write_errors() -> tuple[type[BaseException], ...]:
    try:
        from safetensors import SafetensorError  # its writer reports ENOSPC as this, not as OSError

        return (OSError, SafetensorError)
    except ImportError:  # pragma: no cover
        return (OSError,)


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def atomic_write_dir(final: str | os.PathLike, write: Callable[[Path], Any], label: str = "dir") -> None:
    """Build a directory with ``write(tmp)`` in ``FINAL.tmp``, fsync it, then put it in place of ``final``.

    A leftover ``FINAL.tmp`` (an earlier kill) is removed first. When ``write`` fails, ``FINAL.tmp`` is
    removed and the error re-raised (a disk error as :class:`SaveError` naming ``final``); an
    existing ``final`` is then untouched. Replacing an existing ``final`` moves it aside as
    ``FINAL.old`` first: a kill in between leaves ``FINAL.tmp`` complete and ``FINAL.old``, never no copy.
    """
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        fault(f"{label}.start")
        tmp.mkdir(parents=True)
        write(tmp)
        _fsync_tree(tmp)
        fault(f"{label}.written")
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            fault(f"{label}.moved_old")
        os.replace(tmp, final)
        fault(f"{label}.replaced")
        fsync_dir(final.parent)
        if old.exists():
            shutil.rmtree(old)
    except _write_errors() as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not final.exists():
            os.replace(old, final)
        if isinstance(e, SaveError):
            raise
        code = getattr(e, "errno", None) or (errno.ENOSPC if "No space left" in str(e) else errno.EIO)
        detail = getattr(e, "strerror", None) or str(e)
        raise SaveError(code, f"cannot write {final}: {detail}") from e
    except BaseException as e:
        if not isinstance(e, SimulatedCrash):  # Ctrl-C, a bug: no partial directory left behind
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def strict_json(rec: dict[str, Any]) -> str:
    """``json.dumps(rec)`` with every non-finite float (top level or nested in lists/dicts) written as
    ``null``; the top-level keys that held one are listed in ``rec["nonfinite"]``."""
    bad: list[str] = []

    def clean(v: Any, key: str) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            if key not in bad:
                bad.append(key)
            return None
        if isinstance(v, dict):
            return {k: clean(x, key) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x, key) for x in v]
        return v

    out = {k: clean(v, k) for k, v in rec.items()}
    if bad:
        out["nonfinite"] = bad
    return json.dumps(out, allow_nan=False, ensure_ascii=False)
