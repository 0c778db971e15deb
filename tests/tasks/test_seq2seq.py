"""Seq2SeqTask and the fusion layers: the LM stays frozen through ``trainer.fit`` (bitwise, no
grad, eval mode even while Lightning puts the task in train mode), each fusion mode's loss falls
on tiny data, deep fusion starts exactly at its baseline, cold fusion's gate starts at bias −1,
checkpoints embed the LM and a test-time LM swap needs no retraining."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from speechlab.data.speech import SpeechDataModule
from speechlab.data.text import CharVocab
from speechlab.functional.fusion import cold_fusion_state, deep_fusion_state
from speechlab.nn.decoder import AttentionDecoderConfig
from speechlab.nn.encoders import SpeechEncoderConfig
from speechlab.nn.fusion import COLD_GATE_BIAS_INIT, ColdFusion, DeepFusion
from speechlab.nn.lm import RNNLanguageModel
from speechlab.tasks.rnnlm import LMCheckpointError, lm_bundle, load_language_model
from speechlab.tasks.seq2seq import Seq2SeqTask, scheduled_sampling_prob

ENC = SpeechEncoderConfig(hidden_size=48, num_layers=1, dropout=0.0)
DEC = AttentionDecoderConfig(embed_dim=16, hidden_size=64, attention_dim=32, location_channels=4,
                             location_kernel=7, output_dim=64, fusion_dim=32, dropout=0.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _save_lm(path, seed=0, hidden=32, vocab=None):
    torch.manual_seed(seed)
    vocab = vocab or CharVocab()
    config = {"vocab_size": len(vocab), "embed_dim": 16, "hidden_size": hidden, "num_layers": 1,
              "dropout": 0.0}
    torch.save(lm_bundle(RNNLanguageModel(**config), config, vocab), path)
    return str(path)


def _task(fusion="none", lm=None, seed=0, **kw):
    torch.manual_seed(seed)
    return Seq2SeqTask(encoder=ENC, decoder=DEC, fusion=fusion, lm_checkpoint=lm,
                       spec_augment=False, label_smoothing=0.0, warmup_steps=1, lr=3e-3,
                       weight_decay=0.0, **kw)


@pytest.fixture(scope="module")
def tiny_batch(tiny_corpus):
    dm = SpeechDataModule(str(tiny_corpus["all"]), max_duration=11, num_workers=0, dither=0.0,
                          num_buckets=2)
    dm.setup("fit")
    return min(dm.train_dataloader(), key=lambda b: b["features"].shape[1])


def test_fusion_math_and_gate_init():
    torch.manual_seed(0)
    cold = ColdFusion(state_dim=6, vocab_size=5, fusion_dim=4)
    assert torch.equal(cold.gate.bias, torch.full((4,), COLD_GATE_BIAS_INIT))
    assert COLD_GATE_BIAS_INIT == -1.0
    s, lm_logits = torch.randn(3, 6), torch.randn(3, 5) + 7.0  # offset: must not matter
    out, g = cold(s, lm_logits)
    h = cold.lm_proj(lm_logits.log_softmax(-1))
    g_ref = torch.sigmoid(torch.cat([s, h], -1) @ cold.gate.weight.T + cold.gate.bias)
    assert torch.allclose(g, g_ref, atol=1e-6)
    assert torch.allclose(out, torch.cat([s, g_ref * h], -1), atol=1e-6)
    assert torch.allclose(cold(s, lm_logits - 7.0)[0], out, atol=1e-5)  # normalized logits
    # a fresh gate sits near sigmoid(-1) when the weights are small
    w0 = torch.zeros(4, 10)
    assert torch.allclose(cold_fusion_state(s, h, w0, cold.gate.bias)[1],
                          torch.full((3, 4), torch.sigmoid(torch.tensor(-1.0)).item()))
    deep = DeepFusion(state_dim=6, lm_hidden_size=8)
    hid = torch.randn(3, 8)
    out, g = deep(s, None, hid)
    assert g.shape == (3, 1)
    g_ref = torch.sigmoid(hid @ deep.gate.weight.T + deep.gate.bias)
    assert torch.allclose(out, torch.cat([s, g_ref * hid], -1), atol=1e-6)
    assert torch.equal(deep_fusion_state(s, hid, deep.gate.weight, deep.gate.bias)[0], out)


def test_scheduled_sampling_schedule():
    assert scheduled_sampling_prob(5, 0.0, 0, 10) == 0.0
    assert scheduled_sampling_prob(4, 0.4, 5, 10) == 0.0
    assert scheduled_sampling_prob(9, 0.4, 5, 10) == pytest.approx(0.2)
    assert scheduled_sampling_prob(100, 0.4, 5, 10) == pytest.approx(0.4)


class _RecordLMMode(pl.Callback):
    """Records the LM's mode at every forward call made during training batches."""

    def __init__(self, lm: RNNLanguageModel) -> None:
        self.modes: list[bool] = []
        self.task_modes: list[bool] = []
        lm.register_forward_pre_hook(lambda module, args: self.modes.append(module.training))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.task_modes.append(pl_module.training)


