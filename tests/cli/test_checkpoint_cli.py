"""Self-contained checkpoints: ``speechlab test --ckpt_path X`` with no recipe, from another
folder, rebuilds the task (vocabulary, GramSet, LM) and the data module from the checkpoint
alone; ``--model.init_args.*`` on the command line wins over the checkpoint's values; a missing
checkpoint is one line naming it. Oracles: the checkpoint evaluated in-process through
Lightning's own ``load_from_checkpoint`` (and, for Gram-CTC, ``GramCTCTask.load`` decoding the
test utterances itself, scored by :mod:`speechlab.score`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from speechlab.cli import main

ENCODER = {"stride": 4, "conv_channels": 4, "rnn_type": "gru", "hidden_size": 16,
           "num_layers": 1, "dropout": 0.0}

TASKS = {
    "ctc": ("speechlab.tasks.ctc.CTCTask", {"encoder": ENCODER}),
    "gram_ctc": ("speechlab.tasks.gram_ctc.GramCTCTask",
                 {"encoder": ENCODER, "default_top_k": 10, "decoding": {"method": "greedy"}}),
    "robust": ("speechlab.tasks.robust.RobustASRTask", {"encoder": ENCODER, "views": "clean"}),
    "seq2seq": ("speechlab.tasks.seq2seq.Seq2SeqTask",
                {"encoder": ENCODER, "beam_size": 1,
                 "decoder": {"embed_dim": 8, "hidden_size": 16, "attention_dim": 8,
                             "output_dim": 16, "location_channels": 2}}),
}


def _fit(run: Path, corpus: dict[str, Path], task: str, steps: int = 2) -> Path:
    """Train ``task`` for ``steps`` steps through ``speechlab fit``, the recipe and manifests
    named by paths relative to ``run`` (the cwd); return the checkpoint."""
    class_path, init_args = TASKS[task]
    run.mkdir(parents=True)
    (run / "data").symlink_to(corpus["train"].parent)
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": steps, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "num_sanity_val_steps": 0, "limit_val_batches": 0,
                    "use_distributed_sampler": False,
                    "callbacks": [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": "exp/checkpoints", "filename": "best"}}]},
        "model": {"class_path": class_path,
                  "init_args": {**init_args, "lr": 3e-3, "warmup_steps": 1,
                                "output_dir": "exp/train_out"}},
        "data": {"class_path": "speechlab.data.speech.SpeechDataModule",
                 "init_args": {"train_manifest": "data/train.jsonl", "dev_manifest": "data/dev.jsonl",
                               "test_manifest": "data/test.jsonl", "max_duration": 30.0,
                               "num_workers": 0}},
    }
    (run / "recipe.yaml").write_text(yaml.safe_dump(config))
    import os

    cwd = os.getcwd()
    os.chdir(run)
    try:
        assert main(["fit", "--config", "recipe.yaml"]) == 0
    finally:
        os.chdir(cwd)
    ckpt = run / "exp" / "checkpoints" / "best.ckpt"
    assert ckpt.is_file()
    return ckpt


def _in_process_counts(task: str, ckpt: Path, test_manifest: Path) -> dict[str, dict[str, int]]:
    """Error counts of the checkpoint on ``test_manifest``: the task class's
    ``load_from_checkpoint``, a data module built here (not from the checkpoint), transcripts
    scored by :func:`speechlab.score.edit_counts`."""
    import importlib

    from speechlab.data.speech import SpeechDataModule
    from speechlab.score import edit_counts

    module, name = TASKS[task][0].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    model = cls.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = SpeechDataModule(test_manifest=str(test_manifest), max_duration=30.0, num_workers=0)
    dm.setup("test")
    refs, hyps = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            refs += batch["texts"]
            hyps += model.transcribe(batch)
    counts = {}
    for key, unit in (("test_word", "word"), ("test_char", "char")):
        c = edit_counts(refs, hyps, unit=unit)
        counts[key] = {"errors": c.errors, "ref_len": c.ref_len}
    return counts


@pytest.mark.parametrize("task", ["ctc", "gram_ctc", pytest.param("robust", marks=pytest.mark.slow),
                                  pytest.param("seq2seq", marks=pytest.mark.slow)])
def test_speechlab_test_needs_only_the_checkpoint(task, tiny_corpus, tmp_path, monkeypatch, capsys):
    ckpt = _fit(tmp_path / "train", tiny_corpus, task)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["datamodule_hyper_parameters"]["test_manifest"] == str(tiny_corpus["test"].parent
                                                                        / "test.jsonl").replace(
        str(tiny_corpus["test"].parent), str(tmp_path / "train" / "data"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["test", "--ckpt_path", str(ckpt), "--trainer.logger=false",
                 "--trainer.enable_progress_bar=false"]) == 0
    out = capsys.readouterr().out
    # output_dir came from the checkpoint (relative: resolved in this cwd)
    summary = json.loads((elsewhere / "exp" / "train_out" / "wer.json").read_text())
    oracle = _in_process_counts(task, ckpt, tiny_corpus["test"])
    for name in ("test_word", "test_char"):
        assert {k: summary[name][k] for k in ("errors", "ref_len")} == oracle[name]
    wer = summary["test_word"]
    assert f"WER {100 * wer['errors'] / wer['ref_len']:.2f}%" in out


def test_missing_checkpoint_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "exp" / "nope.ckpt"
    assert main(["test", "--ckpt_path", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"speechlab test: error: {missing}: no such checkpoint"]


def test_command_line_wins_over_the_checkpoint(tiny_corpus, tmp_path, monkeypatch):
    """The checkpoint says greedy decoding and output_dir exp/train_out; the command line says
    beam search (beam 3) and another folder: the CLI's model decodes with the beam search, its
    transcripts are the beam search's (decoded here from the checkpoint with
    ``GramCTCTask.load``), and they are written where the command line says."""
    from speechlab.cli.lightning import SpeechLabCLI
    from speechlab.data.speech import SpeechDataModule
    from speechlab.decode.prefix_beam import GramDecoding
    from speechlab.score import edit_counts
    from speechlab.tasks.gram_ctc import GramCTCTask

    ckpt = _fit(tmp_path / "train", tiny_corpus, "gram_ctc")
    monkeypatch.chdir(tmp_path)
    common = ["test", "--ckpt_path", str(ckpt), "--trainer.logger=false",
              "--trainer.enable_progress_bar=false"]
    # with the training recipe too (Lightning's own CLI let the checkpoint override these flags)
    recipe = str(tmp_path / "train" / "recipe.yaml")
    cli = SpeechLabCLI(args=[common[0], "--config", recipe, *common[1:],
                             "--model.init_args.decoding.method=beam",
                             "--model.init_args.decoding.beam_size=3",
                             f"--model.init_args.output_dir={tmp_path / 'beam'}",
                             f"--data.init_args.test_manifest={tiny_corpus['all']}"])
    assert cli.model.decoding.method == "beam" and cli.model.decoding.beam_size == 3
    assert not (tmp_path / "exp" / "train_out").exists()
    rows = {r["id"]: r for r in map(json.loads, (tmp_path / "beam" / "hyps.jsonl").read_text().splitlines())}
    assert len(rows) == 12  # the command line's test manifest, not the checkpoint's

    model = GramCTCTask.load(ckpt)
    model.decoding = GramDecoding(method="beam", beam_size=3)
    dm = SpeechDataModule(test_manifest=str(tiny_corpus["all"]), max_duration=30.0, num_workers=0)
    dm.setup("test")
    hyps, refs = {}, {}
    with torch.no_grad():
        for batch in dm.test_dataloader():
            for i, ref, hyp in zip(batch["ids"], batch["texts"], model.transcribe(batch), strict=True):
                hyps[i], refs[i] = hyp, ref
    assert {i: r["hyp"] for i, r in rows.items()} == hyps
    summary = json.loads((tmp_path / "beam" / "wer.json").read_text())
    ids = sorted(hyps)
    assert summary["test_char"]["errors"] == edit_counts([refs[i] for i in ids], [hyps[i] for i in ids],
                                                         unit="char").errors

    # without the flags the checkpoint's own values hold (greedy, its output_dir)
    cli = SpeechLabCLI(args=common)
    assert cli.model.decoding.method == "greedy"
    assert (tmp_path / "exp" / "train_out" / "wer.json").is_file()


def test_second_test_into_the_same_folder_refuses(tiny_corpus, tmp_path, monkeypatch, capsys):
    """A second ``speechlab test`` into the same ``output_dir`` stops before the data module reads
    anything, with one line naming the existing file and the option; the first run's files stay
    byte-identical. With ``--model.init_args.overwrite true`` (the demo's form) it replaces them."""
    from speechlab.data.speech import SpeechDataModule

    ckpt = _fit(tmp_path / "train", tiny_corpus, "ctc")
    assert "overwrite" not in torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    monkeypatch.chdir(tmp_path)
    common = ["test", "--ckpt_path", str(ckpt), "--trainer.logger=false",
              "--trainer.enable_progress_bar=false"]
    assert main(common) == 0
    out = Path("exp") / "train_out"
    first = {name: (out / name).read_bytes() for name in ("hyps.jsonl", "wer.json")}
    capsys.readouterr()

    def no_data(self, stage=None):
        raise AssertionError("the data module was set up: the refusal came too late")

    with monkeypatch.context() as m:
        m.setattr(SpeechDataModule, "setup", no_data)
        assert main(common) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"speechlab test: error: {out / 'hyps.jsonl'}: exists (an earlier speechlab test "
                   "wrote it); pass --model.init_args.overwrite true to replace it, or give another "
                   "--model.init_args.output_dir"]
    assert {name: (out / name).read_bytes() for name in first} == first
    # no temporary files; the run's configuration beside its outputs, none in the working dir
    assert sorted(p.name for p in out.iterdir()) == ["config.test.yaml", "hyps.jsonl", "wer.json"]
    assert not Path("config.yaml").exists()

    (out / "wer.json").write_text("stale\n")
    assert main([*common, "--model.init_args.overwrite", "true"]) == 0
    assert {name: (out / name).read_bytes() for name in first} == first


