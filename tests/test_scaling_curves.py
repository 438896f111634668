"""``bench/rollout.py sweep``'s plan and writers on synthetic points: no model runs, no timings."""

import importlib.util
import io
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "rollout.py"


@pytest.fixture(scope="module")
def sc():
    spec = importlib.util.spec_from_file_location("bench_rollout", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


META = {"command": "python bench/rollout.py sweep --test", "cpu": "cpu 'Test CPU', 2 logical cpus", "torch": "2.x",
        "threads": 2, "started": "today", "load_avg_start": 0.5, "base": "32 rows, 128 new tokens, 135m",
        "dtypes": "fast bf16, generate fp32", "memory_note": "peak RSS: ru_maxrss", "limit_note": "roofline"}


def _point(axis, value, engine, rows=32, length=128, model="135m", tps=None, skip=None):
    p = {"axis": axis, "value": value, "engine": engine, "rows": rows, "length": length, "model": model, "samples": 4,
         "dtype": "bf16" if engine == "fast" else "fp32"}
    if skip:
        p["skip"] = skip
    else:
        tok = rows * length
        p.update(tokens=tok, seconds=tok / tps, tokens_per_s=tps, peak_rss_mb=1000.0 + rows, fraction_of_limit=0.25,
                 engine_dtype=p["dtype"], threads=1 if engine == "fast" else 2)
    return p


def _points():
    pts = []
    for r in (8, 32, 128):
        pts.append(_point("rows", r, "fast", rows=r, tps=50.0 * r ** 0.5))
        pts.append(_point("rows", r, "hf", rows=r, tps=10.0 * r ** 0.5) if r < 128 else
                   _point("rows", r, "hf", rows=r, skip="skipped: 128 rows x 128 tokens = 16384 > --hf-max-tokens 8192"))
    for n in (64, 128):
        pts += [_point("length", n, "fast", length=n, tps=200.0), _point("length", n, "hf", length=n, tps=40.0)]
    for m in ("135m", "1.7b"):
        pts += [_point("model", m, "fast", model=m, tps=300.0 if m == "135m" else 20.0),
                _point("model", m, "hf", model=m, skip="failed: exit 1: MemoryError") if m == "1.7b" else
                _point("model", m, "hf", model=m, tps=60.0)]
    return pts


def test_table_json_and_png_hold_every_point(sc, tmp_path):
    pts = _points()
    sc.write_all(tmp_path, META, pts)
    md = (tmp_path / "scaling_curves.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| axis")]
    assert len(rows) == len(pts)
    assert f"`{META['command']}`" in md and "Test CPU" in md
    assert "\n\n| axis | value | engine |" in md         # a blank line before the table, or it is not one
    skipped = [ln for ln in rows if "skipped:" in ln or "failed:" in ln]
    assert len(skipped) == 2
    assert any(ln.startswith("| rows | 128 | generate |") and "> --hf-max-tokens 8192" in ln for ln in skipped)
    assert any(ln.startswith("| model | 1.7b | generate |") and "failed: exit 1: MemoryError" in ln for ln in skipped)
    # a measured row carries its figures: tokens/s, peak RSS, fraction_of_limit, threads; a skipped one has none
    assert any(ln.startswith("| rows | 32 | fast | bf16 | 135m | 32 | 128 | 4096 |") and "| 282.8 | 1032 | 0.250 | 1 |" in ln
               for ln in rows)
    assert all([c.strip() for c in ln.strip("|").split("|")][7:13] == ["-"] * 6 for ln in skipped)
    data = json.loads((tmp_path / "scaling_curves.json").read_text())
    assert data["meta"]["command"] == META["command"] and data["points"] == pts
    png = (tmp_path / "scaling_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20)
    assert img.width > 1000 and img.height > 600 and (colors is None or len(colors) > 20)
    assert not list(tmp_path.glob(".*tmp*"))          # temporary files renamed into place


def test_plan_marks_capped_generate_points_and_shares_the_base_point(sc):
    a = sc.parse(["sweep", "--hf-max-tokens", "4096", "--hf-max-rows", "16", "--dtype", "bf16"])
    pts = sc.plan(a)
    assert len(pts) == 2 * (6 + 5 + 3)
    by = {(p["axis"], p["value"], p["engine"]): p for p in pts}
    assert by[("rows", 64, "hf")]["skip"] == "skipped: 64 rows x 128 tokens = 8192 > --hf-max-tokens 4096"
    assert by[("rows", 32, "hf")]["skip"] == "skipped: 32 rows > --hf-max-rows 16"
    assert "skip" not in by[("rows", 16, "hf")] and not any(p.get("skip") for p in pts if p["engine"] == "fast")
    base = {sc.key(by[k]) for k in (("rows", 32, "fast"), ("length", 128, "fast"), ("model", "135m", "fast"))}
    assert len(base) == 1                              # one run of the base point serves the three axes
    assert [p["engine"] for p in sc.plan(sc.parse(["sweep", "--skip-hf", "--quick", "--dtype", "fp32"]))] == ["fast"] * 6


def test_bad_input_is_one_line_and_exit_2(sc, capsys):
    for argv, msg in ((["sweep", "--rows", "8,x"], "--rows: expected comma-separated whole numbers, got '8,x'"),
                      (["sweep", "--models", "135m,9b"], "unknown model / engine ['9b']"),
                      (["sweep", "--samples", "0"], "must be >= 1"),
                      (["throughput", "--rows", "0"], "every --rows count must be >= 1"),
                      (["ab", "--base", "HEAD", "--pairs", "0"], "must be >= 1"),
                      (["bf16", "--repeats", "0"], "--repeats must be >= 1")):
        with pytest.raises(SystemExit) as e:
            sc.parse(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and msg in err[-1] and "Traceback" not in "\n".join(err), (argv, err)


def test_ab_base_that_is_no_revision_is_a_value_error(sc):
    with pytest.raises(ValueError):
        sc.load_base("no-such-revision-0123456789")
