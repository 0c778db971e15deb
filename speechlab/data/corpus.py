"""Documents for topic-conditioned language models (TCNLM).

Pipeline: documents on disk (JSONL with ``text`` and optional ``label``/``id``, or a folder of
text files) → optional cleaning (:func:`clean_usenet` for 20 Newsgroups) → sentences of word
tokens (:func:`document_sentences`) → two vocabularies built on the training documents:

- the **LM vocabulary** (:func:`build_lm_vocab`): words with at least ``min_freq`` occurrences,
  plus ``<pad>`` (0), ``<unk>`` (1), ``<s>`` (2) and ``</s>`` (3);
- the **topic vocabulary** (:func:`build_topic_vocab`): stop words and contractions removed (scikit-learn's
  ``ENGLISH_STOP_WORDS``, 318 words, from Glasgow Information Retrieval Group's list; or a file of
  one word per line), the most frequent ``top_fraction`` (0.1%) of the remaining word types
  removed, and words with fewer than ``min_count`` occurrences removed (optionally capped to the
  ``max_size`` most frequent).

Each LM example is one sentence of a document (cut to ``max_sentence_len`` words, then ``</s>``)
together with the topic model's input, a bag of words chosen by ``topic_context``:

- ``"others"`` (default; the paper's): the document **without that sentence**, so the LM never
  sees its own words through the topic vector, but does see the document's later sentences;
- ``"preceding"``: the document's **preceding** sentences only (``0..i-1``), so nothing of the
  document's future reaches the model (Zheng et al., 2023). The first sentence gets an empty bag.

``stream: true`` batches whole documents instead (:class:`DocumentStreamDataset`): row ``b`` of
a batch is the next sentence of the document in lane ``b``, so a recurrent LM can carry its state
from sentence to sentence (the document-stream LSTM baseline). Splits are by document.

The embedded default corpus (:func:`generate_documents`) is made by code: documents from a few
topic-specific word pools mixed with shared function words, deterministic for a seed.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import os
import random
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from speechlab.data.vocab import WordVocab
from speechlab.dist import rank_and_world
from speechlab.io import read_jsonl, read_text

log = logging.getLogger("speechlab.data.corpus")

EMBEDDED = "embedded"
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
NUM = "<num>"


# --------------------------------------------------------------------------- documents

@dataclass(frozen=True)
class Document:
    """One document: raw text, optional class label and id."""

    text: str
    label: str | None = None
    id: str | None = None


def read_jsonl_documents(path: str | os.PathLike) -> list[Document]:
    """Documents of a JSONL file (``.jsonl.gz`` too), one object per line with ``text`` (str) and
    optional ``label`` and ``id``. Blank lines are skipped; anything else malformed raises
    ``ValueError`` naming the file and line."""
    path = Path(path)
    docs = []
    for lineno, row in read_jsonl(path, ValueError, "document file"):
        text = row.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{path}:{lineno}: missing or non-string 'text' field")
        label = row.get("label")
        docs.append(Document(text, None if label is None else str(label),
                             str(row.get("id", f"{path.stem}/{lineno}"))))
    return docs


def read_folder_documents(root: str | os.PathLike, suffixes: Sequence[str] = (".txt", "")) -> list[Document]:
    """Documents from the files under ``root`` (recursively, sorted; files whose suffix is in
    ``suffixes``, ``""`` = no suffix). A file's label is its folder relative to ``root`` (``None``
    for files directly in ``root``)."""
    root = Path(root)
    docs = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or p.suffix not in suffixes:
            continue
        rel = p.relative_to(root)
        label = str(rel.parent) if str(rel.parent) != "." else None
        docs.append(Document(read_text(p, errors="replace"), label, str(rel)))
    return docs


def load_documents(source: str | os.PathLike, num_documents: int = 400, seed: int = 0) -> list[Document]:
    """Documents of ``source``: ``"embedded"`` (the generated corpus, ``num_documents`` of them),
    a ``.jsonl`` (or ``.jsonl.gz``) file, or a folder of text files."""
    if str(source) == EMBEDDED:
        return generate_documents(num_documents, seed=seed)
    path = Path(source)
    if path.is_dir():
        docs = read_folder_documents(path)
    elif path.is_file():
        docs = read_jsonl_documents(path)
    else:
        raise FileNotFoundError(f"{path}: no such file or folder of documents")
    if not docs:
        raise ValueError(f"{path}: no documents found")
    return docs


# --------------------------------------------------------------------------- cleaning and tokens

_HEADER = re.compile(r"^[A-Za-z][A-Za-z0-9-]*: ")
_QUOTE = re.compile(r"^\s*[>|:]|^\s*in article\b|\b(writes|wrote|says|said)( in [^:]*)?:\s*$|^\s*quoted from",
                    re.IGNORECASE)
_EMAIL = re.compile(r"\S+@\S+")
_URL = re.compile(r"(https?://|ftp://|www\.)\S+", re.IGNORECASE)
_SENT_END = re.compile(r"(?<=[.!?])\s+")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|\d+(?:[.,]\d+)*")


def clean_usenet(text: str) -> str:
    """Strip what is not the author's prose from a Usenet post (20 Newsgroups):

    - the header block: leading ``Key: value`` lines (and their indented continuations) up to the
      first blank line;
    - quoted lines (starting with ``>``, ``|`` or ``:``), attribution lines (``In article ...``,
      ``... writes:``/``wrote:``/``says:``);
    - the signature: everything after a line that is ``--`` or ``-- ``;
    - e-mail addresses and URLs;
    - lines that are mostly not letters (ASCII art, tables, uuencoded data, PGP blocks): fewer than
      half of the non-space characters are letters.

    Blank lines are kept (they separate paragraphs, which :func:`split_sentences` uses).
    """
    lines = text.replace("\r\n", "\n").split("\n")
    i = 0
    if lines and _HEADER.match(lines[0]):
        while i < len(lines) and lines[i].strip():
            i += 1
    out = []
    for line in lines[i:]:
        if line.rstrip() == "--":
            break
        if _QUOTE.search(line):
            continue
        line = _URL.sub(" ", _EMAIL.sub(" ", line))
        visible = [c for c in line if not c.isspace()]
        if visible and sum(c.isalpha() for c in visible) < 0.5 * len(visible):
            continue
        out.append(line)
    return "\n".join(out)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: paragraphs (separated by blank lines) are split after ``.``, ``!``
    or ``?`` followed by white space; line breaks inside a paragraph are spaces."""
    sentences = []
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        sentences += [s for s in _SENT_END.split(para) if s]
    return sentences


