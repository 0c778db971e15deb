"""The layers of DESIGN §1, checked on the source (``ast``, nothing imported): every module of
``speechlab/`` belongs to one layer and imports only from its own layer and the layers below,
no import cycle runs through the package, and the command-line parts stay in ``cli/``.

Top to bottom (a layer may import the layers named after its arrow, and its own)::

    cli        speechlab/cli/, __main__.py  -> anything; nothing below imports it
    tasks      LightningModules             -> decode lm nn functional ops data scoring callbacks base
    decode     beam searches                -> lm nn functional ops base
    lm         n-gram LMs (KenLM)           -> data base
    nn         nn.Modules                   -> functional ops base
    functional pure tensor functions        -> ops
    ops        the compiled op's loader     -> base
    data       manifests ... data modules   -> base
    scoring    score.py, metrics.py         -> data base (the normalizer of data/text.py)
    callbacks  callbacks.py (Lightning)     -> base
    base       errors io progress dist parallel, the package __init__ -> base

Every import counts: top-level, function-local and ``TYPE_CHECKING`` ones (a local import that
climbs is still a dependency on the layer above, and lets a cycle live on).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "speechlab"

#: layer -> the layers it may import (besides itself)
ALLOWED: dict[str, frozenset[str]] = {
    "cli": frozenset({"tasks", "decode", "lm", "nn", "functional", "ops", "data", "scoring",
                      "callbacks", "base"}),
    "tasks": frozenset({"decode", "lm", "nn", "functional", "ops", "data", "scoring", "callbacks",
                        "base"}),
    "decode": frozenset({"lm", "nn", "functional", "ops", "base"}),
    "lm": frozenset({"data", "base"}),
    "nn": frozenset({"functional", "ops", "base"}),
    "functional": frozenset({"ops"}),
    "ops": frozenset({"base"}),
    "data": frozenset({"base"}),
    "scoring": frozenset({"data", "base"}),
    "callbacks": frozenset({"base"}),
    "base": frozenset(),
}
#: first name under ``speechlab.`` -> layer (packages and top-level modules)
LAYER_OF: dict[str, str] = {
    "cli": "cli", "__main__": "cli",
    "tasks": "tasks", "decode": "decode", "lm": "lm", "nn": "nn", "functional": "functional",
    "ops": "ops", "data": "data",
    "score": "scoring", "metrics": "scoring",
    "callbacks": "callbacks",
    "errors": "base", "io": "base", "progress": "base", "dist": "base", "parallel": "base",
}
#: third-party packages a layer must not import (DESIGN: nn/ never imports Lightning)
LIGHTNING = ("pytorch_lightning", "lightning")
NO_LIGHTNING = ("nn", "functional", "ops", "decode")
#: third-party packages functional/ may import ("functional/ imports only torch")
FUNCTIONAL_THIRD_PARTY = ("torch",)


@dataclass(frozen=True)
class Import:
    """One import statement's target, as a module of the package when it names one."""

    source: str  # importing module, e.g. "speechlab.tasks.gram_ctc"
    target: str  # imported module, e.g. "speechlab.data.grams" or "torch.nn"
    path: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root.parent)}:{self.line}"


