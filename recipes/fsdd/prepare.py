"""Split the Free Spoken Digit Dataset (../shared/data/fsdd) into train/dev/test manifests.

Test: recordings 0-4 of every speaker and digit (the conventional split, 300 utterances, the
manifest's "split": "test"); dev: recordings 5-9 (300); train: the rest (2,400). Audio paths are
written absolute, so the manifests work from any folder.

  python recipes/fsdd/prepare.py [--fsdd ../shared/data/fsdd] [--out data/fsdd]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    repo = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fsdd", type=Path, default=repo.parent / "shared" / "data" / "fsdd")
    p.add_argument("--out", type=Path, default=repo / "data" / "fsdd")
    args = p.parse_args()
    src = args.fsdd / "manifest.jsonl"
    if not src.is_file():
        raise SystemExit(f"{src}: FSDD manifest not found (give --fsdd)")
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for line in src.read_text().splitlines():
        if not line.strip():
            continue
        e = json.loads(line)
        index = int(Path(e["audio_filepath"]).stem.rsplit("_", 1)[1])
        split = "test" if index < 5 else "dev" if index < 10 else "train"
        if (split == "test") != (e.get("split") == "test"):
            raise SystemExit(f"{src}: {e['audio_filepath']} split {e.get('split')!r} is not the "
                             "conventional one (recordings 0-4 = test)")
        e["audio_filepath"] = str((args.fsdd / e["audio_filepath"]).resolve())
        e["id"] = Path(e["audio_filepath"]).stem
        splits[split].append(e)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        (args.out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{args.out / name}.jsonl: {len(rows)} utterances")


if __name__ == "__main__":
    main()
