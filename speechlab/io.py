"""File I/O: crash-safe output, and reading the user's text files.

Output goes to a temporary file beside the target, then is renamed: a reader never sees a
half-written file, and an interrupted run leaves at most a stray ``*.tmp*`` file that the next
run overwrites.

The user's text files (manifests, transcripts, sentence lists, lexicons, vocabulary and gram
JSON) are read with :func:`open_text` / :func:`read_text`: UTF-8 with or without the byte-order
mark that many Windows tools write at the start, gzip-compressed when the name ends in ``.gz``.
Every JSON-lines file (manifests, transcripts, documents, text sources) is read by
:func:`read_jsonl`, whose errors have one format: ``path:LINE: reason``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from speechlab.errors import InputError

#: UTF-8 that drops a byte-order mark at the start of the file (plain UTF-8 reads unchanged)
TEXT_ENCODING = "utf-8-sig"


def open_text(path: str | os.PathLike, errors: str = "strict") -> IO[str]:
    """Open a user's text file for reading (universal newlines): UTF-8 with or without a
    leading byte-order mark; ``*.gz`` is decompressed. ``errors`` as for :func:`open`."""
    if Path(path).suffix == ".gz":
        return gzip.open(path, "rt", encoding=TEXT_ENCODING, errors=errors)
    return open(path, encoding=TEXT_ENCODING, errors=errors)


def read_text(path: str | os.PathLike, errors: str = "strict") -> str:
    """The whole text of a user's file, as :func:`open_text` reads it."""
    with open_text(path, errors) as f:
        return f.read()


def read_jsonl(path: str | os.PathLike, error: type[Exception] = InputError,
               what: str = "JSON lines file") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number (1-based), object)`` for every non-blank line of a JSON-lines file, read as
    :func:`open_text` reads it (``.gz``, byte-order mark).

    Raises ``error`` (the caller's error class, e.g. ``ManifestError``) with one message format:
    ``path: WHAT not found``, ``path: malformed WHAT, not UTF-8 JSON lines (...)`` (a binary
    file, a bad gzip stream), ``path:LINE: malformed JSON (msg at column C)`` and
    ``path:LINE: malformed entry (expected a JSON object, got list)``. Checks of the object's
    fields are the caller's, in the same ``path:LINE: reason`` form.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    with open_text(path) as f:
        lines = enumerate(f, start=1)
        while True:
            try:
                lineno, raw = next(lines)
            except StopIteration:
                return
            except (UnicodeDecodeError, OSError, EOFError) as e:
                raise error(f"{path}: malformed {what}, not UTF-8 JSON lines ({e})") from None
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.rstrip("\r\n"))  # the column of an error is on this line
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise error(f"{path}:{lineno}: malformed entry (expected a JSON object, "
                            f"got {type(row).__name__})")
            yield lineno, row


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it onto ``path`` on success.

    The temporary file keeps ``path``'s suffix (or ``suffix``) so that tools that pick a
    format from the extension (soundfile, sox, KenLM) still work. On an exception the
    temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + (suffix or path.suffix)
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line to ``path`` atomically; returns the number of rows."""
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def check_overwrite(path: str | os.PathLike, force: bool) -> None:
    """Refuse to replace an existing output unless ``force`` is set."""
    if Path(path).exists() and not force:
        raise FileExistsError(f"{path}: exists; pass --force to overwrite it")