def module_names(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file under ``root`` (the package folder)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports(root: Path) -> list[Import]:
    """Every import of every module under ``root``; ``from P import x`` targets ``P.x`` when that
    is a module of the package, else ``P``."""
    modules = module_names(root)
    found = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found += [Import(name, a.name, path, node.lineno) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.append(Import(name, sub if sub in modules else base, path, node.lineno))
    return found


def is_ours(module: str) -> bool:
    return module == "speechlab" or module.startswith("speechlab.")


def layer(module: str) -> str | None:
    """The layer of a ``speechlab`` module (``None``: in no layer, or not ours)."""
    if module == "speechlab":
        return "base"
    return LAYER_OF.get(module.split(".")[1]) if is_ours(module) else None


def unmapped(root: Path) -> list[str]:
    """Modules of the package that belong to no layer."""
    return [f"{path.relative_to(root.parent)}: module {name} is in no layer (add it to LAYER_OF)"
            for name, path in module_names(root).items() if layer(name) is None]


def climbing_imports(root: Path) -> list[str]:
    """Each import of a layer that its importer may not import, as ``file:line: ...``."""
    bad = []
    for imp in imports(root):
        if not is_ours(imp.target):
            continue
        src, dst = layer(imp.source), layer(imp.target)
        if src is None or dst is None or src == dst or dst in ALLOWED[src]:
            continue
        bad.append(f"{imp.where(root)}: {imp.source} ({src}) imports {imp.target} ({dst})")
    return bad


def forbidden_third_party(root: Path) -> list[str]:
    """Lightning below tasks/; anything but torch (and the standard library) in functional/;
    argparse outside cli/ (every tool's argument parsing lives there)."""
    bad = []
    for imp in imports(root):
        if is_ours(imp.target):
            continue
        top, src = imp.target.split(".")[0], layer(imp.source)
        if src in NO_LIGHTNING and top in LIGHTNING:
            bad.append(f"{imp.where(root)}: {imp.source} ({src}) imports Lightning ({imp.target})")
        if (src == "functional" and top not in FUNCTIONAL_THIRD_PARTY
                and top not in sys.stdlib_module_names):
            bad.append(f"{imp.where(root)}: {imp.source} (functional) imports {imp.target}")
        if top == "argparse" and src != "cli":
            bad.append(f"{imp.where(root)}: {imp.source} ({src}) parses arguments (argparse): "
                       "command-line parts go to speechlab/cli/")
    return bad


def import_cycles(root: Path) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself)
    of the package's import graph, each sorted; Tarjan's algorithm, iteratively."""
    graph: dict[str, set[str]] = {name: set() for name in module_names(root)}
    for imp in imports(root):
        if imp.target in graph:
            graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        cycles.append(sorted(component))
    return sorted(cycles)


# ------------------------------------------------------------------------------------ tests


def test_every_module_is_in_a_layer():
    assert not unmapped(PACKAGE), "\n".join(unmapped(PACKAGE))


def test_no_import_climbs_a_layer():
    bad = climbing_imports(PACKAGE)
    assert not bad, "imports that climb a layer (DESIGN §1):\n" + "\n".join(bad)


def test_lightning_stays_above_nn_functional_stays_torch_and_argparse_stays_in_cli():
    bad = forbidden_third_party(PACKAGE)
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    cycles = import_cycles(PACKAGE)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_find_what_they_look_for(tmp_path):
    """On a small package with one of each fault: a module in no layer, an nn module importing
    a task (function-locally), a data module with argparse, and a cycle inside tasks/."""
    pkg = tmp_path / "speechlab"
    files = {
        "__init__.py": "",
        "odd.py": "",
        "nn/__init__.py": "",
        "nn/enc.py": "def f():\n    from speechlab.tasks.a import A\n",
        "data/__init__.py": "",
        "data/tool.py": "import argparse\nfrom speechlab import io\n",
        "io.py": "",
        "tasks/__init__.py": "",
        "tasks/a.py": "from speechlab.tasks import b\nfrom speechlab.nn.enc import f\n",
        "tasks/b.py": "from . import a\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    assert [line.split(": ", 1)[1] for line in unmapped(pkg)] == [
        "module speechlab.odd is in no layer (add it to LAYER_OF)"]
    assert climbing_imports(pkg) == [
        "speechlab/nn/enc.py:2: speechlab.nn.enc (nn) imports speechlab.tasks.a (tasks)"]
    assert [line.split(": ", 1)[0] for line in forbidden_third_party(pkg)] == [
        "speechlab/data/tool.py:1"]
    # a <-> b, and through nn.enc's climbing import: a -> nn.enc -> a
    assert import_cycles(pkg) == [["speechlab.nn.enc", "speechlab.tasks.a", "speechlab.tasks.b"]]


@pytest.mark.parametrize("module", ["speechlab.cli", "speechlab.cli.score", "speechlab.cli.lm",
                                    "speechlab.cli.data"])
def test_light_commands_import_neither_torch_nor_lightning(module):
    """``speechlab score`` (a stated goal), ``lm ngram`` and ``data synth|farfield`` start
    without torch: their modules import it nowhere at the top (``data validate`` imports lhotse,
    and with it torch, when it runs)."""
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                                    os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]", out
