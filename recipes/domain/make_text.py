"""Write the domain-transfer experiment's text: LM training sentences of each domain from
speechlab's sentence generator (``speechlab.data.sentences``), with every sentence of the
synthesized speech's dev/test sets removed (the LMs never see a test transcript), and the 10%
domain-B fine-tuning manifest.

usage: python recipes/domain/make_text.py DATA_DIR [--sentences N] [--finetune-fraction 0.1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechlab.data.sentences import generate_sentences
from speechlab.io import atomic_write_text


def held_out(folder: Path) -> set[str]:
    texts = set()
    for split in ("dev", "test"):
        for line in (folder / f"{split}.jsonl").read_text().splitlines():
            if line.strip():
                texts.add(json.loads(line)["text"])
    return texts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path)
    p.add_argument("--sentences", type=int, default=20000)
    p.add_argument("--finetune-fraction", type=float, default=0.1)
    args = p.parse_args()
    for seed, domain in ((101, "home"), (202, "numbers")):
        banned = held_out(args.data / domain)
        generated = [s.text for s in generate_sentences(args.sentences, seed, (domain,))]
        kept = [t for t in generated if t not in banned]
        atomic_write_text(args.data / "text" / f"{domain}.txt", "\n".join(kept) + "\n")
        print(f"{domain}: {len(kept)} LM sentences ({len(generated) - len(kept)} dropped: in dev/test speech), "
              f"{len(set(kept))} distinct")
    # fine-tuning set: the first 10% of domain-B (numbers) training utterances
    rows = (args.data / "numbers" / "train.jsonl").read_text().splitlines()
    n = max(1, round(args.finetune_fraction * len(rows)))
    # same folder as train.jsonl: the relative audio paths stay valid
    atomic_write_text(args.data / "numbers" / "finetune10.jsonl", "\n".join(rows[:n]) + "\n")
    print(f"fine-tuning manifest: {n} of {len(rows)} numbers training utterances")


if __name__ == "__main__":
    main()