def tokenize(sentence: str) -> list[str]:
    """Lower-cased word tokens of a sentence (ASCII-folded; punctuation dropped; apostrophes
    inside words kept; every number becomes ``<num>``)."""
    s = unicodedata.normalize("NFKD", sentence)
    s = "".join(c for c in s if not unicodedata.combining(c)).lower().replace("\u2019", "'")
    return [NUM if t[0].isdigit() else t for t in _TOKEN.findall(s)]


def document_sentences(text: str, clean: Literal["none", "usenet"] = "none") -> list[list[str]]:
    """Token lists of a document's sentences (empty sentences dropped)."""
    if clean == "usenet":
        text = clean_usenet(text)
    elif clean != "none":
        raise ValueError(f"clean must be 'none' or 'usenet', got {clean!r}")
    return [toks for toks in map(tokenize, split_sentences(text)) if toks]


# --------------------------------------------------------------------------- vocabularies

def build_lm_vocab(sentences: Iterable[Sequence[str]], min_freq: int = 2,
                   max_size: int | None = None) -> WordVocab:
    """LM vocabulary: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2, ``</s>`` 3, then the words with at
    least ``min_freq`` occurrences, most frequent first (ties alphabetical), at most ``max_size``
    words in all."""
    counts = Counter(t for s in sentences for t in s)
    specials = [PAD, UNK, BOS, EOS]
    words = sorted((w for w, c in counts.items() if c >= min_freq and w not in specials),
                   key=lambda w: (-counts[w], w))
    if max_size is not None:
        words = words[: max(0, max_size - len(specials))]
    return WordVocab(specials + words, unk=UNK)


def load_stop_words(stop_words: str) -> frozenset[str]:
    """``"sklearn"``: scikit-learn's ``ENGLISH_STOP_WORDS``; ``"none"``: no stop words; else a
    file of one word per line (``#`` comments)."""
    if stop_words == "sklearn":
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        return frozenset(ENGLISH_STOP_WORDS)
    if stop_words == "none":
        return frozenset()
    path = Path(stop_words)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: stop-word file not found (or use 'sklearn' / 'none')")
    return frozenset(w.strip().lower() for w in read_text(path).splitlines()
                     if w.strip() and not w.lstrip().startswith("#"))


