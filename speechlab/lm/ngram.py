"""Word (or character) n-gram language models with KenLM.

:func:`train_ngram` runs KenLM's ``lmplz`` (and ``build_binary`` for a ``.bin`` model) on
sentences that :func:`read_lines` reads from a text file or a manifest; :func:`load_model`
loads an ARPA or binary model; :func:`char_tokens` gives the token layout of a character LM
(every character an LM "word", ``|`` for the space).

``lmplz`` and ``build_binary`` are not on PyPI as programs: on first use speechlab builds them from
the ``kenlm`` source package (``pip download --no-deps --no-binary kenlm kenlm``; cmake, a C++
compiler and Boost program_options/thread/test are needed) into ``$SPEECHLAB_CACHE/kenlm``
(default ``~/.cache/speechlab/kenlm``), once (~1-2 minutes on 2 cores). A missing prerequisite is
named in one line. ``$SPEECHLAB_KENLM_BIN`` may point at a folder that already holds the two
programs. Output is written atomically (the model appears complete or not at all).

The command is ``speechlab lm ngram`` (:func:`speechlab.cli.lm.ngram`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from speechlab.io import atomic_path, read_jsonl, read_text

log = logging.getLogger("speechlab.lm")

PROGRAMS = ("lmplz", "build_binary")
#: Debian packages of the build (boost test: the CMakeLists needs it even with tests off)
DEBIAN_PACKAGES = ("cmake", "build-essential", "libboost-program-options-dev",
                   "libboost-thread-dev", "libboost-test-dev")
CHAR_SPACE = "|"
INCLUDE_DIRS = ["/usr/include", "/usr/local/include"]  # where the Boost headers are looked for
MAX_ORDER = 6  # build_binary, python kenlm and flashlight refuse higher orders


class KenLMBuildError(RuntimeError):
    """lmplz/build_binary could not be built; the message names the missing prerequisite."""


def cache_dir() -> Path:
    """``$SPEECHLAB_CACHE/kenlm`` or ``~/.cache/speechlab/kenlm``."""
    root = os.environ.get("SPEECHLAB_CACHE") or Path.home() / ".cache" / "speechlab"
    return Path(root) / "kenlm"


def _found(folder: Path) -> bool:
    return all(os.access(folder / p, os.X_OK) for p in PROGRAMS)


def _check_prerequisites() -> None:
    missing = [tool for tool in ("cmake", "make") if shutil.which(tool) is None]
    if shutil.which("c++") is None and shutil.which("g++") is None:
        missing.append("a C++ compiler (c++/g++)")
    if missing:
        raise KenLMBuildError(
            f"cannot build KenLM's lmplz: missing {', '.join(missing)}; install the Debian "
            f"packages {' '.join(DEBIAN_PACKAGES)} (scripts/system_deps.sh does it)")
    for header, pkg in [("boost/program_options.hpp", "libboost-program-options-dev"),
                        ("boost/thread.hpp", "libboost-thread-dev"),
                        ("boost/test/unit_test.hpp", "libboost-test-dev")]:
        if not any((Path(d) / header).exists() for d in INCLUDE_DIRS):
            raise KenLMBuildError(
                f"cannot build KenLM's lmplz: Boost header {header} not found; install the "
                f"Debian package {pkg} (all needed: {' '.join(DEBIAN_PACKAGES)})")


def _run(cmd: list[str], cwd: Path | None, what: str, log_file: Path) -> None:
    with open(log_file, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        raise KenLMBuildError(f"KenLM build failed at {what} (exit {rc}); log {log_file}:\n{tail}")


def kenlm_bin_dir(build: bool = True, jobs: int = 2) -> Path:
    """The folder holding ``lmplz`` and ``build_binary``, building them on first use.

    Args:
        build: build when missing (else raise :class:`KenLMBuildError`).
        jobs: parallel compile jobs.
    """
    env = os.environ.get("SPEECHLAB_KENLM_BIN")
    if env:
        if not _found(Path(env)):
            raise KenLMBuildError(f"SPEECHLAB_KENLM_BIN={env} does not hold {' and '.join(PROGRAMS)}")
        return Path(env)
    on_path = [shutil.which(p) for p in PROGRAMS]
    if all(on_path):
        return Path(on_path[0]).parent  # type: ignore[arg-type]
    root = cache_dir()
    bin_dir = root / "bin"
    if _found(bin_dir):
        return bin_dir
    if not build:
        raise KenLMBuildError(f"lmplz/build_binary not found in {bin_dir}")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:  # one build at a time (parallel tests, two shells)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _found(bin_dir):
            return bin_dir
        _check_prerequisites()
        _build(root, bin_dir, jobs)
    return bin_dir


def _build(root: Path, bin_dir: Path, jobs: int) -> None:
    log_file = root / "build.log"
    log_file.write_text("")
    print(f"speechlab: building KenLM lmplz/build_binary into {root} (once; ~1-2 min; "
          f"log {log_file})", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=root, prefix="build.") as tmp:
        work = Path(tmp)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "kenlm",
              "--dest", str(work), "kenlm"], None,
             "pip download of the kenlm source package (needs PyPI)", log_file)
        archives = [p for p in work.iterdir() if p.name.endswith((".tar.gz", ".zip", ".tgz"))]
        if not archives:
            raise KenLMBuildError(f"pip download gave no kenlm source archive in {work}")
        if archives[0].suffix == ".zip":
            shutil.unpack_archive(archives[0], work / "src")
        else:
            with tarfile.open(archives[0]) as tar:
                tar.extractall(work / "src", filter="data")
        src = next(p.parent for p in (work / "src").rglob("CMakeLists.txt")
                   if (p.parent / "lm").is_dir())
        build = work / "build"
        build.mkdir()
        _run(["cmake", str(src), "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_TESTING=OFF"], build,
             "cmake configure", log_file)
        _run(["cmake", "--build", ".", "--target", *PROGRAMS, f"-j{jobs}"], build,
             "compilation", log_file)
        staged = root / "bin.tmp"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        for p in PROGRAMS:
            found = next(build.rglob(p), None)
            if found is None:
                raise KenLMBuildError(f"the build produced no {p}; log {log_file}")
            shutil.copy2(found, staged / p)
        shutil.rmtree(bin_dir, ignore_errors=True)
        os.replace(staged, bin_dir)
    print(f"speechlab: KenLM programs ready in {bin_dir}", file=sys.stderr)


def char_tokens(text: str) -> str:
    """A sentence as character-LM tokens: ``"ab c"`` → ``"a b | c"``."""
    return " ".join(CHAR_SPACE if c == " " else c for c in text)


def train_ngram(lines: Iterable[str], out: str | os.PathLike, order: int = 3,
                memory: str = "1G", discount_fallback: bool = True, prune: list[int] | None = None,
                binary_type: str = "probing") -> Path:
    """Train an ARPA (``out`` ending ``.arpa``) or binary (any other suffix, e.g. ``.bin``)
    KenLM model on ``lines`` (already tokenized: words separated by spaces).

    Args:
        lines: training sentences, one per item.
        out: output path; written atomically.
        order: n-gram order, 1..6.
        memory: ``lmplz -S`` (lmplz would take 80% of RAM by default).
        discount_fallback: pass ``--discount_fallback`` (tiny corpora need it).
        prune: ``lmplz --prune`` thresholds per order.
        binary_type: ``probing`` or ``trie`` for binary outputs.

    Returns:
        ``Path(out)``.
    """
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be 1..{MAX_ORDER} (build_binary, kenlm and flashlight "
                         f"refuse higher), got {order}")
    if binary_type not in ("probing", "trie"):
        raise ValueError(f"binary_type must be probing or trie, got {binary_type!r}")
    out = Path(out)
    text = "".join(line.strip() + "\n" for line in lines if line.strip())
    if not text:
        raise ValueError("no training text (every line is empty)")
    bins = kenlm_bin_dir()
    with tempfile.TemporaryDirectory(prefix="speechlab-lm.") as tmp:
        arpa = Path(tmp) / "model.arpa"
        cmd = [str(bins / "lmplz"), "-o", str(order), "-S", memory, "-T", tmp, "--arpa", str(arpa)]
        if discount_fallback:
            cmd.append("--discount_fallback")
        if prune:
            cmd += ["--prune", *map(str, prune)]
        res = subprocess.run(cmd, input=text, text=True, capture_output=True)
        if res.returncode != 0:
            raise RuntimeError(f"lmplz failed (exit {res.returncode}):\n{res.stderr[-2000:]}")
        with atomic_path(out) as tmp_out:
            if out.suffix == ".arpa":
                shutil.copyfile(arpa, tmp_out)
            else:
                res = subprocess.run([str(bins / "build_binary"), binary_type, str(arpa),
                                      str(tmp_out)], capture_output=True, text=True)
                if res.returncode != 0:
                    raise RuntimeError(f"build_binary failed (exit {res.returncode}):\n"
                                       f"{res.stderr[-2000:]}")
    return out


def load_model(path: str | os.PathLike):
    """Open an ARPA or binary KenLM model with the ``kenlm`` module; a file that is not one
    raises ``ValueError`` naming it."""
    import kenlm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such KenLM model file")
    with open(path, "rb") as f:
        head = f.read(64)
    is_binary = head.startswith(b"mmap lm http://kheafield.com/code")
    if not is_binary and b"\\data\\" not in head:
        raise ValueError(f"{path}: not a KenLM model (neither ARPA, whose first line is "
                         f"'\\data\\', nor a KenLM binary)")
    try:
        return kenlm.Model(str(path))
    except Exception as e:  # kenlm raises OSError/RuntimeError with its own text
        raise ValueError(f"{path}: KenLM could not load it: {e}") from None


def read_lines(text: str | None, manifest: str | None, normalize: bool, unit: str) -> list[str]:
    """Training sentences from a text file or a manifest's ``"text"`` fields."""
    from speechlab.data.text import normalize_text

    lines: list[str] = []
    if text:
        lines = read_text(text).splitlines()
    if manifest:
        for i, row in read_jsonl(manifest, ValueError, "manifest"):
            if not isinstance(row.get("text"), str):
                raise ValueError(f"{manifest}:{i}: no string 'text' field")
            lines.append(row["text"])
    if normalize:
        lines = [normalize_text(s) for s in lines]
    if unit == "char":
        lines = [char_tokens(s) for s in lines]
    return [s for s in lines if s.strip()]
