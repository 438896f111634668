"""The study's figures: ``accuracy.png`` (the paper's Figure 1) and ``dynamics.png`` (its Figure 2).

``accuracy.png``: one group of bars per benchmark (and the OOD pool), one bar per arm x mode (the mean over
seeds), the 95% interval as an error bar (one seed) or the range over seeds, and the random baseline as a
dashed line per group. ``dynamics.png``: for each RL arm (first seed), held-out accuracy (training accuracy
when the run evaluated only at the end), mean reward, format-valid rate and response length against the
step, shaded by the dominant training stage of the step's samples (:func:`medrlvr.analysis.report.stage_bands`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medrlvr import rundir
from medrlvr.analysis.report import STAGE_COLORS, stage_bands
from medrlvr.analysis.stages import STAGES, stage_distribution
from medrlvr.study.config import StudyConfig
from medrlvr.study.steps import arm_dir, instance_name

COLORS = ("#6c757d", "#f4a261", "#1d3557", "#2a9d8f", "#e63946", "#8e44ad", "#3a86ff", "#ffb703")


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_accuracy(data: dict[str, Any], path: Path) -> Path | None:
    """Bars of every arm x mode per benchmark with their intervals and the random baseline; None without cells."""
    cells = data["cells"]
    if not cells:
        path.unlink(missing_ok=True)
        return None
    groups = list(data["benchmarks"]) + (["ood_pool"] if data["ood"] else [])
    keys: list[tuple[str, str]] = []
    for c in cells:
        if (c["arm"], c["mode"]) not in keys:
            keys.append((c["arm"], c["mode"]))
    fig = _figure(max(7.0, 1.6 + 0.55 * len(keys) * len(groups)), 4.4)
    ax = fig.add_subplot(111)
    width = 0.8 / len(keys)
    for gi, g in enumerate(groups):
        for ki, (arm, mode) in enumerate(keys):
            if g == "ood_pool":
                rows = [o for o in data["ood"] if o["arm"] == arm and o["mode"] == mode]
                vals = [o["pooled_accuracy"] for o in rows]
                cis = [o["pooled_ci95"] for o in rows]
            else:
                rows = [c for c in cells if c["arm"] == arm and c["mode"] == mode and c["benchmark"] == g]
                vals = [c["accuracy"] for c in rows]
                cis = [c["ci95"] for c in rows]
            if not vals:
                continue
            m = sum(vals) / len(vals)
            lo, hi = (cis[0] if len(vals) == 1 and cis[0][0] is not None else (min(vals), max(vals)))
            x = gi - 0.4 + width * (ki + 0.5)
            ax.bar(x, m, width * 0.92, color=COLORS[ki % len(COLORS)],
                   label=f"{arm} ({mode})" if gi == 0 else None)
            ax.errorbar(x, m, yerr=[[m - lo], [hi - m]], color="black", capsize=3, lw=1)
        rb = (data["ood"][0]["random_baseline"]["accuracy"] if g == "ood_pool"
              else next(c for c in cells if c["benchmark"] == g)["random_baseline"]["accuracy"])
        ax.hlines(rb, gi - 0.45, gi + 0.45, colors="#b00020", linestyles="--", lw=1.3,
                  label="random guess" if gi == 0 else None)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g if g == "ood_pool" else f"{g}\n({data['benchmarks'][g]['distribution'].upper()})"
                        for g in groups], fontsize=9)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, len(keys) + 1), loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax.set_title("Accuracy per arm with 95% intervals (range over seeds) and the random baseline")
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    return path


_SERIES = (("eval_accuracy", "accuracy", "held-out accuracy"), ("reward_mean", None, "mean reward"),
           ("format_valid", None, "format-valid rate"), ("response_tokens", "response_chars", "response length"))


def plot_dynamics(cfg: StudyConfig, out: Path, path: Path) -> Path | None:
    """Each RL arm's (first seed's) training curves against the step with the stage bands; None when no RL
    arm has logged a step."""
    runs = []
    for name in cfg.rl_arms():
        d = arm_dir(out, instance_name(name, cfg.seeds[0]))
        metrics, _ = rundir.read_jsonl(d / rundir.METRICS)
        metrics = [m for m in metrics if isinstance(m.get("step"), int)]
        if metrics:
            samples, _ = rundir.read_jsonl(d / rundir.SAMPLES)
            runs.append((name, metrics, stage_bands(stage_distribution(samples)) if samples else []))
    if not runs:
        path.unlink(missing_ok=True)
        return None
    fig = _figure(12, 2.6 * len(runs) + 0.6)
    axes = fig.subplots(len(runs), len(_SERIES), squeeze=False)
    for r, (name, metrics, bands) in enumerate(runs):
        for c, (key, fallback, title) in enumerate(_SERIES):
            ax = axes[r][c]
            for x0, x1, st in bands:
                ax.axvspan(x0, x1, color=STAGE_COLORS[st], alpha=0.18, lw=0)
            use = key if any(key in m for m in metrics) else fallback
            pts = [(m["step"], m[use]) for m in metrics if use and isinstance(m.get(use), (int, float))]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, lw=1.5, color="#1d3557")
            if key in ("eval_accuracy", "format_valid"):
                ax.set_ylim(-0.03, 1.03)
            elif key == "reward_mean":
                ax.set_ylim(-1.05, 1.05)
            label = title if use == key else f"{title} ({use.replace('_', ' ')})" if use else title
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.25)
    from matplotlib.patches import Patch

    seen = [st for st in STAGES if any(st == b[2] for _, _, bands in runs for b in bands)]
    if seen:
        fig.legend(handles=[Patch(color=STAGE_COLORS[s], alpha=0.35, label=s.replace("_", " ")) for s in seen],
                   loc="lower center", ncol=min(6, len(seen)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if seen else 0, 1, 1))
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight", facecolor="white")
    return path
