"""Dependencies: every third-party module that speechlab/ imports is declared in pyproject.toml,
and a test module whose optional piece is missing skips with the reason instead of stopping
pytest at collection."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections import defaultdict
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]

#: import name -> distribution name, where they differ (every other import is its distribution)
DISTRIBUTION = {"sklearn": "scikit-learn", "yaml": "pyyaml", "pytorch_lightning": "pytorch-lightning"}


def imported_modules(package: Path) -> dict[str, set[str]]:
    """Top-level names of the absolute imports in every ``.py`` file under ``package`` (also
    those inside functions), each with the files that import it."""
    found: dict[str, set[str]] = defaultdict(set)
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found[name.split(".")[0]].add(str(path.relative_to(package.parent)))
    return found


def third_party(found: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: files for m, files in found.items()
            if m not in sys.stdlib_module_names and m != "speechlab"}


def declared_distributions() -> set[str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="Python < 3.11 without tomli: no TOML parser")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(spec).name) for spec in project["dependencies"]}


def test_the_import_walker_sees_nested_and_from_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("import os, numpy.linalg as la\nfrom . import b\n"
                              "def f():\n    from sklearn.decomposition import PCA\n")
    (pkg / "sub" / "c.py").write_text("from yaml import safe_load\nfrom pkg.a import f\n")
    found = imported_modules(pkg)
    assert found == {"os": {"pkg/a.py"}, "numpy": {"pkg/a.py"}, "sklearn": {"pkg/a.py"},
                     "yaml": {"pkg/sub/c.py"}, "pkg": {"pkg/sub/c.py"}}
    assert set(third_party(found)) == {"numpy", "sklearn", "yaml", "pkg"}


def test_every_imported_third_party_module_is_declared():
    imported = third_party(imported_modules(REPO / "speechlab"))
    assert "torch" in imported, sorted(imported)  # the walker found speechlab's imports at all
    declared = declared_distributions()
    missing = {m: sorted(files) for m, files in imported.items()
               if canonicalize_name(DISTRIBUTION.get(m, m)) not in declared}
    assert not missing, f"imported by speechlab/ but not in pyproject.toml's dependencies: {missing}"


def test_the_import_to_distribution_mapping_matches_the_installed_metadata():
    """Where a module is installed, its distribution (from the installed packages' metadata) is
    the one the mapping names."""
    installed = packages_distributions()
    for module in third_party(imported_modules(REPO / "speechlab")):
        if module in installed:
            dists = {canonicalize_name(d) for d in installed[module]}
            assert canonicalize_name(DISTRIBUTION.get(module, module)) in dists, (module, dists)


def test_without_kenlm_its_tests_skip_with_the_reason(tmp_path):
    """tests/data/test_lm_ngram.py in a pytest run where ``import kenlm`` fails as for a module that
    is not installed: it is collected, the kenlm tests skip naming kenlm, the others pass."""
    hidden = tmp_path / "no_kenlm"
    hidden.mkdir()
    (hidden / "kenlm.py").write_text(
        'raise ModuleNotFoundError("No module named \'kenlm\'", name="kenlm")\n')
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(hidden), str(REPO), env.get("PYTHONPATH", "")])
    # every test but the slow one that builds lmplz and needs no kenlm module
    cmd = [sys.executable, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider",
           "-m", "slow or not slow", "-k", "not counts_by_hand", "tests/data/test_lm_ngram.py"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    skipped = re.findall(r"^SKIPPED \[\d+\] tests/data/test_lm_ngram\.py:\d+: (.*)$", out, re.M)
    assert len(skipped) == 2 and all("kenlm" in reason for reason in skipped), out[-3000:]
    for name in ("test_truncated_arpa_is_named", "test_lm_ngram_scores_match_kenlm_queries"):
        assert re.search(rf"::{name} SKIPPED", out), out[-3000:]
    assert re.search(r"^=+ \d+ passed, 2 skipped", out, re.M) and "FAILED" not in out, out[-3000:]
