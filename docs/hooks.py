"""MkDocs hooks: the pages and tables of the site that are generated, so that they cannot drift.

``on_files`` generates three pages (the files of the same name in the repository are stubs that say so, for a
reader browsing the sources):

* ``reference/cli.md``: every ``medrlvr`` command and option, walked from :func:`medrlvr.cli.build_parser` (a
  command added to the parser appears without an edit here);
* ``reference/config.md``: every key of the configuration dataclasses (:data:`CONFIGS`) with its type, default and
  documentation, read from the field's docstring (the string under it) or the class docstring's ``name: text``
  entries;
* ``reference/api.md``: one mkdocstrings section per public module of ``src/medrlvr``.

``on_page_markdown`` replaces each ``<!-- generated: NAME [ARG] -->`` line in a page with the table NAME builds
from the code or from a results file under ``docs/`` (:data:`MARKERS`); an unknown marker stops the build.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SRC = ROOT / "src"
if str(SRC) not in sys.path:  # a clean clone builds without installing the package
    sys.path.insert(0, str(SRC))

MARKER = re.compile(r"^<!--\s*generated:\s*([\w-]+)\s*([^>]*?)\s*-->$", re.M)  # a marker is a line of its own

# (class, module, anchor prefix, key prefix in a run's config, where the keys are set)
CONFIGS = (
    ("TrainConfig", "medrlvr.train.config", "", "",
     "a run's YAML file and the `key=value` overrides of `medrlvr train`, `medrlvr demo` and `medrlvr verl prepare`"),
    ("MonitorConfig", "medrlvr.monitor", "monitor-", "monitor.",
     "the `monitor:` section of a run's config (`monitor: {entropy_min: 0.05}`) or `monitor.KEY=VALUE` overrides"),
    ("EvalConfig", "medrlvr.eval.benchmark", "eval-", "",
     "`medrlvr.eval.benchmark.evaluate(model, tokenizer, benchmarks, EvalConfig(...))`; `medrlvr eval` sets them "
     "from its flags"),
    ("SFTConfig", "medrlvr.sft", "sft-", "",
     "`medrlvr.sft.SFTConfig(...)`; `medrlvr sft` sets the ones named in brackets from its flags"),
    ("RewardConfig", "medrlvr.reward.config", "reward-", "",
     "`medrlvr.reward.score(..., config=RewardConfig(...))`; a run sets the `shaped` values through `reward_*` keys"),
    ("StageConfig", "medrlvr.analysis.stages", "stage-", "",
     "`medrlvr.analysis.classify(..., config=StageConfig(...))`: the stage rules' thresholds"),
)

# the evaluation table of the SmolLM2 results page: (results folder under docs/results, row label)
EVAL_RUNS = (
    ("smollm2-135m-loglik", "base loglik (all questions)"),
    ("smollm2-135m-loglik-200", "base loglik (first 200)"),
    ("sft-loglik-200", "SFT loglik (first 200)"),
    ("smollm2-135m-cot", "base cot (first 32)"),
    ("demo-grpo-cot", "demo GRPO cot (first 32)"),
)


# ------------------------------------------------------------------------------------------------ helpers
def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _clean_doc(text: str) -> str:
    """Docstring prose for a Markdown table cell: Sphinx roles as code, one line."""
    text = re.sub(r":(?:func|class|mod|data|meth|attr):`~?([^`]+)`", r"``\1``", text)
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------ CLI
def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: (a.help or "").replace("%%", "%") for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name) or "", sub


def walk_parser(parser: argparse.ArgumentParser, path=("medrlvr",), help_text=""):
    """(command words, one-line help, parser) for the parser and every sub-command below it, depth first."""
    yield path, help_text, parser
    for name, h, sub in _subcommands(parser):
        yield from walk_parser(sub, (*path, name), h)


def _anchor(words) -> str:
    return "-".join(words)


def _option_row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    fmt = parser._get_formatter()
    if action.option_strings:
        name = ", ".join(f"`{o}`" for o in action.option_strings)
    else:
        name = f"`{action.metavar or action.dest}`"
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        value = ", ".join(f"`{c}`" for c in action.choices)
    elif action.nargs == 0:
        value = "flag"
    else:
        value = f"`{action.metavar or action.dest.upper()}`" if action.option_strings else ""
        if action.nargs in ("*", "+"):
            value = (value + " ..." if value else "repeatable")
    if isinstance(action, argparse._AppendAction):
        value += " (repeatable)"
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS, [], ()) or action.nargs == 0 else f"`{default}`"
    helptext = fmt._expand_help(action) if action.help else ""
    return f"| {name} | {_cell(value)} | {_cell(shown)} | {_cell(helptext)} |"


def cli_reference() -> str:
    from medrlvr.cli import build_parser

    parser = build_parser()
    out = ["# Command line reference", "",
           "Generated from `medrlvr.cli.build_parser()` when the site is built: every command and option below is "
           "the parser's own. `medrlvr COMMAND --help` prints the same.", ""]
    entries = list(walk_parser(parser))
    out += ["| command | what it does |", "|---|---|"]
    for words, h, _p in entries[1:]:
        out.append(f"| [`{' '.join(words)}`](#{_anchor(words)}) | {_cell(h)} |")
    top = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    if top:
        out += ["", "Options of `medrlvr` itself, before any command:", "",
                "| option | value | default | meaning |", "|---|---|---|---|"]
        out += [_option_row(parser, a) for a in top]
    for words, h, p in entries[1:]:
        out += ["", f"## {' '.join(words)} {{#{_anchor(words)}}}", ""]
        if h:
            out += [h[0].upper() + h[1:] + ("" if h.endswith(".") else "."), ""]
        if p.description and p.description != h:
            out += [textwrap.dedent(p.description).strip(), ""]
        usage = p.format_usage().strip()
        out += ["```text", usage.removeprefix("usage: "), "```", ""]
        subs = list(_subcommands(p))
        if subs:
            out += ["Sub-commands: " + ", ".join(f"[`{n}`](#{_anchor((*words, n))})" for n, _h, _s in subs) + ".",
                    ""]
        rows = [a for a in p._actions
                if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if rows:
            out += ["| option | value | default | meaning |", "|---|---|---|---|"]
            out += [_option_row(p, a) for a in rows]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ config keys
def _attribute_docs(cls) -> dict[str, str]:
    """The string literal under each annotated field in the class body (the attribute-docstring convention)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:] + [None]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