def build_topic_vocab(documents: Iterable[Iterable[str]], stop_words: frozenset[str] = frozenset(),
                      top_fraction: float = 0.001, min_count: int = 5,
                      max_size: int | None = None, min_word_len: int = 2) -> WordVocab:
    """Topic-model vocabulary from tokenized training documents: drop stop words, ``<num>``,
    tokens shorter than ``min_word_len`` letters (default 2: one-letter tokens; 3 also drops
    two-letter ones, e.g. the ``ei``, ``pl``, ``mf`` of uuencoded data in 20 Newsgroups) and
    contractions (``don't``, ``that's``: absent from most stop-word lists); drop the
    ``ceil(top_fraction * types)`` most frequent remaining word types; keep words with at least
    ``min_count`` occurrences (at most ``max_size``, most frequent first). No ``<unk>``: words
    outside it are ignored by the topic model."""
    if min_word_len < 1:
        raise ValueError(f"min_word_len must be >= 1, got {min_word_len}")
    counts = Counter(t for doc in documents for t in doc)
    cand = {w: c for w, c in counts.items()
            if w not in stop_words and w != NUM and len(w) >= min_word_len and "'" not in w
            and not w.startswith("<")}
    ranked = sorted(cand, key=lambda w: (-cand[w], w))
    n_top = math.ceil(top_fraction * len(ranked)) if top_fraction > 0 else 0
    words = [w for w in ranked[n_top:] if cand[w] >= min_count]
    if max_size is not None:
        words = words[:max_size]
    if not words:
        raise ValueError(f"empty topic vocabulary: no word type of {len(counts)} survives stop words, "
                         f"the top {top_fraction:.2%} and min_count={min_count}; lower min_count")
    return WordVocab(words)


# --------------------------------------------------------------------------- embedded corpus

_FUNCTION = {
    "det": ["the", "a", "this", "that", "every", "one", "our", "their"],
    "subj": ["we", "they", "people", "everyone", "my friend", "most of us", "she", "he"],
    "adv": ["often", "rarely", "always", "usually", "sometimes", "never", "really", "probably"],
    "conn": ["because", "although", "when", "while", "since", "and", "but"],
    "prep": ["with", "near", "about", "after", "before", "without", "under", "for"],
    "generic_noun": ["time", "day", "way", "problem", "idea", "question", "result", "thing", "week", "part"],
    "generic_adj": ["good", "new", "big", "small", "old", "important", "simple", "strange"],
}

TOPIC_POOLS: dict[str, dict[str, list[str]]] = {
    "space": {
        "noun": ["rocket", "orbit", "planet", "moon", "telescope", "astronaut", "satellite", "galaxy",
                 "comet", "launch", "shuttle", "mars", "star", "crater", "probe", "nasa", "mission",
                 "asteroid", "spacecraft", "station"],
        "verb": ["orbits", "launches", "observes", "lands on", "circles", "reaches", "photographs", "tracks"],
        "adj": ["lunar", "orbital", "distant", "solar", "stellar", "martian", "cosmic"],
    },
    "sport": {
        "noun": ["game", "goal", "player", "coach", "season", "team", "league", "match", "score",
                 "pitcher", "hockey", "baseball", "playoffs", "stadium", "fans", "referee", "inning",
                 "puck", "championship", "defense"],
        "verb": ["wins", "scores", "beats", "trades", "loses to", "defends", "coaches", "drafts"],
        "adj": ["fast", "winning", "defensive", "professional", "rookie", "injured", "final"],
    },
    "cooking": {
        "noun": ["recipe", "oven", "garlic", "sauce", "butter", "flour", "kitchen", "pasta", "onion",
                 "soup", "bread", "pepper", "salt", "chicken", "dough", "spoon", "dinner", "cheese",
                 "tomato", "pan"],
        "verb": ["bakes", "stirs", "chops", "roasts", "tastes", "boils", "seasons", "slices"],
        "adj": ["fresh", "spicy", "crispy", "sweet", "baked", "delicious", "warm"],
    },
    "computers": {
        "noun": ["software", "disk", "driver", "memory", "windows", "keyboard", "monitor", "program",
                 "file", "server", "network", "chip", "modem", "printer", "graphics", "card", "bug",
                 "compiler", "screen", "processor"],
        "verb": ["installs", "crashes", "compiles", "downloads", "formats", "boots", "upgrades", "runs"],
        "adj": ["digital", "faster", "compatible", "installed", "virtual", "serial", "binary"],
    },
    "medicine": {
        "noun": ["doctor", "patient", "disease", "treatment", "drug", "symptoms", "hospital", "cancer",
                 "diet", "vitamin", "infection", "surgery", "pain", "nurse", "clinic", "virus",
                 "therapy", "dose", "blood", "allergy"],
        "verb": ["treats", "prescribes", "diagnoses", "cures", "examines", "prevents", "causes", "heals"],
        "adj": ["chronic", "medical", "clinical", "healthy", "severe", "allergic", "effective"],
    },
}

_TEMPLATES = [
    "{det} {adj} {noun} {verb} {det} {noun}",
    "{subj} {adv} said that {det} {noun} {verb} {det} {adj} {noun}",
    "{det} {noun} {prep} {det} {noun} is {adj}",
    "{subj} think {det} {noun} is {adv} {adj} {conn} {det} {noun} {verb} {det} {noun}",
    "is {det} {noun} {adj} {prep} {det} {noun}",
    "{subj} saw {det} {adj} {noun} {prep} {det} {noun} last {gnoun}",
    "{det} {gadj} {gnoun} is that {det} {noun} {verb} {det} {noun}",
    "{subj} {adv} ask why {det} {noun} {verb} {det} {adj} {noun}",
]


