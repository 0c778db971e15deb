"""``SpeechDataModule``: manifests → validated lhotse CutSets → duration-bucketed batches of
log-mel features and character targets.

Batches are dicts::

    features        (B, T, 80) float32   CMVN log-mel fbank, zero-padded
    feature_lens    (B,) int64           valid frames per utterance
    targets         (B, S) int64         vocabulary ids, padded with 0 (= blank, never a target)
    target_lens     (B,) int64
    ids, texts      list[str]            cut ids and normalized transcripts

In paired mode (``paired_clean_manifest`` set; the train manifest holds far-field cuts whose
``clean_id`` names their source) a batch also carries ``clean_features`` /
``clean_feature_lens``: the clean view of the same utterances, in the same order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler
from lhotse.utils import fastcopy
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from speechlab.data.features import FRAME_SHIFT_MS, log_mel_fbank, utterance_cmvn
from speechlab.data.manifests import ManifestError, ValidationReport, load_cuts
from speechlab.data.text import DEFAULT_CHARS, CharVocab
from speechlab.dist import rank_and_world
from speechlab.errors import InputError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _eager_cutset_ok():
    """lhotse warns that an eagerly read CutSet gains nothing from its dynamic samplers; ours are
    read eagerly on purpose (every entry is validated at set-up), so that warning is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning,
                                message=r"You are using Dynamic\w*Sampler with an eagerly read CutSet")
        yield


#: key of a training cut's ``custom`` that seeds its dither noise (set by the training sampler)
DITHER_SEED = "dither_seed"


def _dither_seed(cut: Cut) -> int:
    """A cut's dither seed: the one the training sampler tagged it with, else from its id."""
    return (cut.custom or {}).get(DITHER_SEED, zlib.crc32(cut.id.encode()))


def _speed_seed(cut: Cut) -> int:
    """Seed of a training cut's speed-perturbation factor: its dither seed, decorrelated (so
    it changes every epoch, and a resumed run draws the same factors)."""
    return zlib.crc32(f"{_dither_seed(cut)}:speed".encode())


def _clean_seed(cut: Cut) -> int:
    """Dither seed of the clean view of a (far-field) cut: its own, decorrelated."""
    return zlib.crc32(f"{_dither_seed(cut)}:clean".encode())


class _TagDitherSeed:
    """Sampler transform (runs where the sampler runs, in the main process): gives each cut of
    a training batch the dither seed of (``seed``, the sampler's epoch, cut id), on a copy."""

    def __init__(self, sampler: Any, seed: int) -> None:
        self.sampler = sampler
        self.seed = seed

    def __call__(self, cuts: CutSet) -> CutSet:
        epoch = self.sampler.epoch
        return CutSet.from_cuts(
            fastcopy(c, custom={**(c.custom or {}),
                                DITHER_SEED: zlib.crc32(f"{self.seed}:{epoch}:{c.id}".encode())})
            for c in cuts)


