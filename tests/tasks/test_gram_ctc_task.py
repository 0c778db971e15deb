"""GramCTCTask: the tiny recipe's model overfits a handful of utterances (loss falls, CER < 5%);
unigram Gram-CTC is the CTC baseline; joint loss and its schedule; strides; checkpoints keep
their GramSet and a mismatching GramSet file is an error naming it; grams select/refine and the
decode tool on the trained model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml

from speechlab.cli import main
from speechlab.data.grams import GramSet
from speechlab.data.speech import SpeechDataModule
from speechlab.data.text import CharVocab
from speechlab.functional.gram_decode import gram_greedy_ids
from speechlab.nn.encoders import SpeechEncoderConfig
from speechlab.score import edit_counts
from speechlab.tasks.gram_ctc import GramCTCTask, ctc_weight_at

REPO = Path(__file__).resolve().parents[2]
VOCAB = "abcdefghijklmnopqrstuvwxyz '"


def recipe_model_args(name: str = "gram_ctc") -> dict:
    """The ``model.init_args`` of ``recipes/tiny/<name>.yaml``."""
    return yaml.safe_load((REPO / "recipes" / "tiny" / f"{name}.yaml").read_text())["model"]["init_args"]


def train_recipe_model(tiny_corpus, tmp: Path, steps: int) -> dict:
    """The tiny recipe's Gram-CTC model (its encoder, no dropout/SpecAugment) trained for
    ``steps`` on the 3 shortest utterances of the test corpus, on one torch thread."""
    torch.manual_seed(0)
    rows = [json.loads(line) for line in tiny_corpus["all"].read_text().splitlines() if line]
    rows = sorted(rows, key=lambda r: r["duration"])[:3]
    manifest = tiny_corpus["all"].parent / f"gram_short3_{steps}.jsonl"  # beside the audio
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = recipe_model_args()
    enc = {**args["encoder"], "dropout": 0.0}
    task = GramCTCTask(vocab=args["vocab"], grams=None, default_max_n=args["default_max_n"],
                       default_top_k=args["default_top_k"], encoder=SpeechEncoderConfig(**enc),
                       spec_augment=False, lr=5e-3, warmup_steps=20, weight_decay=0.0,
                       total_steps=steps, output_dir=str(tmp / "out"))
    dm = SpeechDataModule(str(manifest), str(manifest), max_duration=100, num_workers=0,
                          num_buckets=2)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, check_val_every_n_epoch=10_000,
                         gradient_clip_val=2.0, use_distributed_sampler=False,
                         num_sanity_val_steps=0, enable_model_summary=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer.fit(task, datamodule=dm)
    finally:
        torch.set_num_threads(threads)
    ckpt = tmp / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    fresh = GramCTCTask(grams=None, encoder=task.encoder.config, spec_augment=False)
    fresh.set_grams(task.grams)
    task.eval()
    with torch.no_grad():
        loss_before = fresh.eval().compute_loss(batch).item()
        loss_after = task.compute_loss(batch).item()
    return {"task": task, "batch": batch, "manifest": manifest, "ckpt": ckpt, "tmp": tmp,
            "loss_before": loss_before, "loss_after": loss_after}


@pytest.fixture(scope="module")
def overfit(tiny_corpus, tmp_path_factory):
    """120 steps of the tiny recipe's model (the fast tests' model)."""
    return train_recipe_model(tiny_corpus, tmp_path_factory.mktemp("gram_quick"), 120)


def test_tiny_recipe_model_learns(overfit):
    """Fast check: within 120 steps the loss falls well below its start and the model emits."""
    task = overfit["task"]
    assert task.grams is not None and task.grams.max_n == 2 and len(task.grams) == 1 + 28 + 50
    assert overfit["loss_after"] < 0.5 * overfit["loss_before"], overfit


@pytest.mark.slow
def test_tiny_recipe_overfits_a_handful_of_utterances(tiny_corpus, tmp_path):
    """The tiny recipe's Gram-CTC model overfits 3 utterances: loss falls, greedy CER < 5%, and
    the greedy paths use grams longer than one character."""
    run = train_recipe_model(tiny_corpus, tmp_path, 700)
    task, batch = run["task"], run["batch"]
    assert run["loss_after"] < 0.1 * run["loss_before"], run
    with torch.no_grad():
        hyps = task.transcribe(batch)
        log_probs, lengths = task(batch["features"], batch["feature_lens"])
    cer = edit_counts(batch["texts"], hyps, unit="char").rate
    assert cer < 0.05, list(zip(batch["texts"], hyps, strict=True))
    emitted = [i for ids in gram_greedy_ids(log_probs, lengths) for i in ids]
    assert any(i > task.grams.num_chars for i in emitted)


def test_checkpoint_keeps_its_gramset(overfit, tmp_path):
    task, batch = overfit["task"], overfit["batch"]
    loaded = GramCTCTask.load(overfit["ckpt"])
    assert loaded.grams == task.grams
    with torch.no_grad():
        a, _ = task.eval()(batch["features"], batch["feature_lens"])
        b, _ = loaded(batch["features"], batch["feature_lens"])
    torch.testing.assert_close(a, b)
    # a GramSet file that is not the checkpoint's: an error naming the file
    other = tmp_path / "other.json"
    GramSet.from_ngrams(task.vocab, ["th", "he"]).save(other)
    model = GramCTCTask(grams=str(other), encoder=task.encoder.config)
    ckpt = torch.load(overfit["ckpt"], map_location="cpu", weights_only=False)
    with pytest.raises(ValueError, match=r"other\.json: this GramSet \(31 outputs\) does not match"):
        model.on_load_checkpoint(ckpt)


def test_gramset_file_with_other_characters(tmp_path):
    path = tmp_path / "abc.json"
    GramSet(CharVocab("abc"), ["a", "b", "c", "ab"]).save(path)
    with pytest.raises(ValueError, match=r"abc\.json: the GramSet's characters 'abc'"):
        GramCTCTask(vocab=VOCAB, grams=str(path))


def test_unigram_gram_ctc_is_ctc(tmp_path):
    """With unigrams only, the Gram-CTC head's loss is torch's CTC loss of the same outputs."""
    torch.manual_seed(0)
    path = tmp_path / "uni.json"
    GramSet.unigrams(CharVocab(list(VOCAB))).save(path)
    task = GramCTCTask(grams=str(path), spec_augment=False,
                       encoder=SpeechEncoderConfig(hidden_size=32, dropout=0.0)).eval()
    feats, lens = torch.randn(3, 120, 80), torch.tensor([120, 100, 64])
    targets = torch.randint(1, 29, (3, 9))
    tlens = torch.tensor([9, 7, 5])
    batch = {"features": feats, "feature_lens": lens, "targets": targets, "target_lens": tlens,
             "ids": ["a", "b", "c"]}
    with torch.no_grad():
        lp, out_lens = task(feats, lens)
        ref = F.ctc_loss(lp.transpose(0, 1), targets, out_lens, tlens, zero_infinity=True)
        assert task.compute_loss(batch).item() == pytest.approx(ref.item(), rel=1e-5)


def test_joint_loss_and_schedule(tmp_path):
    assert ctc_weight_at(0, 0.5, "constant", 0) == 0.5
    assert ctc_weight_at(50, 0.5, "linear", 100) == pytest.approx(0.25)
    assert ctc_weight_at(150, 0.5, "linear", 100) == 0.0
    assert [ctc_weight_at(s, 0.3, "step", 10) for s in (9, 10)] == [0.3, 0.0]
    with pytest.raises(ValueError, match="ctc_weight_schedule"):
        ctc_weight_at(0, 0.3, "cosine", 10)
    torch.manual_seed(0)
    path = tmp_path / "g.json"
    GramSet.from_ngrams(CharVocab(list(VOCAB)), ["th", "he", "e "]).save(path)
    enc = SpeechEncoderConfig(hidden_size=32, dropout=0.0)
    joint = GramCTCTask(grams=str(path), ctc_weight=0.5, encoder=enc, spec_augment=False).eval()
    plain = GramCTCTask(grams=str(path), ctc_weight=0.0, encoder=enc, spec_augment=False).eval()
    assert plain.head is None and joint.head is not None
    plain.load_state_dict({k: v for k, v in joint.state_dict().items() if not k.startswith("head.")})
    feats, lens = torch.randn(2, 90, 80), torch.tensor([90, 70])
    batch = {"features": feats, "feature_lens": lens, "targets": torch.randint(1, 29, (2, 6)),
             "target_lens": torch.tensor([6, 4]), "ids": ["a", "b"]}
    with torch.no_grad():
        enc_out, enc_lens = joint.encode(feats, lens)
        ctc = joint.ctc_loss(enc_out, enc_lens, batch["targets"], batch["target_lens"])
        assert joint.compute_loss(batch).item() == pytest.approx(
            plain.compute_loss(batch).item() + 0.5 * ctc.item(), rel=1e-5)


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_stride_sets_frames(stride, tmp_path):
    path = tmp_path / "g.json"
    GramSet.from_ngrams(CharVocab(list(VOCAB)), ["th"]).save(path)
    task = GramCTCTask(grams=str(path), encoder=SpeechEncoderConfig(stride=stride, hidden_size=16))
    assert task.frame_rate == 100 / stride
    lp, lens = task.eval()(torch.randn(2, 100, 80), torch.tensor([100, 37]))
    assert lp.shape == (2, -(-100 // stride), 30)
    assert lens.tolist() == [-(-100 // stride), -(-37 // stride)]


def test_grams_select_cli(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "g.json"
    assert main(["grams", "select", "--manifest", str(tiny_corpus["train"]), "--max-n", "3",
                 "--top-k", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    texts = [json.loads(line)["text"] for line in tiny_corpus["train"].read_text().splitlines()]
    counts = Counter(t[i : i + n] for t in texts for n in (2, 3) for i in range(len(t) - n + 1))
    top = [g for g, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:12]]
    gs = GramSet.load(out)
    assert list(gs.grams) == list(VOCAB) + top
    assert f"'{top[0]}':{counts[top[0]]}" in printed
    assert "fewest frames a path needs" in printed


def test_grams_refine_keeps_the_emitted_grams(overfit, capsys):
    task, batch = overfit["task"], overfit["batch"]
    out = overfit["tmp"] / "refined.json"
    assert main(["grams", "refine", "--checkpoint", str(overfit["ckpt"]), "--manifest",
                 str(overfit["manifest"]), "--keep", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # independent count: greedy gram ids of the batch (the same six utterances)
    with torch.no_grad():
        lp, lens = task.eval()(batch["features"], batch["feature_lens"])
    used = Counter(task.grams[i] for ids in gram_greedy_ids(lp, lens) for i in ids)
    longer = sorted(((g, c) for g, c in used.items() if len(g) > 1), key=lambda kv: (-kv[1], kv[0]))
    refined = GramSet.load(out)
    assert list(refined.grams) == list(VOCAB) + [g for g, _ in longer[:5]]
    emitted = sum(used.values())
    assert f"emitted {emitted} tokens" in printed
    if longer:
        assert f"{longer[0][0]!r}:{longer[0][1]}" in printed


def test_decode_cli_greedy_and_beam(overfit, tmp_path, capsys):
    """``speechlab decode``: greedy hypotheses are the task's own transcripts; the reported
    rates are speechlab.score's on them; beam search (no LM) is scored the same way."""
    task, batch = overfit["task"], overfit["batch"]
    with torch.no_grad():
        expected = dict(zip(batch["ids"], task.eval().transcribe(batch), strict=True))
    for method in ("greedy", "beam"):
        res, hyp = tmp_path / f"{method}.json", tmp_path / f"{method}.jsonl"
        assert main(["decode", "--checkpoint", str(overfit["ckpt"]), "--manifest",
                     str(overfit["manifest"]), "--method", method, "--json", str(res),
                     "--out", str(hyp)]) == 0
        row = json.loads(res.read_text())["results"][0]
        rows = [json.loads(line) for line in hyp.read_text().splitlines()]
        if method == "greedy":
            assert {r["id"]: r["hyp"] for r in rows} == expected
        cer = edit_counts([r["ref"] for r in rows], [r["hyp"] for r in rows], unit="char").rate
        assert row["cer"] == pytest.approx(cer)
        assert row["frames_per_second"] == pytest.approx(25, abs=1.5)
    assert "frames/s" in capsys.readouterr().out


