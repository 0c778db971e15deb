"""``TextDataModule``: sentences from text files or manifests → length-bucketed LM batches.

Id layout (shared by the RNN LM and the attention seq2seq decoder, so that both predict in one
output space): the vocabulary's id ``0`` — the CTC blank of :class:`~speechlab.data.text.CharVocab`
(or of :class:`~speechlab.data.subword.SentencePieceVocab`), which is never a character — is
reused as the sentence boundary symbol ``<eos>`` (it is also ``<sos>``, the first decoder/LM
input). A sentence ``y_1..y_n`` (ids ``1..V-1``) becomes::

    inputs  = [0, y_1, ..., y_n]        # <sos> then the sentence
    targets = [y_1, ..., y_n, 0]        # the sentence then <eos>

so the LM, the seq2seq decoder and the beam search all use ``V = len(vocab)`` outputs, id 0 ending
a hypothesis. Padding: ``inputs`` with ``0``, ``targets`` with :data:`IGNORE_INDEX` (-100, the
default ``ignore_index`` of ``torch.nn.functional.cross_entropy``).

Sources: ``*.jsonl`` / ``*.jsonl.gz`` / ``*.json`` are manifests (their ``"text"`` field); any other
file is text with one sentence per line (``segmentation: line``) or prose whose paragraphs are
split at ``.!?`` (``segmentation: sentence``, for books). Every sentence goes through
:func:`~speechlab.data.text.normalize_text`; empty results are skipped and counted, characters
outside the vocabulary are an error naming ``file:line`` (or skipped with ``on_oov: skip``).

Batches are dicts::

    inputs   (B, L) int64   <sos> + ids, padded with 0
    targets  (B, L) int64   ids + <eos>, padded with -100
    lengths  (B,)   int64   L_b = tokens + 1
    texts    list[str]      normalized sentences
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, Sampler

from speechlab.data.subword import SentencePieceVocab
from speechlab.data.text import DEFAULT_CHARS, CharVocab, normalize_text
from speechlab.data.vocab import Vocab, vocab_from_dict
from speechlab.dist import rank_and_world
from speechlab.io import open_text, read_jsonl

log = logging.getLogger("speechlab.data")

#: ``<sos>``/``<eos>`` id: the vocabulary's blank (0), never a character.
EOS = 0
#: target padding id (ignored by ``cross_entropy``).
IGNORE_INDEX = -100

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


class TextDataError(ValueError):
    """A text source problem; the message names ``file:line`` and the reason."""


@dataclass(frozen=True)
class TextLine:
    """One raw sentence and where it came from."""

    text: str
    path: str
    line: int


@dataclass
class TextReport:
    """What loading kept and skipped (counts are logged; skips are never silent)."""

    kept: int = 0
    empty: int = 0
    too_long: int = 0
    oov: int = 0

    def summary(self, name: str) -> str:
        return (f"{name}: {self.kept} sentences kept; skipped {self.empty} empty after "
                f"normalization, {self.too_long} too long, {self.oov} with characters outside "
                "the vocabulary")


def _is_manifest(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz", ".json"))


def read_text_lines(path: str | Path, segmentation: Literal["line", "sentence"] = "line",
                    field: str = "text") -> Iterator[TextLine]:
    """Raw sentences of one source with their ``file:line`` (not yet normalized).

    Manifests (``.jsonl[.gz]``/``.json``) yield their ``field``; text files yield each non-blank
    line (``line``) or the sentences of each paragraph (``sentence``: blank-line separated
    paragraphs, split after ``.``, ``!`` or ``?``; the line is the paragraph's first).
    """
    path = Path(path)
    if not path.is_file():
        raise TextDataError(f"{path}: text source not found")
    if _is_manifest(path):
        for lineno, row in read_jsonl(path, TextDataError, "text source"):
            text = row.get(field)
            if not isinstance(text, str):
                raise TextDataError(f"{path}:{lineno}: no string {field!r} field")
            yield TextLine(text, str(path), lineno)
        return
    with open_text(path) as f:
        try:
            if segmentation == "line":
                for lineno, raw in enumerate(f, 1):
                    if raw.strip():
                        yield TextLine(raw.strip(), str(path), lineno)
            else:
                para: list[str] = []
                start = 0
                for lineno, raw in enumerate([*f, ""], 1):
                    if raw.strip():
                        start = start or lineno
                        para.append(raw.strip())
                        continue
                    for sentence in _SENTENCE_END.split(" ".join(para)):
                        if sentence.strip():
                            yield TextLine(sentence.strip(), str(path), start)
                    para, start = [], 0
        except UnicodeDecodeError as e:
            raise TextDataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def encode_sentences(lines: Sequence[TextLine], vocab: Vocab, max_tokens: int | None = None,
                     on_oov: Literal["error", "skip"] = "error"
                     ) -> tuple[list[list[int]], list[str], TextReport]:
    """Normalize and encode sentences: ``(ids per kept sentence, normalized texts, report)``.

    Raises :class:`TextDataError` naming ``file:line`` for characters outside ``vocab`` unless
    ``on_oov="skip"``. Sentences longer than ``max_tokens`` ids are skipped and counted.
    """
    ids_out: list[list[int]] = []
    texts: list[str] = []
    report = TextReport()
    for line in lines:
        text = normalize_text(line.text)
        if not text:
            report.empty += 1
            continue
        oov = vocab.oov_chars(text)
        if oov:
            if on_oov == "error":
                raise TextDataError(
                    f"{line.path}:{line.line}: characters {sorted(oov)!r} are not in the "
                    f"vocabulary {vocab!r} (normalized text {text!r}); set on_oov: skip to drop "
                    "such sentences")
            report.oov += 1
            continue
        ids = vocab.encode(text)
        if max_tokens is not None and len(ids) > max_tokens:
            report.too_long += 1
            continue
        ids_out.append(ids)
        texts.append(text)
        report.kept += 1
    return ids_out, texts, report


def lm_example(ids: Sequence[int], eos: int = EOS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of one sentence: ``[eos] + ids`` and ``ids + [eos]`` (both ``(n+1,)``)."""
    t = torch.tensor(list(ids), dtype=torch.long)
    boundary = torch.tensor([eos], dtype=torch.long)
    return torch.cat([boundary, t]), torch.cat([t, boundary])


def collate_lm(sentences: Sequence[Sequence[int]], texts: Sequence[str] | None = None,
               eos: int = EOS) -> dict[str, Any]:
    """Pad LM examples into a batch (see the module docstring for the layout)."""
    pairs = [lm_example(s, eos) for s in sentences]
    return {
        "inputs": pad_sequence([p[0] for p in pairs], batch_first=True, padding_value=eos),
        "targets": pad_sequence([p[1] for p in pairs], batch_first=True, padding_value=IGNORE_INDEX),
        "lengths": torch.tensor([len(p[0]) for p in pairs], dtype=torch.long),
        "texts": list(texts) if texts is not None else [],
    }


def teacher_forcing_pairs(targets: torch.Tensor, target_lens: torch.Tensor, eos: int = EOS
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs and outputs from padded speech targets.

    Args:
        targets: ``(B, S)`` ids padded with 0 (SpeechDataModule's ``targets``).
        target_lens: ``(B,)``.

    Returns:
        ``(inputs (B, S+1), outputs (B, S+1))``: ``[eos, y_1..y_n]`` padded with ``eos`` and
        ``[y_1..y_n, eos]`` padded with :data:`IGNORE_INDEX`.
    """
    b, s = targets.shape
    boundary = targets.new_full((b, 1), eos)
    inputs = torch.cat([boundary, targets], dim=1)
    pos = torch.arange(s + 1, device=targets.device)[None, :]
    lens = target_lens.to(targets.device)[:, None]
    outputs = torch.cat([targets, targets.new_zeros(b, 1)], dim=1)
    outputs = torch.where(pos < lens, outputs, torch.full_like(outputs, IGNORE_INDEX))
    outputs = torch.where(pos == lens, torch.full_like(outputs, eos), outputs)
    inputs = torch.where(pos <= lens, inputs, torch.full_like(inputs, eos))
    return inputs, outputs


def bucket_batches(lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0
                   ) -> list[list[int]]:
    """Group sentence indices into batches of similar length.

    Indices are sorted by length (ties broken randomly when ``shuffle``), cut greedily into
    batches whose padded size ``len(batch) * max(length)`` stays within ``max_tokens`` (a longer
    sentence gets a batch of its own), and the batch order is shuffled. Deterministic for
    ``seed``; every index appears exactly once.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    rng = random.Random(seed)
    tiebreak = [rng.random() for _ in lengths] if shuffle else list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], tiebreak[i]))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and longest_if_added * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


