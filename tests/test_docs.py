"""The README and the documentation site: short README, commands that parse, config keys that exist, a site that
builds with ``mkdocs build --strict`` and renders in a browser, and no development-history narration.

Commands are read from fenced code blocks and inline code spans of README.md and the hand-written pages under
docs/ (the generated pages are made from the parser itself). A command line is ``medrlvr ...``, optionally after
``$ `` or environment assignments, or the part after ``-m medrlvr`` (torchrun, python -m); backslash continuations
are joined, ``#`` comments dropped and the line cut at ``&&``, ``;`` or ``|``. A line is a *synopsis*, not a
command, and is skipped when it holds a placeholder: an alternative ``a|b`` outside quotes, ``[optional]``
brackets, ``...``, an upper-case word as the sub-command (``medrlvr COMMAND --help``) or an upper-case
``KEY=VALUE``; every other line must parse with :func:`medrlvr.cli.build_parser`. An inline span may name a command without its required arguments (``medrlvr
eval --mode cot`` in a sentence): only "the following arguments are required" is forgiven there; an unknown
command, option or value still fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medrlvr.cli import build_parser
from medrlvr.data.loaders import COLUMN_KEYS
from medrlvr.monitor import MonitorConfig
from medrlvr.study.config import StudyConfig
from medrlvr.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CHROMIUM = Path("/usr/bin/chromium")
# tool outputs kept as files (results.md tables, the sweep's own Markdown): excluded from the site (mkdocs.yml)
GENERATED_OUTPUTS = ("results/*/*.md", "perf/*.md")


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def doc_files() -> list[Path]:
    skip = {p for g in GENERATED_OUTPUTS for p in DOCS.glob(g)}
    return [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if p not in skip)


FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def code_of(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(info string, body) of each fenced block, and the inline code spans outside them."""
    blocks = [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]
    return blocks, INLINE.findall(FENCE.sub("", text))


REFUSAL_ROW = re.compile(r"^\|\s*`[^`]*`\s*\|\s*(?!0\s*\|)\d+\s*\|.*$", re.M)
"""A table row ``| `command` | exit code | ...`` whose exit code is not 0: it shows a refusal, so it is not parsed."""


def command_lines(text: str) -> list[tuple[str, bool]]:
    """(line, inline?) for every line of the fenced blocks and every inline code span, leaving out the commands of
    table rows that record a refusal (REFUSAL_ROW)."""
    blocks, spans = code_of(REFUSAL_ROW.sub("", text))
    lines = []
    for _info, body in blocks:
        lines += [(x, False) for x in body.replace("\\\n", " ").splitlines()]
    return lines + [(x, True) for x in spans]


LAUNCHERS = ("torchrun", "srun", "python", "python3")


def medrlvr_args(line: str) -> list[str] | None:
    """The arguments after ``medrlvr`` on a shell line, or None when the line runs no medrlvr command."""
    line = line.strip().removeprefix("$ ")
    try:
        toks = shlex.split(line, comments=True)
    except ValueError:
        return None
    while toks and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", toks[0]):  # VAR=value prefixes
        toks = toks[1:]
    for i, t in enumerate(toks):
        if t in ("&&", "||", ";", "|", ">", ">>", "2>", "&"):  # the command ends at a shell operator
            toks = toks[:i]
            break
    args = None
    if toks[:1] == ["medrlvr"]:
        args = toks[1:]
    elif toks[:1] and toks[0] in LAUNCHERS:
        for i in range(len(toks) - 1):
            if toks[i] == "-m" and toks[i + 1] == "medrlvr":
                args = toks[i + 2:]
                break
    return args or None  # a bare "medrlvr" names the tool, it runs nothing


def is_synopsis(line: str, args: list[str]) -> bool:
    unquoted = re.sub(r"\"[^\"]*\"|'[^']*'", "", line)
    return ("|" in unquoted or "[" in unquoted or "..." in unquoted
            or bool(args and re.fullmatch(r"[A-Z][A-Z_]*", args[0]))
            or any(re.fullmatch(r"[A-Z][A-Z_]*=[A-Z][A-Z_]*", a) for a in args))


def all_commands():
    out = []
    for path in doc_files():
        for line, inline in command_lines(path.read_text(encoding="utf-8")):
            args = medrlvr_args(line)
            if args is not None:
                out.append((path.relative_to(ROOT), line.strip(), args, is_synopsis(line, args), inline))
    return out