ENTRY = re.compile(r"^(\s*)([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*): (.*)$")


def _class_doc_entries(cls) -> dict[str, str]:
    """``name: text`` (or ``a, b: text``) entries of the class docstring; deeper-indented lines continue one."""
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    fields = {f.name for f in dataclasses.fields(cls)}
    i = 0
    while i < len(lines):
        m = ENTRY.match(lines[i])
        names = m.group(2).split(", ") if m else []
        if m and all(n in fields for n in names):
            indent = len(m.group(1))
            text = [m.group(3)]
            i += 1
            while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > indent:
                text.append(lines[i].strip())
                i += 1
            parts = re.split(r";\s+([a-z_][a-z0-9_]*): ", " ".join(text))  # "a: text; b: text" holds two
            for n in names:
                docs.setdefault(n, parts[0])
            for n, t in zip(parts[1::2], parts[2::2]):
                if n in fields:
                    docs.setdefault(n, t)
        else:
            i += 1
    return docs


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        v = f.default
    elif f.default_factory is not dataclasses.MISSING:
        v = f.default_factory()
    else:
        return "(required)"
    return json.dumps(v) if isinstance(v, (str, bool)) or v is None else repr(v)


def config_classes():
    """(class, anchor prefix, key prefix, where it is set) for each entry of :data:`CONFIGS`."""
    for name, module, anchor, key_prefix, where in CONFIGS:
        yield getattr(importlib.import_module(module), name), anchor, key_prefix, where, module


def config_keys() -> dict[str, set[str]]:
    """Every documented key, per class name (``monitor.`` keys with their prefix)."""
    return {cls.__name__: {kp + f.name for f in dataclasses.fields(cls)}
            for cls, _a, kp, _w, _m in config_classes()}


def config_reference() -> str:
    out = ["# Configuration keys", "",
           "Generated from the dataclasses when the site is built: the type and default are the field's own, the "
           "text is the documentation in the source (the string under a field, or the class docstring's entry). An "
           "unknown key or a value out of range is refused by name (exit 2).", ""]
    for cls, anchor, key_prefix, where, module in config_classes():
        out += ["", f"## {cls.__name__} {{#{cls.__name__.lower()}}}", "",
                f"`{module}.{cls.__name__}`: set through {where}.", "",
                "| key | type | default | meaning |", "|---|---|---|---|"]
        docs = {**_class_doc_entries(cls), **_attribute_docs(cls)}
        for f in dataclasses.fields(cls):
            key = key_prefix + f.name
            typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            out.append(f'| <a id="{anchor}{f.name}"></a>`{key}` | `{_cell(typ)}` | `{_cell(_default(f))}` | '
                       f"{_cell(_clean_doc(docs.get(f.name, '')))} |")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ Python API
def public_modules() -> list[str]:
    """Dotted names of the public modules and packages under src/medrlvr (no ``_name``, no ``__main__``)."""
    names = []
    for p in sorted((SRC / "medrlvr").rglob("*.py")):
        rel = p.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(x.startswith("_") for x in parts):
            continue
        names.append(".".join(parts))
    return names


