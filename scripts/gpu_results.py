"""What the GPU recipes (recipes/{synth,robust,domain}/run_gpu.sh) bring back from a device call:
a training run's summary from its ``speechlab fit`` log, and checkpoints without optimizer state
(a few MB, under the device's limit on returned files).

  python3 scripts/gpu_results.py strip SRC.ckpt DST.ckpt
  python3 scripts/gpu_results.py fit-summary FIT.log          # JSON on stdout

From a recipe's inline Python: ``sys.path.insert(0, "scripts"); from gpu_results import ...``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

#: the last line of a ``speechlab fit`` log (speechlab.callbacks' progress logging)
FIT_ENDED = re.compile(r"training ended at step (\d+)\S*\s+epoch (\d+)\s+([\d.]+) s\s+([\d.]+) steps/s")
#: a validation line and its dev CER
VALIDATION_CER = re.compile(r"validation at step (\d+)\S*.*?val/cer ([\d.]+)")
#: what a returned checkpoint leaves out (resuming needs them; testing and warm starts do not)
TRAINING_STATE = ("optimizer_states", "lr_schedulers")


def fit_summary(log_text: str) -> dict[str, Any]:
    """``steps``, ``epochs``, ``train_s``, ``steps_per_s`` (when the run ended) and
    ``dev_cer_curve`` ``[(step, cer), ...]`` of a ``speechlab fit`` log."""
    row: dict[str, Any] = {}
    ended = FIT_ENDED.findall(log_text)
    if ended:
        steps, epochs, seconds, rate = ended[-1]
        row.update(steps=int(steps), epochs=int(epochs), train_s=float(seconds), steps_per_s=float(rate))
    row["dev_cer_curve"] = [(int(s), float(c)) for s, c in VALIDATION_CER.findall(log_text)]
    return row


def strip_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Save the Lightning checkpoint ``src`` as ``dst`` without :data:`TRAINING_STATE`."""
    import torch

    ckpt = torch.load(src, map_location="cpu", weights_only=False)
    for key in TRAINING_STATE:
        ckpt.pop(key, None)
    torch.save(ckpt, dst)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "strip":
        strip_checkpoint(argv[1], argv[2])
        return 0
    if len(argv) == 2 and argv[0] == "fit-summary":
        print(json.dumps(fit_summary(Path(argv[1]).read_text())))
        return 0
    print("usage: gpu_results.py strip SRC DST | fit-summary FIT.log", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