def test_min_frames_hand_computed():
    """Fewest frames a path needs: a shortest gram segmentation plus a blank between two equal
    consecutive grams (CTC: characters + repeats)."""
    from speechlab.data.grams import min_frames, segment_greedy

    grams = GramSet(CharVocab("ab"), ["a", "b", "ab"])
    assert min_frames("aab", grams) == 2  # a | ab
    assert min_frames("abab", grams) == 3  # ab _ ab, or a b ab
    assert min_frames("aab", GramSet.unigrams(CharVocab("ab"))) == 4  # a _ a b
    assert min_frames("", grams) == 0
    assert segment_greedy("abab", grams) == ["ab", "ab"]


def test_speechlab_test_decodes_with_the_beam_search(overfit, tmp_path):
    """With ``decoding.method: beam`` the task's test loop writes the prefix beam search's
    transcripts (and validation stays greedy)."""
    from speechlab.decode.prefix_beam import GramDecoding, PrefixBeamSearch

    task = GramCTCTask.load(overfit["ckpt"])
    task.decoding = GramDecoding(method="beam", beam_size=4)
    task.hparams.output_dir = str(tmp_path)
    dm = SpeechDataModule(test_manifest=str(overfit["manifest"]), num_workers=0, dither=0.0,
                          output_frame_rate=None)
    pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
               enable_model_summary=False).test(task, datamodule=dm)
    rows = {r["id"]: r["hyp"] for r in map(json.loads, (tmp_path / "hyps.jsonl").read_text().splitlines())}
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        lp, lens = task.eval()(batch["features"], batch["feature_lens"])
    beam = PrefixBeamSearch.from_gramset(task.grams, beam_size=4, token_threshold=12.0,
                                         beam_threshold=30.0)
    assert rows == dict(zip(batch["ids"], beam.decode_batch(lp, lens), strict=True))
    assert task._use_beam() is False  # attached to a trainer that is not testing: greedy


