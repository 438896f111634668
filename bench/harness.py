"""The shared harness of the benchmarks in ``bench/`` and the experiment drivers in ``experiments/``.

Not a benchmark itself. Importing it puts the repository's ``src/`` on ``sys.path`` (the scripts run from a
checkout, installed or not). It holds what the scripts would otherwise each repeat:

* argument helpers: ``SCRIPT COMMAND [options]`` with a checked parser per command (:func:`parse_command`),
  comma-separated lists that fail as one argparse line (exit 2), ``--threads``'s setting;
* a fresh child process per measurement (peak RSS is a per-process high-water mark): the child prints one
  ``RESULT {json}`` line, the parent reads it (:func:`child_result`);
* model and data for a bench: SmolLM2-135M or a random-weight model of a larger SmolLM2 shape
  (:func:`load_model`), the MedQA prompts the rollout benches time (:func:`medqa_prompts`);
* timing loops: one timed ``generate`` call with fixed-length sampling (:func:`timed_generate`), A/B runs
  alternated in one process (:func:`alternated`);
* the fraction of the machine's limit (:mod:`medrlvr.roofline`): the limit of a rollout and of a packed
  causal forward, in the dtype the work ran in.

Torch is imported only inside the functions that need it, so a child process's RSS and ``--help`` stay light.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

RESULT = "RESULT "

# SmolLM2 shapes (config.json numbers); "135m" is the embedded model itself, the others random weights
MODELS = {
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536),
    "360m": dict(hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                 intermediate_size=2560),
    "1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                 intermediate_size=8192),
}
VOCAB = 49152


# ------------------------------------------------------------------------------------------ arguments
def _list(conv, what: str):
    def parse(s: str) -> list:
        try:
            return [conv(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {s!r}") from None
    return parse


ints = _list(int, "whole numbers")
floats = _list(float, "numbers")
names = _list(str.strip, "names")


def parse_command(doc: str, commands: dict, argv=None) -> argparse.Namespace:
    """Parse ``SCRIPT COMMAND [options]``: ``commands`` maps a name to ``(add, check, run)``: ``add(parser)`` adds
    the options, ``check(args, parser)`` (or None) rejects bad input with ``parser.error`` (one line, exit 2),
    ``run(args, parser)`` runs it. A command's help is ``run``'s docstring (its epilog ``run.epilog``, if set).
    Returns the checked arguments; ``args.run(args, args.parser)`` runs the command."""
    raw = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(description=doc, formatter_class=raw)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add, check, run) in commands.items():
        text = inspect.cleandoc(run.__doc__)
        sp = sub.add_parser(name, help=" ".join(text.split("\n\n")[0].split()), description=text, formatter_class=raw,
                            epilog=getattr(run, "epilog", None))
        add(sp)
        sp.set_defaults(run=run, check=check, parser=sp)
    a = ap.parse_args(argv)
    if a.check:
        a.check(a, a.parser)
    return a


def run_command(doc: str, commands: dict, argv=None) -> int:
    """Parse (:func:`parse_command`) and run the command: a script's ``main``."""
    a = parse_command(doc, commands, argv)
    return a.run(a, a.parser)


def set_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)`` when ``n`` is set (0 / None: torch's default)."""
    if n:
        import torch

        torch.set_num_threads(n)


def default_data_root() -> str:
    """``$MEDRLVR_DATA_ROOT``, else ``../shared/data`` beside the repository."""
    return os.environ.get("MEDRLVR_DATA_ROOT") or str(ROOT / ".." / "shared" / "data")


# ------------------------------------------------------------------------------------- processes
def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_env(**extra: str) -> dict:
    """This process's environment with ``src/`` on ``PYTHONPATH`` (and ``extra`` set), for a child."""
    return dict(os.environ, **extra, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))


def emit_result(obj) -> None:
    """In a child: the one line its parent reads (:func:`child_result`)."""
    print(RESULT + json.dumps(obj), flush=True)


class ChildFailed(Exception):
    """A child exited non-zero, printed no result line, or ran past its timeout; ``str()`` says which."""

    def __init__(self, why: str, stderr: str = ""):
        super().__init__(why)
        self.stderr = stderr