class SpeechBatchDataset(Dataset):
    """Map-style dataset over *batches*: lhotse samplers yield a ``CutSet`` per batch, and
    ``__getitem__`` turns it into padded feature and target tensors (see module docstring).

    ``seeded_dither``: the dither noise is drawn from a generator seeded by the cut, so an
    utterance's features do not depend on which process, rank, data-loader worker or RNG state
    computed them. Evaluation loaders seed by the cut id (DDP validation equals single-process
    validation); the training loader tags each cut with a seed of (``seed``, epoch, cut id)
    (:data:`DITHER_SEED`), so the noise changes every epoch but a resumed run, and any number
    of workers, compute the very same features as an uninterrupted run.

    ``speed_perturb``: speed factors (e.g. ``(0.9, 1.0, 1.1)``); each cut's audio is resampled
    by one of them (torchaudio's ``SpeedPerturbation``: a factor ``f`` makes it ``1/f`` as
    long, pitch and tempo together), chosen uniformly by a generator seeded like the dither
    (:func:`_speed_seed`), so it is a function of (seed, epoch, cut id). A paired clean view
    gets the same factor as its far-field cut. ``None``: no perturbation (evaluation)."""

    def __init__(self, vocab: CharVocab, num_mel_bins: int = 80, dither: float = 1.0,
                 clean_cuts: dict[str, Cut] | None = None, seeded_dither: bool = False,
                 speed_perturb: Sequence[float] | None = None) -> None:
        self.vocab = vocab
        self.num_mel_bins = num_mel_bins
        self.dither = dither
        self.clean_cuts = clean_cuts
        self.seeded_dither = seeded_dither
        self.speed_perturb = tuple(speed_perturb) if speed_perturb else None
        self._speeders: dict[int, Any] = {}  # sample rate -> SpeedPerturbation

    def speed_factor(self, cut: Cut) -> float:
        """The speed factor of ``cut`` (1.0 without ``speed_perturb``)."""
        if not self.speed_perturb:
            return 1.0
        gen = torch.Generator().manual_seed(_speed_seed(cut))
        return self.speed_perturb[int(torch.randint(len(self.speed_perturb), (), generator=gen))]

    def _speed(self, audio: torch.Tensor, sample_rate: int, factor: float) -> torch.Tensor:
        if factor == 1.0:
            return audio
        if sample_rate not in self._speeders:
            from torchaudio.transforms import SpeedPerturbation

            self._speeders[sample_rate] = SpeedPerturbation(sample_rate, self.speed_perturb)
        # SpeedPerturbation draws its factor from the global RNG; its Speed modules are picked
        # here by the seeded factor instead (reproducible per cut, worker and resume)
        speeder = self._speeders[sample_rate].speeders[self.speed_perturb.index(factor)]
        with torch.no_grad():
            return speeder(audio)[0]

    def features(self, cut: Cut, seed: int | None = None, speed: float = 1.0) -> torch.Tensor:
        """``(num_frames, num_mel_bins)`` CMVN log-mel features of a cut's first channel
        (dither seeded by ``seed``, else by the cut's :data:`DITHER_SEED` or id when
        ``seeded_dither``), its audio first sped up by ``speed``."""
        audio = self._speed(torch.from_numpy(cut.load_audio()[0]), cut.sampling_rate, speed)
        dither = self.dither
        if seed is None and self.seeded_dither:
            seed = _dither_seed(cut)
        if seed is not None and dither > 0:
            # the same noise level as Kaldi's dither (16-bit units), but reproducible per cut
            gen = torch.Generator().manual_seed(seed)
            audio = audio + torch.randn(audio.shape, generator=gen, dtype=audio.dtype) * (dither / 32768.0)
            dither = 0.0
        return utterance_cmvn(log_mel_fbank(audio, cut.sampling_rate, self.num_mel_bins,
                                            dither=dither))

    def __getitem__(self, cuts: CutSet) -> dict[str, Any]:
        cuts = list(cuts)
        speeds = [self.speed_factor(c) for c in cuts]
        feats = [self.features(c, speed=f) for c, f in zip(cuts, speeds, strict=True)]
        texts = [c.supervisions[0].text for c in cuts]
        targets = [torch.tensor(self.vocab.encode(t), dtype=torch.long) for t in texts]
        batch: dict[str, Any] = {
            "features": pad_sequence(feats, batch_first=True),
            "feature_lens": torch.tensor([f.shape[0] for f in feats], dtype=torch.long),
            "targets": pad_sequence(targets, batch_first=True, padding_value=0)
            if targets else torch.zeros(0, 0, dtype=torch.long),
            "target_lens": torch.tensor([len(t) for t in targets], dtype=torch.long),
            "ids": [c.id for c in cuts],
            "texts": texts,
        }
        if self.clean_cuts is not None:
            clean = [self.features(self.clean_cuts[c.custom["clean_id"]],
                                   seed=_clean_seed(c) if self.seeded_dither else None, speed=f)
                     for c, f in zip(cuts, speeds, strict=True)]
            batch["clean_features"] = pad_sequence(clean, batch_first=True)
            batch["clean_feature_lens"] = torch.tensor([f.shape[0] for f in clean])
        return batch

    def __len__(self) -> int:  # batches come from the sampler; Lightning only needs it defined
        raise TypeError("SpeechBatchDataset is indexed by CutSets from a lhotse sampler")