def test_the_batched_search_decodes_the_test_set_as_the_cpu_search_does(overfit, tmp_path):
    """``decoding.search: batched`` (the default on a GPU) writes the same transcripts as the C++
    search (``search: cpu``, the default on the CPU) for a trained model."""
    from speechlab.decode import uses_batched_search
    from speechlab.decode.batched_prefix_beam import BatchedPrefixBeamSearch
    from speechlab.decode.prefix_beam import GramDecoding, PrefixBeamSearch

    assert not uses_batched_search(GramDecoding(), "cpu")
    assert uses_batched_search(GramDecoding(), "cuda")
    assert not uses_batched_search(GramDecoding(search="cpu"), "cuda")
    assert uses_batched_search(GramDecoding(lm="word.arpa"), "cuda")  # a word LM too
    assert uses_batched_search(GramDecoding(lm="word.arpa", search="batched"), "cuda")
    assert uses_batched_search(GramDecoding(lm="char.arpa", lm_unit="char"), "cuda")
    hyps = {}
    for search in ("cpu", "batched"):
        task = GramCTCTask.load(overfit["ckpt"])
        task.decoding = GramDecoding(method="beam", beam_size=4, search=search)
        task.hparams.output_dir = str(tmp_path / search)
        dm = SpeechDataModule(test_manifest=str(overfit["manifest"]), num_workers=0,
                              output_frame_rate=None)
        pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                   enable_model_summary=False).test(task, datamodule=dm)
        expected = BatchedPrefixBeamSearch if search == "batched" else PrefixBeamSearch
        assert isinstance(task.beam_search("cpu"), expected)
        hyps[search] = (tmp_path / search / "hyps.jsonl").read_text()
    assert hyps["cpu"] == hyps["batched"] and '"hyp": ""' not in hyps["cpu"]