def api_reference() -> str:
    out = ["# Python API", "",
           "Generated with mkdocstrings from the docstrings in `src/medrlvr` (public names only), one section per "
           "module, in the order of the source tree. The [Python quick start](../guides/python.md) shows them in "
           "use.", ""]
    for mod in public_modules():
        out += [f"::: {mod}", "    options:", "      show_submodules: false", ""]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ markers
def _verl_mapping(_arg: str) -> str:
    from medrlvr.integrations.verl import mapping_table

    return mapping_table()


def _openrlhf_launch(_arg: str) -> str:
    from medrlvr.integrations.openrlhf import LAUNCH

    return "```bash\n" + LAUNCH + "\n```"


def _smollm2_eval(_arg: str) -> str:
    from medrlvr.eval.compare import comparison_table, load_runs

    runs = load_runs([DOCS / "results" / d for d, _ in EVAL_RUNS], [label for _, label in EVAL_RUNS])
    md, _data = comparison_table(runs)
    return "\n".join(line for line in md.splitlines() if line.startswith("|"))


def _results(arg: str) -> str:
    from medrlvr.eval.results import results_markdown

    res = json.loads((DOCS / "results" / arg / "results.json").read_text(encoding="utf-8"))
    lines = results_markdown(res).splitlines()[1:]  # the page gives its own title; sections as bold lines
    return "\n".join(f"**{x[3:]}**" if x.startswith("## ") else x for x in lines)


def _scaling(_arg: str) -> str:
    d = json.loads((DOCS / "perf" / "scaling_curves.json").read_text(encoding="utf-8"))
    m = d["meta"]
    out = [f"Command: `{m['command']}`; {m['cpu']}; torch {m['torch']}; started {m['started']}, "
           f"load average {m['load_avg_start']:.2f} at the start. Base point: {m['base']}. {m['dtypes']}.", "",
           "| axis | value | engine | dtype | model | rows | new tokens | tokens/s | peak RSS MB | fraction_of_limit |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for p in d["points"]:
        if p.get("tokens_per_s") is None:
            out.append(f"| {p['axis']} | {p['value']} | {p['engine']} | {p.get('dtype', '-')} | {p['model']} | "
                       f"{p['rows']} | {p['length']} | skipped | - | - |")
            continue
        out.append(f"| {p['axis']} | {p['value']} | {p['engine']} | {p['dtype']} | {p['model']} | {p['rows']} | "
                   f"{p['length']} | {p['tokens_per_s']:.1f} | {p['peak_rss_mb']:.0f} | "
                   f"{p['fraction_of_limit']:.3f} |")
    return "\n".join(out)


def _presets(_arg: str) -> str:
    import yaml

    from medrlvr.train.config import build_config

    keys = ("model", "algo", "engine", "template", "reward_scheme", "prompts_per_step", "samples_per_prompt",
            "max_new_tokens", "lr", "kl_coef", "max_steps")
    out = ["| preset | " + " | ".join(f"[`{k}`](../reference/config.md#{k})" for k in keys) + " | what it is for |",
           "|---" * (len(keys) + 2) + "|"]
    for path in sorted((SRC / "medrlvr" / "presets").glob("*.yaml")):
        cfg = build_config(path.stem, [])
        yaml.safe_load(path.read_text(encoding="utf-8"))  # a preset that does not parse stops the build
        head = []
        for x in path.read_text(encoding="utf-8").splitlines():
            if not x.startswith("#"):
                break
            head.append(x.lstrip("#").strip())
        first = re.split(r"(?<=[.:])\s", " ".join(head), maxsplit=1)[0].rstrip(":.")
        out.append(f"| `{path.stem}` | " + " | ".join(f"`{getattr(cfg, k)}`" for k in keys) + f" | {_cell(first)} |")
    return "\n".join(out)


MARKERS = {
    "verl-mapping": _verl_mapping,
    "openrlhf-launch": _openrlhf_launch,
    "smollm2-eval": _smollm2_eval,
    "results": _results,
    "scaling": _scaling,
    "presets": _presets,
}


def expand_markers(markdown: str, where: str = "") -> str:
    def sub(m: re.Match) -> str:
        name, arg = m.group(1), m.group(2)
        if name not in MARKERS:
            raise ValueError(f"{where}: unknown marker <!-- generated: {name} --> (known: {', '.join(MARKERS)})")
        return MARKERS[name](arg)

    return MARKER.sub(sub, markdown)


# ------------------------------------------------------------------------------------------------ MkDocs events
GENERATED = {
    "reference/cli.md": cli_reference,
    "reference/config.md": config_reference,
    "reference/api.md": api_reference,
}


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, make in GENERATED.items():
        stub = files.get_file_from_path(uri)  # the file in the repository says where the real page comes from
        if stub is not None:
            files.remove(stub)
        files.append(File.generated(config, uri, content=make()))
    return files


def on_page_markdown(markdown, page, config, files):
    return expand_markers(markdown, page.file.src_uri)
