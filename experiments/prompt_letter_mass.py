"""How much next-token probability a model puts on the option letters after each prompt of an exported lm-eval
task directory (``medrlvr data export SOURCE --format lm-eval --out DIR``): our ``direct`` prompt (``prompt``) and
lm-eval's ``medqa_4options`` prompt (``lmeval_prompt``).

    PYTHONPATH=src python experiments/prompt_letter_mass.py DIR [--model smollm2-135m]

Prints per prompt: the mean probability of " A" + " B" + ... (the full-vocabulary softmax at the last prompt
position, fp32), the top letter's mean share of that mass, the mean and smallest log-probability margin between the
best and second-best letter, and the predicted letters.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task_dir")
    ap.add_argument("--model", default="smollm2-135m")
    a = ap.parse_args(argv)
    import torch

    from medrlvr.eval.benchmark import encode
    from medrlvr.models import load_policy

    files = sorted(Path(a.task_dir).glob("*.jsonl"))
    if not files:
        print(f"prompt_letter_mass: {a.task_dir}: no exported .jsonl", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in files[0].read_text(encoding="utf-8").splitlines() if line.strip()]
    model, tok = load_policy(a.model)
    model.eval()
    for field in ("prompt", "lmeval_prompt"):
        mass, top_share, margin, preds = [], [], [], []
        with torch.no_grad():
            for r in rows:
                ids = [encode(tok, " " + L)[0] for L in r["choices"]]
                lp = torch.log_softmax(model(torch.tensor([encode(tok, r[field])])).logits[0, -1].float(), -1)[ids]
                p = lp.exp()
                mass.append(float(p.sum()))
                top_share.append(float(p.max() / p.sum()))
                s = sorted(lp.tolist(), reverse=True)
                margin.append(s[0] - s[1])
                preds.append(r["choices"][int(lp.argmax())])
        n = len(rows)
        counts = {L: preds.count(L) for L in sorted(set(preds))}
        print(f"{field}: mean probability on the letters {sum(mass) / n:.4f}; top letter's share of it "
              f"{sum(top_share) / n:.3f}; margin best vs second {sum(margin) / n:.3f} (min {min(margin):.3f}); "
              f"predicted {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