def test_lm_stays_frozen_through_fit(tiny_corpus, tmp_path):
    lm_path = _save_lm(tmp_path / "lm.pt")
    task = _task("cold", lm_path, scheduled_sampling=0.5, scheduled_sampling_ramp=1)
    lm = task.lm
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in task.decoder.state_dict().items()}
    recorder = _RecordLMMode(lm)
    dm = SpeechDataModule(str(tiny_corpus["train"]), max_duration=20, num_workers=0,
                          num_buckets=2)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(task, datamodule=dm)
    assert recorder.task_modes and all(recorder.task_modes)  # Lightning trained the task...
    assert recorder.modes and not any(recorder.modes)  # ...while the LM ran in eval mode
    assert not lm.training and task.lm is lm
    assert all(not p.requires_grad for p in lm.parameters())
    for k, v in lm.state_dict().items():
        assert torch.equal(v, before[k]), f"LM tensor {k} changed"
    lm_ids = {id(p) for p in lm.parameters()}
    optimized = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
    assert not lm_ids & {id(p) for p in optimized}
    assert not any(k.startswith("lm.") or "._lm" in k for k in task.state_dict())
    changed = [k for k, v in task.decoder.state_dict().items() if not torch.equal(v, decoder_before[k])]
    assert "decoder.fusion_layer.gate.weight"[len("decoder."):] in changed  # the task did train


def _fit_steps(task, batch, steps):
    opt = torch.optim.Adam([p for p in task.parameters() if p.requires_grad], lr=3e-3)
    task.train()
    for _ in range(steps):
        opt.zero_grad()
        task.compute_loss(batch).backward()
        opt.step()
    task.eval()


def _eval_loss(task, batch):
    task.eval()
    with torch.no_grad():
        return task.compute_loss(batch).item()


@pytest.mark.parametrize("fusion", ["none", "shallow", "cold"])
def test_each_fusion_mode_trains_from_scratch(fusion, tiny_batch, tmp_path):
    lm_path = None if fusion == "none" else _save_lm(tmp_path / "lm.pt")
    task = _task(fusion, lm_path, lm_weight=0.3 if fusion == "shallow" else 0.0)
    before = _eval_loss(task, tiny_batch)
    _fit_steps(task, tiny_batch, 30)
    after = _eval_loss(task, tiny_batch)
    assert after < 0.6 * before, (before, after)
    hyps = task.search(tiny_batch, beam_size=2)  # the fused search runs end to end
    assert len(hyps) == len(tiny_batch["ids"])