def child_result(cmd: list[str], env: dict | None = None, timeout: float | None = None):
    """Run ``cmd`` (a fresh process) and return what its last ``RESULT`` line holds, with the child's
    stderr as ``(result, stderr)``. Raises :class:`ChildFailed`: ``"timeout after N s"`` or
    ``"exit N: <last stderr line>"``."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env or child_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"timeout after {timeout} s") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode or not lines:
        err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise ChildFailed(f"exit {proc.returncode}" + (f": {err[-1].strip()[:160]}" if err else ""), proc.stderr)
    return json.loads(lines[-1][len(RESULT):]), proc.stderr


# ------------------------------------------------------------------------------------ model, data
def model_shape(name: str):
    """The :class:`medrlvr.roofline.ModelShape` of a model in :data:`MODELS` (no weights built)."""
    from medrlvr.roofline import ModelShape

    return ModelShape.from_config(SimpleNamespace(vocab_size=VOCAB, **MODELS[name]))


def load_model(name: str = "135m"):
    """(model, tokenizer) in eval mode: the embedded SmolLM2-135M (fp32, real weights), or a Llama of another
    SmolLM2 shape in :data:`MODELS` with RANDOM weights (seed 0) and the embedded model's tokenizer (timing only:
    what it samples is noise; every other config field is the embedded model's)."""
    import torch

    from medrlvr.models import load_policy, load_tokenizer, resolve_model_path

    if name == "135m":
        model, tok = load_policy("smollm2-135m")
    else:
        from transformers import AutoConfig, LlamaForCausalLM

        tok = load_tokenizer("smollm2-135m")
        cfg = AutoConfig.from_pretrained(resolve_model_path("smollm2-135m"))
        for k, v in MODELS[name].items():
            setattr(cfg, k, v)
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = LlamaForCausalLM(cfg)
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def medqa_prompts(tok, count: int, data_root: str | None = None) -> tuple[list[str], list[int]]:
    """The first ``count`` MedQA (4-option, test) questions rendered with the R1-Zero template, and their
    token counts under ``tok``."""
    from medrlvr.data import load_benchmark
    from medrlvr.prompts import render

    recs = load_benchmark("medqa-4opt:test", data_root=data_root or default_data_root()).records[:count]
    prompts = [render(r, "r1-zero") for r in recs]
    return prompts, [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]


# ------------------------------------------------------------------------------------------ timing
def fixed_params(new_tokens: int, seed: int = 0):
    """Sampling at temperature 1 with ``ignore_eos`` and no stop string: every completion has exactly
    ``new_tokens`` tokens, so the work does not depend on what is sampled."""
    from medrlvr.rollout import SamplingParams

    return SamplingParams(max_new_tokens=new_tokens, temperature=1.0, stop=(), ignore_eos=True, seed=seed)


def timed_generate(engine, prompts, n, params) -> tuple[float, int]:
    """One ``engine.generate`` call: (seconds, completion tokens returned)."""
    t0 = time.perf_counter()
    groups = engine.generate(prompts, n, params)
    dt = time.perf_counter() - t0
    return dt, sum(len(c.token_ids) for g in groups for c in g)


def alternated(pairs: int, first, second):
    """``(i, order)`` for ``pairs`` A/B pairs timed in one process, the order swapped every pair
    (A B, B A, A B, ...): on a shared machine a drift in speed weighs on both sides alike."""
    for i in range(pairs):
        yield i, ((first, second) if i % 2 == 0 else (second, first))


# ---------------------------------------------------------------------------------------- roofline
def engine_dtype(engine) -> str:
    """``"bf16"`` or ``"fp32"``: what the engine computes in (the ``hf`` engine: the policy's own dtype)."""
    import torch

    dt = getattr(engine, "dtype", None)
    if dt is None:
        dt = next(engine.model.parameters()).dtype
    return "bf16" if dt == torch.bfloat16 else "fp32"


def dtype_bytes(dtype: str) -> int:
    """Bytes per weight / KV element in ``dtype`` (``"bf16"``: 2, else 4)."""
    return 2 if dtype == "bf16" else 4


def measure_rollout(shape, rows: list[int], prompt_lens: list[int], dtype: str):
    """The machine's limit measured now (:func:`medrlvr.roofline.measure`) at a rollout's GEMM shapes: the decode
    batches of ``rows`` rows and a prefill of the mean prompt length."""
    from medrlvr import roofline

    return roofline.measure(shape, list(rows) + [round(sum(prompt_lens) / len(prompt_lens))], dtype)


def rollout_limit(shape, mach, prompt_lens, n: int, new_tokens: int, batch_rows: int, dtype: str):
    """:func:`medrlvr.roofline.rollout_limit` in ``dtype`` (the engine's)."""
    from medrlvr import roofline

    return roofline.rollout_limit(shape, mach, prompt_lens, n, new_tokens, batch_rows, dtype_bytes=dtype_bytes(dtype))


def packed_forward_limit(shape, mach, lens: list[int], dtype: str, head_rows: int):
    """The limit of one forward over sequences of ``lens`` tokens packed in one batch (causal attention over
    each: mean context (T + 1) / 2 per position; padding not counted), ``head_rows`` rows through the LM head."""
    from medrlvr import roofline

    rows = sum(lens)
    ctx = sum(t * (t + 1) / 2 for t in lens) / max(rows, 1)
    return roofline.forward_limit(shape, mach, rows, attn_context=ctx, dtype_bytes=dtype_bytes(dtype),
                                  head_rows=head_rows)
