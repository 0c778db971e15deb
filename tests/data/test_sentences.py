"""Sentence generator: determinism, domains with different vocabularies, number words."""

from __future__ import annotations

import pytest

from speechlab.data.sentences import (
    available_domains,
    cardinal,
    clock_words,
    decimal_words,
    digit_words,
    domain_vocabulary,
    generate_sentences,
    money_words,
    ordinal,
    year_words,
)
from speechlab.data.text import normalize_text

FUNCTION_WORDS = {
    "a", "an", "the", "to", "of", "in", "on", "at", "by", "for", "from", "and", "or", "is",
    "are", "was", "were", "be", "it", "it's", "i", "i'm", "me", "my", "you", "your", "we",
    "we're", "us", "our", "she", "he", "that", "that's", "this", "these", "those", "out", "up",
    "down", "with",
}


def number_words() -> set[str]:
    words = set()
    for n in list(range(0, 100)) + [100, 1000, 10**6, 10**9]:
        words |= set(cardinal(n).split()) | set(ordinal(max(n, 1)).split())
    return words


def test_deterministic_and_prefix_stable() -> None:
    a = generate_sentences(300, seed=3)
    assert a == generate_sentences(300, seed=3)
    assert generate_sentences(100, seed=3) == a[:100]
    assert a != generate_sentences(300, seed=4)


def test_varied_normalized_and_interleaved() -> None:
    sentences = generate_sentences(2000, seed=0)
    texts = [s.text for s in sentences]
    assert len(set(texts)) == 2000
    assert all(normalize_text(t) == t and t for t in texts)
    assert [s.domain for s in sentences[:4]] == ["home", "numbers", "home", "numbers"]
    assert len({w for t in texts for w in t.split()}) >= 300


def test_domains_have_mostly_disjoint_vocabularies() -> None:
    assert set(available_domains()) >= {"home", "numbers"}
    home, numbers = domain_vocabulary("home"), domain_vocabulary("numbers")
    assert min(len(home), len(numbers)) >= 150
    assert 300 <= len(home | numbers) <= 2000  # a few hundred words in all
    shared_content = (home & numbers) - FUNCTION_WORDS - number_words()
    # what remains shared is time-of-day vocabulary ("half past", "in the morning", "percent")
    assert len(shared_content) <= 15, sorted(shared_content)
    assert len(home & numbers) / len(home | numbers) < 0.15
    for domain in ("home", "numbers"):
        sample = generate_sentences(1000, seed=1, domains=[domain])
        assert {s.domain for s in sample} == {domain}
        used = {w for s in sample for w in s.text.split()}
        assert used <= domain_vocabulary(domain)
        assert len(used) >= 0.6 * len(domain_vocabulary(domain) - number_words())


def test_unknown_domain() -> None:
    with pytest.raises(ValueError, match="unknown sentence domain"):
        generate_sentences(3, domains=["weather"])


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (cardinal(0), "zero"),
        (cardinal(21), "twenty one"),
        (cardinal(1994), "one thousand nine hundred ninety four"),
        (cardinal(2_000_005), "two million five"),
        (ordinal(23), "twenty third"),
        (ordinal(40), "fortieth"),
        (ordinal(12), "twelfth"),
        (year_words(1994), "nineteen ninety four"),
        (year_words(1905), "nineteen oh five"),
        (year_words(2000), "two thousand"),
        (year_words(2007), "two thousand seven"),
        (year_words(2024), "twenty twenty four"),
        (clock_words(7, 30, "past_to"), "half past seven"),
        (clock_words(19, 45, "past_to"), "quarter to eight"),
        (clock_words(7, 5), "seven oh five"),
        (clock_words(12, 0), "noon"),
        (clock_words(21, 0, "period"), "nine o'clock at night"),
        (money_words(12, 50), "twelve dollars and fifty cents"),
        (money_words(1, 0, "pound"), "one pound"),
        (money_words(0, 1), "one cent"),
        (digit_words("5550123"), "five five five oh one two three"),
        (decimal_words(3, "14"), "three point one four"),
    ],
)
def test_number_words(value: str, words: str) -> None:
    assert value == words
