"""The paper's supervised fine-tuning (SFT) baseline: question -> answer letter.

Each training example is the *direct* prompt (question, lettered options, ``Answer:``) followed by
the target ``" C"`` (:func:`medrlvr.prompts.direct_target`); the loss is the mean negative
log-likelihood of the answer tokens only (the prompt is context, not a target). The data plumbing is
the RL trainer's: :func:`medrlvr.data.load_any` for the sources, :class:`medrlvr.train.trainer.PromptStream`
for seeded epoch permutations (and optional per-epoch option shuffling),
:func:`medrlvr.train.forward.pack` and :func:`medrlvr.train.forward.response_logprobs` for the loss.

With ``lr_grid`` several learning rates are trained from the same initial weights, each model is
scored on the dev set by log-likelihood accuracy (:func:`medrlvr.eval.benchmark.evaluate`,
``mode="loglik"``) and the best one is kept.

Output directory: ``sft_config.json``, ``metrics.jsonl`` (one line per step, per dev evaluation and
the final selection), ``sft_summary.json`` and ``final/``, the selected model in Hugging Face format
(safetensors), which ``medrlvr eval --model DIR/final`` (or just ``DIR``) loads.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from medrlvr import rundir, tracking
from medrlvr.argtypes import nonneg_int, positive_float, positive_int, unit_float
from medrlvr.train.forward import pack, response_logprobs
from medrlvr.data import MCQ, load_any
from medrlvr.eval.benchmark import encode, evaluate
from medrlvr.train.config import autocast_setting
from medrlvr.hardware import adamw_kwargs, set_attn_implementation, train_attn_implementation, use_autocast
from medrlvr.models import load_policy
from medrlvr.prompts import direct_target, render
from medrlvr.fileio import atomic_write_dir
from medrlvr.train.stream import PromptStream


@dataclass
class SFTConfig:
    """Settings of an SFT run (CLI flags in brackets).

    Attributes:
        model: initial model: ``smollm2-135m``, ``tiny``, a Hugging Face dir or Hub id [--model].
        train_data: training questions: a benchmark ``NAME[:SPLIT]``, a data file, ``hub:ID``, or
            (from Python) a list of :class:`~medrlvr.data.MCQ` [--train-data]. The default is MedQA 4-option *dev*, because the MedQA train split is not
            in ``../shared/data``; point it at the real train split to reproduce the paper.
        dev_data: questions that pick the learning rate (same forms); ``None`` holds out ``dev_fraction`` of the
            training questions (seeded) [--dev-data].
        dev_fraction: share of ``train_data`` held out when ``dev_data`` is ``None``.
        dev_limit: score at most this many dev questions (``None``: all) [--dev-limit].
        data_root: benchmark data folder (default: ``$MEDRLVR_DATA_ROOT``, else ``../shared/data``).
        columns: column map for data files (see :mod:`medrlvr.data.loaders`).
        train_limit: use only the first N training questions (``None``: all).
        epochs: passes over the training questions [--epochs].
        lr: learning rate, used when ``lr_grid`` is empty [--lr].
        lr_grid: learning rates to try; the one with the best dev accuracy is kept [--lr-grid].
        batch_size: questions per optimizer step [--batch-size].
        micro_batch_size: questions per forward/backward (gradient accumulation); ``None``: batch_size.
        max_steps: stop after this many optimizer steps (overrides ``epochs``) [--max-steps].
        warmup_ratio: linear warm-up over this share of the steps.
        lr_schedule: ``constant``, ``linear`` (decay to 0) or ``cosine``.
        weight_decay: AdamW weight decay.
        adam_betas: AdamW betas.
        max_grad_norm: gradient clipping (0: none).
        shuffle_options: re-shuffle each question's options every epoch (against position bias).
        append_eos: also train the end-of-sequence token after the letter.
        dtype: model dtype (``fp32``, ``bf16``) [--dtype].
        autocast_bf16: run the training forward and backward of an fp32 model under bf16 autocast: ``true``,
            ``false`` or ``auto`` (on only where bf16 is native, :func:`medrlvr.hardware.fast_bf16`; as the RL
            trainer). The master weights, the optimizer and the head's log-softmax stay fp32 [--autocast-bf16].
        eval_every_epoch: score the dev set after every epoch (else only at the end).
        eval_batch_size: questions per forward when scoring the dev set.
        seed: seeds the data order, option shuffles, dropout and the dev hold-out [--seed].
        report_to: experiment trackers (:mod:`medrlvr.tracking`: ``tensorboard``, ``wandb``, ``mlflow``) that
            receive the config and every metrics row; the x axis counts optimizer steps over all learning rates
            of ``lr_grid`` in turn (each row carries its ``lr_candidate``) [--report-to].
    """

    model: str = "smollm2-135m"
    train_data: Any = "medqa-4opt:dev"
    dev_data: Any = None
    dev_fraction: float = 0.1
    dev_limit: int | None = 300
    data_root: str | None = None
    columns: str | None = None
    train_limit: int | None = None
    epochs: int = 3
    lr: float = 1e-5
    lr_grid: tuple[float, ...] = ()
    batch_size: int = 16
    micro_batch_size: int | None = None
    max_steps: int | None = None
    warmup_ratio: float = 0.05
    lr_schedule: str = "linear"
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    shuffle_options: bool = False
    append_eos: bool = False
    dtype: str = "fp32"
    autocast_bf16: bool | str = "auto"
    eval_every_epoch: bool = True
    eval_batch_size: int = 32
    seed: int = 0
    report_to: tuple[str, ...] = ("tensorboard",)

    def __post_init__(self):
        self.lr_grid = tuple(float(x) for x in self.lr_grid)
        self.adam_betas = tuple(self.adam_betas)
        self.report_to = tracking.check_names(self.report_to)
        if self.epochs < 1 and not self.max_steps:
            raise ValueError("epochs must be >= 1 (or give max_steps)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"lr_schedule must be constant, linear or cosine, got {self.lr_schedule!r}")
        if not 0 < self.dev_fraction < 1:
            raise ValueError(f"dev_fraction must be in (0, 1), got {self.dev_fraction}")
        if self.dtype not in ("fp32", "bf16"):
            raise ValueError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        try:
            self.autocast_bf16 = autocast_setting(self.autocast_bf16)
        except ValueError as e:
            raise ValueError(f"autocast_bf16 {e}") from None
        for lr in (self.lr, *self.lr_grid):
            if not lr > 0:
                raise ValueError(f"learning rates must be > 0, got {lr}")

    @property
    def lrs(self) -> tuple[float, ...]:
        return self.lr_grid or (self.lr,)


@dataclass
class SFTResult:
    best_lr: float
    dev_accuracy: dict[float, float]        # lr -> final dev loglik accuracy
    dev_accuracy_before: float | None
    output_dir: Path | None
    model: Any = None                       # the selected model (in memory)
    tokenizer: Any = None
    history: list[dict] = field(default_factory=list)


def split_train_dev(records: list[MCQ], fraction: float, seed: int) -> tuple[list[MCQ], list[MCQ]]:
    """Seeded hold-out: ``fraction`` of the records (at least one) become dev, the rest train."""
    if len(records) < 2:
        raise ValueError("need at least 2 training questions to hold out a dev set (or pass dev_data)")
    idx = list(range(len(records)))
    random.Random(seed * 1_000_003 + 17).shuffle(idx)
    k = max(1, round(fraction * len(records)))
    dev = set(idx[:k])
    return [r for i, r in enumerate(records) if i not in dev], [r for i, r in enumerate(records) if i in dev]


def _records(spec, cfg: SFTConfig) -> list[MCQ]:
    if isinstance(spec, str):
        return list(load_any(spec, cfg.data_root, cfg.columns).records)
    return list(spec.records if hasattr(spec, "records") else spec)


def example_ids(rec: MCQ, tokenizer, append_eos: bool = False) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one SFT example: the direct prompt and ``" <gold letter>"``."""
    prompt = encode(tokenizer, render(rec, "direct"))
    answer = encode(tokenizer, direct_target(rec))
    if append_eos and tokenizer.eos_token_id is not None:
        answer = answer + [tokenizer.eos_token_id]
    return prompt, answer


