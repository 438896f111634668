"""Side-by-side comparison of evaluation results: the paper's Figure 3.

:func:`compare` reads ``results.json`` files written by :func:`medrlvr.eval.benchmark.evaluate` (or run
directories holding one, directly or under ``eval/``), and writes to ``out_dir``:

* ``compare.md``: one row per model, one column per benchmark (accuracy % and its 95% CI),
  in-distribution benchmarks first, then out-of-distribution ones (``BENCHMARKS[name].distribution``;
  unregistered names go under "other"), with the per-group macro-average;
* ``compare.png``: a bar chart (matplotlib, Agg backend): benchmarks grouped in-distribution |
  out-of-distribution, one bar per model, 95% CI whiskers, and the random-guess baseline as a
  dashed line over each benchmark;
* ``curves.png`` (when a result has K > 1 samples per question): per benchmark, each model's pass@k and maj@k
  for k = 1..K beside the random-guessing curves ``1 - (1 - 1/n)^k`` and ``1/n`` (:func:`curves_plot`; base vs
  trained on one plot is Yue et al.'s reasoning-boundary figure, read against guessing on multiple choice);
* ``compare.json``: the numbers behind both.

A model's label is ``_meta.model`` of its results (a path is shortened to its last parts), else the
directory name; duplicate labels get the directory name appended.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from medrlvr.data import BENCHMARKS

GROUPS = (("id", "in-distribution"), ("ood", "out-of-distribution"), ("other", "other"))


def find_results(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a file, else ``results.json`` in it (or in ``eval/`` or ``final/eval``)."""
    p = Path(path)
    if p.is_file():
        return p
    for cand in (p / "results.json", p / "eval" / "results.json", p / "final" / "eval" / "results.json"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"no results.json at {p} (expected a results file or a directory holding one)")


def _label(res: dict, path: Path) -> str:
    m = res.get("_meta", {}).get("model")
    if m:
        mp = Path(str(m))
        if len(mp.parts) > 1:      # a local path: keep the informative tail (run/final -> run/final)
            return "/".join(mp.parts[-2:]) if mp.name in ("final", "policy") else mp.name
        return str(m)
    return path.parent.name or str(path)


def group_of(bench: str, entry: dict | None = None) -> str:
    b = BENCHMARKS.get(bench.split(":")[0])
    if b is not None:
        return b.distribution
    d = (entry or {}).get("distribution")
    return d if d in ("id", "ood") else "other"


def load_runs(paths: Sequence[str | os.PathLike], labels: Sequence[str] | None = None) -> list[tuple[str, dict]]:
    runs = []
    for i, p in enumerate(paths):
        f = find_results(p)
        res = json.loads(f.read_text(encoding="utf-8"))
        runs.append((labels[i] if labels else _label(res, f), res, f))
    seen: dict[str, int] = {}
    for lab, _r, _f in runs:
        seen[lab] = seen.get(lab, 0) + 1
    out = []
    for lab, res, f in runs:
        if seen[lab] > 1 and not labels:
            lab = f"{lab} ({f.parent.name})"
        out.append((lab, res))
    return out


def _benches(runs: list[tuple[str, dict]]) -> list[tuple[str, str]]:
    """(benchmark, group) in the order ID, OOD, other; first-seen order within a group."""
    names: dict[str, str] = {}
    for _, res in runs:
        for k, v in res.items():
            if not k.startswith("_") and isinstance(v, dict) and k not in names:
                names[k] = group_of(k, v)
    return [(n, g) for gk, _ in GROUPS for n, g in names.items() if g == gk]


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _cell(e: dict | None) -> str:
    if not e or e.get("accuracy") is None:
        return "-"
    ci = e.get("ci95") or [None, None]
    if ci[0] is None:
        return _pct(e["accuracy"])
    half = 100 * (ci[1] - ci[0]) / 2
    return f"{_pct(e['accuracy'])} ± {half:.1f} [{_pct(ci[0])}, {_pct(ci[1])}]"


def question_set_mismatches(runs: list[tuple[str, dict]]) -> list[str]:
    """One line per benchmark whose rows were scored on different numbers of questions (``n``: another
    ``--limit`` or split): their accuracies are not comparable."""
    out = []
    for b, _ in _benches(runs):
        ns = {lab: res[b].get("n") for lab, res in runs if isinstance(res.get(b), dict)}
        if len(set(ns.values())) > 1:
            got = ", ".join(f"{lab}: {n}" for lab, n in ns.items())
            out.append(f"{b}: rows scored on different question sets (n = {got}); their accuracies are not "
                       "comparable: evaluate each model on the same questions (the same --limit)")
    return out


