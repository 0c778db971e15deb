"""SentencePiece subword vocabulary with the CTC blank at index 0 (the subword twin of CharVocab).

Ids: ``0`` = blank, ``p + 1`` = SentencePiece piece ``p``. Models are trained here with
``unk_id=0`` and no BOS/EOS/PAD pieces, so id ``1`` is ``<unk>`` and ids ``2..`` are real
pieces. Unknown characters are handled deliberately: :meth:`SentencePieceVocab.encode` raises
on them (``strict=True``) or drops them (``strict=False``) — it never emits ``<unk>``, and
:meth:`~SentencePieceVocab.decode` skips it. Texts go through
:func:`speechlab.data.text.normalize_text` before training and encoding, and SentencePiece's
own normalization is off (``identity`` rule), so ``decode(encode(t)) == normalize_text(t)``.

The serialized model proto is the whole state: :meth:`~SentencePieceVocab.to_dict` embeds it
(base64) so a checkpoint alone rebuilds the vocabulary; :meth:`~SentencePieceVocab.save`
writes the standard ``.model`` file (readable by ``spm_encode`` and friends).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import sentencepiece as spm

from speechlab.data.text import normalize_text
from speechlab.io import atomic_path, read_jsonl

__all__ = ["SentencePieceVocab", "texts_from_manifest"]

ModelType = Literal["unigram", "bpe"]

#: trainer options that define the id layout; :meth:`SentencePieceVocab.train` refuses to
#: have them overridden.
_FIXED_OPTIONS: dict[str, Any] = {
    "unk_id": 0,
    "bos_id": -1,
    "eos_id": -1,
    "pad_id": -1,
    "normalization_rule_name": "identity",
}


class SentencePieceVocab:
    """SentencePiece vocabulary: ``len`` = pieces + blank, ``blank = 0``, piece ``p`` = id ``p+1``.

    Build one with :meth:`train`, :meth:`load` (a ``.model`` file) or :meth:`from_dict`.
    """

    blank: int = 0
    blank_symbol: str = "<blank>"

    def __init__(self, model_proto: bytes) -> None:
        """Wrap a serialized SentencePiece ``ModelProto``."""
        if not isinstance(model_proto, bytes | bytearray) or not model_proto:
            raise ValueError("SentencePieceVocab: model_proto must be non-empty bytes")
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(num_threads=1)
        try:
            self._sp.LoadFromSerializedProto(self._proto)
        except (RuntimeError, OSError):
            raise ValueError("SentencePieceVocab: not a SentencePiece model proto") from None
        if self._sp.unk_id() < 0:
            raise ValueError("SentencePieceVocab: the model has no <unk> piece")
        self._sp_unk = self._sp.unk_id()
        #: our id of SentencePiece's ``<unk>`` (1 for models trained by :meth:`train`)
        self.unk: int = self._sp_unk + 1
        self._char_known: dict[str, bool] = {}

    # ------------------------------------------------------------------ basics

    def __len__(self) -> int:
        """Number of outputs including the blank."""
        return self._sp.get_piece_size() + 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SentencePieceVocab) and other._proto == self._proto

    def __hash__(self) -> int:
        return hash(self._proto)

    def __repr__(self) -> str:
        return f"SentencePieceVocab(size={len(self)}, sha1={self.fingerprint[:10]})"

    def __getstate__(self) -> dict[str, Any]:
        return {"model_proto": self._proto}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_proto"])  # type: ignore[misc]

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model."""
        return self._proto

    @property
    def fingerprint(self) -> str:
        """SHA-1 of the model proto (to check that a checkpoint and a vocabulary agree)."""
        return hashlib.sha1(self._proto).hexdigest()

    @property
    def pieces(self) -> tuple[str, ...]:
        """Symbol of every id: ``pieces[0]`` is the blank, ``pieces[i]`` SentencePiece's ``i-1``."""
        return (self.blank_symbol,) + tuple(
            self._sp.id_to_piece(p) for p in range(self._sp.get_piece_size())
        )

    def id_of(self, piece: str) -> int:
        """Our id of a piece string (``"▁the"``); ``KeyError`` when the model lacks it."""
        if piece == self.blank_symbol:
            return self.blank
        p = self._sp.piece_to_id(piece)
        if p == self._sp_unk and piece != self._sp.id_to_piece(self._sp_unk):
            raise KeyError(piece)
        return p + 1

    def token_of(self, idx: int) -> str:
        """Piece string of our id ``idx``."""
        self._check_ids([idx])
        return self.blank_symbol if idx == self.blank else self._sp.id_to_piece(idx - 1)

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """Piece strings of ``ids`` (the blank as ``<blank>``)."""
        return [self.token_of(int(i)) for i in ids]

    # ------------------------------------------------------------------ encode / decode

    def oov_chars(self, text: str) -> set[str]:
        """Characters of ``normalize_text(text)`` that the model cannot spell (would be ``<unk>``)."""
        out = set()
        for c in set(normalize_text(text)) - {" "}:
            known = self._char_known.get(c)
            if known is None:
                known = self._sp_unk not in self._sp.encode(c)
                self._char_known[c] = known
            if not known:
                out.add(c)
        return out

    def encode(self, text: str, strict: bool = True) -> list[int]:
        """Ids of ``normalize_text(text)`` (normalizing is idempotent, so normalized input is
        unchanged). Characters the model cannot spell raise ``ValueError`` (``strict``) or are
        dropped (``strict=False``); ``<unk>`` is never returned."""
        text = normalize_text(text)
        ids = self._sp.encode(text)
        if self._sp_unk in ids:
            if strict:
                raise ValueError(
                    f"characters not in vocabulary: {sorted(self.oov_chars(text))!r} in {text!r}"
                )
            ids = [p for p in ids if p != self._sp_unk]
        return [p + 1 for p in ids]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of the ids (blank and ``<unk>`` ids are skipped; no CTC collapse here)."""
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        return self._sp.decode([i - 1 for i in ids if i != self.blank and i != self.unk])

    def _check_ids(self, ids: Sequence[int]) -> None:
        n = len(self)
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"ids out of range [0, {n}): {bad[:10]!r}")

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state with the model proto embedded (base64): a checkpoint alone
        rebuilds the vocabulary with :meth:`from_dict`."""
        return {
            "type": "sentencepiece",
            "size": len(self),
            "sha1": self.fingerprint,
            "model": base64.b64encode(self._proto).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SentencePieceVocab:
        if d.get("type") != "sentencepiece":
            raise ValueError(f"not a sentencepiece vocabulary: type={d.get('type')!r}")
        vocab = cls(base64.b64decode(d["model"]))
        if "sha1" in d and d["sha1"] != vocab.fingerprint:
            raise ValueError("sentencepiece vocabulary: model does not match its sha1")
        return vocab

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``.model`` file (the serialized proto) atomically."""
        with atomic_path(path) as tmp:
            tmp.write_bytes(self._proto)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SentencePieceVocab:
        """Read a ``.model`` file (ours or any SentencePiece model with an ``<unk>``)."""
        data = Path(path).read_bytes()
        try:
            return cls(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        model_type: ModelType = "unigram",
        character_coverage: float = 1.0,
        seed: int | None = None,
        num_threads: int = 1,
        **options: Any,
    ) -> SentencePieceVocab:
        """Train a model in memory on ``normalize_text`` of ``texts`` (empty ones skipped).

        ``vocab_size`` counts SentencePiece pieces including ``<unk>`` (``len`` of the result
        is one more, for the blank). Training is deterministic for the same texts and options
        with ``num_threads=1``; ``seed`` seeds SentencePiece's generator (used when it samples
        sentences, e.g. with ``input_sentence_size``). Further ``options`` go to
        ``SentencePieceTrainer.train`` (e.g. ``max_sentencepiece_length=8``), except the id
        layout and normalization, which are fixed.
        """
        if model_type not in ("unigram", "bpe"):
            raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
        clash = sorted(set(options) & set(_FIXED_OPTIONS))
        if clash:
            raise ValueError(f"SentencePieceVocab.train: {clash} are fixed by speechlab")
        normalized = [t for t in (normalize_text(x) for x in texts) if t]
        if not normalized:
            raise ValueError("SentencePieceVocab.train: no non-empty text to train on")
        if seed is not None:
            spm.set_random_generator_seed(int(seed))
        options.setdefault("minloglevel", 2)  # no training log on stderr
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(normalized),
                model_writer=buf,
                vocab_size=int(vocab_size),
                model_type=model_type,
                character_coverage=float(character_coverage),
                num_threads=int(num_threads),
                **_FIXED_OPTIONS,
                **options,
            )
        except RuntimeError as e:
            # e.g. "Vocabulary size too high (5000). Please set it to a value <= 50."
            msg = str(e).split("] ", 1)[-1]
            raise ValueError(f"SentencePiece training failed: {msg}") from None
        return cls(buf.getvalue())


def texts_from_manifest(path: str | os.PathLike, field: str = "text") -> list[str]:
    """The ``field`` texts of a JSONL manifest (``.gz`` too), as they are (not normalized).

    Errors name the file and the line: malformed JSON, a missing or non-string text.
    """
    texts = []
    for lineno, row in read_jsonl(path, ValueError, "manifest"):
        text = row.get(field)
        if not isinstance(text, str):
            raise ValueError(f"{path}:{lineno}: no string {field!r} field")
        texts.append(text)
    return texts