def answer_loss(model, tokenizer, records: list[MCQ], append_eos: bool = False, batch: int = 16) -> float:
    """Mean NLL of the answer tokens over ``records`` (no gradient); the quantity SFT minimises."""
    was = model.training
    model.eval()
    tot, ntok = 0.0, 0
    dev = next(model.parameters()).device
    with torch.no_grad():
        for s in range(0, len(records), batch):
            ex = [example_ids(r, tokenizer, append_eos) for r in records[s:s + batch]]
            b = pack([p for p, _ in ex], [a for _, a in ex], tokenizer.pad_token_id).to(dev)
            lp, _ = response_logprobs(model, b)
            tot += float(-(lp.float() * b.response_mask).sum())
            ntok += int(b.response_mask.sum())
    model.train(was)
    return tot / max(1, ntok)


def _lr_lambda(total: int, warmup: int, schedule: str) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - frac if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))
    return f


class MetricsLog:
    """The SFT metrics log: every row kept in ``history`` and, with a path, appended to that JSONL file; its
    numbers also go to ``trackers`` at a step counting the optimizer steps of every learning rate in turn.
    ``dev_results`` keeps each learning rate's last dev evaluation (``results.json`` layout)."""

    def __init__(self, path: Path | None, trackers: tracking.Trackers | None = None):
        self.path = path
        self.history: list[dict] = []
        self.trackers = trackers or tracking.Trackers()
        self.global_step = 0
        self.dev_results: dict[float, dict] = {}

    def __call__(self, rec: dict) -> None:
        self.history.append(rec)
        if self.path is not None:
            rundir.append_lines(self.path, [json.dumps(rec)])
        if "event" not in rec:   # a training step
            self.global_step += 1
        self.trackers.log_scalars(rec, self.global_step)