def comparison_table(runs: list[tuple[str, dict]], include_random: bool = True) -> tuple[str, dict]:
    benches = _benches(runs)
    rows: list[tuple[str, dict[str, dict | None]]] = [(lab, {b: res.get(b) for b, _ in benches}) for lab, res in runs]
    if include_random:
        rnd: dict[str, dict | None] = {}
        for b, _ in benches:
            rnd[b] = next((res[b]["random_baseline"] for _, res in runs
                           if isinstance(res.get(b), dict) and res[b].get("random_baseline")), None)
        if any(v for v in rnd.values()):
            rows.append(("random", rnd))
    groups = [(gk, gname, [b for b, g in benches if g == gk]) for gk, gname in GROUPS]
    groups = [g for g in groups if g[2]]
    head = ["model"]
    align = ["---"]
    for gk, gname, bs in groups:
        head += [f"{b} ({gk.upper()})" for b in bs]
        if len(bs) > 1:
            head.append(f"{gk.upper()} avg")
        align += ["---:"] * (len(bs) + (len(bs) > 1))
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    data: dict[str, Any] = {"benchmarks": {b: g for b, g in benches}, "models": {}}
    for lab, ents in rows:
        cells = [lab]
        data["models"][lab] = {}
        for gk, _, bs in groups:
            accs = []
            for b in bs:
                e = ents.get(b)
                cells.append(_cell(e))
                if e and e.get("accuracy") is not None:
                    accs.append(e["accuracy"])
                    data["models"][lab][b] = {"accuracy": e["accuracy"], "ci95": e.get("ci95"), "n": e.get("n")}
            if len(bs) > 1:
                avg = sum(accs) / len(accs) if len(accs) == len(bs) else None
                cells.append(_pct(avg))
                data["models"][lab][f"_{gk}_avg"] = avg
        lines.append("| " + " | ".join(cells) + " |")
    warn = question_set_mismatches(runs)
    data["mismatches"] = warn
    md = ["# Model comparison (Med-RLVR Figure 3)", "",
          "Accuracy % ± half-width of the 95% bootstrap CI [low, high]. ID = in-distribution (MedQA), "
          "OOD = out-of-distribution; averages are unweighted over the group's benchmarks.", "", *lines,
          *(["", *[f"**Warning**: {w}" for w in warn]] if warn else [])]
    return "\n".join(md) + "\n", data