def test_deep_fusion_starts_at_the_baseline_and_trains_gate_and_output(tiny_batch, tmp_path):
    baseline = _task("none")
    _fit_steps(baseline, tiny_batch, 10)
    ckpt = tmp_path / "baseline.ckpt"
    torch.save({"state_dict": baseline.state_dict(), "speechlab_vocab": baseline.vocab.to_dict()}, ckpt)
    deep = _task("deep", _save_lm(tmp_path / "lm.pt"), init_checkpoint=str(ckpt),
                 freeze_seq2seq=True)
    baseline.eval()
    deep.eval()
    with torch.no_grad():
        m1 = baseline.encode(tiny_batch["features"], tiny_batch["feature_lens"])
        m2 = deep.encode(tiny_batch["features"], tiny_batch["feature_lens"])
        inputs = torch.zeros(len(tiny_batch["ids"]), 5, dtype=torch.long)
        assert torch.allclose(baseline.decoder(m1, inputs).logits,
                              deep.decoder(m2, inputs, lm=deep.lm).logits, atol=1e-5)
    trainable = {n for n, p in deep.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("decoder.fusion_layer.", "decoder.output.")) for n in trainable)
    encoder_before = {k: v.clone() for k, v in deep.encoder.state_dict().items()}
    before = _eval_loss(deep, tiny_batch)
    _fit_steps(deep, tiny_batch, 30)
    after = _eval_loss(deep, tiny_batch)
    assert after < 0.8 * before, (before, after)
    for k, v in deep.encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k])


def test_checkpoint_embeds_lm_and_lm_swaps_at_test_time(tiny_batch, tmp_path):
    lm_a = _save_lm(tmp_path / "a.pt", seed=1)
    lm_b = _save_lm(tmp_path / "b.pt", seed=2)
    task = _task("cold", lm_a)
    trainer = pl.Trainer(accelerator="cpu", logger=False, max_steps=0, enable_progress_bar=False)
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "cold.ckpt")
    ckpt = torch.load(tmp_path / "cold.ckpt", weights_only=False)
    assert "lm" in ckpt["speechlab"] and not any("lm" in k.split(".")[0] for k in ckpt["state_dict"])
    assert ckpt["speechlab"]["embedded_files"] == ["lm_checkpoint"]
    assert not any(k.startswith("speechlab_") for k in ckpt)

    (tmp_path / "a.pt").unlink()  # the embedded copy is enough to test
    again = Seq2SeqTask.load_from_checkpoint(tmp_path / "cold.ckpt", lm_checkpoint=lm_b,
                                             weights_only=False)
    for k, v in again.lm.state_dict().items():
        assert torch.equal(v, task.lm.state_dict()[k])
    swapped = Seq2SeqTask.load_from_checkpoint(tmp_path / "cold.ckpt", lm_checkpoint=lm_b,
                                               test_lm_checkpoint=lm_b, weights_only=False)
    lm_b_state = torch.load(lm_b, weights_only=False)["state_dict"]
    for k, v in swapped.lm.state_dict().items():
        assert torch.equal(v, lm_b_state[k])
    assert all(torch.equal(v, task.state_dict()[k]) for k, v in swapped.state_dict().items())
    assert not swapped.lm.training and not any(p.requires_grad for p in swapped.lm.parameters())
    swapped.eval()
    task.eval()
    with torch.no_grad():
        m = task.encode(tiny_batch["features"], tiny_batch["feature_lens"])
        inputs = torch.zeros(len(tiny_batch["ids"]), 4, dtype=torch.long)
        inputs[:, 1:] = 5
        out_a = task.decoder(m, inputs, lm=task.lm).logits
        out_b = swapped.decoder(m, inputs, lm=swapped.lm).logits
    assert not torch.allclose(out_a, out_b)  # the swapped LM is really used

    bad = _save_lm(tmp_path / "abc.pt", vocab=CharVocab(list("abc '")))
    with pytest.raises(LMCheckpointError, match=r"abc\.pt: LM vocabulary .* does not match"):
        task.swap_language_model(bad)
    deep = _task("deep", lm_a if (tmp_path / "a.pt").exists() else lm_b)
    with pytest.raises(LMCheckpointError, match="hidden size 32"):
        deep.swap_language_model(_save_lm(tmp_path / "wide.pt", hidden=48))