def _dev_eval(model, tok, dev: list[MCQ], cfg: SFTConfig, bootstrap: int = 0) -> dict:
    return evaluate(model, tok, {"dev": dev}, mode="loglik", bootstrap=bootstrap, progress=False, seed=cfg.seed,
                    batch_size=cfg.eval_batch_size)


def _dev_accuracy(model, tok, dev: list[MCQ], cfg: SFTConfig) -> float:
    return float(_dev_eval(model, tok, dev, cfg)["dev"]["accuracy"])


def train_one(cfg: SFTConfig, lr: float, train: list[MCQ], dev: list[MCQ], log: MetricsLog, model=None, tokenizer=None,
              quiet: bool = False):
    """Fine-tune one model at learning rate ``lr``; returns ``(model, tokenizer, final dev accuracy)``."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if model is None:
        model, tokenizer = load_policy(cfg.model, cfg.dtype, seed=cfg.seed)
        if torch.cuda.is_available():
            model = model.to("cuda")
    device = next(model.parameters()).device
    set_attn_implementation(model, train_attn_implementation(device))
    autocast = use_autocast(cfg.autocast_bf16, device)
    model.train()
    stream = PromptStream(train, cfg.seed, cfg.shuffle_options)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay, **adamw_kwargs(params))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, int(cfg.warmup_ratio * total), cfg.lr_schedule))
    micro = cfg.micro_batch_size or cfg.batch_size
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"sft lr={lr:g}", disable=quiet, dynamic_ncols=True, file=sys.stderr)
    acc = None
    for step in range(1, total + 1):
        t0 = time.perf_counter()
        recs = stream.take(cfg.batch_size)
        ex = [example_ids(r, tokenizer, cfg.append_eos) for r in recs]
        n_tok = sum(len(a) for _, a in ex)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for s in range(0, len(ex), micro):
            sub = ex[s:s + micro]
            b = pack([p for p, _ in sub], [a for _, a in sub], tokenizer.pad_token_id).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                lp, _ = response_logprobs(model, b)
            nll = -(lp.float() * b.response_mask).sum()
            (nll / n_tok).backward()
            loss_sum += float(nll.detach())
        gnorm = (torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm
                 else torch.tensor(float("nan")))
        loss = loss_sum / n_tok
        rec = {"lr_candidate": lr, "step": step, "epoch": stream.epoch + (stream.pos / len(stream.records)),
               "loss": loss, "answer_prob": math.exp(-loss), "grad_norm": float(gnorm),
               "lr": sched.get_last_lr()[0], "bf16_autocast": autocast, "step_s": round(time.perf_counter() - t0, 4)}
        if not math.isfinite(loss) or (cfg.max_grad_norm and not torch.isfinite(gnorm)):
            opt.zero_grad(set_to_none=True)   # skip a non-finite step, never apply it
            rec["skipped"] = True
        else:
            opt.step()
        sched.step()
        log(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        end_of_epoch = step % steps_per_epoch == 0
        if step == total or (cfg.eval_every_epoch and end_of_epoch):
            res = _dev_eval(model, tokenizer, dev, cfg, bootstrap=1000 if step == total else 0)
            acc = float(res["dev"]["accuracy"])
            if step == total:
                log.dev_results[lr] = res
            model.train()
            log({"lr_candidate": lr, "step": step, "event": "dev", "dev_accuracy": acc, "dev_n": len(dev)})
            bar.set_postfix(loss=f"{loss:.3f}", dev=f"{acc:.3f}")
    bar.close()
    model.eval()
    return model, tokenizer, acc


def _save(model, tok, final: Path) -> None:
    def write(d: Path):
        model.save_pretrained(d, safe_serialization=True)
        tok.save_pretrained(d)

    atomic_write_dir(final, write)


def sft(cfg: SFTConfig, output_dir: str | Path | None, quiet: bool = False, model_fn=None) -> SFTResult:
    """Run SFT for every learning rate of ``cfg.lrs``, keep the best on the dev set, save it to
    ``output_dir/final`` (when given). ``model_fn()`` may supply fresh ``(model, tokenizer)`` pairs
    instead of :func:`medrlvr.models.load_policy` (tests)."""
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / rundir.METRICS).unlink(missing_ok=True)
        conf = {k: (v if isinstance(v, (str, int, float, bool, tuple, type(None))) else f"<{len(v)} records>")
                for k, v in asdict(cfg).items()}
        (out / "sft_config.json").write_text(json.dumps(conf, indent=2) + "\n", encoding="utf-8")
    trackers = tracking.Trackers()
    if out is not None:
        trackers = tracking.open_trackers(cfg.report_to, out)
        trackers.log_config(conf)
    log = MetricsLog(out / rundir.METRICS if out is not None else None, trackers)
    train = _records(cfg.train_data, cfg)
    train = train[: cfg.train_limit] if cfg.train_limit else train
    if cfg.dev_data:
        dev = _records(cfg.dev_data, cfg)
        overlap = {r.id for r in train} & {r.id for r in dev}
        if overlap:
            print(f"[medrlvr] warning: {len(overlap)} dev questions are also training questions", file=sys.stderr)
    else:
        train, dev = split_train_dev(train, cfg.dev_fraction, cfg.seed)
    if cfg.dev_limit:
        dev = dev[: cfg.dev_limit]
    if not train:
        raise ValueError("no training questions")

    def fresh():
        if model_fn is not None:
            return model_fn()
        m, t = load_policy(cfg.model, cfg.dtype, seed=cfg.seed)
        return (m.to("cuda") if torch.cuda.is_available() else m), t

    m0, t0 = fresh()
    before = _dev_accuracy(m0, t0, dev, cfg)
    log({"step": 0, "event": "dev", "dev_accuracy": before, "dev_n": len(dev), "lr_candidate": None})
    best = None
    accs: dict[float, float] = {}
    for i, lr in enumerate(cfg.lrs):
        if i > 0:
            m0, t0 = fresh()
        model, tok, acc = train_one(cfg, lr, train, dev, log, m0, t0, quiet=quiet)
        accs[lr] = acc
        if best is None or acc > best[1]:
            best = (lr, acc, model, tok)
            if out is not None:
                _save(model, tok, out / rundir.FINAL)
        else:
            del model
        m0 = t0 = None
    lr, acc, model, tok = best
    log({"event": "select", "best_lr": lr, "dev_accuracy": {str(k): v for k, v in accs.items()},
         "dev_accuracy_before": before})
    if out is not None:
        summary = {"best_lr": lr, "dev_accuracy": {str(k): v for k, v in accs.items()}, "dev_accuracy_before": before,
                   "n_train": len(train), "n_dev": len(dev), "model_dir": str(out / rundir.FINAL)}
        (out / "sft_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        _write_eval_and_card(out, cfg, log.dev_results.get(lr))
    trackers.close()
    return SFTResult(lr, accs, before, out, model, tok, log.history)


def _write_eval_and_card(out: Path, cfg: SFTConfig, res: dict | None) -> None:
    """``OUT/eval/results.json``: the selected model's final dev evaluation (loglik, with its bootstrap interval),
    then ``final/README.md``, the model card (:mod:`medrlvr.card`); a card that cannot be written is a warning."""
    from medrlvr import card
    from medrlvr.eval.results import write_results

    try:
        if res is not None:
            name = cfg.dev_data if isinstance(cfg.dev_data, str) else (
                f"{cfg.train_data} (held-out dev)" if isinstance(cfg.train_data, str) else "dev")
            res = {(name if k == "dev" else k): v for k, v in res.items()}
            res["_meta"] = {**res.get("_meta", {}), "hardware": card.hardware()}
            write_results(res, out / "eval")
        card.write_card(out)
    except Exception as e:
        print(f"[medrlvr] warning: model card not written: {type(e).__name__}: {e}", file=sys.stderr)


# ------------------------------------------------------------------------------------------ CLI
def _floats(s: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--lr-grid must be comma-separated numbers, got {s!r}") from None


def cmd_sft(a) -> int:
    kw: dict[str, Any] = {}
    for f in fields(SFTConfig):
        v = getattr(a, f.name, None)
        if v is not None:
            kw[f.name] = v
    if a.lr_grid:
        kw["lr_grid"] = _floats(a.lr_grid)
    cfg = SFTConfig(**kw)
    out = Path(a.output or "runs/sft")
    if a.quiet:   # also transformers' weight-loading and saving bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    res = sft(cfg, out, quiet=a.quiet)
    accs = ", ".join(f"lr={k:g}: {v:.4f}" for k, v in res.dev_accuracy.items())
    print(f"dev loglik accuracy before: {res.dev_accuracy_before:.4f}; after: {accs}")
    print(f"best lr {res.best_lr:g}; model: {out / 'final'} (medrlvr eval --model {out / 'final'} ...)")
    return 0


def add_cli(subparsers):
    """Register ``sft`` on an argparse ``subparsers`` object; returns the sub-parser."""
    d = SFTConfig()
    s = subparsers.add_parser("sft", help="SFT baseline: direct prompt -> answer letter (loss on the letter only)",
                              description=__doc__.split("\n\n")[0])
    s.add_argument("--model", default=None, help=f"initial model (default {d.model})")
    s.add_argument("--train-data", default=None, help=f"benchmark[:split] or data file (default {d.train_data})")
    s.add_argument("--dev-data", default=None, help="dev questions for the lr choice (default: hold out 10%% of train)")
    s.add_argument("--dev-limit", type=positive_int, default=None, help=f"at most N dev questions (default {d.dev_limit})")
    s.add_argument("--data-root", default=None,
                   help="folder with medqa/, mmlu_pro/, ... (default: $MEDRLVR_DATA_ROOT, else ../shared/data)")
    s.add_argument("--columns", default=None, help="column map for data files")
    s.add_argument("--epochs", type=positive_int, default=None, help=f"default {d.epochs}")
    s.add_argument("--lr", type=positive_float, default=None, help=f"default {d.lr:g}")
    s.add_argument("--lr-grid", default=None, help="comma-separated learning rates, e.g. 1e-5,3e-5; keeps the best")
    s.add_argument("--batch-size", type=positive_int, default=None, help=f"default {d.batch_size}")
    s.add_argument("--micro-batch-size", type=positive_int, default=None,
                   help="questions per forward/backward (gradient accumulation; default: --batch-size)")
    s.add_argument("--max-steps", type=positive_int, default=None, help="stop after N steps (overrides --epochs)")
    s.add_argument("--lr-schedule", default=None, choices=["constant", "linear", "cosine"],
                   help=f"default {d.lr_schedule}")
    s.add_argument("--warmup-ratio", type=unit_float, default=None, help=f"linear warm-up share of the steps (default {d.warmup_ratio:g})")
    s.add_argument("--shuffle-options", action="store_true", default=None, help="re-shuffle options every epoch")
    s.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="trained weights' dtype (default fp32)")
    s.add_argument("--autocast-bf16", default=None, choices=["auto", "true", "false"],
                   help="bf16 autocast for the training forward/backward (default auto: where bf16 is native)")
    s.add_argument("--seed", type=nonneg_int, default=None, help="run seed (default 0)")
    s.add_argument("--report-to", default=None, type=lambda x: tuple(t.strip() for t in x.split(",") if t.strip()),
                   help="comma-separated trackers: tensorboard, wandb, mlflow (default tensorboard; '' for none)")
    s.add_argument("--output", default=None, help="output dir (default runs/sft)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_sft)
    return s