def _render_sentence(rng: random.Random, topics: Sequence[str], weights: Sequence[float]) -> str:
    def pool(kind: str) -> str:
        r = rng.random()
        if r < 0.12:  # a topic-free word
            return rng.choice(_FUNCTION["generic_noun" if kind == "noun" else "generic_adj"]) \
                if kind in ("noun", "adj") else rng.choice(TOPIC_POOLS[rng.choice(list(TOPIC_POOLS))][kind])
        topic = rng.choices(topics, weights)[0]
        return rng.choice(TOPIC_POOLS[topic][kind])

    template = rng.choice(_TEMPLATES)
    out = []
    for part in re.split(r"(\{\w+\})", template):
        if not part.startswith("{"):
            out.append(part)
            continue
        slot = part[1:-1]
        if slot in ("noun", "verb", "adj"):
            out.append(pool(slot))
        elif slot == "gnoun":
            out.append(rng.choice(_FUNCTION["generic_noun"]))
        elif slot == "gadj":
            out.append(rng.choice(_FUNCTION["generic_adj"]))
        else:
            out.append(rng.choice(_FUNCTION[slot]))
    text = "".join(out)
    end = "?" if template.startswith("is ") else "."
    return text[0].upper() + text[1:] + end


def generate_documents(num_documents: int = 400, seed: int = 0, min_sentences: int = 5,
                       max_sentences: int = 12) -> list[Document]:
    """The embedded default corpus: ``num_documents`` documents over the 5 topics of
    :data:`TOPIC_POOLS`. Each document has a main topic (its ``label``; weight 0.8) and a second
    topic (0.2); each sentence fills a template of shared function words with nouns, verbs and
    adjectives drawn from the document's topics (12% topic-free words). Deterministic for a
    seed; prefix-stable (document ``i`` does not depend on ``num_documents``)."""
    names = list(TOPIC_POOLS)
    docs = []
    for i in range(num_documents):
        rng = random.Random(f"{seed}/{i}")
        main = names[i % len(names)]
        second = rng.choice([n for n in names if n != main])
        n = rng.randint(min_sentences, max_sentences)
        sentences = [_render_sentence(rng, (main, second), (0.8, 0.2)) for _ in range(n)]
        # a paragraph break now and then, as in real text
        text = " ".join(s + ("\n\n" if rng.random() < 0.2 else "") for s in sentences).strip()
        docs.append(Document(text, main, f"embedded/{i}"))
    return docs


# --------------------------------------------------------------------------- datasets

@dataclass
class ProcessedDocuments:
    """Documents as ids: per document its sentences as LM ids (without ``<s>``/``</s>``, cut to
    the maximum length) and the topic-vocabulary ids of each sentence (full sentence)."""

    lm_sentences: list[list[list[int]]]
    topic_sentences: list[list[list[int]]]
    labels: list[str | None]

    def __len__(self) -> int:
        return len(self.lm_sentences)

    def doc_term_matrix(self, vocab_size: int, binary: bool = False) -> torch.Tensor:
        """``(D, vocab_size)`` float counts (or 0/1) of topic words per document."""
        rows, cols = [], []
        for d, sents in enumerate(self.topic_sentences):
            for s in sents:
                rows += [d] * len(s)
                cols += s
        m = torch.zeros(len(self), vocab_size)
        if rows:
            m.index_put_((torch.tensor(rows), torch.tensor(cols)), torch.ones(len(rows)), accumulate=True)
        return (m > 0).float() if binary else m


def process_documents(token_docs: Sequence[Sequence[Sequence[str]]], labels: Sequence[str | None],
                      lm_vocab: WordVocab, topic_vocab: WordVocab, max_sentence_len: int = 30,
                      min_sentence_len: int = 1) -> ProcessedDocuments:
    """Map tokenized documents to ids. Sentences shorter than ``min_sentence_len`` words get no
    LM example but still count in their document's bag of words."""
    lm, topic = [], []
    for doc in token_docs:
        lm.append([lm_vocab.encode(s[:max_sentence_len]) if len(s) >= min_sentence_len else []
                   for s in doc])
        topic.append([topic_vocab.encode(s) for s in doc])
    return ProcessedDocuments(lm, topic, list(labels))


TopicContext = Literal["others", "preceding"]


