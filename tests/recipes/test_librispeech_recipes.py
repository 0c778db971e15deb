"""``recipes/librispeech/`` on a LibriSpeech tree in the corpus's own layout, built in
``tmp_path`` from the real clips of ``shared/data/speech_samples`` (``tests.helpers.
build_librispeech``; skipped when shared data is absent): ``speechlab data prepare librispeech``
writes the per-part manifests the recipes name, then each recipe parses (``--print_config``) and
trains one batch and validates one (``fast_dev_run``) on them, on the CPU.

Overrides, and why: the manifests (``--data.init_args.*_manifest`` / ``*_text``: the fixture's);
``--trainer.accelerator=cpu``, no logger, no progress bar, ``default_root_dir`` in ``tmp_path``;
``--data.init_args.num_workers=0`` (12 loader workers on 2 cores cost more than the batch).
Model sizes, batch sizes, bf16-mixed, SpecAugment and speed perturbation stay as the recipes
write them. Cold Fusion fuses the LM that the rnnlm recipe trains here first (1 step + 1
validation batch, with the recipe's checkpoint callbacks: ``fast_dev_run`` saves no
checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from speechlab.cli import main
from tests.helpers import LIBRI_PARTS, build_librispeech

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes" / "librispeech"
ASR = ["ctc", "gram_ctc", "seq2seq_cold"]
#: the fixture's parts: every LibriSpeech clip of speech_samples is also filed under train-clean-100
PARTS = {"train-clean-100": sorted(i for ids in LIBRI_PARTS.values() for i in ids), **LIBRI_PARTS}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def manifests(tmp_path_factory, speech_samples) -> dict[str, Path]:
    """``speechlab data prepare librispeech`` on the fixture tree: the manifest of each part."""
    root = tmp_path_factory.mktemp("librispeech")
    corpus = build_librispeech(root, speech_samples, PARTS)
    out = root / "data" / "librispeech"
    rc = main(["data", "prepare", "librispeech", "--corpus-dir", str(corpus), "--out", str(out),
               "--parts", *PARTS, "--num-jobs", "1"])
    assert rc == 0
    paths = {part: out / f"{part}.jsonl" for part in PARTS}
    for part, path in paths.items():
        assert len(path.read_text().splitlines()) == len(PARTS[part]), part  # bad ones skipped
    return paths


def _data(recipe: str, m: dict[str, Path]) -> list[str]:
    if recipe == "rnnlm":
        keys = ["train_text", "dev_text", "test_text"]
    else:
        keys = ["train_manifest", "dev_manifest", "test_manifest"]
    parts = ["train-clean-100", "dev-clean", "test-clean"]
    out = [f"--data.init_args.{k}={m[p]}" for k, p in zip(keys, parts, strict=True)]
    return [*out, "--data.init_args.num_workers=0"]


def _common(root: Path) -> list[str]:
    return ["--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}"]


@pytest.mark.parametrize("recipe", ["ctc", "gram_ctc", "rnnlm", "seq2seq_cold"])
def test_print_config(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(RECIPES / f"{recipe}.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["precision"] == "bf16-mixed"
    data = printed["data"]["init_args"]
    if recipe in ASR:  # the per-part manifests of data prepare; augmentation on
        assert Path(data["train_manifest"]).name == "train-clean-100.jsonl"
        assert Path(data["dev_manifest"]).name == "dev-clean.jsonl"
        assert Path(data["test_manifest"]).name == "test-clean.jsonl"
        assert data["speed_perturb"] == [0.9, 1.0, 1.1]
        assert printed["model"]["init_args"]["spec_augment"] is True
        assert printed["model"]["init_args"]["encoder"]["hidden_size"] == 320
    else:
        assert Path(data["train_text"]).name == "train-clean-100.jsonl"


@pytest.fixture(scope="module")
def lm_checkpoint(manifests, tmp_path_factory) -> Path:
    """The rnnlm recipe's best.ckpt after 1 training step and 1 validation batch (its own
    logger and callbacks, writing under a temporary ``default_root_dir``)."""
    root = tmp_path_factory.mktemp("rnnlm")
    rc = main(["fit", "--config", str(RECIPES / "rnnlm.yaml"), *_data("rnnlm", manifests),
               *_common(root), "--trainer.max_steps=1", "--trainer.limit_val_batches=1",
               "--trainer.check_val_every_n_epoch=1", "--trainer.num_sanity_val_steps=0"])
    assert rc in (0, None)
    return root / "checkpoints" / "best.ckpt"


def test_rnnlm_trains_one_step_and_saves(lm_checkpoint):
    state = torch.load(lm_checkpoint, map_location="cpu", weights_only=False)
    assert state["global_step"] == 1
    assert state["hyper_parameters"]["hidden_size"] == 1024


@pytest.mark.parametrize("recipe", ASR)
def test_fast_dev_run(recipe, manifests, tmp_path, request):
    extra = []
    if recipe == "seq2seq_cold":
        extra.append(f"--model.init_args.lm_checkpoint={request.getfixturevalue('lm_checkpoint')}")
    rc = main(["fit", "--config", str(RECIPES / f"{recipe}.yaml"), *_data(recipe, manifests),
               *_common(tmp_path), "--trainer.logger=false", "--trainer.fast_dev_run=1", "--trainer.callbacks=[]", *extra])
    assert rc in (0, None)
