"""One decoding configuration (GramDecoding): the task, ``speechlab decode`` and the prefix beam
search take their options and defaults from it, so none of them can drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest

from speechlab.cli.decode import GRID_FIELDS, add_decode_arguments, config_from_arguments
from speechlab.data.grams import GramSet
from speechlab.data.text import CharVocab
from speechlab.decode.prefix_beam import GramDecoding, PrefixBeamSearch
from speechlab.tasks.gram_ctc import GramCTCTask

#: GramDecoding field -> the PrefixBeamSearch attribute it sets
SEARCH_ATTRIBUTE = {"beam_size": "beam_size", "token_beam": "token_beam",
                    "token_threshold": "token_threshold", "beam_threshold": "beam_threshold",
                    "lm_weight": "lm_weight", "word_score": "word_score", "unk_score": "unk_score"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_decode_arguments(p)
    return p


def test_command_line_flags_are_the_fields_with_their_defaults() -> None:
    args = parser().parse_args(["--checkpoint", "c", "--manifest", "m"])
    for f in dataclasses.fields(GramDecoding):
        value = getattr(args, f.name)
        assert value == ([f.default] if f.name in GRID_FIELDS else f.default), f.name
    assert config_from_arguments(args, GramDecoding, lm_weight=0.5, word_score=0.0) == GramDecoding()


def test_flags_parse_to_the_config() -> None:
    args = parser().parse_args(["--checkpoint", "c", "--manifest", "m", "--method", "beam",
                                "--beam-size", "5", "--token-threshold", "7.5", "--lm-unit", "char",
                                "--lm-weight", "0.1", "0.2", "--unk-score", "-3", "--lexicon", "lm"])
    assert args.lm_weight == [0.1, 0.2]
    cfg = config_from_arguments(args, GramDecoding, lm_weight=0.2, word_score=0.0)
    assert cfg == GramDecoding(method="beam", beam_size=5, token_threshold=7.5, lm_unit="char",
                               lm_weight=0.2, unk_score=-3.0, lexicon="lm")
    with pytest.raises(SystemExit):
        parser().parse_args(["--checkpoint", "c", "--manifest", "m", "--method", "viterbi"])


def test_search_defaults_are_the_configs() -> None:
    search, default = PrefixBeamSearch("ab"), GramDecoding()
    for field_name, attribute in SEARCH_ATTRIBUTE.items():
        assert getattr(search, attribute) == getattr(default, field_name), field_name
    assert GramCTCTask().decoding == default


def test_from_config_applies_every_option() -> None:
    cfg = GramDecoding(method="beam", beam_size=3, token_beam=2, token_threshold=5.0,
                       beam_threshold=9.0, lm_weight=0.7, word_score=1.5, unk_score=-2.0)
    grams = GramSet.unigrams(CharVocab("ab "))
    search = PrefixBeamSearch.from_config(grams, cfg)
    for field_name, attribute in SEARCH_ATTRIBUTE.items():
        assert getattr(search, attribute) == getattr(cfg, field_name), field_name
    assert search.lm is None and search.lexicon == [] and search.grams == ["a", "b", " "]
    assert math.isinf(PrefixBeamSearch.from_config(grams, GramDecoding(unk_score=-math.inf)).unk_score)


def test_configs_pickled_under_the_old_module_still_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints written before GramDecoding moved to decode/ pickled it (in the task's
    hyper-parameters) as speechlab.tasks.gram_ctc.GramDecoding; that name still resolves."""
    import pickle

    monkeypatch.setattr(GramDecoding, "__module__", "speechlab.tasks.gram_ctc")
    old = pickle.dumps(GramDecoding(method="beam", beam_size=3))
    monkeypatch.undo()
    assert b"speechlab.tasks.gram_ctc" in old
    assert pickle.loads(old) == GramDecoding(method="beam", beam_size=3)