#: manifest name endings left out of a test set's name (``test.jsonl.gz`` -> ``test``)
_MANIFEST_SUFFIXES = (".gz", ".jsonl", ".json")

#: characters a test set name may hold (it names the file ``hyps.<name>.jsonl`` and the logged
#: ``test/<name>/wer``)
_SET_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+=")


def _manifest_stem(path: Path) -> str:
    """The file name without its manifest endings: ``data/sim_snr10/test.jsonl.gz`` -> ``test``."""
    name = path.name
    for suffix in _MANIFEST_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def eval_set_names(manifests: Sequence[str]) -> list[str]:
    """One name per manifest, in order: its stem (:func:`_manifest_stem`), or where stems
    collide, the fewest trailing folders that make every name unique joined by ``-`` (e.g.
    ``sim_snr10/test.jsonl`` and ``real_snr10/test.jsonl`` -> ``sim_snr10-test``,
    ``real_snr10-test``).

    Raises:
        InputError: the same manifest given twice.
    """
    paths = [Path(os.path.abspath(m)) for m in manifests]
    seen: dict[Path, int] = {}
    for i, p in enumerate(paths):
        if p in seen:
            raise InputError(f"data.test_manifest: {manifests[i]} is given twice (entries "
                             f"{seen[p] + 1} and {i + 1})")
        seen[p] = i
    parts = [[*p.parent.parts[1:], _manifest_stem(p)] for p in paths]
    depth = 1
    while True:
        names = ["-".join(q[-depth:]) for q in parts]
        if len(set(names)) == len(names) or depth >= max(len(q) for q in parts):
            return names
        depth += 1


def named_test_sets(test_manifest: str | Sequence[str] | Mapping[str, str] | None
              ) -> dict[str, str] | None:
    """``{set name: manifest}`` of a ``test_manifest`` that names several sets (a list:
    :func:`eval_set_names`; a dict: its own names, checked), in order; None for a single
    manifest (a string) or none.

    Raises:
        InputError: an empty list or dict, a name with characters other than letters, digits
            and ``_-.+=``.
    """
    if test_manifest is None or isinstance(test_manifest, (str, os.PathLike)):
        return None
    if isinstance(test_manifest, Mapping):
        sets = {str(k): str(v) for k, v in test_manifest.items()}
        for name in sets:
            if not name or not set(name) <= _SET_NAME_OK or name.startswith("."):
                raise InputError(f"data.test_manifest: set name {name!r}: use letters, digits "
                                 "and _-.+= only (it names hyps.<name>.jsonl)")
    else:
        paths = [str(m) for m in test_manifest]
        sets = dict(zip(eval_set_names(paths), paths, strict=True))
    if not sets:
        raise InputError("data.test_manifest: an empty list of test manifests")
    return sets


def named_test_split(name: str) -> str:
    """The split key (:meth:`SpeechDataModule.cuts`, :meth:`SpeechDataModule.report`) of the
    named test set ``name``."""
    return f"test:{name}"


