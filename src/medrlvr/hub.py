"""Reaching the Hugging Face Hub at most once, and failing fast without it.

The Hub libraries (``huggingface_hub``, ``transformers``, ``datasets``) retry a request for about a minute when
the network is down. :func:`ensure_reachable` makes one quick TCP check of the Hub's host (default timeout
3 s); when it fails, it switches the libraries to offline mode (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``, so
files already in the local cache still load at once) and remembers the answer for the process.
:func:`looks_local` says whether a model or data name is a local path, which never goes to the Hub.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

_STATE: dict[str, bool] = {}

TIMEOUT_S = 3.0
"""Seconds the one reachability check waits for the Hub's host."""


def endpoint_host() -> tuple[str, int]:
    """Host and port of the Hub endpoint (``HF_ENDPOINT``, default https://huggingface.co)."""
    u = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return u.hostname or "huggingface.co", u.port or (80 if u.scheme == "http" else 443)


def offline() -> bool:
    """True when the libraries are in offline mode (set by the user or by :func:`ensure_reachable`)."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def go_offline() -> None:
    """Put ``huggingface_hub``, ``transformers`` and ``datasets`` in offline mode for this process."""
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[k] = "1"
    try:  # huggingface_hub reads the variable at import: set its constant too when it is already imported
        import huggingface_hub.constants as c

        c.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover - not installed
        pass


def ensure_reachable(timeout: float = TIMEOUT_S) -> bool:
    """One TCP connection to the Hub's host (at most ``timeout`` seconds, once per process); False (and
    :func:`go_offline`) when it fails or offline mode is already set."""
    if "ok" not in _STATE:
        if offline():
            _STATE["ok"] = False
        else:
            try:
                with socket.create_connection(endpoint_host(), timeout=timeout):
                    _STATE["ok"] = True
            except OSError:
                _STATE["ok"] = False
        if not _STATE["ok"]:
            go_offline()
    return _STATE["ok"]


def looks_local(name: str) -> bool:
    """A local path, never a Hub id: it exists, starts with ``/``, ``.`` or ``~``, has a backslash or more than one
    ``/`` (a Hub id is ``org/name``), or its first part is an existing directory (``out/x`` where ``out/``
    exists)."""
    if Path(name).expanduser().exists() or name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        return True
    first = name.split("/", 1)[0]
    return "/" in name and Path(first).is_dir()
