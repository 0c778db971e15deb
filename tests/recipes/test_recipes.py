"""Every recipe in recipes/ parses (--print_config) and runs one CPU batch (fast_dev_run)
on the tiny espeak-ng corpus; a recipe that includes another (``config:``) changes only what it
writes; every recipe has its own run folder. ``_*.yaml`` files are the trainer blocks recipes
include, not recipes."""

from __future__ import annotations

import functools
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from speechlab.cli import main

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "recipes"))
from effective_config import effective_configs  # noqa: E402

RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if not p.name.startswith("_"))
INCLUDED = sorted((REPO / "recipes").rglob("_*.yaml"))


@functools.cache
def _effective(recipe: Path) -> str:
    return yaml.safe_dump(effective_configs([recipe], in_process=True)[0])


def effective(recipe: Path) -> dict:
    """The recipe as ``speechlab fit`` reads it (includes resolved, defaults filled; a copy)."""
    return yaml.safe_load(_effective(recipe))


def _data_overrides(recipe: Path, corpus: dict[str, Path],
                    farfield: Callable[[], dict[str, Path]] | None = None) -> list[str]:
    """Point a recipe's manifests at the test corpus (keys it leaves unset are left out).
    A paired recipe (``paired_clean_manifest``) trains on ``farfield()``'s far-field copies of
    the corpus's train split, whose lines name their clean source."""
    config = effective(recipe)
    init = (config.get("data") or {}).get("init_args", {})
    paired = init.get("paired_clean_manifest") is not None
    out = []
    for key, split in [("train_manifest", "train"), ("dev_manifest", "dev"),
                       ("test_manifest", "test"), ("paired_clean_manifest", "train"),
                       ("train_text", "train"), ("dev_text", "dev"), ("test_text", "test")]:
        if init.get(key) is not None:
            source = farfield() if paired and key == "train_manifest" and farfield else corpus
            out.append(f"--data.init_args.{key}={source[split]}")
    if str((config.get("data") or {}).get("class_path", "")).endswith("DocumentDataModule"):
        # document recipes: the embedded generated corpus stands in for real documents
        out += ["--data.init_args.train=embedded", "--data.init_args.val=null",
                "--data.init_args.test=null", "--data.init_args.num_workers=0",
                "--data.init_args.batch_size=4", "--data.init_args.eval_batch_size=4"]
    model = (config.get("model") or {}).get("init_args", {})
    if model.get("lm_checkpoint"):  # LM-fusion recipes: a small random LM stands in for the trained one
        out.append(f"--model.init_args.lm_checkpoint={_tiny_lm(corpus['train'].parent)}")
    if model.get("init_checkpoint"):  # deep fusion starts from a trained baseline: none here
        out.append("--model.init_args.init_checkpoint=null")
    if model.get("grams"):  # Gram-CTC on a GramSet file (grams select|refine): the default set stands in
        out.append("--model.init_args.grams=null")
    if model.get("teacher_checkpoint"):  # teacher-student: a random CTC model stands in for the teacher
        teacher = _tiny_teacher(corpus["train"].parent, model["vocab"],
                                (model.get("encoder") or {}).get("stride", 4))
        out.append(f"--model.init_args.teacher_checkpoint={teacher}")
    return out


def _tiny_teacher(folder: Path, vocab: str, stride: int) -> Path:
    """A randomly initialized CTCTask (``vocab``, encoder ``stride``) saved by Lightning."""
    import pytorch_lightning as pl
    import torch

    from speechlab.nn.encoders import SpeechEncoderConfig
    from speechlab.tasks.ctc import CTCTask

    path = folder / f"tiny_teacher_s{stride}_{zlib.crc32(vocab.encode())}.ckpt"
    if not path.exists():
        torch.manual_seed(0)
        task = CTCTask(vocab=vocab, encoder=SpeechEncoderConfig(
            stride=stride, conv_channels=4, rnn_type="gru", hidden_size=16, num_layers=1))
        trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.strategy.connect(task)
        trainer.save_checkpoint(path)
    return path


