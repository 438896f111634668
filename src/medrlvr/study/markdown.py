"""``study.md``: the paper's table (arms as rows, ID and OOD columns, OOD average), the paired tests, what a
difference needs to be significant at this n, and each arm's prompt and mode."""

from __future__ import annotations

from typing import Any

from medrlvr.study.config import StudyConfig


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _ci(ci: Any) -> str:
    return "" if not ci or ci[0] is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def table_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the main table (shared by ``study.md`` and ``study.html``): one row per arm x mode;
    one seed: accuracy [95% CI]; several: mean (min–max over seeds)."""
    benches = list(data["benchmarks"])
    ood = [b for b in benches if data["benchmarks"][b]["distribution"] == "ood"]
    head = ["arm", "mode", "prompt"] + [f"{b} ({data['benchmarks'][b]['distribution'].upper()})" for b in benches]
    if ood:
        head.append("OOD average")
    keys = []
    for c in data["cells"]:
        if (c["arm"], c["mode"]) not in keys:
            keys.append((c["arm"], c["mode"]))
    rows = []
    for arm, mode in keys:
        row = [arm, mode, data["arms"][arm]["prompts"][mode]]
        for b in benches:
            cs = [c for c in data["cells"] if c["arm"] == arm and c["mode"] == mode and c["benchmark"] == b]
            if not cs:
                row.append("–")
            elif len(cs) == 1:
                row.append(_pct(cs[0]["accuracy"]) + _ci(cs[0]["ci95"]))
            else:
                v = [c["accuracy"] for c in cs]
                row.append(f"{_pct(sum(v) / len(v))} ({_pct(min(v))}–{_pct(max(v))}, {len(v)} seeds)")
        if ood:
            os_ = [o["average"] for o in data["ood"] if o["arm"] == arm and o["mode"] == mode]
            row.append(_pct(sum(os_) / len(os_)) + (f" ({len(os_)} seeds)" if len(os_) > 1 else "") if os_ else "–")
        rows.append(row)
    rb = ["random guess", "", ""]
    for b in benches:
        c = next((c for c in data["cells"] if c["benchmark"] == b), None)
        rb.append(_pct(c["random_baseline"]["accuracy"]) + _ci(c["random_baseline"]["ci95"]) if c else "–")
    if ood:
        o = data["ood"][0] if data["ood"] else None
        rb.append(_pct(o["random_baseline"]["accuracy"]) if o else "–")
    rows.append(rb)
    return head, rows


def format_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Per arm x mode x benchmark: the share of answers that were well-formed (``cot``) and that named an option
    letter; a ``cot`` accuracy of 0 with a format-valid rate of 0 is a format failure, not a wrong answer."""
    head = ["arm", "mode", "benchmark", "format-valid %", "answered %"]
    rows = [[c["arm"] + ("" if len(data["seeds"]) == 1 or c["seed"] is None else f" (seed {c['seed']})"), c["mode"],
             c["benchmark"], _pct(c.get("format_valid")), _pct(c.get("answered"))] for c in data["cells"]]
    return head, rows


def pair_rows(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["A vs B", "seed", "benchmark", "n", "A − B [95% CI]", "McNemar p", "A only / B only right",
            "needed for p < 0.05"]
    rows = []
    for p in data["pairs"]:
        need = "none possible" if p["needed"] is None else f"±{100 * p['needed']:.1f}"
        rows.append([f"{p['a']} vs {p['b']}", str(p["seed"]), p["benchmark"], str(p["n"]),
                     f"{100 * p['diff']:+.1f}{_ci(p['ci95'])}", f"{p['p_mcnemar']:.3g}" + (" *" if p["significant"]
                                                                                          else ""),
                     f"{p['n10']} / {p['n01']}", need])
    return head, rows


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            + ["| " + " | ".join(r) + " |" for r in rows])


def verdict_lines(data: dict[str, Any]) -> list[str]:
    """Plain statements computed from the cells: whether any arm is above chance, which pairs differ."""
    out = []
    cells = data["cells"]
    if cells and not any(c.get("above_random") for c in cells):
        out.append("No arm is above the random baseline on any benchmark (no 95% interval lies above chance): "
                   "this model shows no knowledge of the domain at this size, and the arms' differences "
                   "are differences in answer format and letter preference, not in medicine.")
    elif cells:
        above = sorted({f"{c['arm']} ({c['mode']}) on {c['benchmark']}" for c in cells if c.get("above_random")})
        out.append("Above the random baseline (95% interval above chance): " + "; ".join(above) + ".")
    sig = [p for p in data["pairs"] if p["significant"]]
    if data["pairs"]:
        out.append(f"{len(sig)} of {len(data['pairs'])} paired tests are significant at 5% (McNemar, exact)"
                   + (": " + "; ".join(f"{p['a']} vs {p['b']} on {p['benchmark']} (seed {p['seed']}): "
                                        f"{100 * p['diff']:+.1f} points" for p in sig) if sig else "") + ".")
    return out


def _six(ns: dict[str, int]) -> str:
    return ", ".join(f"{100 * 6 / n:.1f} points on {b}'s {n} questions" for b, n in ns.items() if n)


def study_markdown(data: dict[str, Any], cfg: StudyConfig) -> str:
    ns = {b: v["n"] for b, v in data["benchmarks"].items()}
    e = data["eval"]
    how = ("greedy" if e["temperature"] == 0 else f"{e['n_samples']} answer(s) per question at temperature "
           f"{e['temperature']:g}, each question's answers from its own seed")
    lines = [f"# Study: {data['model']}", "",
             f"Every arm answered the same questions ({', '.join(f'{b}: {n}' for b, n in ns.items())}) in the same "
             f"option order, {how}. Accuracy in % with its 95% bootstrap interval"
             + (f"; {len(data['seeds'])} training seeds: mean (range)" if len(data["seeds"]) > 1 else "") + ".", ""]
    lines += _md_table(*table_rows(data))
    lines += ["", *verdict_lines(data), ""]
    lines += ["## Answer format", "", "Share of answers well-formed (`cot`: the think/answer tags) and naming an "
              "option letter; `cot` accuracy counts only well-formed answers, as the paper does.", ""]
    lines += _md_table(*format_rows(data))
    lines.append("")
    if data["pairs"]:
        lines += ["## Paired tests", "",
                  "A − B on the same questions: the paired bootstrap 95% interval of the difference and McNemar's "
                  "exact p-value (SciPy `binomtest` on the questions only one arm got right; `*`: p < 0.05). "
                  "What a difference needs to be significant at this n: McNemar needs at least 6 discordant "
                  f"questions, all one way ({_six(ns)}); the last column gives, for the discordant questions each pair "
                  "actually had, the smallest difference in points that would reach p < 0.05.", ""]
        lines += _md_table(*pair_rows(data))
        lines.append("")
    lines += ["## Prompts", "", "| arm | mode | prompt template |", "|---|---|---|"]
    for arm, a in data["arms"].items():
        for m in a["modes"]:
            lines.append(f"| {arm} | {m} | {a['prompts'][m]} |")
    lines.append("")
    if data["missing"]:
        lines += ["## Not finished", "", "Steps without results yet: " + ", ".join(data["missing"]) + ".", ""]
    return "\n".join(lines)