def test_task_decoding_is_batch_invariant(tiny_batch, tmp_path):
    task = _task("cold", _save_lm(tmp_path / "lm.pt"), max_len_ratio=0.3)
    _fit_steps(task, tiny_batch, 10)
    task.eval()
    with torch.no_grad():
        batched = task.search(tiny_batch, beam_size=3)
        for i, hyp in enumerate(batched):
            n = int(tiny_batch["feature_lens"][i])
            one = {"features": tiny_batch["features"][i : i + 1, :n],
                   "feature_lens": tiny_batch["feature_lens"][i : i + 1]}
            assert task.search(one, beam_size=3)[0].tokens == hyp.tokens


def test_recipe_mismatch_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="fusion='cold' needs model.init_args.lm_checkpoint"):
        _task("cold")
    with pytest.raises(LMCheckpointError, match="missing.ckpt: LM checkpoint not found"):
        _task("cold", str(tmp_path / "missing.ckpt"))


def test_speechlab_test_takes_search_options_from_the_command_line(tiny_corpus, tmp_path):
    """`speechlab test --ckpt_path` honours output_dir / test_lm_checkpoint / lm_weight /
    beam_size (and, with kenlm, ngram_lm / ngram_weight / ilm_weight) given on the command
    line over the checkpoint's saved values (SpeechLabCLI: the command line wins); the
    training-start init_checkpoint is saved as None."""
    from speechlab.cli import main

    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "seq2seq.yaml")
    small = ["--model.init_args.encoder.hidden_size=32", "--model.init_args.encoder.num_layers=1",
             "--model.init_args.decoder.hidden_size=32", "--model.init_args.decoder.output_dim=32",
             f"--data.init_args.train_manifest={tiny_corpus['train']}",
             f"--data.init_args.dev_manifest={tiny_corpus['dev']}",
             f"--data.init_args.test_manifest={tiny_corpus['test']}",
             "--trainer.accelerator=cpu", "--trainer.logger=false",
             "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"]
    callbacks = tmp_path / "callbacks.yaml"  # a second --config replaces the recipe's callbacks
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: pytorch_lightning.callbacks.ModelCheckpoint\n"
        f"      init_args:\n        dirpath: {tmp_path / 'checkpoints'}\n        save_last: true\n")
    main(["fit", "--config", recipe, "--config", str(callbacks), *small, "--trainer.max_epochs=1", "--trainer.max_steps=-1",
          "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=0",
          f"--model.init_args.output_dir={tmp_path / 'train_out'}"])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)["hyper_parameters"]
    assert saved["output_dir"] == str(tmp_path / "train_out") and saved["fusion"] == "none"
    assert saved["init_checkpoint"] is None
    out = tmp_path / "test_out"
    ngram = []  # KenLM character n-gram fusion + ILM, when the kenlm module is there
    if importlib.util.find_spec("kenlm") is not None:
        arpa = tmp_path / "char.arpa"
        arpa.write_text("\\data\\\nngram 1=5\nngram 2=1\n\n\\1-grams:\n-2.0\t<unk>\t0\n"
                        "0\t<s>\t-0.3\n-1.0\t</s>\t0\n-0.5\ta\t0\n-0.6\t|\t0\n\n"
                        "\\2-grams:\n-0.2\t<s> a\n\n\\end\\\n")
        ngram = [f"--model.init_args.ngram_lm={arpa}", "--model.init_args.ngram_weight=0.3",
                 "--model.init_args.ilm_weight=0.2"]
    rc = main(["test", "--config", recipe, "--config", str(callbacks), *small, "--ckpt_path",
               str(ckpt), "--trainer.limit_test_batches=1",
               f"--model.init_args.output_dir={out}", "--model.init_args.beam_size=2",
               f"--model.init_args.test_lm_checkpoint={_save_lm(tmp_path / 'lm.pt')}",
               "--model.init_args.lm_weight=0.5", *ngram])
    assert rc == 0
    assert (out / "wer.json").exists() and (out / "hyps.jsonl").exists()
    assert not (tmp_path / "train_out" / "wer.json").exists()
    # test's configuration lies beside its outputs; fit's stays in the trainer's log dir
    assert (out / "config.test.yaml").exists() and not (out / "config.yaml").exists()
    fit_config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert fit_config["model"]["init_args"]["output_dir"] == str(tmp_path / "train_out")
    if ngram:  # the command line's n-gram options reached the task
        used = yaml.safe_load((out / "config.test.yaml").read_text())["model"]["init_args"]
        assert (used["ngram_lm"], used["ngram_weight"], used["ilm_weight"]) == (str(arpa), 0.3, 0.2)