# -- the LM tasks -------------------------------------------------------------------------------
RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "tiny"
LM_FIT = ["--trainer.accelerator=cpu", "--trainer.max_steps=3", "--trainer.enable_progress_bar=false",
          "--trainer.enable_model_summary=false", "--trainer.num_sanity_val_steps=0",
          "--trainer.limit_val_batches=0"]


def _lm_text(root: Path) -> None:
    """``data/tiny/{train,dev}.jsonl`` under ``root``: generated sentences in the recipe's
    characters (only the ``text`` field is read)."""
    import random

    words = ["the", "cat", "sat", "on", "a", "mat", "it's", "red", "blue", "green", "lamp", "turn",
             "off", "please", "light", "kitchen"]
    rng = random.Random(0)
    (root / "data" / "tiny").mkdir(parents=True)
    for split, n in (("train", 60), ("dev", 12)):
        rows = [json.dumps({"id": f"{split}{i}", "text": " ".join(rng.choices(words, k=rng.randint(2, 8)))})
                for i in range(n)]
        (root / "data" / "tiny" / f"{split}.jsonl").write_text("\n".join(rows) + "\n")


def _lm_oracle(task: str, ckpt: Path, run: Path) -> float:
    """Test perplexity of ``ckpt`` in-process: Lightning's ``load_from_checkpoint``, a data
    module built here with the recipe's settings (not the checkpoint's), summed NLL / tokens."""
    import math

    if task == "rnnlm":
        from speechlab.data.textlm import TextDataModule
        from speechlab.tasks.rnnlm import RNNLMTask, perplexity

        model = RNNLMTask.load_from_checkpoint(ckpt, map_location="cpu")
        dm = TextDataModule(train_text=str(run / "data/tiny/train.jsonl"),
                            dev_text=str(run / "data/tiny/dev.jsonl"), vocab="abcdefghijklmnopqrstuvwxyz '")
        dm.setup("test")
        return perplexity(model.lm, list(dm.test_dataloader()))
    from speechlab.data.corpus import DocumentDataModule
    from speechlab.tasks.topic_lm import TopicLMTask

    model = TopicLMTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = DocumentDataModule(train="embedded", embedded_documents=400, batch_size=32, min_freq=2,
                            topic_min_count=5)
    dm.setup("test")
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for batch in dm.test_dataloader():
            out = model.compute(batch)
            nll, tokens = nll + float(out["lm_nll"]), tokens + int(out["tokens"])
    return math.exp(nll / tokens)