def _tiny_lm(folder: Path) -> Path:
    """A randomly initialized character LM saved in the RNNLMTask checkpoint format."""
    import torch

    from speechlab.data.text import CharVocab
    from speechlab.nn.lm import RNNLanguageModel
    from speechlab.tasks.rnnlm import lm_bundle

    path = folder / "tiny_lm.pt"
    if not path.exists():
        torch.manual_seed(0)
        config = {"vocab_size": len(CharVocab()), "embed_dim": 16, "hidden_size": 32, "num_layers": 1}
        torch.save(lm_bundle(RNNLanguageModel(**config), config, CharVocab()), path)
    return path


def test_there_are_recipes():
    assert RECIPES, "no recipes found"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_print_config(recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("speechlab.")


def _leaves(value, path=()):
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from _leaves(sub, (*path, str(key)))
    elif isinstance(value, list) and value:
        for i, sub in enumerate(value):
            yield from _leaves(sub, (*path, i))
    else:
        yield path, value


@pytest.mark.parametrize("recipe", [p for p in [*RECIPES, *INCLUDED]
                                    if "config" in yaml.safe_load(p.read_text())],
                         ids=lambda p: str(p.relative_to(p.parents[1])))
def test_an_including_recipe_changes_only_what_it_writes(recipe):
    """``config: BASE`` first, then keys that replace BASE's: the effective configuration
    differs from BASE's only under the keys the recipe writes (``trainer.max_steps``,
    ``model.init_args.encoder``, a whole ``model:``). Trainer options are dotted keys: a
    ``trainer:`` block after ``config:`` would replace BASE's whole trainer (logger, callbacks)."""
    written = yaml.safe_load(recipe.read_text())
    assert list(written)[0] == "config", f"{recipe.name}: `config:` must come first"
    assert "trainer" not in written, (f"{recipe.name}: a `trainer:` block replaces the included "
                                      "trainer; write trainer.KEY: VALUE lines")
    base = recipe.parent / written.pop("config")
    prefixes = [tuple(key.split(".")) for key in written]
    mine, theirs = dict(_leaves(effective(recipe))), dict(_leaves(effective(base)))
    changed = [k for k in set(mine) | set(theirs) if mine.get(k, "<unset>") != theirs.get(k, "<unset>")]
    stray = sorted(".".join(map(str, k)) for k in changed
                   if not any(k[:len(p)] == p for p in prefixes))
    assert not stray, f"{recipe.name} changes {stray} of {base.name} without writing them"


def test_every_recipe_has_its_own_run_folder():
    roots = {}
    for recipe in RECIPES:
        root = effective(recipe)["trainer"]["default_root_dir"]
        assert root, f"{recipe}: no trainer.default_root_dir"
        roots.setdefault(root, []).append(str(recipe.relative_to(REPO)))
    assert not [r for r in roots.values() if len(r) > 1], roots


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_fast_dev_run(recipe, tiny_corpus, tmp_path, request):
    farfield = lambda: request.getfixturevalue("tiny_farfield")  # noqa: E731 (only paired recipes)
    main(["fit", "--config", str(recipe), *_data_overrides(recipe, tiny_corpus, farfield),
          "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu", "--trainer.logger=false",
          f"--trainer.default_root_dir={tmp_path}", "--trainer.callbacks=[]",
          "--trainer.enable_progress_bar=false"])


def test_run_paths_derive_from_default_root_dir(tiny_corpus, tmp_path):
    """A recipe that leaves the logger's ``save_dir``, the checkpoints' ``dirpath`` and the task's
    ``output_dir`` unset writes everything under ``trainer.default_root_dir``: ``tb/``,
    ``checkpoints/``, the run's ``config.yaml`` (with the derived paths) and ``speechlab test``'s
    results; a value given on the command line is kept."""
    cfg = effective_configs([REPO / "recipes/tiny/ctc.yaml"], in_process=True)[0]
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = None
    for cb in cfg["trainer"]["callbacks"]:
        if "dirpath" in cb.get("init_args", {}):
            cb["init_args"]["dirpath"] = None
    cfg["model"]["init_args"]["output_dir"] = None
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    root = tmp_path / "run"
    common = [*_data_overrides(REPO / "recipes/tiny/ctc.yaml", tiny_corpus),
              "--data.init_args.num_workers=0", "--trainer.accelerator=cpu",
              "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}"]
    assert main(["fit", "--config", str(recipe), *common, "--trainer.max_steps=2",
                 "--trainer.check_val_every_n_epoch=1", "--trainer.limit_val_batches=1",
                 "--trainer.num_sanity_val_steps=0"]) == 0
    assert (root / "checkpoints" / "last.ckpt").is_file()
    saved = yaml.safe_load((root / "tb" / "version_0" / "config.yaml").read_text())
    assert saved["trainer"]["logger"]["init_args"]["save_dir"] == str(root)
    assert {cb["init_args"].get("dirpath") for cb in saved["trainer"]["callbacks"]} >= {
        str(root / "checkpoints")}
    assert saved["model"]["init_args"]["output_dir"] == str(root)
    test = ["test", "--config", str(recipe), *common, "--trainer.logger=false"]
    assert main([*test, "--ckpt_path", str(root / "checkpoints" / "last.ckpt")]) == 0
    assert (root / "hyps.jsonl").is_file() and (root / "wer.json").is_file()
    elsewhere = tmp_path / "elsewhere"
    assert main([*test, f"--model.init_args.output_dir={elsewhere}"]) == 0
    assert (elsewhere / "wer.json").is_file()


def _checkpoint_callbacks(recipe: Path, dirpath: Path) -> list:
    """The recipe's ModelCheckpoint callbacks, instantiated, writing into ``dirpath``."""
    import importlib

    out = []
    for cb in effective(recipe)["trainer"].get("callbacks") or []:
        if cb["class_path"].endswith(("ModelCheckpoint", "LatestCheckpoint")):
            module, name = cb["class_path"].rsplit(".", 1)
            args = {**(cb.get("init_args") or {}), "dirpath": str(dirpath)}
            out.append(getattr(importlib.import_module(module), name)(**args))
    return out


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_last_checkpoint_is_the_latest_state(recipe, tmp_path):
    """Resuming needs ``last.ckpt`` = the latest validation's state. Lightning 2.6's
    ``save_last=True`` on a monitored checkpoint rewrites ``last.ckpt`` only when the monitored
    score improves, so a run whose dev score got worse would resume from an older step; the
    recipes keep a second one, :class:`speechlab.callbacks.LatestCheckpoint`. A dev score that
    only gets worse: ``best.ckpt`` stays at the first validation (step 4), ``last.ckpt`` follows
    training to its end (step 14, mid-epoch, after the last validation at 12)."""
    import pytorch_lightning as pl
    import torch

    callbacks = _checkpoint_callbacks(recipe, tmp_path)
    monitors = {cb.monitor for cb in callbacks}

    class Worsening(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - 1).pow(2).sum()

        def validation_step(self, batch, batch_idx):
            for name in monitors - {None}:  # worse every validation, whatever "mode" is
                mode = next(cb.mode for cb in callbacks if cb.monitor == name)
                step = float(self.global_step)
                self.log(name, step if mode == "min" else -step)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=1)
    trainer = pl.Trainer(max_steps=14, val_check_interval=4, check_val_every_n_epoch=None,
                         callbacks=callbacks, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Worsening(), data, data)
    steps = {p.stem: torch.load(p, map_location="cpu", weights_only=False)["global_step"]
             for p in tmp_path.glob("*.ckpt")}
    assert steps.get("last") == 14, steps
    if "best" in steps:
        assert steps["best"] == 4, steps