def test_speechlab_test_rebuilds_a_cold_model_whose_training_lm_file_is_gone(tiny_corpus, tmp_path,
                                                                            capsys):
    """A fused model's checkpoint holds its LM (``checkpoint["speechlab"]["lm"]``) and lists ``lm_checkpoint``
    among its embedded files: ``speechlab test --ckpt_path`` takes the LM from the checkpoint,
    so it works after the training-time LM file is gone (it failed in jsonargparse before);
    ``load_language_model`` reads that LM from the checkpoint; a missing swapped-in LM is one
    error line naming the file."""
    from speechlab.cli import main

    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "tiny" / "seq2seq_cold.yaml")
    lm_path = tmp_path / "lm_gone.pt"
    _save_lm(lm_path, seed=3, hidden=32)
    lm_state = torch.load(lm_path, weights_only=False)["state_dict"]
    data = [f"--data.init_args.test_manifest={tiny_corpus['test']}", "--trainer.accelerator=cpu",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}"]
    callbacks = tmp_path / "callbacks.yaml"
    callbacks.write_text(
        "trainer:\n  callbacks:\n    - class_path: pytorch_lightning.callbacks.ModelCheckpoint\n"
        f"      init_args:\n        dirpath: {tmp_path / 'checkpoints'}\n        save_last: true\n")
    assert main(["fit", "--config", recipe, "--config", str(callbacks), *data,
                 "--model.init_args.encoder.hidden_size=32", "--model.init_args.encoder.num_layers=1",
                 "--model.init_args.decoder.hidden_size=32", "--model.init_args.decoder.output_dim=32",
                 f"--model.init_args.lm_checkpoint={lm_path}",
                 f"--data.init_args.train_manifest={tiny_corpus['train']}",
                 f"--data.init_args.dev_manifest={tiny_corpus['dev']}", "--trainer.max_steps=1",
                 "--trainer.limit_val_batches=0",
                 f"--model.init_args.output_dir={tmp_path / 'train_out'}"]) == 0
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    lm_path.unlink()
    lm, _, _ = load_language_model(ckpt)
    assert all(torch.equal(v, lm_state[k]) for k, v in lm.state_dict().items())
    out = tmp_path / "test_out"
    assert main(["test", "--ckpt_path", str(ckpt), *data, "--trainer.limit_test_batches=1",
                 f"--model.init_args.output_dir={out}", "--model.init_args.beam_size=1"]) == 0
    assert (out / "wer.json").exists()
    capsys.readouterr()
    missing = tmp_path / "other_lm.pt"
    assert main(["test", "--ckpt_path", str(ckpt), *data, f"--model.init_args.output_dir={out}",
                 "--model.init_args.overwrite=true",
                 f"--model.init_args.test_lm_checkpoint={missing}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"speechlab test: error: {missing}: LM checkpoint not found", err


def test_location_attention_learns_a_monotonic_alignment():
    """A copy task whose answer is only in the memory (each symbol spans two frames): the
    decoder must move its attention along the input; greedy decoding then copies exactly and
    the alignment's argmax walks 0, 2, 4, …"""
    import torch.nn.functional as F

    from speechlab.data.textlm import teacher_forcing_pairs
    from speechlab.decode.beam_search import greedy_search
    from speechlab.nn.decoder import AttentionDecoder

    torch.manual_seed(0)
    vocab, dim = 8, 16
    symbols = torch.randn(vocab, dim)
    dec = AttentionDecoder(vocab, dim, AttentionDecoderConfig(
        embed_dim=8, hidden_size=32, attention_dim=16, location_channels=4, location_kernel=5,
        output_dim=32, dropout=0.0))

    def batch(n):
        lens = torch.randint(3, 8, (n,))
        targets = torch.zeros(n, 7, dtype=torch.long)
        for i in range(n):
            targets[i, : lens[i]] = torch.randint(1, vocab, (int(lens[i]),))
        memory = symbols[targets].repeat_interleave(2, dim=1) + 0.1 * torch.randn(n, 14, dim)
        memory = memory * (torch.arange(14)[None, :, None] < 2 * lens[:, None, None])
        return dec.prepare_memory(memory, 2 * lens), targets, lens

    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    for _ in range(300):
        memory, targets, lens = batch(16)
        inputs, outputs = teacher_forcing_pairs(targets, lens)
        loss = F.cross_entropy(dec(memory, inputs).logits.flatten(0, 1), outputs.flatten(),
                               ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    memory, targets, lens = batch(64)
    hyps, details = greedy_search(dec, memory, max_len_ratio=1.0, return_details=True)
    exact = sum(h.tokens == targets[i, : lens[i]].tolist() for i, h in enumerate(hyps))
    assert exact >= 60, exact
    for i in range(8):
        n = int(lens[i])
        peaks = details.alignments[i, :n].argmax(-1)
        assert (peaks // 2).tolist() == list(range(n))


def test_joint_ctc_loss_is_the_weighted_sum_of_attention_ce_and_torch_ctc(tiny_batch):
    lam = 0.3
    joint = _task(ctc_weight=lam)
    plain = _task()
    plain.load_state_dict({k: v for k, v in joint.state_dict().items()
                           if not k.startswith("ctc_head.")})
    joint.eval()
    plain.eval()
    with torch.no_grad():
        loss = joint.compute_loss(tiny_batch)
        ce = plain.compute_loss(tiny_batch)  # the same encoder and decoder, attention only
        enc, lens = joint.encoder(tiny_batch["features"], tiny_batch["feature_lens"])
        log_probs = joint.ctc_head(enc).log_softmax(-1)
        ctc = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), tiny_batch["targets"], lens,
                                           tiny_batch["target_lens"], blank=0, zero_infinity=True)
    assert torch.isfinite(ctc) and ctc > 0
    assert loss.item() == pytest.approx((1 - lam) * ce.item() + lam * ctc.item(), rel=1e-5)
    assert not any(k.startswith("ctc_head") for k in plain.state_dict())  # λ = 0: no head
    with pytest.raises(ValueError, match="ctc_weight"):
        _task(ctc_weight=1.0)


def test_joint_ctc_trains_both_heads_through_the_shared_encoder(tiny_batch):
    task = _task(ctc_weight=0.5)
    task.eval()
    with torch.no_grad():
        memory = task.encode(tiny_batch["features"], tiny_batch["feature_lens"])
        ctc_before = task.ctc_loss(memory.values, memory.lengths, tiny_batch["targets"],
                                   tiny_batch["target_lens"]).item()
    before = _eval_loss(task, tiny_batch)
    _fit_steps(task, tiny_batch, 30)
    after = _eval_loss(task, tiny_batch)
    with torch.no_grad():
        memory = task.encode(tiny_batch["features"], tiny_batch["feature_lens"])
        ctc_after = task.ctc_loss(memory.values, memory.lengths, tiny_batch["targets"],
                                  tiny_batch["target_lens"]).item()
    assert after < 0.6 * before, (before, after)
    assert ctc_after < 0.8 * ctc_before, (ctc_before, ctc_after)
    assert len(task.search(tiny_batch, beam_size=2)) == len(tiny_batch["ids"])


def test_init_checkpoint_from_a_ctc_model_loads_encoder_and_ctc_head(tiny_batch, tmp_path):
    from speechlab.tasks.ctc import CTCTask

    torch.manual_seed(1)
    ctc = CTCTask(encoder=ENC, spec_augment=False).eval()
    path = tmp_path / "ctc.ckpt"
    torch.save({"state_dict": ctc.state_dict(), "speechlab_vocab": ctc.vocab.to_dict()}, path)
    task = _task(ctc_weight=0.3, init_checkpoint=str(path)).eval()
    fresh = _task(ctc_weight=0.3)
    with torch.no_grad():
        expected, lens = ctc(tiny_batch["features"], tiny_batch["feature_lens"])  # the CTC model
        enc, lens2 = task.encoder(tiny_batch["features"], tiny_batch["feature_lens"])
        got = task.ctc_head(enc).float().log_softmax(-1)
    assert torch.equal(lens, lens2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # the decoder is not in a CTC checkpoint: it keeps its own initialization
    for k, v in task.decoder.state_dict().items():
        assert torch.equal(v, fresh.decoder.state_dict()[k]), k


@pytest.mark.parametrize("fusion", ["none", "cold", "deep"])
def test_teacher_forced_forward_equals_the_decoder_stepped_one_token_at_a_time(fusion, tmp_path):
    """The fast teacher-forced path (recurrence per step, LM / fusion / output DNN once over the
    sequence) gives the logits, alignments, gates and gradients of :meth:`step` run token by
    token, which is what beam search runs."""
    from speechlab.nn.decoder import AttentionDecoder, lm_step

    torch.manual_seed(0)
    vocab = CharVocab()
    lm = (RNNLanguageModel(len(vocab), 16, 24, num_layers=1, dropout=0.0).eval()
          if fusion != "none" else None)
    dec = AttentionDecoder(len(vocab), 20, DEC, fusion=fusion, lm_hidden_size=24).eval()
    enc = torch.randn(3, 17, 20)
    memory = dec.prepare_memory(enc, torch.tensor([17, 11, 6]))
    inputs = torch.randint(1, len(vocab), (3, 9))
    inputs[:, 0] = 0
    fast = dec(memory, inputs, lm=lm)
    state, lm_state, logits, aligns, gates = dec.init_state(memory), None, [], [], []
    for t in range(inputs.shape[1]):
        lm_logits = lm_hidden = None
        if lm is not None:
            lm_logits, lm_hidden, lm_state = lm_step(lm, inputs[:, t], lm_state)
        out, state, gate = dec.step(inputs[:, t], state, memory, lm_logits, lm_hidden)
        logits.append(out)
        aligns.append(state["alignment"])
        gates.append(gate)
    slow = torch.stack(logits, dim=1)
    torch.testing.assert_close(fast.logits, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.alignments, torch.stack(aligns, dim=1), rtol=1e-5, atol=1e-6)
    if fusion != "none":
        torch.testing.assert_close(fast.gates, torch.stack(gates, dim=1), rtol=1e-5, atol=1e-6)
    target = torch.randn_like(slow)
    g_fast = torch.autograd.grad((fast.logits * target).sum(), list(dec.parameters()),
                                 allow_unused=True, retain_graph=True)
    g_slow = torch.autograd.grad((slow * target).sum(), list(dec.parameters()), allow_unused=True)
    for (name, _), a, b in zip(dec.named_parameters(), g_fast, g_slow, strict=True):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_location_features_equal_the_convolution_then_the_projection():
    from speechlab.nn.attention import Attention

    torch.manual_seed(0)
    att = Attention(20, 16, 32, "location", location_channels=6, location_kernel=9)
    align = torch.rand(3, 25, requires_grad=True)
    ref = att.location_proj(att.location_conv(align[:, None, :]).transpose(1, 2))  # (B, T, A)
    got = att.location_features(align)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(att.location_features(align, att.location_filters()), ref,
                               rtol=1e-5, atol=1e-6)
    w = torch.randn_like(ref)
    params = [align, att.location_conv.weight, att.location_proj.weight]
    g_ref = torch.autograd.grad((ref * w).sum(), params)
    g_got = torch.autograd.grad((got * w).sum(), params)
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _recurrence_case(device="cpu", num_layers=2):
    from speechlab.nn.decoder import AttentionDecoder

    torch.manual_seed(0)
    config = AttentionDecoderConfig(embed_dim=12, hidden_size=16, num_layers=num_layers,
                                    attention_dim=10, location_channels=4, location_kernel=5,
                                    output_dim=16, dropout=0.0, cuda_graphs=True)
    dec = AttentionDecoder(29, 20, config).to(device)
    enc = torch.randn(3, 17, 20, device=device, requires_grad=True)
    memory = dec.prepare_memory(enc, torch.tensor([17, 11, 6]))
    embedded = torch.randn(3, 9, 12, device=device, requires_grad=True)
    return dec, enc, memory, embedded


def test_padded_recurrence_inputs_give_the_same_recurrence_on_the_real_rows_tokens_and_frames():
    """What the CUDA graphs run: the recurrence over the inputs padded to bucketed batch, frame
    and token counts, cut back, equals the recurrence over the inputs as they are (outputs and
    gradients), so the graphs may pad."""
    from speechlab.nn.decoder import Memory, frame_mask, pad_recurrence_inputs

    dec, enc, memory, embedded = _recurrence_case()
    ref = dec.recurrence(embedded, memory)
    emb_p, values_p, keys_p, lengths_p = pad_recurrence_inputs(embedded, memory, (4, 8, 8))
    assert emb_p.shape == (4, 16, 12) and values_p.shape == (4, 24, 20) and lengths_p.tolist() == [17, 11, 6, 1]
    padded = Memory(values_p, keys_p, frame_mask(lengths_p, 24), lengths_p)
    got = [o[:3, :9] for o in dec.recurrence(emb_p, padded)]
    got[2] = got[2][..., :17]
    assert torch.isfinite(dec.recurrence(emb_p, padded)[2]).all()  # the padded row too
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    w = [torch.randn_like(r) for r in ref]
    params = [embedded, enc, *dec.cells.parameters(), *dec.attention.parameters()]
    g_ref = torch.autograd.grad(sum((r * x).sum() for r, x in zip(ref, w, strict=True)), params,
                                retain_graph=True)
    g_got = torch.autograd.grad(sum((r * x).sum() for r, x in zip(got, w, strict=True)), params)
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphed_teacher_forcing_equals_the_eager_recurrence_and_follows_the_weights():
    """config.cuda_graphs: the graphed forward and backward (captured on the first batch of a
    shape, replayed on the next) give the eager recurrence's outputs and gradients, also after
    an optimizer step has changed the weights; eval and no-grad calls run eagerly."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dec, enc, memory, embedded = _recurrence_case("cuda")
    dec.train()
    opt = torch.optim.SGD(dec.parameters(), lr=0.1)
    params = [embedded, enc, *dec.cells.parameters(), *dec.attention.parameters()]
    for _ in range(3):
        # graphed first: a capture must not run while an eager graph over the same parameters
        # is alive (its gradient accumulators belong to the default stream; CUDA refuses)
        got = dec.graphed_recurrence(embedded, memory)
        ref = dec.recurrence(embedded, memory)
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        w = [torch.randn_like(r) for r in ref]
        g_ref = torch.autograd.grad(sum((r * x).sum() for r, x in zip(ref, w, strict=True)), params,
                                    retain_graph=True)
        g_got = torch.autograd.grad(sum((r * x).sum() for r, x in zip(got, w, strict=True)), params,
                                    retain_graph=True)
        for a, b in zip(g_got, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
        sum((r * x).sum() for r, x in zip(ref, w, strict=True)).backward()
        opt.step()
        opt.zero_grad()
        memory = dec.prepare_memory(enc, torch.tensor([17, 11, 6], device="cuda"))
    assert len(dec.__dict__["_graph_cache"].graphs) == 1
    inputs = torch.randint(1, 29, (3, 9), device="cuda")
    dec.eval()
    with torch.no_grad():
        dec(memory, inputs)  # eval: eager, no new graph
    assert len(dec.__dict__["_graph_cache"].graphs) == 1
    import copy
    copy.deepcopy(dec)  # graphs are not copied