def comparison_plot(runs: list[tuple[str, dict]], path: str | os.PathLike, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    benches = _benches(runs)
    nm = len(runs)
    width = 0.8 / max(1, nm)
    gap = 0.6
    xs, x = [], 0.0
    prev = None
    for _, g in benches:
        if prev is not None and g != prev:
            x += gap
        xs.append(x)
        x += 1.0
        prev = g
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(benches) * max(1, nm) ** 0.5 + 2), 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (lab, res) in enumerate(runs):
        pos, h, err = [], [], [[], []]
        for (b, _), xb in zip(benches, xs):
            e = res.get(b)
            if not isinstance(e, dict) or e.get("accuracy") is None:
                continue
            a = 100 * e["accuracy"]
            ci = e.get("ci95") or [None, None]
            pos.append(xb - 0.4 + width * (i + 0.5))
            h.append(a)
            err[0].append(a - 100 * ci[0] if ci[0] is not None else 0.0)
            err[1].append(100 * ci[1] - a if ci[1] is not None else 0.0)
        ax.bar(pos, h, width * 0.92, yerr=np.array(err), capsize=3, label=lab, color=colors[i % len(colors)],
               error_kw={"elinewidth": 1})
    # random baseline over each benchmark
    first = True
    for (b, _), xb in zip(benches, xs):
        rb = next((res[b].get("random_baseline") for _, res in runs if isinstance(res.get(b), dict)
                   and res[b].get("random_baseline")), None)
        if rb and rb.get("accuracy") is not None:
            ax.hlines(100 * rb["accuracy"], xb - 0.45, xb + 0.45, colors="gray", linestyles="dashed",
                      label="random" if first else None)
            first = False
    ax.set_xticks(xs)
    ax.set_xticklabels([b for b, _ in benches], rotation=15 if len(benches) > 3 else 0)
    ax.set_ylabel("accuracy (%)")
    top = max([100 * (res[b].get("ci95") or [0, 0])[1] or 0 for _, res in runs for b, _ in benches
               if isinstance(res.get(b), dict) and res[b].get("ci95") and res[b]["ci95"][1] is not None] + [50])
    ax.set_ylim(0, min(100, top * 1.15 + 5))
    # group captions
    for gk, gname in GROUPS:
        gx = [xb for (b, g), xb in zip(benches, xs) if g == gk]
        if gx:
            ax.text((min(gx) + max(gx)) / 2, 1.01, gname, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=9, color="dimgray")
    for j in range(1, len(benches)):
        if benches[j][1] != benches[j - 1][1]:
            ax.axvline((xs[j] + xs[j - 1]) / 2, color="lightgray", lw=1)
    ax.legend(fontsize=8, loc="upper right", framealpha=0.8)
    ax.set_title(title or "Accuracy with 95% CI", pad=18)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created) and close it."""
    import matplotlib.pyplot as plt

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def curves_plot(runs: list[tuple[str, dict]], path: str | os.PathLike, title: str | None = None) -> Path | None:
    """Draw ``curves`` of each run's benchmarks (see :func:`medrlvr.eval.benchmark.k_curves`): one panel per
    benchmark, a model's pass@k as a solid line and its maj@k dashed, in one colour, and the random guesser's
    pass@k (dotted) and maj@k (dash-dot) in grey. Returns the PNG path, or ``None`` (nothing written) when no
    result has curves (every evaluation had one sample per question)."""
    benches = [b for b, _ in _benches(runs) if any(isinstance(r.get(b), dict) and r[b].get("curves")
                                                    for _, r in runs)]
    if not benches:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(benches))
    rows = (len(benches) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, b in zip(axes.flat, benches):
        guess = None
        for i, (lab, res) in enumerate(runs):
            c = res.get(b, {}).get("curves") if isinstance(res.get(b), dict) else None
            if not c:
                continue
            col = colors[i % len(colors)]
            ax.plot(c["k"], [100 * v for v in c["pass"]], "-o", ms=3, color=col, label=f"{lab} pass@k")
            ax.plot(c["k"], [100 * v for v in c["maj"]], "--", color=col, label=f"{lab} maj@k")
            if guess is None or len(c["k"]) > len(guess["k"]):
                guess = c
        ax.plot(guess["k"], [100 * v for v in guess["pass_guess"]], ":", color="gray", label="guessing pass@k")
        ax.plot(guess["k"], [100 * v for v in guess["maj_guess"]], "-.", color="gray", label="guessing maj@k")
        ax.set_title(b, fontsize=10)
        ax.set_xlabel("k (samples per question)")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=7, framealpha=0.8)
    for ax in list(axes.flat)[len(benches):]:
        ax.axis("off")
    fig.suptitle(title or "pass@k and maj@k against random guessing")
    fig.tight_layout()
    return _save(fig, path)


def compare(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, labels: Sequence[str] | None = None,
            include_random: bool = True) -> dict[str, Path]:
    """Build ``compare.md``, ``compare.png``, ``compare.json`` and (when a result has pass@k curves)
    ``curves.png`` in ``out_dir`` from result files or run dirs; returns their paths (keys ``table``, ``plot``,
    ``json``, ``curves``: None when no curve was drawn)."""
    if not paths:
        raise ValueError("compare needs at least one results.json or run directory")
    if labels is not None and len(labels) != len(paths):
        raise ValueError("labels and paths differ in length")
    runs = load_runs(paths, labels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, data = comparison_table(runs, include_random)
    (out / "compare.md").write_text(md, encoding="utf-8")
    (out / "compare.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    png = comparison_plot(runs, out / "compare.png")
    (out / "curves.png").unlink(missing_ok=True)
    curves = curves_plot(runs, out / "curves.png")
    return {"table": out / "compare.md", "plot": png, "json": out / "compare.json", "curves": curves}


def cmd_compare(a) -> int:
    labels = [x.strip() for x in a.labels.split(",")] if a.labels else None
    paths = compare(a.runs, a.out, labels=labels, include_random=not a.no_random)
    for w in json.loads(paths["json"].read_text(encoding="utf-8")).get("mismatches", []):
        print(f"compare: warning: {w}", file=sys.stderr)
    print(paths["table"].read_text(encoding="utf-8"))
    print(f"table: {paths['table']}\nplot: {paths['plot']}")
    if paths["curves"] is not None:
        print(f"pass@k curves: {paths['curves']}")
    return 0


def add_cli(subparsers):
    """Register ``compare`` on an argparse ``subparsers`` object; returns the sub-parser."""
    c = subparsers.add_parser("compare", help="table + bar chart (ID vs OOD, 95%% CI) from several evaluations",
                              description=__doc__.split("\n\n")[0])
    c.add_argument("runs", nargs="+", metavar="RUN_OR_RESULTS", help="results.json files or directories holding one")
    c.add_argument("--out", default="runs/compare", help="output dir (default runs/compare)")
    c.add_argument("--labels", default=None, help="comma-separated labels, one per input (default: model names)")
    c.add_argument("--no-random", action="store_true", help="leave out the random-guess row")
    c.set_defaults(func=cmd_compare)
    return c
