"""A tiny espeak-ng corpus shared by the task and recipe tests (made once per session)."""

from __future__ import annotations

import json
from pathlib import Path


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


def read_texts(manifest: Path) -> list[str]:
    return [json.loads(line)["text"] for line in manifest.read_text().splitlines() if line]
