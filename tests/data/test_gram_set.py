"""GramSet: ids, construction from a corpus (hand-counted), JSON round trip, errors."""

from __future__ import annotations

import json

import pytest

from speechlab.data.grams import GramSet, ngram_counts
from speechlab.data.text import CharVocab


def test_ids_follow_the_vocabulary_then_the_given_order():
    v = CharVocab("abc")
    g = GramSet(v, ["ab", "c", "b", "a", "cab"])
    assert len(g) == 6  # blank + 3 unigrams + 2
    assert g.symbols() == ["<blank>", "a", "b", "c", "ab", "cab"]
    assert [g.id_of(s) for s in ("a", "b", "c", "ab", "cab")] == [1, 2, 3, 4, 5]
    assert g[0] == "" and g[4] == "ab" and g.max_n == 3
    assert g.num_chars == 3
    # unigram ids are the CharVocab's ids, so targets need no translation
    assert all(g.id_of(c) == v.id_of(c) for c in v.chars)
    with pytest.raises(IndexError):
        g[6]
    with pytest.raises(KeyError, match="'ba'"):
        g.id_of("ba")


def test_decode_and_collapse():
    g = GramSet(CharVocab("abc"), ["a", "b", "c", "ab"])
    ab, a, c = g.id_of("ab"), g.id_of("a"), g.id_of("c")
    assert g.decode([ab, 0, ab, a]) == "ababa"
    # merge repeats, drop blanks, concatenate
    assert g.collapse([ab, ab, 0, ab, a, a, 0, a, c]) == "ababaac"
    assert g.collapse([0, 0]) == ""


def test_every_unigram_is_required():
    with pytest.raises(ValueError, match=r"missing \['c'\]"):
        GramSet(CharVocab("abc"), ["a", "b", "ab"])
    g = GramSet.from_ngrams(CharVocab("abc"), ["ab"])
    assert g.grams == ("a", "b", "c", "ab")


@pytest.mark.parametrize(
    ("grams", "match"),
    [
        (["a", "b", "a"], "given twice"),
        (["a", "b", ""], "non-empty"),
        (["a", "b", "ax"], "not in the vocabulary"),
    ],
)
def test_bad_grams(grams, match):
    with pytest.raises(ValueError, match=match):
        GramSet(CharVocab("ab"), grams)


def test_gram_length_limit_of_the_keys():
    v = CharVocab()  # 28 characters: keys in base 29 fit 12 characters in 63 bits
    assert GramSet.max_key_length(28) == 12
    GramSet.from_ngrams(v, ["abcdefghijkl"])
    with pytest.raises(ValueError, match="up to 12 characters"):
        GramSet.from_ngrams(v, ["abcdefghijklm"])


def test_all_ngrams_sizes():
    v = CharVocab()
    assert len(GramSet.unigrams(v)) == 29
    assert len(GramSet.all_ngrams(v, 2)) == 1 + 28 + 28 * 28 == 813
    assert len(GramSet.all_ngrams(CharVocab("ab"), 3)) == 1 + 2 + 4 + 8


def test_from_corpus_counts_by_hand():
    texts = ["the cat", "the hat", "that"]
    v = CharVocab()
    # bigram counts: at 3 (cat, hat, that), th 3 (the, the, that), "e " 2, ha 2, he 2, ...;
    # ties broken by the string: "e " < "ha" < "he"
    g = GramSet.from_corpus(texts, v, max_n=2, top_k=3)
    assert g.grams[28:] == ("at", "th", "e ")
    g3 = GramSet.from_corpus(texts, v, max_n=3, top_k=4)  # trigrams: hat, "he ", the: 2 each
    assert g3.grams[28:] == ("at", "th", "e ", "ha")
    g3 = GramSet.from_corpus(texts, v, max_n=3, top_k=7)
    assert g3.grams[28:] == ("at", "th", "e ", "ha", "hat", "he", "he ")  # then "the"
    g_w = GramSet.from_corpus(["a b ab"], v, max_n=2, top_k=5, within_words=True)
    assert g_w.grams[28:] == ("ab",)
    # counts for the hand check above
    counts = {"at": 3, "th": 3, "ha": 2, "he": 2, "e ": 2, "the": 2, "hat": 2, "he ": 2, "tha": 1}
    for gram, n in counts.items():
        assert sum(t.count(gram) for t in texts) == n


def test_ngram_counts_by_order_and_from_corpus_agree():
    """``GramSet.from_corpus`` keeps the ``top_k`` most frequent grams of :func:`ngram_counts`
    (one counter for both: the set and the statistics ``speechlab grams select`` prints)."""
    texts = ["the cat", "the hat", "that", "th3 x"]  # "3" is outside the vocabulary
    v = CharVocab()
    counts = ngram_counts(texts, v, max_n=3)
    assert sorted(counts) == [2, 3]
    assert counts[2]["th"] == 4 and counts[2]["at"] == 3 and counts[3]["the"] == 2
    assert "h3" not in counts[2] and "th3" not in counts[3]
    assert ngram_counts(texts, v, 3, within_words=True)[2]["e "] == 0
    ranked = sorted(((g, c) for order in counts.values() for g, c in order.items()),
                    key=lambda kv: (-kv[1], kv[0]))
    assert GramSet.from_corpus(texts, v, max_n=3, top_k=5).grams[28:] == tuple(
        g for g, _ in ranked[:5])
    assert ngram_counts(texts, v, max_n=1) == {}


def test_key_table_is_sorted_and_complete():
    g = GramSet(CharVocab("abc"), ["a", "b", "c", "ca", "abc"])
    keys, ids = g.key_table()
    assert keys == sorted(keys)
    # base |Σ|+1 = 4: "ca" = 3*4 + 1 = 13, "abc" = (1*4 + 2)*4 + 3 = 27
    assert dict(zip(keys, ids, strict=True)) == {1: 1, 2: 2, 3: 3, 13: 4, 27: 5}


def test_json_round_trip(tmp_path):
    g = GramSet.from_ngrams(CharVocab(), ["th", "he", "the", "'s"])
    path = tmp_path / "grams.json"
    g.save(path)
    assert GramSet.load(path) == g
    d = json.loads(path.read_text())
    assert d["type"] == "gramset" and d["grams"][:3] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "malformed GramSet JSON"),
        ('{"type": "char", "chars": ["a"]}', "not a GramSet"),
        ('{"type": "gramset", "version": 9, "chars": ["a"], "grams": ["a"]}', "version"),
        ('{"type": "gramset", "version": 1, "chars": ["a", "b"], "grams": ["a"]}', "missing"),
        ('{"type": "gramset", "version": 1, "chars": ["a", "b"], "grams": "ab"}', "list of"),
        ('{"type": "gramset", "version": 1, "chars": ["a", "b"], "grams": ["b", "a"]}', "first"),
    ],
)
def test_malformed_json_names_the_file(tmp_path, text, match):
    path = tmp_path / "bad_grams.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        GramSet.load(path)
    assert "bad_grams.json" in str(info.value)