class BucketBatchSampler(Sampler[list[int]]):
    """Length-bucketed batches (:func:`bucket_batches`), reshuffled every epoch
    (``set_epoch``, which Lightning calls), rank-aware: rank ``r`` of ``w`` takes batches
    ``r, r + w, ...``. Training (``shuffle``) cuts the list to a multiple of ``w`` so every rank
    steps equally (DDP synchronizes every step); evaluation keeps every batch, so each sentence
    is scored on exactly one rank and the summed perplexity is the whole split's (ranks may get
    one batch more or less: no per-step collectives in evaluation)."""

    def __init__(self, lengths: Sequence[int], max_tokens: int, shuffle: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.lengths = list(lengths)
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        batches = bucket_batches(self.lengths, self.max_tokens, self.shuffle, self.seed + self.epoch)
        if self.shuffle and self.world_size > 1 and len(batches) >= self.world_size:
            batches = batches[: len(batches) - len(batches) % self.world_size]
        return batches[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class SentenceDataset(Dataset):
    """Encoded sentences; indexed by a list of indices (one batch) from the batch sampler."""

    def __init__(self, ids: list[list[int]], texts: list[str], eos: int = EOS) -> None:
        self.ids = ids
        self.texts = texts
        self.eos = eos

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, batch: list[int]) -> dict[str, Any]:
        return collate_lm([self.ids[i] for i in batch], [self.texts[i] for i in batch], self.eos)


def _as_list(paths: str | Sequence[str] | None) -> list[str]:
    if paths is None:
        return []
    return [paths] if isinstance(paths, str) else list(paths)


class TextDataModule(pl.LightningDataModule):
    """Sentence batches for :class:`~speechlab.tasks.rnnlm.RNNLMTask`.

    Args:
        train_text: text files (one sentence per line) and/or manifests (their ``text``).
        dev_text: validation sources; when unset, ``dev_fraction`` of the training sentences
            (a deterministic draw) is held out instead.
        test_text: test sources (default: the validation sentences).
        vocab: characters in id order (id 0 = blank = ``<eos>``); ignored with
            ``sentencepiece_model``.
        sentencepiece_model: a ``.model`` file: subword LM instead of characters.
        segmentation: ``line`` (one sentence per line) or ``sentence`` (split prose at ``.!?``).
        max_tokens: padded tokens per batch (bucketing by length).
        max_sentence_tokens: longer sentences are skipped (counted).
        max_sentences: keep at most this many training sentences (the first ones).
        dev_fraction: held-out share when ``dev_text`` is unset.
        on_oov: ``error`` (name ``file:line``) or ``skip`` for characters outside the vocabulary.
        num_workers: DataLoader workers (batches are cheap: 0 is fine).
        seed: shuffling / hold-out seed.
    """

    def __init__(
        self,
        train_text: str | list[str] | None = None,
        dev_text: str | list[str] | None = None,
        test_text: str | list[str] | None = None,
        vocab: str = "".join(DEFAULT_CHARS),
        sentencepiece_model: str | None = None,
        segmentation: Literal["line", "sentence"] = "line",
        max_tokens: int = 4096,
        max_sentence_tokens: int = 400,
        max_sentences: int | None = None,
        dev_fraction: float = 0.05,
        on_oov: Literal["error", "skip"] = "error",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # checkpoints carry this data config (speechlab test --ckpt_path needs nothing else):
        # name the files by absolute path, so that it works from any folder
        for key in ("train_text", "dev_text", "test_text"):
            value = self.hparams[key]
            if value is not None:
                self.hparams[key] = (os.path.abspath(value) if isinstance(value, str)
                                     else [os.path.abspath(v) for v in value])
        if sentencepiece_model is not None:
            self.hparams.sentencepiece_model = os.path.abspath(sentencepiece_model)
        self.vocab: Vocab = (SentencePieceVocab.load(sentencepiece_model) if sentencepiece_model
                             else CharVocab(list(vocab)))
        self._data: dict[str, tuple[list[list[int]], list[str]]] = {}
        self._train_sampler: BucketBatchSampler | None = None

    def _read(self, name: str, sources: list[str]) -> tuple[list[list[int]], list[str]]:
        hp = self.hparams
        lines = [line for src in sources for line in read_text_lines(src, hp.segmentation)]
        ids, texts, report = encode_sentences(lines, self.vocab, hp.max_sentence_tokens, hp.on_oov)
        log.info("%s", report.summary(f"{name} ({', '.join(sources)})"))
        if not ids:
            raise TextDataError(f"{', '.join(sources)}: no usable sentences for {name} "
                                f"({report.summary(name)})")
        return ids, texts

    def setup(self, stage: str | None = None) -> None:
        if self._data:
            return
        hp = self.hparams
        train = _as_list(hp.train_text)
        dev = _as_list(hp.dev_text)
        if stage in (None, "fit") and not train:
            raise TextDataError("data.train_text is not set (needed to fit)")
        if train:
            ids, texts = self._read("train", train)
            if hp.max_sentences is not None:
                ids, texts = ids[: hp.max_sentences], texts[: hp.max_sentences]
            if not dev:
                n_dev = max(1, round(hp.dev_fraction * len(ids))) if len(ids) > 1 else 0
                held = set(random.Random(hp.seed).sample(range(len(ids)), n_dev))
                self._data["dev"] = ([ids[i] for i in sorted(held)], [texts[i] for i in sorted(held)])
                keep = [i for i in range(len(ids)) if i not in held]
                ids, texts = [ids[i] for i in keep], [texts[i] for i in keep]
            self._data["train"] = (ids, texts)
        if dev:
            self._data["dev"] = self._read("dev", dev)
        test = _as_list(hp.test_text)
        if test:
            self._data["test"] = self._read("test", test)
        elif "dev" in self._data:
            self._data["test"] = self._data["dev"]

    def sentences(self, split: str) -> tuple[list[list[int]], list[str]]:
        """``(ids, texts)`` of ``split`` after ``setup``."""
        return self._data[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self._data:
            raise TextDataError(f"no {split} sentences: set data.{split}_text")
        ids, texts = self._data[split]
        rank, world = rank_and_world()
        sampler = BucketBatchSampler([len(s) + 1 for s in ids], self.hparams.max_tokens,
                                     shuffle=shuffle, seed=self.hparams.seed,
                                     rank=rank, world_size=world)
        if shuffle:
            self._train_sampler = sampler
        workers = self.hparams.num_workers
        return DataLoader(SentenceDataset(ids, texts), sampler=sampler, batch_size=None,
                          num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("dev", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        return {"vocab": self.vocab.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:

        if "vocab" in state and vocab_from_dict(state["vocab"]) != self.vocab:
            raise ValueError(f"checkpoint vocabulary {vocab_from_dict(state['vocab'])!r} differs "
                             f"from the recipe's data vocabulary {self.vocab!r}")


