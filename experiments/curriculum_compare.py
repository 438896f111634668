"""Side by side, per training step, two or more runs of `medrlvr train` (e.g. with and without `curriculum: filter`):
wall time, mean reward, the share of generated groups whose rewards (and whose correctness) were all alike before
dynamic sampling dropped any, the groups dropped, the zero-variance share of the trained batch, and the mean pass
rate of the questions drawn. Also the same figures averaged over the steps every run finished within the shortest
run's wall time.

    python experiments/curriculum_compare.py RUN_DIR [RUN_DIR ...] [--json OUT.json]

Groups generated in a step = ``dropped_groups + prompts_per_step`` (each refill round draws what is missing; the
last round is never filtered). Without dynamic sampling the uniform shares are the trained batch's
``zero_var_frac``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def rows_of(run: Path) -> tuple[dict, list[dict]]:
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    out, wall = [], 0.0
    for r in rows:
        if "reward_mean" not in r:
            continue
        wall += r.get("rollout_s", 0.0) + r.get("update_s", 0.0)
        gen = r.get("dropped_groups", 0) + cfg["prompts_per_step"]
        out.append({"step": r["step"], "train_s": round(wall, 1), "reward": r["reward_mean"],
                    "uniform_reward": r.get("uniform_reward_groups", r.get("zero_var_frac", 0) * gen) / gen,
                    "uniform_correct": (r["uniform_correct_groups"] / gen) if "uniform_correct_groups" in r else None,
                    "dropped": r.get("dropped_groups", 0), "zero_var_trained": r.get("zero_var_frac"),
                    "format_valid": r.get("format_valid"), "accuracy": r.get("accuracy"),
                    "drawn_pass_rate": r.get("drawn_pass_rate_mean")})
    return cfg, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    data = {}
    for run in a.runs:
        cfg, rows = rows_of(Path(run))
        data[run] = {"curriculum": cfg.get("curriculum", "none"), "bands": cfg.get("curriculum_bands"), "rows": rows}
    budget = min(d["rows"][-1]["train_s"] for d in data.values() if d["rows"])
    keys = ("reward", "uniform_reward", "uniform_correct", "dropped", "zero_var_trained", "format_valid")
    for run, d in data.items():
        print(f"\n{run} (curriculum {d['curriculum']} {d['bands']})")
        print("step  train_s  reward  uniform_reward  uniform_correct  dropped  zero_var_trained  format_valid  "
              "drawn_pass_rate")
        for r in d["rows"]:
            f = lambda v, w=8: f"{v:>{w}.3f}" if isinstance(v, float) else f"{str(v):>{w}}"   # noqa: E731
            print(f"{r['step']:>4} {r['train_s']:>8} {f(r['reward'], 7)} {f(r['uniform_reward'], 15)} "
                  f"{f(r['uniform_correct'], 16)} {r['dropped']:>8} {f(r['zero_var_trained'], 17)} "
                  f"{f(r['format_valid'], 13)} {f(r['drawn_pass_rate'], 16)}")
        within = [r for r in d["rows"] if r["train_s"] <= budget + 1e-6]
        d["within_budget"] = {"budget_s": budget, "steps": len(within)}
        for k in keys:
            vals = [r[k] for r in within if r[k] is not None]
            d["within_budget"][k] = sum(vals) / len(vals) if vals else None
        print("within", budget, "s of training:", json.dumps(d["within_budget"]))
    if a.json:
        Path(a.json).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
