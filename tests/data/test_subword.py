"""Tests of speechlab.data.subword.SentencePieceVocab (trained in memory on generated text)."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest

from speechlab.data.subword import SentencePieceVocab, texts_from_manifest
from speechlab.data.text import CharVocab, normalize_text
from speechlab.data.vocab import vocab_from_dict

SUBJECTS = ["The cat", "A dog", "My neighbour", "The old farmer", "Our teacher", "Jack"]
VERBS = ["sat on", "jumped over", "looked at", "painted", "didn't see", "walked to"]
OBJECTS = ["the mat", "a red house", "the sleepy fox", "two brown boxes", "the river",
           "Bob's bicycle", "the kitchen-lights"]
ENDINGS = ["", " yesterday", " slowly", " in the morning", ", again", " before winter"]
# letters that no template uses: always out of vocabulary for a model trained on them
MISSING = sorted(set("abcdefghijklmnopqrstuvwxyz") - set(normalize_text(
    " ".join(SUBJECTS + VERBS + OBJECTS + ENDINGS))))


def make_sentences(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(ENDINGS)}"
        + rng.choice([".", "!", "?"])
        for _ in range(n)
    ]


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def vocab(request: pytest.FixtureRequest) -> SentencePieceVocab:
    return SentencePieceVocab.train(make_sentences(), vocab_size=60, model_type=request.param)


def test_layout(vocab: SentencePieceVocab) -> None:
    assert vocab.blank == 0
    assert len(vocab) == 61  # 60 pieces + blank
    assert vocab.unk == 1
    assert vocab.pieces[:2] == ("<blank>", "<unk>")
    assert len(vocab.pieces) == len(vocab)
    assert vocab.token_of(0) == "<blank>"
    for i in range(2, len(vocab)):
        assert vocab.id_of(vocab.token_of(i)) == i
    with pytest.raises(KeyError):
        vocab.id_of("no-such-piece")


def test_roundtrip(vocab: SentencePieceVocab) -> None:
    texts = make_sentences(50, seed=1) + ["Jack painted the river", "", "  !!  "]
    for t in texts:
        ids = vocab.encode(t)
        assert all(2 <= i < len(vocab) for i in ids)  # never blank, never <unk>
        assert vocab.decode(ids) == normalize_text(t)
    # subwords: fewer tokens than characters on the training domain
    sample = normalize_text(texts[0])
    assert len(vocab.encode(sample)) < len(sample)
    # blanks are skipped in decoding
    ids = vocab.encode("the cat")
    assert vocab.decode([0, *ids, 0]) == "the cat"


def test_unknown_characters(vocab: SentencePieceVocab) -> None:
    assert MISSING, "templates use every letter; pick a letter they do not use"
    bad = f"the {MISSING[0]}at"
    assert vocab.oov_chars(bad) == {MISSING[0]}
    with pytest.raises(ValueError, match="not in vocabulary"):
        vocab.encode(bad)
    ids = vocab.encode(bad, strict=False)
    assert vocab.unk not in ids
    assert vocab.decode(ids) == "the at"
    assert vocab.decode([vocab.unk, *vocab.encode("the cat")]) == "the cat"
    with pytest.raises(ValueError, match="out of range"):
        vocab.decode([len(vocab)])


def test_to_dict_from_dict(vocab: SentencePieceVocab) -> None:
    d = json.loads(json.dumps(vocab.to_dict()))  # survives JSON (a checkpoint's hparams)
    assert d["type"] == "sentencepiece" and d["size"] == len(vocab)
    other = SentencePieceVocab.from_dict(d)
    assert other == vocab
    assert vocab_from_dict(d) == vocab
    assert vocab_from_dict(CharVocab().to_dict()) == CharVocab()
    for t in make_sentences(20, seed=2):
        assert other.encode(t) == vocab.encode(t)
    restored = pickle.loads(pickle.dumps(vocab))
    assert restored.encode("the cat sat") == vocab.encode("the cat sat")
    with pytest.raises(ValueError, match="sha1"):
        SentencePieceVocab.from_dict({**d, "sha1": "0" * 40})
    with pytest.raises(ValueError, match="not a sentencepiece"):
        SentencePieceVocab.from_dict(CharVocab().to_dict())


def test_save_load(vocab: SentencePieceVocab, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "vocab.model"
    vocab.save(path)
    assert path.read_bytes() == vocab.model_proto
    assert not list(path.parent.glob("*.tmp*"))
    loaded = SentencePieceVocab.load(path)
    assert loaded == vocab
    assert loaded.encode("our teacher walked to the river") == vocab.encode(
        "our teacher walked to the river")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model"):
        SentencePieceVocab.load(bad)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_deterministic_training(model_type: str) -> None:
    texts = make_sentences()
    a = SentencePieceVocab.train(texts, 50, model_type=model_type, seed=3)  # type: ignore[arg-type]
    b = SentencePieceVocab.train(iter(texts), 50, model_type=model_type, seed=3)  # type: ignore[arg-type]
    assert a == b
    assert a.fingerprint == b.fingerprint


def test_training_errors() -> None:
    texts = make_sentences(50)
    with pytest.raises(ValueError, match="Vocabulary size too high"):
        SentencePieceVocab.train(texts, 100_000)
    with pytest.raises(ValueError, match="model_type"):
        SentencePieceVocab.train(texts, 40, model_type="word")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no non-empty text"):
        SentencePieceVocab.train(["", "?!"], 40)
    with pytest.raises(ValueError, match="fixed"):
        SentencePieceVocab.train(texts, 40, bos_id=1)


def test_texts_from_manifest(tmp_path: Path) -> None:
    rows = [{"audio_filepath": f"a/{k}.wav", "duration": 1.0, "text": t}
            for k, t in enumerate(make_sentences(30))]
    man = tmp_path / "train.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    texts = texts_from_manifest(man)
    assert texts == [r["text"] for r in rows]
    assert len(SentencePieceVocab.train(texts, 40)) == 41
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + '{"duration": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:2: no string 'text'"):
        texts_from_manifest(bad)