@pytest.mark.parametrize("task", ["rnnlm", "tcnlm"])
def test_lm_checkpoint_tests_alone_from_another_folder(task, tmp_path, monkeypatch, capsys):
    """The tiny LM recipes trained for 3 steps (relative paths, cwd ``train``); ``speechlab test
    --ckpt_path X`` alone from another folder gives the in-process perplexity; a second run
    into the same folder refuses; the Python API (``trainer.test``) refuses the same way."""
    import pytorch_lightning as pl

    from speechlab.errors import InputError

    run = tmp_path / "train"
    run.mkdir()
    if task == "rnnlm":
        _lm_text(run)
    monkeypatch.chdir(run)
    assert main(["fit", "--config", str(RECIPES / f"{task}.yaml"), *LM_FIT]) == 0
    ckpt = run / "exp" / f"tiny_{task}" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    data = saved["datamodule_hyper_parameters"]
    if task == "rnnlm":
        assert Path(data["train_text"]) == (run / "data/tiny/train.jsonl").resolve()
        assert Path(data["dev_text"]) == (run / "data/tiny/dev.jsonl").resolve()
    else:
        assert data["train"] == "embedded"
    assert "overwrite" not in saved["hyper_parameters"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    common = ["test", "--ckpt_path", str(ckpt), "--trainer.logger=false",
              "--trainer.enable_progress_bar=false"]
    capsys.readouterr()
    assert main(common) == 0
    # the output_dir of the training run (derived from its trainer.default_root_dir; relative:
    # resolved in this cwd)
    out = elsewhere / f"exp/tiny_{task}/results.json"
    results = json.loads(out.read_text())
    assert results["perplexity"] == pytest.approx(_lm_oracle(task, ckpt, run), rel=1e-5)
    assert f"test perplexity {results['perplexity']:.2f}" in capsys.readouterr().out
    first = out.read_bytes()

    assert main(common) == 2
    assert f"{out.relative_to(elsewhere)}: exists" in capsys.readouterr().err
    module, name = {"rnnlm": ("speechlab.tasks.rnnlm", "RNNLMTask"),
                    "tcnlm": ("speechlab.tasks.topic_lm", "TopicLMTask")}[task]
    import importlib

    model = getattr(importlib.import_module(module), name).load_from_checkpoint(
        ckpt, map_location="cpu", output_dir=str(out.parent))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False)
    with pytest.raises(InputError, match=f"{out}: exists"):
        trainer.test(model, dataloaders=[])
    assert out.read_bytes() == first