class SpeechDataModule(pl.LightningDataModule):
    """Speech batches for CTC / Gram-CTC / seq2seq / robust-encoder tasks.

    Args:
        train_manifest, dev_manifest, test_manifest: NeMo-style JSONL manifests (or lhotse cut
            manifests); ``test_manifest`` defaults to ``dev_manifest``. ``test_manifest`` may
            name several test sets: a list of manifests (each named by :func:`eval_set_names`:
            its stem, with folders when stems collide) or a dict ``{name: manifest}``; then
            ``test_dataloader()`` returns one loader per set, in order (:attr:`test_sets`), and
            the ASR tasks score and write each set on its own.
        vocab: the characters of the output vocabulary, in id order (blank = 0 is implicit).
        sample_rate: Hz the recipe expects; other rates are an error unless ``resample``.
        max_duration: seconds of audio per batch (lhotse ``DynamicBucketingSampler``).
        num_buckets: duration buckets for training batches.
        output_frame_rate: model output frames per second (100 / subsampling stride), used to
            skip *training* utterances too short for their transcript under CTC; ``None``
            disables it. Dev and test sets are never filtered by length: every readable
            utterance is decoded and scored (the tasks leave the ones their loss cannot fit
            out of the loss, and count them).
        paired_clean_manifest: clean manifest for paired clean/far-field training.
        num_workers: DataLoader worker processes (features are computed in them).
        check_samples: decode every file at set-up to catch corrupt audio and NaN/inf samples.
        dither: Kaldi dither (16-bit units) of the features; seeded per utterance (and, in
            training, per epoch): see :class:`SpeechBatchDataset`.
        speed_perturb: training-only speed perturbation (Ko et al. 2015): speed factors such
            as ``[0.9, 1.0, 1.1]``, one drawn uniformly per training utterance and epoch,
            seeded like the dither (a function of ``seed``, epoch and cut id: resumed runs and
            any number of workers see the same factors); the audio is resampled by
            torchaudio's ``SpeedPerturbation`` (factor ``f``: ``1/f`` as long). Dev and test
            audio is never perturbed. Batching (``max_duration``) and the too-short filter
            (``output_frame_rate``) use the unperturbed durations, so a batch holds up to
            ``1/min(factors)`` × ``max_duration`` seconds. ``None`` (default): off.
        seed: shuffling seed (the sampler's; the epoch is mixed in by lhotse).
    """

    def __init__(
        self,
        train_manifest: str | None = None,
        dev_manifest: str | None = None,
        test_manifest: str | list[str] | dict[str, str] | None = None,
        vocab: str = "".join(DEFAULT_CHARS),
        sample_rate: int = 16000,
        resample: bool = False,
        max_duration: float = 60.0,
        num_buckets: int = 10,
        output_frame_rate: float | None = 25.0,
        paired_clean_manifest: str | None = None,
        num_mel_bins: int = 80,
        dither: float = 1.0,
        speed_perturb: list[float] | None = None,
        num_workers: int = 1,
        check_samples: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # checkpoints carry this data config (speechlab test --ckpt_path needs nothing else):
        # name the manifests by absolute path, so that it works from any folder
        for key in ("train_manifest", "dev_manifest", "test_manifest", "paired_clean_manifest"):
            value = self.hparams[key]
            if isinstance(value, Mapping):
                self.hparams[key] = {k: os.path.abspath(v) for k, v in value.items()}
            elif value is not None and not isinstance(value, (str, os.PathLike)):
                self.hparams[key] = [os.path.abspath(v) for v in value]
            elif value is not None:
                self.hparams[key] = os.path.abspath(value)
        #: ``{name: manifest}`` when ``test_manifest`` names several test sets, else None
        self.test_sets = named_test_sets(self.hparams.test_manifest)
        if speed_perturb is not None and (not speed_perturb or any(
                not (isinstance(f, (int, float)) and f > 0) for f in speed_perturb)):
            raise InputError(f"data.speed_perturb: a list of positive speed factors (e.g. "
                             f"[0.9, 1.0, 1.1]) or null, got {speed_perturb!r}")
        self.vocab = CharVocab(list(vocab))
        self._cuts: dict[str, CutSet] = {}
        self._reports: dict[str, ValidationReport] = {}
        self._clean_cuts: dict[str, Cut] | None = None
        self._train_sampler: DynamicBucketingSampler | DynamicCutSampler | None = None
        self._pending_sampler_state: dict | None = None

    @property
    def frame_shift_ms(self) -> float:
        return FRAME_SHIFT_MS

    def _load(self, split: str, path: str | None) -> None:
        if path is None or split in self._cuts:
            return
        # load_cuts logs its summary and each skipped entry (counted, never silent). Only
        # training drops utterances too short for their transcript: evaluation decodes and
        # scores every readable one (a WER over a subset would not be the set's WER)
        rate = self.hparams.output_frame_rate if split == "train" else None
        self._cuts[split], self._reports[split] = load_cuts(
            path, vocab=self.vocab, sample_rate=self.hparams.sample_rate,
            resample=self.hparams.resample, output_frame_rate=rate,
            check_samples=self.hparams.check_samples, on_error="skip",
        )

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in (None, "fit"):
            if hp.train_manifest is None:
                raise ManifestError("data.train_manifest is not set (needed to fit)")
            self._load("train", hp.train_manifest)
            if hp.paired_clean_manifest is not None and self._clean_cuts is None:
                clean, _ = load_cuts(
                    hp.paired_clean_manifest, vocab=self.vocab, sample_rate=hp.sample_rate,
                    resample=hp.resample, check_samples=hp.check_samples, on_error="skip")
                self._clean_cuts = {c.id: c for c in clean}
                self._check_pairs()
        if stage in (None, "fit", "validate"):
            self._load("dev", hp.dev_manifest)
        if stage in (None, "test", "predict"):
            for split, path in self._test_splits().items():
                self._load(split, path)

    def _test_splits(self) -> dict[str, str | None]:
        """``{split: manifest}`` of the test sets: ``{"test": ...}`` for one manifest (or the
        dev manifest), ``{"test:<name>": ...}`` per set when several are named."""
        if self.test_sets is None:
            return {"test": self.hparams.test_manifest or self.hparams.dev_manifest}
        return {named_test_split(name): path for name, path in self.test_sets.items()}

    def _check_pairs(self) -> None:
        assert self._clean_cuts is not None
        missing = [c.id for c in self._cuts["train"] if c.custom is None
                   or c.custom.get("clean_id") not in self._clean_cuts]
        if missing:
            raise ManifestError(
                f"{self.hparams.train_manifest}: {len(missing)} far-field cuts have no clean "
                f"source in {self.hparams.paired_clean_manifest} (e.g. {missing[:5]})")

    def _loader(self, sampler) -> DataLoader:
        train = sampler is self._train_sampler
        dataset = SpeechBatchDataset(self.vocab, self.hparams.num_mel_bins, self.hparams.dither,
                                     clean_cuts=self._clean_cuts if train else None,
                                     seeded_dither=True,
                                     speed_perturb=self.hparams.speed_perturb if train else None)
        workers = self.hparams.num_workers
        return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers,
                          persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        cuts, hp = self._cuts["train"], self.hparams
        # lhotse needs 2 <= num_buckets <= len(cuts); below that, plain shuffled batches
        num_buckets = min(hp.num_buckets, len(cuts))
        rank, world = rank_and_world()
        with _eager_cutset_ok():
            if num_buckets >= 2:
                self._train_sampler = DynamicBucketingSampler(
                    cuts, max_duration=hp.max_duration, shuffle=True, num_buckets=num_buckets,
                    seed=hp.seed, drop_last=False, world_size=world, rank=rank)
            else:
                self._train_sampler = DynamicCutSampler(
                    cuts, max_duration=hp.max_duration, shuffle=True, seed=hp.seed,
                    world_size=world, rank=rank)
        self._train_sampler.map(_TagDitherSeed(self._train_sampler, hp.seed))
        if self._pending_sampler_state is not None:
            state, self._pending_sampler_state = self._pending_sampler_state, None
            saved_world = state.get("world_size", self._train_sampler.world_size)
            if saved_world == self._train_sampler.world_size:
                self._train_sampler.load_state_dict(state)
            else:
                # lhotse cannot map a mid-epoch position across world sizes (it asserts): resume
                # a checkpoint saved by N ranks on M != N ranks from the start of its epoch
                log.warning("checkpoint's train sampler ran on %d ranks, now %d: resuming at the "
                            "start of epoch %d (its mid-epoch position is dropped)",
                            saved_world, self._train_sampler.world_size, state.get("epoch", 0))
                self._train_sampler.set_epoch(state.get("epoch", 0))
        return self._loader(self._train_sampler)

    def _eval_loader(self, split: str) -> DataLoader:
        cuts, (rank, world) = self._cuts[split], rank_and_world()
        if world > 1:
            # every cut on exactly one rank: lhotse's own split duplicates cuts when its last
            # round has fewer than world_size of them, and the summed WER counts would count
            # those twice (ranks may get unequal numbers of eval batches: no step collectives)
            cuts = CutSet.from_cuts(c for i, c in enumerate(cuts) if i % world == rank)
        with _eager_cutset_ok():
            sampler = DynamicCutSampler(cuts, max_duration=self.hparams.max_duration,
                                        shuffle=False, world_size=1, rank=0)  # this rank's shard
        return self._loader(sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("dev")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """The test set's loader; one per set, in :attr:`test_sets` order, when several."""
        if self.test_sets is None:
            return self._eval_loader("test")
        return [self._eval_loader(split) for split in self._test_splits()]

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        return self.test_dataloader()

    def state_dict(self) -> dict[str, Any]:
        """The training sampler's position, saved in checkpoints (resumable mid-epoch).

        The sampler runs ahead of training: Lightning prefetches a batch, and each data-loader
        worker holds ``prefetch_factor`` more. Its own count of batches would make a resumed
        run skip those, so the saved position is the number of batches that training consumed
        in the epoch (Lightning's progress counter); a checkpoint taken at the last batch of an
        epoch resumes at the start of the next."""
        if self._train_sampler is None:
            return {}
        state = self._train_sampler.state_dict()
        consumed = self._consumed_batches()
        if consumed is not None:
            epoch, batches = consumed
            diag = state["diagnostics"]
            stats = diag["stats_per_epoch"].setdefault(epoch, {
                "epoch": epoch, "kept_cuts": 0, "discarded_cuts": 0, "kept_batches": 0,
                "discarded_batches": 0})
            stats.update(kept_batches=batches, discarded_batches=0)
            diag["current_epoch"] = epoch
            state["epoch"] = epoch
        return {"train_sampler": state, "vocab": self.vocab.to_dict()}

    def _consumed_batches(self) -> tuple[int, int] | None:
        """(epoch, training batches of that epoch already consumed) while fitting, else None."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or trainer.state.fn != "fit":
            return None
        progress = trainer.fit_loop.epoch_loop.batch_progress
        if progress.is_last_batch:
            return trainer.current_epoch + 1, 0
        return trainer.current_epoch, progress.current.ready

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "vocab" in state and CharVocab.from_dict(state["vocab"]) != self.vocab:
            raise InputError(
                f"checkpoint vocabulary {CharVocab.from_dict(state['vocab'])} differs from the "
                f"recipe's data.vocab {self.vocab}")
        self._pending_sampler_state = state.get("train_sampler")

    def cuts(self, split: str) -> CutSet:
        """The validated cuts of ``split`` (``train``, ``dev``, ``test``, or
        :func:`named_test_split` of a named test set) after ``setup``."""
        return self._cuts[split]

    def report(self, split: str) -> ValidationReport | None:
        """What loading ``split``'s manifest kept and skipped (None before it is loaded)."""
        return self._reports.get(split)