class SentenceDataset(Dataset):
    """One item per LM sentence: ``{"tokens": <s> w_1..w_n, "targets": w_1..w_n </s>,
    "bow": topic-word counts, "doc": document index, "label": label id}``. ``bow`` (a
    ``Counter`` of topic ids) is the document without this sentence (``topic_context="others"``)
    or the document's preceding sentences (``"preceding"``; empty for the first sentence).
    ``label_ids``: each document's label id (``-1``: none); without them every label is -1."""

    def __init__(self, docs: ProcessedDocuments, bos_id: int, eos_id: int,
                 topic_context: TopicContext = "others", label_ids: Sequence[int] | None = None) -> None:
        if topic_context not in ("others", "preceding"):
            raise ValueError(f"topic_context must be 'others' or 'preceding', got {topic_context!r}")
        self.docs = docs
        self.bos_id, self.eos_id = bos_id, eos_id
        self.topic_context = topic_context
        self.label_ids = list(label_ids) if label_ids is not None else [-1] * len(docs.lm_sentences)
        if len(self.label_ids) != len(docs.lm_sentences):
            raise ValueError(f"{len(self.label_ids)} label ids for {len(docs.lm_sentences)} documents")
        self.index = [(d, s) for d, sents in enumerate(docs.lm_sentences)
                      for s, ids in enumerate(sents) if ids]
        self.doc_counts = [Counter(w for s in sents for w in s) for sents in docs.topic_sentences]

    def __len__(self) -> int:
        return len(self.index)

    def bow_without(self, d: int, s: int) -> Counter:
        """Topic-word counts of document ``d`` minus those of its sentence ``s``."""
        bow = self.doc_counts[d].copy()
        bow.subtract(self.docs.topic_sentences[d][s])
        return +bow  # drops zero counts

    def bow_preceding(self, d: int, s: int) -> Counter:
        """Topic-word counts of document ``d``'s sentences ``0..s-1`` (empty for ``s = 0``)."""
        return Counter(w for sent in self.docs.topic_sentences[d][:s] for w in sent)

    def __getitem__(self, i: int) -> dict[str, Any]:
        d, s = self.index[i]
        ids = self.docs.lm_sentences[d][s]
        bow = self.bow_without(d, s) if self.topic_context == "others" else self.bow_preceding(d, s)
        return {"tokens": [self.bos_id, *ids], "targets": [*ids, self.eos_id], "bow": bow, "doc": d,
                "label": self.label_ids[d]}


