"""speechlab.io.read_jsonl: the one JSON-lines reader of the library (manifests, transcripts,
documents, text sources), and its one error format ``path:LINE: reason``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from speechlab.data.manifests import ManifestError, read_manifest
from speechlab.errors import InputError
from speechlab.io import read_jsonl
from speechlab.score import TranscriptError, read_transcripts


def test_rows_with_line_numbers_blank_lines_bom_and_gzip(tmp_path: Path) -> None:
    rows = [{"id": "a", "text": "x"}, {"id": "b", "text": "ünï"}]
    lines = [json.dumps(rows[0]), "", "   ", json.dumps(rows[1], ensure_ascii=False)]
    plain = tmp_path / "m.jsonl"
    plain.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")  # byte-order mark
    packed = tmp_path / "m.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    for path in (plain, packed):
        assert list(read_jsonl(path)) == [(1, rows[0]), (4, rows[1])]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"a": 1}\n{"a": \n', r"m\.jsonl:2: malformed JSON \(Expecting value at column 7\)$"),
        ('{"a": 1}\n\n[1, 2]\n', r"m\.jsonl:3: malformed entry \(expected a JSON object, got list\)$"),
        ('"text"\n', r"m\.jsonl:1: malformed entry \(expected a JSON object, got str\)$"),
    ],
)
def test_errors_name_file_line_and_reason(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=reason):
        list(read_jsonl(path))


def test_missing_and_binary_files_name_what_was_read(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nowhere\.jsonl: manifest not found$"):
        list(read_jsonl(tmp_path / "nowhere.jsonl", what="manifest"))
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b'{"a": 1}\n\xff\xfe\x00\x01\n')
    with pytest.raises(InputError, match=r"b\.jsonl: malformed transcript file, not UTF-8 JSON lines"):
        list(read_jsonl(binary, what="transcript file"))


def test_callers_raise_their_own_error_in_the_same_format(tmp_path: Path) -> None:
    """The manifest reader and the transcript reader go through read_jsonl: same message for
    the same bad line, each its own error class."""
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "audio_filepath": "a.wav", "duration": 1, "text": "x"}\n{"id": \n')
    messages = []
    for read, error in ((lambda p: list(read_manifest(p)), ManifestError),
                        (read_transcripts, TranscriptError)):
        with pytest.raises(error) as caught:
            read(path)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] == f"{path}:2: malformed JSON (Expecting value at column 8)"
