"""The one vocabulary protocol (speechlab.data.vocab.Vocab): characters, SentencePiece pieces
and words answer the same names the same way, and every one rebuilds from its to_dict()."""

from __future__ import annotations

import json

import pytest

from speechlab.data.subword import SentencePieceVocab
from speechlab.data.text import CharVocab
from speechlab.data.vocab import Vocab, WordVocab, vocab_from_dict

SENTENCES = ["the cat sat on the mat", "a dog ran to the park", "the sun is out today",
             "we like the cold rain", "is the cat on the mat today"] * 8


@pytest.fixture(scope="module", params=["char", "sentencepiece", "word"])
def case(request: pytest.FixtureRequest) -> tuple[Vocab, str]:
    """(vocabulary, a text it encodes exactly)."""
    if request.param == "char":
        return CharVocab(), "the cat's mat"
    if request.param == "sentencepiece":
        return SentencePieceVocab.train(SENTENCES, vocab_size=30, model_type="unigram"), "the cat sat"
    words = sorted({w for s in SENTENCES for w in s.split()})
    return WordVocab(["<unk>", *words], unk="<unk>"), "the dog is out"


def test_every_vocabulary_is_a_vocab(case: tuple[Vocab, str]) -> None:
    vocab, _ = case
    assert isinstance(vocab, Vocab)


def test_ids_and_tokens_are_inverse(case: tuple[Vocab, str]) -> None:
    vocab, _ = case
    for i in range(len(vocab)):
        token = vocab.token_of(i)
        assert isinstance(token, str)
        assert vocab.id_of(token) == i
    assert vocab.tokens(range(len(vocab))) == [vocab.token_of(i) for i in range(len(vocab))]


def test_decode_is_a_string_and_inverts_encode(case: tuple[Vocab, str]) -> None:
    vocab, text = case
    ids = vocab.encode(text)
    assert ids and all(isinstance(i, int) and 0 <= i < len(vocab) for i in ids)
    assert vocab.decode(ids) == text
    assert isinstance(vocab.decode([]), str)


def test_to_dict_is_json_and_rebuilds_the_same_vocabulary(case: tuple[Vocab, str]) -> None:
    vocab, text = case
    d = json.loads(json.dumps(vocab.to_dict()))
    again = vocab_from_dict(d)
    assert type(again) is type(vocab) and again == vocab
    assert again.encode(text) == vocab.encode(text)


def test_unknown_type_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown vocabulary type 'bytes' \(known: char, sentencepiece, word\)"):
        vocab_from_dict({"type": "bytes"})


def test_word_vocab_unknown_words_and_token_sequences() -> None:
    v = WordVocab(["<unk>", "moon", "rocket"], unk="<unk>")
    assert v.encode("rocket to moon") == v.encode(["rocket", "to", "moon"]) == [2, 0, 1]
    assert v.tokens([2, 0, 1]) == ["rocket", "<unk>", "moon"]
    assert WordVocab(["moon", "rocket"]).encode("rocket to moon") == [1, 0]  # no unk: dropped
