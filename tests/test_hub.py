"""Local paths never reach the network; a Hub id without network fails within seconds in one line."""

from __future__ import annotations

import socket
import time

import pytest

from medrlvr import hub


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt is recorded and fails (as on a machine without network)."""
    calls = []

    def refuse(*a, **k):
        calls.append(a[:1])
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: refuse(*a))
    monkeypatch.setattr(hub, "_STATE", {})
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", c.HF_HUB_OFFLINE)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    return calls


@pytest.mark.parametrize("name", ["runs/nonexistent", "./x", "/abs/missing/model", "a/b/c"])
def test_a_local_looking_path_never_touches_the_network(name, tmp_path, monkeypatch, no_network):
    from medrlvr.models import load_policy

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_policy(name)
    assert no_network == [] and not hub.offline()


def test_looks_local():
    assert hub.looks_local("/x") and hub.looks_local("./x") and hub.looks_local("~/m") and hub.looks_local("a/b/c")
    assert not hub.looks_local("Qwen/Qwen2.5-3B") and not hub.looks_local("gpt2")


def test_a_hub_id_without_network_fails_fast_in_one_line(tmp_path, monkeypatch, no_network):
    from medrlvr.models import load_policy

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))     # an empty cache: nothing to fall back on
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as e:
        load_policy("some-org/some-model")
    assert time.perf_counter() - t0 < 20
    assert len(no_network) == 1 and hub.offline()           # one quick check, then offline mode
    msg = str(e.value)
    assert "\n" not in msg and "not in the local Hugging Face cache" in msg and "some-org/some-model" in msg


def test_verl_prepare_refuses_without_the_models_tokenizer(tmp_path, monkeypatch, no_network):
    from medrlvr.integrations.verl.prepare import max_prompt_tokens

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match="--model-path"):
        max_prompt_tokens(["a prompt"], "some-org/some-model")
    n, unit = max_prompt_tokens(["one two three", "x"], "tiny")    # a tokenizer it can load: tokens
    assert unit == "tokens" and 2 <= n < len("one two three")
