"""``medrlvr data`` subcommands: ``stats``, ``validate``, ``show``, ``export``, ``contamination``, ``difficulty``,
``filter``, ``fetch`` (:mod:`medrlvr.data.fetch`).

Sources are benchmark names (``NAME[:SPLIT]``), files (``.jsonl/.json/.csv/.parquet``, a nested JSON set as
``FILE.json:KEY``) or ``hub:ID``. ``--columns`` takes one column map for every file or one per file
(``"a.csv=question=q,gold=k;b.jsonl=options=choices"``, see :func:`medrlvr.data.sources.columns_for_sources`).

Exit codes: 0 done; 1 ``validate`` found invalid records (each listed); 2 bad input that stops the command
(a file that cannot be read as a whole: missing, empty, header only, a column the map needs absent, a
nested JSON without a selector; an unknown option; no valid record left after ``--skip-invalid``), printed
as one ``medrlvr: error: FILE[:LINE]: field 'F': reason`` line by :func:`medrlvr.cli.main`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from medrlvr.argtypes import nonneg_int, open_unit_float, positive_float, positive_int
from medrlvr.data.sources import columns_for_sources, load_any, load_sources


def _data_root_arg(p):
    p.add_argument("--data-root", default=None,
                   help="folder with medqa/, mmlu_pro/, ... (default: $MEDRLVR_DATA_ROOT, else ../shared/data)")


DROP_FILLER_HELP = ("drop filler options (n/a, none, -, empty) that are not the gold; without it a filler is kept "
                    "as a real option with a warning, an empty one is an error")
COLUMNS_HELP = ("column map for files, e.g. question=q,options=A|B|C|D,gold=ans; one per file: "
                "'a.csv=question=q,gold=k;b.jsonl=options=choices,gold=label,gold_type=index0'")


def with_filler_drop(columns: str | None, drop: bool) -> str | None:
    """``--columns`` with ``filler=drop`` added for every file when ``--drop-filler-options`` is given."""
    if not drop:
        return columns
    if not columns:
        return "filler=drop"
    return f"{columns};filler=drop" if ";" in columns or "=" in columns.partition(",")[0].partition("=")[2] \
        else f"{columns},filler=drop"


def _columns(a) -> str | None:
    return with_filler_drop(a.columns, getattr(a, "drop_filler_options", False))


def _split_list(x: str | None) -> list[str]:
    return [b.strip() for b in (x or "").split(",") if b.strip()]


def cmd_data_stats(a) -> int:
    from medrlvr.data.benchmarks import BENCHMARKS

    names = list(a.sources or []) + _split_list(a.benchmarks)
    if not names:
        names = list(BENCHMARKS)
    sets = load_sources(names, a.data_root, _columns(a), skip_invalid=a.skip_invalid, warnings=False)
    out = {}
    for spec, s in sets.items():
        kinds = Counter(w.field for w in s.warnings)
        out[spec] = {
            "count": len(s),
            "split": s.name.split(":")[-1],
            "options_histogram": dict(sorted(Counter(r.n_options for r in s).items())),
            "gold_distribution": dict(sorted(Counter(r.gold for r in s).items())),
            "skipped": len(s.skipped),
            "warnings": len(s.warnings),
            "duplicate_options": kinds.get("options", 0),
            "options_in_question": kinds.get("question", 0),
        }
    if a.json:
        print(json.dumps(out, indent=None if a.compact else 2))
        return 0
    w = max(len("benchmark"), *(len(n) for n in out))
    print(f"{'benchmark':<{w}}  {'split':<6} {'count':>6}  options  gold letters")
    for n, d in out.items():
        oh = " ".join(f"{k}:{v}" for k, v in d["options_histogram"].items())
        gd = " ".join(f"{k}:{v}" for k, v in d["gold_distribution"].items())
        extra = f"  ({d['skipped']} skipped)" if d["skipped"] else ""
        extra += f"  ({d['duplicate_options']} with duplicate option texts)" if d["duplicate_options"] else ""
        extra += f"  ({d['options_in_question']} list the options in the question)" if d["options_in_question"] else ""
        print(f"{n:<{w}}  {d['split']:<6} {d['count']:>6}  {oh}  {gd}{extra}")
    return 0


def cmd_data_validate(a) -> int:
    cmap = columns_for_sources(_columns(a), [a.source])[a.source]
    s = load_any(a.source, a.data_root, cmap or None, skip_invalid=True)   # a file-level error: exit 2 (cli.main)
    for line in s.report_lines():
        print(line)
    print(f"{s.name}: {len(s)} valid, {len(s.skipped)} invalid, {len(s.warnings)} with warnings")
    return 1 if s.skipped else 0


def cmd_data_show(a) -> int:
    from medrlvr.prompts import render

    tok = None
    if a.template == "chat":
        from medrlvr.models import load_tokenizer

        tok = load_tokenizer(a.model)
    s = load_sources([a.source], a.data_root, _columns(a), skip_invalid=a.skip_invalid)[a.source]
    for r in s.records[: a.n]:
        print(f"===== {r.id} (gold {r.gold}: {r.gold_text})")
        print(render(r, a.template, tok, prefill_think=not a.no_prefill))
        print()
    return 0


def cmd_data_export(a) -> int:
    from medrlvr.integrations.export import export

    s = load_sources([a.source], a.data_root, _columns(a), skip_invalid=a.skip_invalid)[a.source]
    recs = s.records[: a.limit] if a.limit else s.records
    p = export(recs, a.format, a.out, template=a.template, prefill_think=not a.no_prefill,
               data_source=a.source if a.format == "lm-eval" else None)
    print(f"wrote {len(recs)} record{'' if len(recs) == 1 else 's'} to {p} ({a.format})")
    if a.format == "lm-eval":
        from medrlvr.integrations.lmeval import task_name

        t = task_name(a.source)
        print(f"run: lm_eval --model hf --model_args pretrained=MODEL_DIR --include_path {p} --tasks {t} "
              f"(lm-eval's medqa prompt: --tasks {t}_lmeval_prompt)")
    if a.format == "openrlhf":
        from medrlvr.integrations.openrlhf import write_reward_file
        from medrlvr.prompts import response_prefix

        rf = write_reward_file(p.parent / "medrlvr_openrlhf_reward.py",
                               prefill=response_prefix(a.template, not a.no_prefill) or None)
        print(f"wrote {rf} (OpenRLHF: --remote_rm_url {rf} --input_key input --label_key label)")
    return 0


def cmd_data_contamination(a) -> int:
    from medrlvr.data.transforms import contamination

    if a.a == a.b:
        raise ValueError(f"contamination of {a.a} with itself: give two different sources")
    sets = load_sources([a.a, a.b], a.data_root, _columns(a), skip_invalid=a.skip_invalid, warnings=False)
    sa, sb = sets[a.a], sets[a.b]
    hits = contamination(sa.records, sb.records, n=a.n, threshold=a.threshold)
    qa = {r.id: r.question for r in sa}
    qb = {r.id: r.question for r in sb}
    if a.json:
        print(json.dumps({"a": a.a, "b": a.b, "n_a": len(sa), "n_b": len(sb), "n": a.n, "threshold": a.threshold,
                          "pairs": [{"a_id": o.a_id, "b_id": o.b_id, "kind": o.kind, "score": o.score}
                                    for o in hits]}, indent=2))
        return 0

    def cut(t: str, k: int = 60) -> str:
        t = " ".join(t.split())
        return t if len(t) <= k else t[: k - 3] + "..."

    if hits:
        wa = max(len("a id"), *(len(o.a_id) for o in hits))
        wb = max(len("b id"), *(len(o.b_id) for o in hits))
        print(f"{'a id':<{wa}}  {'b id':<{wb}}  kind   score  a question | b question")
        for o in hits[: a.max_pairs] if a.max_pairs else hits:
            print(f"{o.a_id:<{wa}}  {o.b_id:<{wb}}  {o.kind:<5}  {o.score:.3f}  {cut(qa[o.a_id])} | {cut(qb[o.b_id])}")
        if a.max_pairs and len(hits) > a.max_pairs:
            print(f"... {len(hits) - a.max_pairs} more pairs (--max-pairs 0 prints all)")
    kinds = Counter(o.kind for o in hits)
    print(f"{len(hits)} of {len(sa)} questions of {a.a} overlap {a.b} ({len(sb)} questions): {kinds.get('exact', 0)} "
          f"exact, {kinds.get('ngram', 0)} by {a.n}-grams (>= {a.threshold:g} of their {a.n}-grams)")
    return 0


def cmd_data_difficulty(a) -> int:
    import contextlib
    import io

    from medrlvr.data.difficulty import measure
    from medrlvr.train.distributed import init_eval

    if a.mode == "loglik" and a.k != 1:
        raise ValueError("--mode loglik is deterministic: it measures the gold letter's probability, give --k 1")
    if a.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {a.temperature}")
    if a.mode == "cot" and a.k > 1 and a.temperature == 0:
        raise ValueError(f"--temperature 0 with --k {a.k}: the {a.k} greedy answers would all be the same")
    rank, _ = init_eval()   # torchrun --nproc-per-node N -m medrlvr data difficulty ...: batches sharded
    with contextlib.redirect_stderr(io.StringIO()) if rank else contextlib.nullcontext():
        s = load_sources([a.source], a.data_root, _columns(a), skip_invalid=a.skip_invalid)[a.source]
    records = s.records[: a.limit] if a.limit else s.records
    import torch

    from medrlvr.eval.benchmark import resolve_model_dir
    from medrlvr.models import load_policy

    if a.threads:
        torch.set_num_threads(a.threads)
    model, tok = load_policy(resolve_model_dir(a.model), a.dtype, seed=a.seed)
    if torch.cuda.is_available():
        model = model.to("cuda")
    loglik = a.mode == "loglik"
    header = {"source": a.source, "model": a.model, "mode": a.mode, "k": a.k,
              "temperature": 0.0 if loglik else a.temperature, "seed": a.seed,
              "template": "direct" if loglik else a.template, "max_new_tokens": None if loglik else a.max_new_tokens,
              "scheme": None if loglik else "paper"}
    out = a.output or f"{Path(a.source).stem if Path(a.source).exists() else a.source.replace(':', '-')}" \
                      f".difficulty.jsonl"
    df = measure(model, tok, records, out, header, engine=a.engine, batch_size=a.batch_size,
                 prefill_think=not a.no_prefill, progress=not a.quiet, overwrite=a.overwrite)
    if rank:
        return 0
    from medrlvr.data.difficulty import decile_counts

    rates = [df.entries[r.id]["pass_rate"] for r in records]
    _print_deciles(decile_counts(rates))
    print(f"wrote {len(rates)} question{'' if len(rates) == 1 else 's'} to {out} (mean pass rate "
          f"{sum(rates) / len(rates):.3f}; {sum(v == 0 for v in rates)} never and {sum(v == 1 for v in rates)} "
          f"always solved)")
    return 0


def _print_deciles(counts: list[int]) -> None:
    total = max(1, sum(counts))
    print("pass rate    questions")
    for i, n in enumerate(counts):
        hi = "1.0]" if i == 9 else f"{(i + 1) / 10:.1f})"
        print(f"[{i / 10:.1f}, {hi:<5} {n:>6}  {'#' * round(40 * n / total)}")


def cmd_data_filter(a) -> int:
    from medrlvr.data.difficulty import check_source, decile_counts, filter_records, parse_band, read_difficulty

    band = parse_band(a.keep)
    s = load_sources([a.source], a.data_root, _columns(a), skip_invalid=a.skip_invalid)[a.source]
    df = read_difficulty(a.difficulty)
    missing = check_source(df, s.records, a.source)
    rates = df.rates()
    res = filter_records(s.records, rates, band)
    _print_deciles(decile_counts([rates[r.id] for r in s.records if r.id in rates]))
    print(f"kept {len(res.kept)} of {len(s)} questions with a pass rate in [{band[0]:g}, {band[1]:g}]; dropped "
          f"{res.below} below, {res.above} above" + (f", {len(missing)} not measured" if missing else ""))
    if a.out:
        from medrlvr.fileio import atomic_write_text

        lines = []
        for r in res.kept:
            row = {k: v for k, v in r.meta.items() if k not in ("id", "question", "options", "answer_idx",
                                                               "context", "duplicate_options")}
            row = {"id": r.id, "question": r.question, "options": r.options, "answer_idx": r.gold,
                   **({"context": r.context} if r.context else {}), **row}
            lines.append(json.dumps(row, ensure_ascii=False))
        atomic_write_text(a.out, "\n".join(lines) + "\n", label="filter")
        print(f"wrote {len(lines)} question{'' if len(lines) == 1 else 's'} to {a.out}")
    return 0


def _loading_args(p, skip_invalid_help: str | None = None) -> None:
    """The options every command that loads a source takes: ``--data-root``, ``--columns``,
    ``--drop-filler-options`` and, with its help text, ``--skip-invalid``."""
    _data_root_arg(p)
    p.add_argument("--columns", default=None, help=COLUMNS_HELP)
    p.add_argument("--drop-filler-options", action="store_true", help=DROP_FILLER_HELP)
    if skip_invalid_help:
        p.add_argument("--skip-invalid", action="store_true", help=skip_invalid_help)


def add_cli(sub) -> None:
    """Register ``data`` and its subcommands on an argparse ``subparsers`` object."""
    d = sub.add_parser("data", help="inspect, validate, render, export and compare question sets")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("stats", help="count, option-count histogram and gold-letter distribution per source")
    s.add_argument("sources", nargs="*", help="benchmark names[:split] or files (default: all benchmarks)")
    _data_root_arg(s)
    s.add_argument("--benchmarks", default=None, help="comma-separated names or files (added to SOURCES)")
    s.add_argument("--columns", default=None, help=COLUMNS_HELP)
    s.add_argument("--drop-filler-options", action="store_true", help=DROP_FILLER_HELP)
    s.add_argument("--json", action="store_true", help="one JSON object keyed by source")
    s.add_argument("--compact", action="store_true", help="with --json: on one line")
    s.add_argument("--skip-invalid", action="store_true", help="count the valid records, report the others")
    s.set_defaults(func=cmd_data_stats)
    for name, fn, hlp in (("validate", cmd_data_validate,
                           "check every record; exit 1 if any is invalid, 2 if the file cannot be read at all"),
                          ("show", cmd_data_show, "print rendered prompts"),
                          ("export", cmd_data_export, "write verl / TRL / OpenRLHF data files, lm-eval task dirs")):
        x = dsub.add_parser(name, help=hlp)
        x.add_argument("source", help="benchmark name[:split], a file (.jsonl/.json/.csv/.parquet; FILE.json:KEY "
                                      "for a set inside a nested JSON) or hub:ID")
        _loading_args(x, None if name == "validate" else "load the valid records, report the others")
        if name != "validate":
            x.add_argument("--template", default="r1-zero", choices=["r1-zero", "chat", "direct"],
                           help="prompt template (medrlvr.prompts)")
            x.add_argument("--no-prefill", action="store_true", help="do not end the prompt with <think>")
        if name == "show":
            x.add_argument("--n", type=positive_int, default=3, help="prompts printed")
            x.add_argument("--model", default="smollm2-135m", help="tokenizer for --template chat")
        if name == "export":
            x.add_argument("--format", required=True, choices=["verl", "trl", "openrlhf", "lm-eval"],
                           help="target framework (lm-eval: an lm-evaluation-harness task directory)")
            x.add_argument("--out", required=True, help="output file or folder (lm-eval: a task directory)")
            x.add_argument("--limit", type=positive_int, default=None, help="export the first N records only")
        x.set_defaults(func=fn)
    c = dsub.add_parser("contamination", help="questions of A that also appear in B (exact or by word n-grams)")
    c.add_argument("a", help="the set to check (benchmark name[:split] or file), e.g. your training file")
    c.add_argument("b", help="the set to check against, e.g. a test benchmark")
    _data_root_arg(c)
    c.add_argument("--columns", default=None, help=COLUMNS_HELP)
    c.add_argument("--drop-filler-options", action="store_true", help=DROP_FILLER_HELP)
    c.add_argument("--n", type=positive_int, default=8, help="word n-gram length (default 8)")
    c.add_argument("--threshold", type=open_unit_float, default=0.5, help="fraction of A's n-grams found in one B question")
    c.add_argument("--max-pairs", type=nonneg_int, default=50, help="pairs printed (0: all; --json prints all)")
    c.add_argument("--json", action="store_true", help="every pair as JSON")
    c.add_argument("--skip-invalid", action="store_true", help="compare the valid records, report the others")
    c.set_defaults(func=cmd_data_contamination)
    x = dsub.add_parser("difficulty", help="each question's pass rate over K samples of a model (JSONL, resumable)")
    x.add_argument("source", help="benchmark name[:split] or a file")
    _loading_args(x, "measure the valid records, report the others")
    x.add_argument("--model", required=True, help="smollm2-135m, tiny, a Hugging Face dir (or a run dir with final/)")
    x.add_argument("--k", type=positive_int, required=True, help="samples per question (loglik: 1)")
    x.add_argument("--mode", default="cot", choices=["cot", "loglik"],
                   help="cot: correct answers of K samples; loglik: probability of the gold letter")
    x.add_argument("--output", default=None, help="the difficulty file (default SOURCE.difficulty.jsonl); resumable")
    x.add_argument("--limit", type=positive_int, default=None, help="first N questions")
    x.add_argument("--temperature", type=positive_float, default=1.0, help="cot sampling temperature (default 1.0)")
    x.add_argument("--max-new-tokens", type=positive_int, default=512, help="cot: token limit of each sample (default 512)")
    x.add_argument("--template", default="r1-zero", choices=["r1-zero", "chat"],
                   help="prompt template (default r1-zero)")
    x.add_argument("--no-prefill", action="store_true", help="do not end the prompt with <think>")
    x.add_argument("--seed", type=nonneg_int, default=0, help="sampling seed (default 0)")
    x.add_argument("--engine", default="fast", help="fast (falls back to hf for unsupported models) or hf")
    x.add_argument("--batch-size", type=positive_int, default=None, help="questions per batch (default: by memory)")
    x.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="weights dtype (default fp32)")
    x.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    x.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming --output")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.set_defaults(func=cmd_data_difficulty)
    f = dsub.add_parser("filter", help="keep the questions whose pass rate (a difficulty file) is in a band")
    f.add_argument("source", help="benchmark name[:split] or a file (the one the difficulty file was made for)")
    _loading_args(f, "filter the valid records, report the others")
    f.add_argument("--difficulty", required=True, help="a file of `medrlvr data difficulty`")
    f.add_argument("--keep", required=True, help="LOW:HIGH pass rates kept, both included (0.1:0.9, 1/8:7/8)")
    f.add_argument("--out", default=None, help="write the kept questions as JSONL (loads with no column map)")
    f.set_defaults(func=cmd_data_filter)
    from medrlvr.data.fetch import add_cli as add_fetch_cli

    add_fetch_cli(dsub)
