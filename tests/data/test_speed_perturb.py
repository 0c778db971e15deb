"""``SpeechDataModule(speed_perturb=[...])``: training audio is sped up by one of the factors per
utterance and epoch (a factor ``f`` makes it ``1/f`` as long), reproducibly; dev audio never."""

from __future__ import annotations

import pytest
import soundfile as sf
import torch

from speechlab.data.features import log_mel_fbank
from speechlab.data.speech import SpeechDataModule
from speechlab.errors import InputError
from tests.helpers import entry, manifest, wav

FACTORS = [0.9, 1.0, 1.1]


def _corpus(tmp_path):
    rows = [entry(wav(tmp_path / f"u{i}.wav", seconds=1.0 + 0.1 * i), 1.0 + 0.1 * i,
                  text="hello world", id=f"u{i}") for i in range(8)]
    return manifest(tmp_path, rows, "train.jsonl"), manifest(tmp_path, rows[:3], "dev.jsonl")


def _frames(path) -> int:
    """Frames of the unperturbed file (an independent oracle: the features of the WAV)."""
    audio, sr = sf.read(str(path), dtype="float32")
    return log_mel_fbank(torch.from_numpy(audio), sr, dither=0.0).shape[0]


def _module(train, dev, **kw) -> SpeechDataModule:
    dm = SpeechDataModule(str(train), str(dev), max_duration=100, num_workers=0, dither=0.0,
                          check_samples=False, output_frame_rate=None, **kw)
    dm.setup("fit")
    return dm


def _epochs(dm, n: int = 3) -> list[dict[str, int]]:
    """Feature lengths by cut id, for ``n`` epochs of the training loader."""
    out = []
    loader = dm.train_dataloader()
    for epoch in range(n):
        dm._train_sampler.set_epoch(epoch)
        lens = {}
        for batch in loader:
            lens.update(zip(batch["ids"], batch["feature_lens"].tolist(), strict=True))
        out.append(lens)
    return out


def test_speed_perturb_changes_length_by_the_factor_and_is_off_in_eval(tmp_path):
    train, dev = _corpus(tmp_path)
    clean = {f"u{i}": _frames(tmp_path / f"u{i}.wav") for i in range(8)}
    dm = _module(train, dev, speed_perturb=FACTORS)
    epochs = _epochs(dm)
    used = set()
    for lens in epochs:
        assert set(lens) == set(clean)
        for cut_id, n in lens.items():
            # the length ratio is one of the factors (1/f as long), to within a frame
            factor = min(FACTORS, key=lambda f: abs(clean[cut_id] / f - n))
            assert abs(clean[cut_id] / factor - n) <= 1.5, (cut_id, n, clean[cut_id])
            used.add(factor)
    assert used == set(FACTORS), used  # 24 draws: every factor is chosen
    # the factor changes with the epoch, and is a function of (seed, epoch, cut): a fresh
    # module (as a resumed run) draws the same ones
    assert any(epochs[0][c] != epochs[1][c] for c in clean)
    assert _epochs(_module(train, dev, speed_perturb=FACTORS)) == epochs
    # off in evaluation: dev features have the unperturbed length
    for batch in dm.val_dataloader():
        for cut_id, n in zip(batch["ids"], batch["feature_lens"].tolist(), strict=True):
            assert n == clean[cut_id]
    # off by default: training lengths are the unperturbed ones
    assert _epochs(_module(train, dev), 1)[0] == clean


def test_speed_perturb_factor_one_is_the_identity(tmp_path):
    train, dev = _corpus(tmp_path)
    plain = next(iter(_module(train, dev).train_dataloader()))
    same = next(iter(_module(train, dev, speed_perturb=[1.0]).train_dataloader()))
    assert same["ids"] == plain["ids"]
    torch.testing.assert_close(same["features"], plain["features"])


@pytest.mark.parametrize("bad", [[], [0.0, 1.0], [-1.1]])
def test_speed_perturb_rejects_bad_factors(bad):
    with pytest.raises(InputError, match="data.speed_perturb"):
        SpeechDataModule(speed_perturb=bad)
