"""The CTC baseline learns: on a handful of espeak-ng utterances the loss falls and the
greedy transcripts reach < 5% CER (scored by jiwer through speechlab.score); so does the CTC
task on the Conformer encoder, in 120 steps (d_model 64, 2 blocks)."""

import json

import pytorch_lightning as pl
import torch

from speechlab.data.speech import SpeechDataModule
from speechlab.nn.encoders import SpeechEncoderConfig
from speechlab.score import edit_counts
from speechlab.tasks.ctc import CTCTask


def _six_utterances(tiny_corpus, tmp_path) -> SpeechDataModule:
    manifest = tmp_path / "six.jsonl"
    entries = [json.loads(line) for line in tiny_corpus["all"].read_text().splitlines()[:6]]
    for e in entries:  # the copy lives elsewhere: make the audio paths absolute
        e["audio_filepath"] = str(tiny_corpus["all"].parent / e["audio_filepath"])
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return SpeechDataModule(str(manifest), str(manifest), max_duration=100, num_workers=0, dither=0.0)


def _fit_and_measure(task: CTCTask, dm: SpeechDataModule, steps: int):
    """Train ``task`` for ``steps`` on ``dm``; returns (trainer, the six-utterance batch, its
    loss and CER before and after, the hypotheses after)."""
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, check_val_every_n_epoch=1000,
                         gradient_clip_val=2.0, use_distributed_sampler=False, num_sanity_val_steps=0)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))  # all six utterances in one batch
    assert len(batch["ids"]) == 6
    task.eval()
    with torch.no_grad():
        loss_before = task.compute_loss(batch).item()
        cer_before = edit_counts(batch["texts"], task.transcribe(batch), unit="char").rate
    task.train()
    trainer.fit(task, datamodule=dm)
    task.eval()
    with torch.no_grad():
        loss_after = task.compute_loss(batch).item()
        hyps = task.transcribe(batch)
    cer_after = edit_counts(batch["texts"], hyps, unit="char").rate
    return trainer, batch, loss_before, loss_after, cer_before, cer_after, hyps


def test_ctc_overfits_a_handful_of_utterances(tiny_corpus, tmp_path):
    torch.manual_seed(0)
    dm = _six_utterances(tiny_corpus, tmp_path)
    task = CTCTask(encoder=SpeechEncoderConfig(rnn_type="gru", hidden_size=128, dropout=0.0), spec_augment=False,
                   lr=3e-3, warmup_steps=20, weight_decay=0.0, total_steps=300,
                   output_dir=str(tmp_path / "out"))
    trainer, batch, loss_before, loss_after, _, cer_after, hyps = _fit_and_measure(task, dm, 300)
    assert loss_after < 0.2 * loss_before
    assert cer_after < 0.05, list(zip(batch["texts"], hyps, strict=True))

    # speechlab test writes hypotheses and a summary that agree with the scorer
    trainer.test(task, datamodule=dm)
    rows = [json.loads(line) for line in (tmp_path / "out" / "hyps.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(batch["ids"])
    summary = json.loads((tmp_path / "out" / "wer.json").read_text())
    words = edit_counts([r["ref"] for r in rows], [r["hyp"] for r in rows], unit="word")
    assert summary["test_word"]["errors"] == words.errors
    assert summary["test_word"]["ref_len"] == words.ref_len


def test_ctc_conformer_overfits_a_handful_of_utterances(tiny_corpus, tmp_path):
    torch.manual_seed(0)
    dm = _six_utterances(tiny_corpus, tmp_path)
    encoder = SpeechEncoderConfig(kind="conformer", hidden_size=64, num_heads=4, num_layers=2,
                                  depthwise_conv_kernel_size=15, conv_channels=16, dropout=0.0)
    task = CTCTask(encoder=encoder, spec_augment=False, lr=2e-3, warmup_steps=20, weight_decay=0.0,
                   total_steps=120)
    _, batch, loss_before, loss_after, cer_before, cer_after, hyps = _fit_and_measure(task, dm, 120)
    assert cer_before > 0.5  # untrained: mostly wrong
    assert loss_after < 0.1 * loss_before
    assert cer_after < 0.05, list(zip(batch["texts"], hyps, strict=True))


def test_conformer_checkpoint_round_trip(tmp_path):
    """A CTC checkpoint of the Conformer encoder loads (hyper-parameters and weights) into the
    same model: the same log-probs on a padded batch."""
    torch.manual_seed(0)
    encoder = SpeechEncoderConfig(kind="conformer", hidden_size=16, num_heads=2, ffn_dim=32,
                                  num_layers=2, depthwise_conv_kernel_size=5, conv_channels=4)
    task = CTCTask(encoder=encoder, spec_augment=False)
    trainer = pl.Trainer(max_steps=0, logger=False, enable_progress_bar=False)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "conformer.ckpt")
    loaded = CTCTask.load_from_checkpoint(tmp_path / "conformer.ckpt", map_location="cpu",
                                          weights_only=False).eval()
    assert loaded.hparams.encoder == encoder and loaded.encoder.conformer is not None
    x, lens = torch.randn(2, 50, 80), torch.tensor([50, 31])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, lens), task.eval()(x, lens), rtol=0, atol=0)
