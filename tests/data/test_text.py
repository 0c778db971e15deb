import pytest

from speechlab.data.text import CharVocab, normalize_text


@pytest.mark.parametrize("raw, expected", [
    ("Turn ON the Kitchen-Lights, please!", "turn on the kitchen lights please"),
    ("Don\u2019t  stop", "don't stop"),
    ("'quoted' words", "quoted words"),
    ("Café Straße", "cafe strasse"),
    ("  ", ""),
    ("100 %", ""),
])
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected
    assert normalize_text(expected) == expected  # idempotent


def test_char_vocab_ids_and_roundtrip(tmp_path):
    v = CharVocab()
    assert len(v) == 29 and v.blank == 0
    assert v.id_of("a") == 1 and v.id_of(" ") == 27 and v.id_of("'") == 28
    assert v.decode(v.encode("it's on")) == "it's on"
    with pytest.raises(ValueError, match="not in vocabulary"):
        v.encode("x1")
    assert v.encode("x1", strict=False) == [v.id_of("x")]
    v.save(tmp_path / "vocab.json")
    assert CharVocab.load(tmp_path / "vocab.json") == v


def test_char_vocab_rejects_duplicates():
    with pytest.raises(ValueError, match="duplicate"):
        CharVocab("abca")
