"""Paired clean/far-field batches from SpeechDataModule (far-field copies made by
``speechlab data farfield``): every far-field utterance comes with its own clean source, in the
same batch position, with the same transcript, and the clean features are exactly those of the
clean WAV computed independently."""

from __future__ import annotations

import json

import soundfile as sf
import torch

from speechlab.data.features import log_mel_fbank, utterance_cmvn
from speechlab.data.speech import SpeechDataModule


def _rows(manifest) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, manifest.read_text().splitlines())}


def test_paired_batches_hold_the_same_utterance(tiny_corpus, tiny_farfield):
    clean_rows = _rows(tiny_corpus["train"])
    far_rows = _rows(tiny_farfield["train"])
    dm = SpeechDataModule(str(tiny_farfield["train"]), str(tiny_corpus["dev"]),
                          paired_clean_manifest=str(tiny_corpus["train"]), max_duration=6.0,
                          num_workers=0, dither=0.0, check_samples=False)
    dm.setup("fit")
    seen = []
    for batch in dm.train_dataloader():
        b = len(batch["ids"])
        assert batch["clean_features"].shape[0] == b and batch["clean_feature_lens"].shape == (b,)
        assert batch["clean_feature_lens"].dtype == torch.long
        for i, cut_id in enumerate(batch["ids"]):
            clean_id = far_rows[cut_id]["clean_id"]
            assert cut_id == clean_id + "__farfield"
            assert batch["texts"][i] == clean_rows[clean_id]["text"]  # same transcript
            # independent oracle: the clean view is the clean WAV's features
            audio, sr = sf.read(tiny_corpus["train"].parent / clean_rows[clean_id]["audio_filepath"],
                                dtype="float32")
            expected = utterance_cmvn(log_mel_fbank(torch.from_numpy(audio), sr, dither=0.0))
            n = int(batch["clean_feature_lens"][i])
            assert n == expected.shape[0]
            torch.testing.assert_close(batch["clean_features"][i, :n], expected)
            assert batch["clean_features"][i, n:].abs().sum() == 0
            # the far-field view is a different signal of the same length (clean-length output)
            assert int(batch["feature_lens"][i]) == n
            assert not torch.allclose(batch["features"][i, :n], expected, atol=0.1)
            seen.append(cut_id)
    assert sorted(seen) == sorted(far_rows)


def test_unpaired_eval_batches_have_no_clean_view(tiny_corpus, tiny_farfield):
    dm = SpeechDataModule(str(tiny_farfield["train"]), str(tiny_farfield["dev"]),
                          paired_clean_manifest=str(tiny_corpus["train"]), num_workers=0,
                          check_samples=False)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert "clean_features" not in batch and all(i.endswith("__farfield") for i in batch["ids"])