def collate_sentences(items: Sequence[dict[str, Any]], topic_vocab_size: int, pad_id: int = 0,
                      pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Batch of :class:`SentenceDataset` items: ``tokens (B, L)`` (``pad_id``-padded),
    ``targets (B, L)`` (``-100`` where padded), ``lengths (B,)``, ``bow (B, V_topic)`` float
    counts, ``doc (B,)``, ``label (B,)`` (``-1``: none). ``pad_to`` fixes ``L`` (static shapes
    for compiled models)."""
    lengths = [len(it["tokens"]) for it in items]
    L = max(lengths) if pad_to is None else pad_to
    if max(lengths) > L:
        raise ValueError(f"sentence of {max(lengths)} tokens does not fit pad_to={L}")
    tokens = torch.full((len(items), L), pad_id, dtype=torch.long)
    targets = torch.full((len(items), L), -100, dtype=torch.long)
    bow = torch.zeros(len(items), topic_vocab_size)
    for b, it in enumerate(items):
        n = lengths[b]
        tokens[b, :n] = torch.tensor(it["tokens"])
        targets[b, :n] = torch.tensor(it["targets"])
        if it["bow"]:
            bow[b, list(it["bow"])] = torch.tensor(list(it["bow"].values()), dtype=torch.float)
    return {"tokens": tokens, "targets": targets, "lengths": torch.tensor(lengths), "bow": bow,
            "doc": torch.tensor([it["doc"] for it in items]),
            "label": torch.tensor([it.get("label", -1) for it in items], dtype=torch.long)}


# --------------------------------------------------------------------------- document streams

def stream_schedule(documents: Sequence[Sequence[int]], lanes: int) -> list[list[int | None]]:
    """Batches that read ``documents`` (each a sequence of item indices, in reading order) in
    ``lanes`` parallel lanes: row ``b`` of batch ``k + 1`` is the item after row ``b`` of batch
    ``k``, in the same document or, where that document has ended, the first item of the lane's
    next document; ``None`` where a lane has nothing left. Every item appears exactly once.

    The lanes are balanced so that they end together: documents, longest first, each go to the
    lane with the fewest items so far (longest-processing-time scheduling: at most 4/3 of the
    fewest batches possible), and each lane reads its documents in the given order. Dealing
    documents to whichever lane is free instead leaves the longest documents alone at the end
    (on 20 Newsgroups, 128 lanes: 546 of 1,664 training batches had fewer than 10 % of their
    rows filled, a third of every epoch spent on a handful of documents)."""
    if lanes < 1:
        raise ValueError(f"a stream needs at least one lane, got {lanes}")
    docs = [doc for doc in documents if doc]
    heap = [(0, lane) for lane in range(lanes)]  # (items so far, lane)
    assigned: list[list[int]] = [[] for _ in range(lanes)]
    for d in sorted(range(len(docs)), key=lambda d: -len(docs[d])):
        total, lane = heapq.heappop(heap)
        assigned[lane].append(d)
        heapq.heappush(heap, (total + len(docs[d]), lane))
    streams = [[i for d in sorted(ds) for i in docs[d]] for ds in assigned]
    return [[s[k] if k < len(s) else None for s in streams]
            for k in range(max(map(len, streams), default=0))]


class DocumentStreamDataset(Dataset):
    """Whole documents as consecutive batches (``DocumentDataModule(stream=True)``): item ``k`` is
    a collated batch of ``lanes`` rows — ``collate``'s output plus ``first (B,)`` bool — for an LM
    that carries its state from row ``b`` of one batch to row ``b`` of the next (truncated BPTT
    over sentence-sized chunks) and resets it where ``first`` is True: the row starts a document,
    or is a filler row (``<pad>`` in, every target ignored) of a lane that has run out.

    The rows are :class:`SentenceDataset` items, so the targets are exactly those of the
    sentence-level protocol. Documents (in ``order``, default as stored) are dealt round-robin to
    ``world`` ranks (each document stays on one rank), each rank's are read by
    :func:`stream_schedule`, and the ranks' batches are interleaved (batch ``k`` of rank ``r`` is
    item ``k * world + r``, what :class:`EvalShardSampler` gives rank ``r``), padded with filler
    batches so that every rank has as many (equal steps under DDP)."""

    def __init__(self, sentences: SentenceDataset, lanes: int,
                 collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
                 world: int = 1, order: Sequence[int] | None = None) -> None:
        self.sentences, self.collate = sentences, collate
        per_doc: dict[int, list[int]] = {}
        for i, (d, _) in enumerate(sentences.index):
            per_doc.setdefault(d, []).append(i)
        order = range(len(sentences.docs)) if order is None else order
        schedules = [stream_schedule([per_doc.get(d, []) for d in list(order)[r::world]], lanes)
                     for r in range(world)]
        filler: list[int | None] = [None] * lanes
        self.batches = [s[k] if k < len(s) else filler
                        for k in range(max(map(len, schedules), default=0)) for s in schedules]
        self.first = {items[0] for items in per_doc.values()}

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rows = self.batches[k]
        filler = {"tokens": [0], "targets": [-100], "bow": Counter(), "doc": -1}
        batch = self.collate([filler if i is None else self.sentences[i] for i in rows])
        batch["first"] = torch.tensor([i is None or i in self.first for i in rows])
        return batch


# --------------------------------------------------------------------------- data module

def split_documents(docs: Sequence[Document], fractions: Sequence[float], seed: int = 0
                    ) -> list[list[Document]]:
    """Shuffle ``docs`` with ``seed`` and cut it into consecutive parts of the given fractions
    (the last part takes the rest)."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    parts, start = [], 0
    for k, frac in enumerate(fractions):
        end = len(order) if k == len(fractions) - 1 else start + round(frac * len(order))
        parts.append([docs[i] for i in sorted(order[start:end])])
        start = end
    return parts