def parse(args: list[str]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(args), ""
        except SystemExit as e:
            return (None if e.code else "help"), err.getvalue().strip().splitlines()[-1:] or [f"exit {e.code}"]


# ------------------------------------------------------------------------------------------------ README
def test_readme_is_a_short_product_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the limit is 250 (move detail to docs/)"
    heads = [x for x in lines if x.startswith("## ")]
    for h in ("## Install", "## The demo", "## Commands", "## Python quick start", "## The run directory",
              "## File map", "## Results", "## Contributing"):
        assert h in heads, f"README.md lacks {h!r}"
    assert lines.index("## Install") < 40, "the first screen must say how to install and run"


def test_every_relative_link_of_the_readme_exists():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [x for x in links if not re.match(r"[a-z]+://", x)]
    assert len(local) >= 10
    missing = [x for x in local if not (ROOT / x).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


# ------------------------------------------------------------------------------------------------ commands
def test_every_command_in_the_readme_and_docs_parses():
    cmds = all_commands()
    checked = [c for c in cmds if not c[3]]
    bad = []
    for path, line, args, _syn, inline in checked:
        ns, err = parse(args)
        if ns is None and not (inline and "the following arguments are required" in str(err)):
            bad.append(f"{path}: {line}\n    -> {err}")
    assert not bad, "commands in the docs that the parser refuses:\n" + "\n".join(bad)
    # enough real commands are checked, from the README and from several pages
    full = [c for c in checked if not c[4]]
    assert len(full) >= 30, len(full)
    assert len({c[0] for c in full}) >= 8
    assert any(str(c[0]) == "README.md" for c in full)
    assert {c[2][0] for c in full} >= {"data", "train", "demo", "eval", "sft", "compare", "report",
                                                         "monitor", "verl"}


def test_the_synopsis_rule_does_not_hide_real_commands():
    assert is_synopsis("medrlvr data stats|validate SOURCE", ["data", "stats|validate", "SOURCE"])
    assert is_synopsis("medrlvr train --config X [key=value ...]", ["train"])
    assert is_synopsis("medrlvr COMMAND --help", ["COMMAND", "--help"])
    line = 'medrlvr eval --model m --benchmarks a.csv --columns "options=a|b|c"'
    assert not is_synopsis(line, medrlvr_args(line))          # a | inside quotes is a value, not a placeholder
    assert medrlvr_args("MEDRLVR_X=1 medrlvr demo") == ["demo"]
    assert medrlvr_args("torchrun --nproc-per-node 2 -m medrlvr train --config tiny") == ["train", "--config", "tiny"]
    assert medrlvr_args("make demo   # = medrlvr demo") is None
    assert medrlvr_args("__main__.py   python -m medrlvr (and the worker entry)") is None  # a file map line
    assert medrlvr_args("$ medrlvr data export x.jsonl --out y && cat y") == ["data", "export", "x.jsonl", "--out", "y"]
    assert parse(["train", "--no-such-flag"])[0] is None and parse(["nope"])[0] is None


CONFIG_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} | {
    f"monitor.{f.name}" for f in dataclasses.fields(MonitorConfig)} | {f.name for f in dataclasses.fields(StudyConfig)}
COLUMN_MAP_KEYS = set(COLUMN_KEYS)
ASSIGNMENTS = re.compile(r"^[a-z_][a-z0-9_.]*=[^\s=]+(?:\s+[a-z_][a-z0-9_.]*=[^\s=]+)*$")


def test_every_config_key_the_docs_name_exists():
    """key=value overrides of train / demo / verl prepare commands, the keys of YAML blocks (a ``monitor:`` dict
    holds MonitorConfig keys) and inline ``key=value`` spans (config keys or column-map keys) all exist. A dotted
    key other than ``monitor.*`` belongs to another tool (verl's ``data.shuffle``) and is not checked."""
    monitor_keys = {f.name for f in dataclasses.fields(MonitorConfig)}
    bad, seen = [], 0
    for path, line, args, syn, _inline in all_commands():
        if syn:
            continue
        ns, _ = parse(args)
        if ns is None or not hasattr(ns, "overrides") or args[:2] == ["verl", "launch"]:
            continue
        for ov in ns.overrides:
            seen += 1
            if ov.split("=", 1)[0] not in CONFIG_KEYS:
                bad.append(f"{path}: {line}: {ov}")
    for path in doc_files():
        blocks, spans = code_of(path.read_text(encoding="utf-8"))
        for info, body in blocks:
            if info == "yaml":
                for k, v in yaml.safe_load(body).items():
                    seen += 1
                    if k not in CONFIG_KEYS:
                        bad.append(f"{path}: yaml key {k}")
                    if k == "monitor":
                        bad += [f"{path}: monitor key {m}" for m in v if m not in monitor_keys]
        for span in spans:
            if ASSIGNMENTS.match(span):
                for k in re.findall(r"([a-z_][a-z0-9_.]*)=", span):
                    if "." in k and not k.startswith("monitor."):
                        continue
                    seen += 1
                    if k not in CONFIG_KEYS | COLUMN_MAP_KEYS:
                        bad.append(f"{path.relative_to(ROOT)}: `{span}`: {k}")
    assert not bad, "config keys named in the docs that do not exist:\n" + "\n".join(bad)
    assert seen >= 30, seen


def test_every_config_field_is_documented_in_the_reference():
    hooks = _hooks()
    missing = []
    for cls, _anchor, _kp, _where, _mod in hooks.config_classes():
        docs = {**hooks._class_doc_entries(cls), **hooks._attribute_docs(cls)}
        missing += [f"{cls.__name__}.{f.name}" for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert not missing, f"config fields without documentation (a string under the field): {missing}"
    page = hooks.config_reference()
    for key in ("lr", "reward_scheme", "monitor.entropy_min", "scoring_dtype", "lr_grid", "template_echo_similarity"):
        assert f"`{key}`" in page, key


def test_the_cli_reference_lists_every_command_and_option():
    hooks = _hooks()
    page = hooks.cli_reference()
    for words, _h, p in hooks.walk_parser(build_parser()):
        if len(words) > 1:
            assert f"## {' '.join(words)} {{#{'-'.join(words)}}}" in page
        for a in p._actions:
            for opt in a.option_strings:
                if opt not in ("-h", "--help"):
                    assert f"`{opt}`" in page, (words, opt)


def test_docs_paths_named_in_the_code_exist():
    named = set()
    for base in ("src", "bench", "experiments"):
        for p in (ROOT / base).rglob("*.py"):
            named |= set(re.findall(r"docs/[\w./-]+\.md", p.read_text(encoding="utf-8")))
    for p in (ROOT / "src" / "medrlvr" / "presets").glob("*.yaml"):
        named |= set(re.findall(r"docs/[\w./-]+\.md", p.read_text(encoding="utf-8")))
    assert named, "the code names no docs page: the pattern is wrong"
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, f"pages named in the code that do not exist: {missing}"


# ------------------------------------------------------------------------------------------------ narration
FORBIDDEN = [
    (re.compile(r"\bissues?\s*#?\d+", re.I), "a tracker issue number"),
    (re.compile(r"(?<![&\w/])#\d+\b"), "a tracker reference"),
    (re.compile(r"\bsessions?\b", re.I), "'session'"),
    (re.compile(r"\b(this time|the session before|earlier sessions?|previous session|before this round)\b", re.I),
     "development-history narration"),
]


def test_no_issue_numbers_sessions_or_private_run_paths():
    default_out = build_parser().parse_args(["demo"]).output  # a reader has the default output of a command
    bad = []
    for path in doc_files():
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for rx, what in FORBIDDEN:
                if rx.search(line):
                    bad.append(f"{path.relative_to(ROOT)}:{i}: {what}: {line.strip()[:100]}")
            for m in re.finditer(r"\bruns/[\w./<>-]*", line):
                path_ = m.group(0).rstrip(".,)")
                if path_ != default_out and not path_.startswith(default_out + "/"):
                    bad.append(f"{path.relative_to(ROOT)}:{i}: a path under runs/: {m.group(0)}")
    assert not bad, "\n".join(bad)


def test_every_results_page_gives_its_provenance():
    pages = [p for p in (DOCS / "results").glob("*.md") if p.name != "index.md"]
    assert len(pages) >= 8
    for p in pages:
        text = p.read_text(encoding="utf-8")
        for word in ("date", "cpu", "commit", "command"):
            assert re.search(rf"\b{word}", text, re.I), f"{p.name}: does not give its {word}"
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{p.name}: no date (YYYY-MM-DD)"
        assert re.search(r"\b[0-9a-f]{7,40}\b", text), f"{p.name}: no commit hash"


def test_the_python_quick_start_runs(tmp_path):
    """The README's Python block, as a user would paste it (the tiny model: about a minute on a CPU)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = [body for info, body in code_of(text)[0] if info == "python"]
    assert len(code) == 1
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TQDM_DISABLE": "1"}
    r = subprocess.run([sys.executable, "-c", code[0]], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    assert out[1] == "1.0 True B []"                              # the scored completion
    acc, ci = out[-1].split(" ", 1)
    assert 0.0 <= float(acc) <= 1.0 and ci.startswith("[")
    assert (tmp_path / "quickstart-run" / "final" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ the site
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("the docs extra is not installed (make install installs it: pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    return r, out


def test_the_site_builds_with_strict(site):
    r, out = site
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "WARNING" not in r.stderr, r.stderr[-3000:]
    for page in ("index.html", "guides/training.html", "reference/cli.html", "reference/config.html",
                 "reference/api.html", "results/smollm2-eval.html", "decisions/cpu-demo-preset.html"):
        assert (out / page).is_file(), page
    cli = (out / "reference" / "cli.html").read_text(encoding="utf-8")
    assert 'id="medrlvr-train"' in cli and "--allow-change" in cli
    api = (out / "reference" / "api.html").read_text(encoding="utf-8")
    assert 'id="medrlvr.reward.score"' in api and 'id="medrlvr.train.config.TrainConfig"' in api
    # the evaluation table is the one the results files give, not a copy
    from medrlvr.eval.compare import comparison_table, load_runs

    hooks = _hooks()
    md, _ = comparison_table(load_runs([DOCS / "results" / d for d, _ in hooks.EVAL_RUNS],
                                       [lab for _, lab in hooks.EVAL_RUNS]))
    row = next(x for x in md.splitlines() if x.startswith("| base loglik (all questions)"))
    first_cell = row.split(" | ")[1]
    assert first_cell in (out / "results" / "smollm2-eval.html").read_text(encoding="utf-8")


def test_an_unknown_marker_stops_the_build():
    hooks = _hooks()
    with pytest.raises(ValueError, match="unknown marker"):
        hooks.expand_markers("x\n<!-- generated: nothing-like-this -->\n", "p.md")
    assert hooks.expand_markers("`<!-- generated: not-a-line -->`", "p.md") == "`<!-- generated: not-a-line -->`"


@contextlib.contextmanager
def serve(folder: Path):
    """The built site over HTTP on a free local port (the site's search index does not load from file://)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian chromium not installed at /usr/bin/chromium (run `make chromium`)"
)
def test_home_page_and_a_guide_render_in_headless_chromium(site):
    r, out = site
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs the 'playwright' Python package (pip install playwright)")
    with serve(out) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                          "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            outside: list[str] = []
            page.on("request", lambda req: None if req.url.startswith(base) or req.url.startswith("data:")
                    else outside.append(req.url))
            page.goto(f"{base}/index.html", wait_until="load")
            assert page.locator("h1").first.inner_text().replace("¶", "").strip() == "medrlvr"
            assert page.locator("article table").count() >= 2
            nav = page.locator("nav.md-nav--primary").first.inner_text()
            for section in ("Guides", "Reference", "Results", "Decisions", "Training", "Command line"):
                assert section in nav, section
            page.goto(f"{base}/guides/training.html", wait_until="load")
            assert page.locator("h1").first.inner_text().replace("¶", "").strip() == "Training"
            presets = page.locator("article table").first
            assert presets.is_visible() and "cpu-demo" in presets.inner_text()
            page.locator("article a[href$='config.html#lr']").first.click()
            page.wait_for_load_state("load")
            assert page.url.endswith("config.html#lr")
            row = page.locator("tr", has=page.locator("[id='lr']"))
            assert row.count() == 1 and "float" in row.inner_text() and "1e-06" in row.inner_text()
            assert not errors, errors
            assert not outside, f"the site requested pages outside itself: {outside}"
        finally:
            browser.close()
