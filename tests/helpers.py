"""Helpers shared by several test modules, imported as ``from tests.helpers import ...`` (the
tests are a package: pytest puts the repository root on ``sys.path``, nothing else does).

- :func:`synth_tiny_corpus`: the tiny espeak-ng corpus of the ``tiny_corpus`` fixture
  (``conftest.py``), made once per session;
- :func:`tone`, :func:`wav`, :func:`entry`, :func:`manifest`: WAV files and JSON-lines manifests
  written by hand (the manifest and bad-input tests);
- :func:`read_speech_samples`, :func:`build_librispeech`, :func:`to_flac`: a LibriSpeech tree
  in the corpus's own layout, made from the real clips of ``shared/data/speech_samples``
  (``tests/data/test_prepare.py``, ``tests/recipes/test_librispeech_recipes.py``);
- :func:`sync_free_backend`: a ``torch.compile`` backend that fails on a host sync (the batched
  search's frame step, the tensor n-gram LM's query);
- :class:`HangAtStep`: a callback the resume tests load into ``speechlab fit`` subprocesses by
  its class path, ``tests.helpers.HangAtStep`` (their ``PYTHONPATH`` holds the repository root).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
import soundfile as sf

if TYPE_CHECKING:
    import torch

SR = 16000


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    """``speechlab ARGV`` in-process: (exit status, stdout, stderr). argparse/jsonargparse
    usage errors exit through ``SystemExit``; its code is the status."""
    from speechlab.cli import main

    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def synth_tiny_corpus(out: Path, utterances: int = 12, seed: int = 0) -> dict[str, Path]:
    """Synthesize ``utterances`` with ``speechlab data synth`` into ``out``; return the
    manifests by split, plus ``"all"``: every utterance in one manifest."""
    from speechlab.cli import main

    if not (out / "train.jsonl").exists():
        rc = main(["data", "synth", "--out", str(out), "--utterances", str(utterances),
                   "--seed", str(seed), "--jobs", "2"])
        assert rc == 0
    manifests = {s: out / f"{s}.jsonl" for s in ("train", "dev", "test")}
    lines = [line for p in manifests.values() for line in p.read_text().splitlines() if line]
    (out / "all.jsonl").write_text("\n".join(lines) + "\n")
    manifests["all"] = out / "all.jsonl"
    return manifests


def tone(seconds: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def wav(path: Path, seconds: float = 1.0, sr: int = SR, channels: int = 1, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), tone(seconds, sr, channels), sr, **kw)
    return path


def entry(path: Path | str, duration: float = 1.0, text: str = "hello world", **extra) -> dict:
    return {"audio_filepath": str(path), "duration": duration, "text": text, **extra}


def manifest(tmp_path: Path, entries: list[dict | str], name: str = "m.jsonl") -> Path:
    path = tmp_path / name
    lines = [e if isinstance(e, str) else json.dumps(e) for e in entries]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_speech_samples(folder: Path) -> dict[str, dict]:
    """The transcribed clips of ``folder/manifest.jsonl`` (``shared/data/speech_samples``) by
    corpus id (``251-137823-0002``, ``LJ002-0020``, ``aew-arctic_a0001``), with absolute paths
    in ``"path"``."""
    out = {}
    for line in (folder / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        r["path"] = folder / r["audio_filepath"]
        name = Path(r["audio_filepath"]).stem
        if name.startswith("librispeech_"):
            out[name.removeprefix("librispeech_")] = r
        elif name.startswith("ljspeech_"):
            out[name.removeprefix("ljspeech_")] = r
        elif name.startswith("cmu_arctic_us_"):
            speaker, utt = name.removeprefix("cmu_arctic_us_").split("_")
            out[f"{speaker}-arctic_{utt}"] = r
    return out


def to_flac(src: Path, dst: Path) -> None:
    """A clip as FLAC, LibriSpeech's format (lossless: the same samples)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".flac":
        shutil.copyfile(src, dst)
        return
    data, sr = sf.read(str(src), dtype="int16")
    sf.write(str(dst), data, sr, format="FLAC", subtype="PCM_16")


LIBRI_PARTS = {  # all five are dev-clean utterances; three are filed under test-clean here
    "dev-clean": ["2412-153948-0000", "3536-23268-0010"],
    "test-clean": ["251-137823-0002", "251-137823-0003", "251-118436-0001"],
}
#: planted in test-clean/251/137823: (id, transcript, has audio) -> skip category
LIBRI_BAD = [("251-137823-9001", "ROOM 101 IS UPSTAIRS", True, "OOV characters"),
             ("251-137823-9002", "-- ? --", True, "empty text"),
             ("251-137823-9003", "THERE IS NO AUDIO FOR THIS", False, "audio not found")]


def build_librispeech(root: Path, samples: dict[str, dict],
                      parts: dict[str, list[str]] | None = None) -> Path:
    """``root/LibriSpeech/PART/SPEAKER/CHAPTER/{SPEAKER-CHAPTER.trans.txt, *.flac}``: the clips
    ``parts`` names (default :data:`LIBRI_PARTS`), by part, as FLAC with their transcripts in
    upper case (as the corpus writes them); test-clean also gets the planted
    :data:`LIBRI_BAD`."""
    corpus = root / "LibriSpeech"
    for part, ids in (LIBRI_PARTS if parts is None else parts).items():
        chapters: dict[Path, list[str]] = {}
        for utt in ids:
            speaker, chapter, _ = utt.split("-")
            folder = corpus / part / speaker / chapter
            to_flac(samples[utt]["path"], folder / f"{utt}.flac")
            chapters.setdefault(folder, []).append(f"{utt} {samples[utt]['text'].upper()}")
        if part == "test-clean":
            folder = corpus / part / "251" / "137823"
            for utt, text, has_audio, _ in LIBRI_BAD:
                if has_audio:
                    to_flac(samples["251-137823-0002"]["path"], folder / f"{utt}.flac")
                chapters[folder].append(f"{utt} {text}")
        for folder, lines in chapters.items():
            speaker, chapter = folder.parent.name, folder.name
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return corpus


class HangAtStep(pl.Callback):
    """At the end of training step ``step`` touch ``flag`` and sleep until killed: the test then
    SIGKILLs a run whose progress is known exactly (no race with a fast-running process). Once
    ``flag`` exists (the resumed run) it does nothing."""

    def __init__(self, step: int, flag: str) -> None:
        self.step = step
        self.flag = Path(flag)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.flag.exists():
            self.flag.touch()
            while True:
                time.sleep(0.05)


#: tensor methods that wait for the device (or leave it)
SYNC_METHODS = {"item", "tolist", "cpu", "numpy", "nonzero", "__bool__"}


def sync_free_backend(gm: torch.fx.GraphModule, example_inputs: list) -> object:
    """A torch.compile backend that fails on a host sync in the captured graph: a sync method,
    or a value whose shape or content is data-dependent (an unbacked symbol: what `.item()`,
    `int(tensor)`, `nonzero` or boolean indexing produce). Runs the graph eagerly."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    for node in gm.graph.nodes:
        if node.op == "call_method" and node.target in SYNC_METHODS:
            raise AssertionError(f"host sync in the graph: {node.format_node()}")
        if free_unbacked_symbols(node.meta.get("example_value")):
            raise AssertionError(f"data-dependent value in the graph: {node.format_node()}")
    return gm.forward