class EvalShardSampler(DistributedSampler):
    """Evaluation under DDP: rank ``r`` of ``w`` takes examples ``r, r + w, ...`` in order,
    each exactly once. Lightning's own evaluation ``DistributedSampler`` pads the ranks to equal
    length with repeated examples, which summed perplexity counts would count twice; being a
    ``DistributedSampler``, this one is left in place by Lightning. It also shards the batches of
    a :class:`DocumentStreamDataset` (training too), whose layout puts rank ``r``'s at
    ``r, r + w, ...``."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self):  # noqa: ANN204 - Sampler's
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class DocumentDataModule(pl.LightningDataModule):
    """Sentences with their document's topic input, for :class:`~speechlab.tasks.topic_lm.TopicLMTask`.

    Args:
        train: ``"embedded"`` (the generated corpus), a JSONL file or a folder of text files.
        val: validation documents; ``None`` = ``val_fraction`` of ``train``'s documents.
        test: test documents; ``None`` = ``test_fraction`` of ``train``'s documents.
        val_fraction, test_fraction: held-out parts of ``train`` (by document) where ``val`` /
            ``test`` are not given.
        clean: ``"none"`` or ``"usenet"`` (:func:`clean_usenet`).
        max_documents: use only the first N training documents (after the split; quick runs).
        min_freq, max_vocab: LM vocabulary (:func:`build_lm_vocab`).
        stop_words, topic_top_fraction, topic_min_count, topic_max_size, topic_min_word_len:
            topic vocabulary (:func:`build_topic_vocab`; ``topic_min_word_len`` 2 drops
            one-letter tokens, 3 also two-letter ones).
        max_sentence_len: words kept per sentence (the rest is cut; ``</s>`` follows).
        min_sentence_len: shorter sentences give no LM example.
        batch_size: sentences per training batch.
        eval_batch_size: sentences per validation/test batch (default ``batch_size``).
        static_length: pad every batch to ``max_sentence_len + 1`` (static shapes for compile).
        topic_context: the topic model's input for a sentence: ``"others"`` (the document
            without the sentence) or ``"preceding"`` (the document's preceding sentences only;
            empty for the first). See the module docstring.
        stream: batch whole documents as consecutive chunks (:class:`DocumentStreamDataset`;
            ``batch_size`` / ``eval_batch_size`` = lanes) for the document-stream LSTM. Training
            reads the documents in one seeded order, the same every epoch.
        embedded_documents: size of the embedded corpus.
        num_workers: DataLoader workers.
        seed: document split and shuffling seed.
    """

    def __init__(self, train: str = EMBEDDED, val: str | None = None, test: str | None = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.1,
                 clean: Literal["none", "usenet"] = "none", max_documents: int | None = None,
                 min_freq: int = 2, max_vocab: int | None = None, stop_words: str = "sklearn",
                 topic_top_fraction: float = 0.001, topic_min_count: int = 5,
                 topic_max_size: int | None = None, topic_min_word_len: int = 2, max_sentence_len: int = 30,
                 min_sentence_len: int = 1, batch_size: int = 64, eval_batch_size: int | None = None,
                 static_length: bool = False, topic_context: TopicContext = "others",
                 stream: bool = False, embedded_documents: int = 400, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if topic_context not in ("others", "preceding"):
            raise ValueError(f"topic_context must be 'others' or 'preceding', got {topic_context!r}")
        self.save_hyperparameters()
        # checkpoints carry this data config (speechlab test --ckpt_path needs nothing else):
        # name the files by absolute path, so that it works from any folder
        for key in ("train", "val", "test"):
            if self.hparams[key] is not None and str(self.hparams[key]) != EMBEDDED:
                self.hparams[key] = os.path.abspath(self.hparams[key])
        if stop_words not in ("sklearn", "none"):
            self.hparams.stop_words = os.path.abspath(stop_words)
        self.lm_vocab: WordVocab | None = None
        self.topic_vocab: WordVocab | None = None
        #: the training documents' labels, sorted (label id = index; TopicLMTask's topic_source: label)
        self.label_names: list[str] = []
        self.splits: dict[str, ProcessedDocuments] = {}
        self.documents: dict[str, list[Document]] = {}

    # -- loading ---------------------------------------------------------------------------
    def load_splits(self) -> dict[str, list[Document]]:
        """Raw documents by split (``train``/``val``/``test``)."""
        hp = self.hparams
        train = load_documents(hp.train, hp.embedded_documents, hp.seed)
        val = load_documents(hp.val) if hp.val else None
        test = load_documents(hp.test) if hp.test else None
        fractions = [f for f, given in ((hp.val_fraction, val), (hp.test_fraction, test)) if given is None]
        if fractions:
            parts = split_documents(train, [1 - sum(fractions), *fractions], hp.seed)
            train, held = parts[0], parts[1:]
            val = val if val is not None else held.pop(0)
            test = test if test is not None else held.pop(0)
        if hp.max_documents is not None:
            train = train[: hp.max_documents]
        for name, docs in (("train", train), ("val", val), ("test", test)):
            if not docs:
                raise ValueError(f"empty {name} document set (source {getattr(hp, name, None) or hp.train!r}); "
                                 "use more documents or smaller val/test fractions")
        return {"train": train, "val": val, "test": test}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        self.documents = self.load_splits()
        tokenized = {k: [document_sentences(d.text, hp.clean) for d in docs]
                     for k, docs in self.documents.items()}
        train_sents = [s for doc in tokenized["train"] for s in doc]
        if not train_sents:
            raise ValueError(f"no sentences in the training documents of {hp.train!r}")
        self.lm_vocab = build_lm_vocab((s[: hp.max_sentence_len] for s in train_sents),
                                       hp.min_freq, hp.max_vocab)
        self.topic_vocab = build_topic_vocab(
            ([t for s in doc for t in s] for doc in tokenized["train"]), load_stop_words(hp.stop_words),
            hp.topic_top_fraction, hp.topic_min_count, hp.topic_max_size,
            hp.topic_min_word_len)
        self.splits = {k: process_documents(v, [d.label for d in self.documents[k]], self.lm_vocab,
                                            self.topic_vocab, hp.max_sentence_len, hp.min_sentence_len)
                       for k, v in tokenized.items()}
        log.info("documents train/val/test %d/%d/%d; LM vocabulary %d; topic vocabulary %d",
                 *(len(self.splits[k]) for k in ("train", "val", "test")), len(self.lm_vocab),
                 len(self.topic_vocab))
        self.label_names = sorted({d.label for d in self.documents["train"] if d.label is not None})
        for k in ("val", "test"):
            unseen = sum(d.label is not None and d.label not in self.label_names for d in self.documents[k])
            if self.label_names and unseen:
                log.warning("%d %s documents have a label no training document has (label id -1)", unseen, k)

    def label_ids(self, split: str) -> list[int]:
        """Each document's label id in ``split``: its index in :attr:`label_names`, ``-1`` for
        no label or one no training document has."""
        index = {name: i for i, name in enumerate(self.label_names)}
        return [index.get(label, -1) if label is not None else -1 for label in self.splits[split].labels]

    # -- loaders ---------------------------------------------------------------------------
    def dataset(self, split: str) -> SentenceDataset:
        if not self.splits:
            self.setup()
        assert self.lm_vocab is not None
        return SentenceDataset(self.splits[split], self.lm_vocab.id_of(BOS), self.lm_vocab.id_of(EOS),
                               self.hparams.topic_context, self.label_ids(split))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        assert self.topic_vocab is not None
        pad_to = hp.max_sentence_len + 1 if hp.static_length else None
        collate = functools.partial(collate_sentences, topic_vocab_size=len(self.topic_vocab), pad_id=0,
                                    pad_to=pad_to)
        ds = self.dataset(split)
        batch_size = hp.batch_size if shuffle else hp.eval_batch_size or hp.batch_size
        rank, world = rank_and_world()
        if hp.stream:  # batches in stream order on every rank, training too
            order = list(range(len(ds.docs)))
            if shuffle:
                random.Random(hp.seed).shuffle(order)
            stream = DocumentStreamDataset(ds, batch_size, collate, world, order)
            return DataLoader(stream, batch_size=None, sampler=EvalShardSampler(stream, world, rank),
                              num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)
        if not shuffle and world > 1:  # training: Lightning's DistributedSampler (shuffled)
            sampler = EvalShardSampler(ds, world, rank)
            return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=hp.num_workers,
                              collate_fn=collate, persistent_workers=hp.num_workers > 0)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle,
                          drop_last=shuffle and len(ds) > batch_size,
                          num_workers=hp.num_workers, collate_fn=collate,
                          generator=torch.Generator().manual_seed(hp.seed) if shuffle else None,
                          persistent_workers=hp.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)


# --------------------------------------------------------------------------- LDA
# (scikit-learn): the baseline of the coherence comparison, and TopicLMTask's topic_init: lda

def doc_word_sparse(docs: ProcessedDocuments, vocab_size: int) -> Any:
    """``scipy.sparse.csr_matrix (D, V)`` of topic-word counts (for scikit-learn)."""
    import numpy as np
    from scipy.sparse import csr_matrix

    rows, cols = [], []
    for d, sents in enumerate(docs.topic_sentences):
        for s in sents:
            rows += [d] * len(s)
            cols += s
    data = np.ones(len(rows), dtype=np.float32)
    return csr_matrix((data, (rows, cols)), shape=(len(docs), vocab_size))


def lda_topic_word_logits(doc_word: Any, num_topics: int, max_iter: int = 20, seed: int = 0,
                          n_jobs: int | None = None) -> torch.Tensor:
    """Fit scikit-learn's ``LatentDirichletAllocation`` (batch variational Bayes, its default
    priors ``1 / num_topics``) on a ``(D, V)`` count matrix (:func:`doc_word_sparse`: topic-word
    counts per document) and return its topic-word distributions as logits.

    Returns ``(K, V)`` float32 ``log beta_k - mean_v log beta_k`` with ``beta_k`` the row-normalized
    ``components_``: ``softmax`` of a row is LDA's ``beta_k``, so its top words are LDA's. The
    per-row shift is the only freedom left: neither the product decoder (a per-document constant
    under its softmax) nor the mixture decoder (``softmax(phi_k)``) sees it, and centring keeps
    the values near 0 like the random initialization. ``random_state=seed``; ``n_jobs`` as in
    scikit-learn (``None``: one process)."""
    import numpy as np
    from sklearn.decomposition import LatentDirichletAllocation

    lda = LatentDirichletAllocation(n_components=num_topics, max_iter=max_iter, learning_method="batch",
                                    random_state=seed, n_jobs=n_jobs)
    lda.fit(doc_word)
    log_beta = np.log(lda.components_ / lda.components_.sum(axis=1, keepdims=True))
    return torch.from_numpy(log_beta - log_beta.mean(axis=1, keepdims=True)).float()


def lda_top_words(doc_word: Any, num_topics: int, top_k: int = 10, max_iter: int = 20, seed: int = 0
                  ) -> torch.Tensor:
    """``(K, top_k)`` ids of the top words of each topic of :func:`lda_topic_word_logits`."""
    return lda_topic_word_logits(doc_word, num_topics, max_iter, seed).topk(top_k, dim=-1).indices
