"""The package's layout: no import circle, no import of another module's private name, and the README's
file map matches the tree.

Imports are read with ``ast`` from every module of ``src/medrlvr``, those inside functions included (a
deferred import hides a circle, it does not remove it). Importing ``a.b.c`` runs ``a/__init__`` and
``a/b/__init__`` first, so it counts as an import of those packages too (except a module's own packages).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "medrlvr"


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (p, is_pkg)
    return out


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """``({module: modules it imports}, [(module, "target.private_name")])``."""
    mods = _modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    private: list[tuple[str, str]] = []
    for m, (path, is_pkg) in mods.items():
        base = m if is_pkg else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "medrlvr"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = base.split(".")
                    parts = parts[:len(parts) - (node.level - 1)]
                    src = ".".join(parts) + (f".{node.module}" if node.module else "")
                else:
                    src = node.module or ""
                if src.split(".")[0] != "medrlvr":
                    continue
                for a in node.names:
                    full = f"{src}.{a.name}"
                    if full in mods:
                        targets.append(full)
                    else:
                        targets.append(src)
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            private.append((m, full))
            for t in targets:
                o = owner(t)
                if o is None or o == m:
                    continue
                edges[m].add(o)
                own = {".".join(m.split(".")[:i]) for i in range(1, m.count(".") + 2)}
                parts = o.split(".")
                for i in range(2, len(parts)):
                    anc = ".".join(parts[:i])
                    if anc in mods and anc not in own:
                        edges[m].add(anc)
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_checker_sees_a_circle_and_a_private_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    edges, _ = _graph()
    assert len(edges) > 40
    assert "medrlvr.rollout.fast" in edges["medrlvr.train.trainer"] or "medrlvr.rollout" in edges["medrlvr.train.trainer"]
    assert _cycles(edges) == []


def test_no_import_of_another_modules_private_name():
    _, private = _graph()
    assert private == []


def test_import_graph_is_layered():
    """The bottom layers import nothing of the layers above them."""
    edges, _ = _graph()

    def reach(m: str) -> set[str]:
        seen, todo = set(), [m]
        while todo:
            for t in edges[todo.pop()]:
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return seen

    for low in ("medrlvr.records", "medrlvr.reward", "medrlvr.reward.schemes", "medrlvr.algos", "medrlvr.rundir"):
        above = {m for m in reach(low) if m.startswith(("medrlvr.train", "medrlvr.eval", "medrlvr.analysis",
                                                         "medrlvr.integrations", "medrlvr.cli", "medrlvr.monitor"))}
        assert above == set(), (low, above)


def _file_map() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## File map\n(.*?)^```\n(.*?)^```", text, flags=re.S | re.M)
    assert m, "README.md has no '## File map' section with a code block"
    paths, stack = [], []
    for line in m.group(2).splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        stack = stack[:depth] + [name]
        paths.append("".join(stack))
    return paths


def test_readme_file_map_matches_the_tree():
    listed = _file_map()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    modules = {str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if p.name != "__init__.py"}
    packages = {str(p.parent.relative_to(PKG)) + "/" for p in PKG.rglob("__init__.py")
                if p.parent != PKG and p.read_text(encoding="utf-8").strip()}
    got = set(listed)
    assert {x for x in got if x.endswith(".py")} == modules
    assert {x for x in got if x.endswith("/")} == packages


def test_tests_and_scripts_import_public_names_only():
    """Tests, benchmarks and experiments use medrlvr's public names (a private one may change without notice)."""
    bad = []
    for folder in ("tests", "tests_verl", "bench", "experiments"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "medrlvr":
                    bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == []


def test_license_file_and_spdx_expression():
    """pyproject's ``project.license`` is the SPDX string (not the deprecated table) and the LICENSE file it
    names holds the Apache-2.0 text."""
    import tomllib

    proj = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert proj["license"] == "Apache-2.0" and proj["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
