"""TextDataModule (sources, normalization, id layout, bucketing, errors with file:line) and
RNNLMTask (perplexity against a hand computation, training lowers it, the checkpoint loads as
the seq2seq task's LM and a vocabulary mismatch is refused)."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from speechlab.data.text import CharVocab
from speechlab.data.textlm import (
    EOS,
    IGNORE_INDEX,
    TextDataError,
    TextDataModule,
    bucket_batches,
    collate_lm,
    encode_sentences,
    read_text_lines,
    teacher_forcing_pairs,
)
from speechlab.tasks.rnnlm import LMCheckpointError, Perplexity, RNNLMTask, load_language_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_sources_are_normalized_with_file_and_line(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("Turn ON the Kitchen-Lights!\n\n   \n12 %%\nDon\u2019t stop\n")
    man = tmp_path / "b.jsonl"
    man.write_text(json.dumps({"audio_filepath": "x.wav", "duration": 1, "text": "Hello, World"}) + "\n")
    lines = list(read_text_lines(txt)) + list(read_text_lines(man))
    assert [(line.line, line.text) for line in lines] == [
        (1, "Turn ON the Kitchen-Lights!"), (4, "12 %%"), (5, "Don\u2019t stop"), (1, "Hello, World")]
    ids, texts, report = encode_sentences(lines, CharVocab())
    assert texts == ["turn on the kitchen lights", "don't stop", "hello world"]
    assert report.empty == 1 and report.kept == 3
    assert CharVocab().decode(ids[1]) == "don't stop"


def test_prose_is_split_into_sentences(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("It was late. The owl\nhooted! Was it?\n\nNew paragraph here.\n")
    got = [(s.line, s.text) for s in read_text_lines(book, segmentation="sentence")]
    assert got == [(1, "It was late."), (1, "The owl hooted!"), (1, "Was it?"),
                   (4, "New paragraph here.")]


def test_errors_name_file_and_line(tmp_path):
    bad_json = tmp_path / "m.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(TextDataError, match=r"m\.jsonl:2: malformed JSON"):
        list(read_text_lines(bad_json))
    txt = tmp_path / "t.txt"
    txt.write_text("abc\nabz\n")
    lines = list(read_text_lines(txt))
    with pytest.raises(TextDataError, match=r"t\.txt:2: characters \['z'\]"):
        encode_sentences(lines, CharVocab(list("abc ")))
    _, texts, report = encode_sentences(lines, CharVocab(list("abc ")), on_oov="skip")
    assert texts == ["abc"] and report.oov == 1
    with pytest.raises(TextDataError, match="not found"):
        list(read_text_lines(tmp_path / "missing.txt"))


def test_id_layout_eos_is_blank_zero():
    batch = collate_lm([[3, 4, 5], [7]], ["cde", "g"])
    assert batch["inputs"].tolist() == [[EOS, 3, 4, 5], [EOS, 7, EOS, EOS]]
    assert batch["targets"].tolist() == [[3, 4, 5, EOS], [7, EOS, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["lengths"].tolist() == [4, 2]
    # the speech targets (padded with 0) give the same layout for the seq2seq decoder
    inputs, outputs = teacher_forcing_pairs(torch.tensor([[3, 4, 5], [7, 0, 0]]), torch.tensor([3, 1]))
    assert inputs.tolist() == batch["inputs"].tolist()
    assert outputs.tolist() == batch["targets"].tolist()


def test_bucket_batches_cover_everything_once_within_budget():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 60, (500,), generator=g).tolist() + [200]
    batches = bucket_batches(lengths, max_tokens=256, shuffle=True, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 256
    assert batches == bucket_batches(lengths, max_tokens=256, shuffle=True, seed=3)
    assert batches != bucket_batches(lengths, max_tokens=256, shuffle=True, seed=4)
    # similar lengths end up together: padding waste is small compared to random batching
    waste = sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)
    assert waste < 0.1 * sum(lengths)


def test_perplexity_metric_is_exp_of_summed_nll():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    targets[1, 3:] = IGNORE_INDEX
    metric = Perplexity()
    for b in range(2):
        nll = F.cross_entropy(logits[b], targets[b], ignore_index=IGNORE_INDEX, reduction="sum")
        metric.update(nll, int((targets[b] != IGNORE_INDEX).sum()))
    logp = logits.log_softmax(-1)
    total, n = 0.0, 0
    for b in range(2):
        for t in range(5):
            if targets[b, t] != IGNORE_INDEX:
                total -= float(logp[b, t, targets[b, t]])
                n += 1
    assert float(metric.compute()) == pytest.approx(math.exp(total / n), rel=1e-5)


def test_rnnlm_trains_and_its_checkpoint_loads_for_fusion(tmp_path):
    text = tmp_path / "home.txt"
    sentences = [f"turn {w} the {r} lights" for w in ("on", "off") for r in ("kitchen", "hall", "bedroom")]
    text.write_text("\n".join(sentences * 20) + "\n")
    dm = TextDataModule(str(text), str(text), max_tokens=512)
    torch.manual_seed(0)
    task = RNNLMTask(embed_dim=16, hidden_size=48, num_layers=1, dropout=0.0, lr=1e-2,
                     warmup_steps=5, weight_decay=0.0)
    trainer = pl.Trainer(max_steps=60, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, num_sanity_val_steps=0)
    before = trainer.validate(task, datamodule=dm, verbose=False)[0]["val/ppl"]
    trainer.fit(task, datamodule=dm)
    after = trainer.validate(task, datamodule=dm, verbose=False)[0]["val/ppl"]
    assert before > 20 and after < 3, (before, after)  # a 29-way uniform guess is 29

    ckpt = tmp_path / "lm.ckpt"
    trainer.save_checkpoint(ckpt)
    lm, config, vocab = load_language_model(ckpt, CharVocab())
    assert vocab == CharVocab() and config["hidden_size"] == 48 and not lm.training
    for name, p in task.lm.state_dict().items():
        assert torch.equal(p, lm.state_dict()[name])
    with pytest.raises(LMCheckpointError, match=r"lm\.ckpt: LM vocabulary .* does not match"):
        load_language_model(ckpt, CharVocab(list("abc '")))
    junk = tmp_path / "junk.ckpt"
    torch.save({"state_dict": {}}, junk)
    with pytest.raises(LMCheckpointError, match=r"junk\.ckpt: not an RNNLMTask checkpoint"):
        load_language_model(junk)


def test_dev_split_is_held_out_when_not_given(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(f"sentence {chr(97 + i % 26)}" for i in range(100)) + "\n")
    dm = TextDataModule(str(text), dev_fraction=0.1, seed=1)
    dm.setup("fit")
    train, dev = dm.sentences("train")[1], dm.sentences("dev")[1]
    assert len(train) == 90 and len(dev) == 10
    batches = list(dm.train_dataloader())
    assert sum(len(b["texts"]) for b in batches) == 90
