"""``study.html``: one self-contained page with the study's table, figures, paired tests, and each RL arm's
monitor verdict (:func:`medrlvr.monitor.replay_run`) with a link to its full run report."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from pathlib import Path
from typing import Any

from medrlvr import fileio
from medrlvr.study.config import StudyConfig
from medrlvr.study.markdown import format_rows, pair_rows, table_rows, verdict_lines
from medrlvr.study.steps import arm_dir, instance_name

_E = html.escape
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}
main{max-width:1200px;margin:auto;padding:16px 24px 64px}h1{font-size:1.5em}
h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:4px}.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.88em;background:#fff}
th,td{border:1px solid #ddd;padding:4px 7px;text-align:left}
th{background:#f0f0f0}.chart{max-width:100%;height:auto;background:#fff;border:1px solid #e3e3e3;margin:6px 0}
.ok{color:#2a7d4f}.alert{color:#b00020}.missing{color:#8a5300}
"""


def _table(head: list[str], rows: list[list[str]], tid: str) -> str:
    return (f'<table id="{tid}"><thead><tr>' + "".join(f"<th>{_E(h)}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{_E(c)}</td>" for c in r) + "</tr>" for r in rows) + "</tbody></table>")


def _img(path: Path | None, alt: str, iid: str) -> str:
    if path is None or not path.is_file():
        return "<p>(not available yet)</p>"
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img id="{iid}" class="chart" alt="{_E(alt)}" src="data:image/png;base64,{b64}">'


def _rl_arms(cfg: StudyConfig, out: Path) -> str:
    from medrlvr.monitor import replay_run

    items = []
    for name in cfg.rl_arms():
        for seed in cfg.seeds:
            inst = instance_name(name, seed)
            d = arm_dir(out, inst)
            if not (d / "metrics.jsonl").is_file():
                items.append(f'<li data-arm="{_E(inst)}">{_E(inst)}: not trained yet</li>')
                continue
            alerts, _notes = replay_run(d)
            verdict = ('<span class="ok">no monitor alert</span>' if not alerts else
                       '<span class="alert">' + _E(", ".join(f"{a.monitor} since step {a.onset_step}"
                                                            for a in alerts)) + "</span>")
            rep = d / "report" / "report.html"
            link = (f' · <a href="{_E(rep.relative_to(out).as_posix())}">full run report</a>' if rep.is_file()
                    else "")
            items.append(f'<li data-arm="{_E(inst)}"><b>{_E(inst)}</b>: {verdict}{link}</li>')
    return "<ul>" + "".join(items) + "</ul>" if items else "<p>(no RL arm)</p>"


def study_html(data: dict[str, Any], cfg: StudyConfig, out: Path, figs: dict[str, Path | None]) -> Path:
    """Write ``out/study.html`` and return its path."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>medrlvr study: {_E(data['model'])}</title><style>{CSS}</style></head><body><main>",
             f"<h1>Study: {_E(data['model'])}</h1>",
             f'<p class="meta">{_E(str(out.resolve()))} · generated '
             f'{_E(_dt.datetime.now().isoformat(timespec="seconds"))} · seeds {_E(str(data["seeds"]))}</p>',
             "<h2>Accuracy</h2>", _table(*table_rows(data), "results"),
             "<ul>" + "".join(f"<li>{_E(v)}</li>" for v in verdict_lines(data)) + "</ul>",
             _img(figs.get("accuracy"), "accuracy per arm with intervals and the random baseline", "fig-accuracy"),
             "<details><summary>Answer format per arm and benchmark</summary>", _table(*format_rows(data), "format"),
             "</details>", "<h2>Paired tests</h2>",
             _table(*pair_rows(data), "pairs") if data["pairs"] else "<p>(no pair with both arms evaluated)</p>",
             "<h2>Training dynamics</h2>",
             _img(figs.get("dynamics"), "RL arms: accuracy, reward, format and length against step", "fig-dynamics"),
             "<h2>RL arms: monitors and run reports</h2>", _rl_arms(cfg, out)]
    if data["missing"]:
        parts.append('<h2>Not finished</h2><p class="missing">' + _E(", ".join(data["missing"])) + "</p>")
    parts.append("</main></body></html>")
    path = out / "study.html"
    fileio.atomic_write_text(path, "\n".join(parts), label="study.html")
    return path
