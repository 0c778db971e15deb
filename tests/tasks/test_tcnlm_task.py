"""TopicLMTask end to end on the embedded corpus: training lowers perplexity (TCNLM and the
LSTM baseline), test writes results, checkpoints rebuild the model, the tcnlm tools run."""

import json

import pytest
import pytorch_lightning as pl
import torch

from speechlab.cli import main
from speechlab.data.corpus import DocumentDataModule, doc_word_sparse
from speechlab.tasks.topic_lm import (
    TopicLMTask,
    count_parameters,
    lstm_hidden_for_params,
    parse_topic_mixture,
    sample_sentences,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = dict(embed_dim=24, hidden_size=32, factor_size=16, dropout=0.0, topic_hidden=32, lr=5e-3,
             warmup_steps=10)


def _trainer(steps: int, tmp_path, **kw) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=1000,
                      gradient_clip_val=1.0, default_root_dir=tmp_path, **kw)


def _perplexity(task: TopicLMTask, dm: DocumentDataModule) -> float:
    task.eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for batch in dm.val_dataloader():
            out = task.compute(batch)
            nll, n = nll + out["lm_nll"].item(), n + out["tokens"].item()
    return float(torch.exp(torch.tensor(nll / n)))


@pytest.fixture(scope="module")
def dm():
    d = DocumentDataModule(embedded_documents=120, batch_size=32)
    d.setup()
    return d


@pytest.mark.parametrize("lm_type", ["tcnlm", "lstm"])
def test_training_lowers_perplexity(lm_type, dm, tmp_path):
    torch.manual_seed(0)
    task = TopicLMTask(lm_type=lm_type, num_topics=4, total_steps=120, output_dir=str(tmp_path), **SMALL)
    task.set_vocabularies(dm.lm_vocab, dm.topic_vocab)
    before = _perplexity(task, dm)
    assert before > 0.8 * len(dm.lm_vocab)  # untrained: near uniform
    task.train()
    trainer = _trainer(120, tmp_path, enable_checkpointing=True)
    trainer.fit(task, datamodule=dm)
    after = _perplexity(task, dm)
    assert after < 0.25 * before, (before, after)

    trainer.test(task, datamodule=dm, verbose=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["lm_type"] == lm_type and results["perplexity"] > 1
    if lm_type == "tcnlm":
        assert len(results["topics"]) == 4 and len(results["topics"][0]) == 10
        assert len(results["npmi"]) == 4 and -1 <= results["npmi_mean"] <= 1
    else:
        assert "topics" not in results

    # the checkpoint rebuilds the model (sizes and vocabularies saved) with the same outputs
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = TopicLMTask.load_from_checkpoint(ckpt, map_location="cpu")
    assert loaded.lm_vocab == dm.lm_vocab
    batch = next(iter(dm.val_dataloader()))
    task.eval()
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.compute(batch)["lm_nll"], task.compute(batch)["lm_nll"])


def test_label_topics_feed_the_documents_label_to_the_tc_lstm(dm, tmp_path, monkeypatch, capsys):
    """topic_source: label — no topic model; num_topics from the data's labels (the embedded
    corpus' 5 topic pools); the TC-LSTM gets each sentence's document label one-hot (uniform
    for -1); training lowers perplexity; results.json names the labels (no topics, no NPMI);
    the checkpoint keeps the labels and gives the same outputs."""
    from speechlab.tasks.topic_lm import label_topic_mixture

    mix = label_topic_mixture(torch.tensor([2, -1, 0]), 4)
    assert mix.tolist() == [[0, 0, 1, 0], [0.25] * 4, [1, 0, 0, 0]]
    torch.manual_seed(0)
    task = TopicLMTask(topic_source="label", num_topics=50, total_steps=120, output_dir=str(tmp_path), **SMALL)
    task.set_labels(dm.label_names)
    task.set_vocabularies(dm.lm_vocab, dm.topic_vocab)
    before = _perplexity(task, dm)
    task.train()
    trainer = _trainer(120, tmp_path, enable_checkpointing=True)
    seen = []
    forward = type(task).compute

    def spy(self, batch, state=None):
        seen.append(batch["label"].clone())
        return forward(self, batch, state)
    monkeypatch.setattr(type(task), "compute", spy)
    got = []
    trainer.fit(task, datamodule=dm)
    monkeypatch.setattr(type(task), "compute", forward)
    assert task.topic_model is None and task.hparams.num_topics == 5
    assert task.label_names == dm.label_names == ["computers", "cooking", "medicine", "space", "sport"]
    assert all(((lab >= 0) & (lab < 5)).all() for lab in seen)  # embedded documents all have one
    # the topics the LM gets are the label one-hots
    batch = next(iter(dm.val_dataloader()))
    real_lm_forward = task.lm.forward

    def record(tokens, topics, *a, **kw):
        got.append(topics)
        return real_lm_forward(tokens, topics, *a, **kw)
    monkeypatch.setattr(task.lm, "forward", record)
    task.eval()
    with torch.no_grad():
        task.compute(batch)
    torch.testing.assert_close(got[0], torch.nn.functional.one_hot(batch["label"], 5).float())
    monkeypatch.setattr(task.lm, "forward", real_lm_forward)
    assert before > 0.8 * len(dm.lm_vocab) and _perplexity(task, dm) < 0.3 * before
    trainer.test(task, datamodule=dm, verbose=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["topic_source"] == "label" and results["labels"] == dm.label_names
    assert "npmi" not in results and "topics" not in results
    ckpt = tmp_path / "label.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = TopicLMTask.load_from_checkpoint(ckpt, map_location="cpu")
    assert loaded.label_names == dm.label_names and loaded.topic_model is None
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.compute(batch)["lm_nll"], task.compute(batch)["lm_nll"])
    # the tools: generate names the label; topics and coherence say there are no topic words
    capsys.readouterr()
    assert main(["tcnlm", "generate", "--checkpoint", str(ckpt), "--topic", "3", "--num", "1"]) == 0
    assert "topic 3: 1.00*[space]" in capsys.readouterr().out
    assert main(["tcnlm", "topics", "--checkpoint", str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert "topics are its documents' labels" in err and len(err.strip().splitlines()) == 1
    assert main(["tcnlm", "coherence", "--checkpoint", str(ckpt)]) == 2
    assert "a topic_source: label model's topics are its labels" in capsys.readouterr().err


def test_label_topics_bad_settings():
    for bad in (dict(lm_type="lstm"), dict(topic_init="lda"), dict(topic_pretrain_steps=5),
                dict(topic_word_lr_scale=0.1)):
        with pytest.raises(ValueError, match="topic_source: label"):
            TopicLMTask(topic_source="label", **bad)
    with pytest.raises(ValueError, match="topic_source must be"):
        TopicLMTask(topic_source="labels")
    task = TopicLMTask(topic_source="label", **SMALL)
    with pytest.raises(ValueError, match="needs labelled training documents"):
        task.set_labels([])
    task.set_labels(["a", "b"])
    task.build(50, 20)
    with pytest.raises(ValueError, match="data/model mismatch"):
        task.set_labels(["a", "b", "c"])


@pytest.fixture(scope="module")
def tcnlm_checkpoint(dm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tcnlm_ckpt")
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: set up before the per-test one-thread fixture
    try:
        task = TopicLMTask(num_topics=3, total_steps=30, **SMALL)
        trainer = _trainer(30, tmp, enable_checkpointing=False)
        trainer.fit(task, datamodule=dm)
        trainer.save_checkpoint(tmp / "tcnlm.ckpt")
    finally:
        torch.set_num_threads(n)
    return tmp / "tcnlm.ckpt"


def test_generate_topics_and_coherence_tools(tcnlm_checkpoint, tmp_path, capsys):
    out = tmp_path / "gen.json"
    assert main(["tcnlm", "generate", "--checkpoint", str(tcnlm_checkpoint), "--topic", "all",
                 "--num", "2", "--max-len", "6", "--out", str(out)]) == 0
    samples = json.loads(out.read_text())
    assert sorted(samples) == ["0", "1", "2"] and all(len(v) == 2 for v in samples.values())
    assert all(len(s.split()) <= 6 for v in samples.values() for s in v)
    assert main(["tcnlm", "generate", "--checkpoint", str(tcnlm_checkpoint), "--topic", "0:0.5,2:0.5",
                 "--num", "1"]) == 0
    assert main(["tcnlm", "topics", "--checkpoint", str(tcnlm_checkpoint), "--top-k", "4"]) == 0
    printed = capsys.readouterr().out
    assert "topic   2:" in printed and "0.50*[" in printed
    report_path = tmp_path / "coh.json"
    assert main(["tcnlm", "coherence", "--checkpoint", str(tcnlm_checkpoint), "--lda", "--lda-iter", "3",
                 "--top-k", "5", "--out", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert len(report["tcnlm"]["npmi"]) == 3 and len(report["lda"]["topics"]) == 3
    assert "NPMI" in capsys.readouterr().out


def test_generate_rejects_bad_topics(tcnlm_checkpoint, capsys):
    assert main(["tcnlm", "generate", "--checkpoint", str(tcnlm_checkpoint), "--topic", "7"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["tcnlm", "generate", "--checkpoint", str(tcnlm_checkpoint)]) == 2
    with pytest.raises(ValueError, match="K:W"):
        parse_topic_mixture("a:b", 3)
    torch.testing.assert_close(parse_topic_mixture("0:1,2:3", 3), torch.tensor([0.25, 0.0, 0.75]))


def test_sampling_is_seeded_and_stops_at_end_of_sentence(tcnlm_checkpoint):
    task = TopicLMTask.load_from_checkpoint(tcnlm_checkpoint, map_location="cpu")
    t = parse_topic_mixture("1", 3)
    a = sample_sentences(task, t, num=3, max_len=8, seed=5)
    assert a == sample_sentences(task, t, num=3, max_len=8, seed=5)
    assert all("</s>" not in s and "<s>" not in s and "<pad>" not in s for s in a)
    with pytest.raises(ValueError, match="topic"):
        sample_sentences(task, None)


def test_equal_parameter_lstm_matches_the_tcnlm(dm):
    tc = TopicLMTask(num_topics=5, **SMALL)
    tc.set_vocabularies(dm.lm_vocab, dm.topic_vocab)
    eq = TopicLMTask(lm_type="lstm", match_params=True, num_topics=5, **SMALL)
    eq.set_vocabularies(dm.lm_vocab, dm.topic_vocab)
    size = TopicLMTask(lm_type="lstm", **SMALL)
    size.set_vocabularies(dm.lm_vocab, dm.topic_vocab)
    n_tc, n_eq = count_parameters(tc), count_parameters(eq)
    assert size.hparams.lstm_hidden_size == SMALL["hidden_size"]
    assert eq.hparams.lstm_hidden_size > SMALL["hidden_size"]
    step = 4 * (2 * eq.hparams.lstm_hidden_size + SMALL["embed_dim"]) + len(dm.lm_vocab) + 8
    assert abs(n_eq - n_tc) <= step  # within one hidden unit's worth of parameters
    assert lstm_hidden_for_params(n_eq, len(dm.lm_vocab), SMALL["embed_dim"]) == eq.hparams.lstm_hidden_size


def test_model_data_mismatch_is_an_error(dm):
    task = TopicLMTask(num_topics=3, lm_vocab_size=len(dm.lm_vocab) + 1,
                       topic_vocab_size=len(dm.topic_vocab), **SMALL)
    with pytest.raises(ValueError, match="mismatch"):
        task.set_vocabularies(dm.lm_vocab, dm.topic_vocab)
    with pytest.raises(ValueError, match="match_params"):
        TopicLMTask(lm_type="tcnlm", match_params=True)


@pytest.mark.slow
def test_tcnlm_beats_the_lstm_on_the_embedded_corpus(tmp_path):
    """The embedded corpus has document-level topics that a sentence-level LSTM cannot see:
    the TCNLM's perplexity must be clearly lower (measured: 10.3 vs 12.9 after 1500 steps), and
    so must the label oracle's (``topic_source: label``: each document's main topic pool)."""
    ppl = {}
    for name, kw in (("tcnlm", {}), ("label", dict(topic_source="label")), ("lstm", dict(lm_type="lstm"))):
        pl.seed_everything(0)
        data = DocumentDataModule(embedded_documents=400, batch_size=32)
        task = TopicLMTask(num_topics=5, embed_dim=32, hidden_size=64, factor_size=32,
                           dropout=0.1, topic_hidden=64, lr=3e-3, warmup_steps=20, total_steps=1500,
                           output_dir=str(tmp_path / name), **kw)
        trainer = _trainer(1500, tmp_path, enable_checkpointing=False)
        trainer.fit(task, datamodule=data)
        trainer.test(task, datamodule=data, verbose=False)
        ppl[name] = json.loads((tmp_path / name / "results.json").read_text())["perplexity"]
    assert ppl["tcnlm"] < 0.9 * ppl["lstm"], ppl
    assert ppl["label"] < 0.9 * ppl["lstm"], ppl


class _Snapshots(pl.Callback):
    """Every parameter before the first step, and the LM's after each step."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        self.lm_after: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.lm_after.append({n: p.detach().clone() for n, p in pl_module.lm.named_parameters()})


def test_topic_pretraining_trains_the_topic_model_alone_then_both(dm, tmp_path):
    """``topic_pretrain_steps`` 3: steps 1-3 change the topic model and leave every LM tensor
    bit-identical (the LM gets no gradient), their loss is the negative ELBO per bag-of-words
    token (checked against the topic model's own output); from step 4 the LM trains too."""
    torch.manual_seed(0)
    task = TopicLMTask(num_topics=4, total_steps=6, topic_pretrain_steps=3, **SMALL)
    task.set_vocabularies(dm.lm_vocab, dm.topic_vocab)
    batch = next(iter(dm.train_dataloader()))
    task.train()
    out = task.compute(batch)
    assert "lm_nll" not in out
    torch.manual_seed(1)
    out = task.compute(batch)
    torch.manual_seed(1)
    ntm = task.topic_model(batch["bow"])
    assert out["loss"].item() == pytest.approx(
        ((ntm.nll.sum() + ntm.kl.sum()) / batch["bow"].sum()).item(), rel=1e-6)
    snaps = _Snapshots()
    _trainer(6, tmp_path, enable_checkpointing=False, callbacks=[snaps]).fit(task, datamodule=dm)
    lm_start = {n[len("lm."):]: v for n, v in snaps.start.items() if n.startswith("lm.")}
    assert all(torch.equal(lm_start[n], v) for step in snaps.lm_after[:3] for n, v in step.items())
    assert any(not torch.equal(lm_start[n], v) for n, v in snaps.lm_after[3].items())
    topic_now = dict(task.topic_model.named_parameters())
    assert any(not torch.equal(snaps.start[f"topic_model.{n}"], p) for n, p in topic_now.items())
    task.eval()
    assert "lm_nll" in task.compute(batch)  # evaluation always runs the LM


def test_kl_warmup_scales_the_kl_term_in_training_only(dm):
    """``kl_warmup_steps`` 4: the training loss at step 0 is (LM NLL + bow NLL + KL/4) per token,
    by hand from compute's own parts; evaluation uses the full KL; a negative setting is an error."""
    torch.manual_seed(0)
    task = TopicLMTask(num_topics=4, kl_warmup_steps=4, **SMALL)
    task.set_vocabularies(dm.lm_vocab, dm.topic_vocab)
    batch = next(iter(dm.train_dataloader()))
    task.train()
    assert task.kl_scale() == 0.25
    out = task.compute(batch)
    want = (out["lm_nll"] + out["ntm_nll"] + 0.25 * out["kl"]) / out["tokens"]
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    task.eval()
    out = task.compute(batch)
    assert task.kl_scale() == 1.0
    want = (out["lm_nll"] + out["ntm_nll"] + out["kl"]) / out["tokens"]
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="kl_warmup_steps"):
        TopicLMTask(kl_warmup_steps=-1)
    with pytest.raises(ValueError, match="lm_type: tcnlm"):
        TopicLMTask(lm_type="lstm", topic_pretrain_steps=5)


def _lda_components(dm: DocumentDataModule, num_topics: int, max_iter: int, seed: int):
    """scikit-learn LDA's ``components_`` on the training documents' topic-word counts."""
    from sklearn.decomposition import LatentDirichletAllocation

    counts = doc_word_sparse(dm.splits["train"], len(dm.topic_vocab))
    lda = LatentDirichletAllocation(n_components=num_topics, learning_method="batch",
                                    max_iter=max_iter, random_state=seed)
    return torch.from_numpy(lda.fit(counts).components_)


def _start_topic_word(task: TopicLMTask, dm: DocumentDataModule, tmp_path, steps: int = 1,
                      **kw) -> torch.Tensor:
    """``topic_word`` as training starts (after setup, before the first step) in a fit."""
    snaps = _Snapshots()
    _trainer(steps, tmp_path, enable_checkpointing=False, callbacks=[snaps]).fit(task, datamodule=dm, **kw)
    return snaps.start["topic_model.topic_word"]


def test_lda_topic_init_starts_from_sklearn_lda_topics(dm, tmp_path, caplog):
    """``topic_init: lda``: at the first step ``softmax(topic_word)`` is scikit-learn LDA's
    normalized ``components_`` (fit on the training documents with random_state = the torch
    seed), rows centred, so each topic's top words are LDA's; the same seed gives the same
    values, another seed other ones; the fit time is logged; the default stays random."""
    torch.manual_seed(3)
    task = TopicLMTask(num_topics=4, topic_init="lda", lda_max_iter=5, total_steps=1, **SMALL)
    with caplog.at_level("INFO", logger="speechlab.tasks"):
        phi = _start_topic_word(task, dm, tmp_path)
    assert any("topic_init lda" in r.getMessage() and r.getMessage().endswith(" s")
               for r in caplog.records)
    components = _lda_components(dm, 4, 5, seed=3)
    beta = components / components.sum(1, keepdim=True)
    torch.testing.assert_close(phi.softmax(-1), beta.float(), rtol=1e-4, atol=1e-7)
    assert torch.equal(phi.topk(10, -1).indices, components.topk(10, -1).indices)
    torch.testing.assert_close(phi.mean(-1), torch.zeros(4), atol=1e-5, rtol=0)
    assert task.topic_words(3) == [dm.topic_vocab.tokens(r) for r in components.topk(3, -1).indices.tolist()]

    torch.manual_seed(3)
    again = TopicLMTask(num_topics=4, topic_init="lda", lda_max_iter=5, total_steps=1, **SMALL)
    assert torch.equal(_start_topic_word(again, dm, tmp_path), phi)
    torch.manual_seed(4)
    other = TopicLMTask(num_topics=4, topic_init="lda", lda_max_iter=5, total_steps=1, **SMALL)
    assert not torch.allclose(_start_topic_word(other, dm, tmp_path), phi, atol=1e-3)
    torch.manual_seed(3)
    random_init = TopicLMTask(num_topics=4, total_steps=1, **SMALL)
    assert _start_topic_word(random_init, dm, tmp_path).std() < 0.05  # N(0, 0.02^2)


def test_lda_topic_init_needs_the_tcnlm():
    """The LSTM baselines have no topic model: the options are errors there, not ignored."""
    with pytest.raises(ValueError, match="lm_type: tcnlm"):
        TopicLMTask(lm_type="lstm", topic_init="lda")
    with pytest.raises(ValueError, match="lm_type: tcnlm"):
        TopicLMTask(lm_type="lstm", topic_word_lr_scale=0.1)
    with pytest.raises(ValueError, match="topic_init"):
        TopicLMTask(topic_init="nmf")
    assert TopicLMTask(lm_type="lstm").hparams.topic_init == "random"


def test_lda_topic_init_leaves_trained_weights_alone(tmp_path, monkeypatch):
    """LDA is fit once, at the first ``fit``: a second ``fit`` of the task and a task loaded from
    its checkpoint (``load_from_checkpoint``, then ``fit``) start from the trained
    ``topic_word`` without fitting LDA again; resuming (``fit(ckpt_path=...)`` on a new task)
    ends with the checkpoint's weights, not LDA's. The data's ``topic_min_word_len`` is saved
    with the checkpoint's data settings."""
    import speechlab.tasks.topic_lm as topic_lm

    fits = []
    real = topic_lm.lda_topic_word_logits
    monkeypatch.setattr(topic_lm, "lda_topic_word_logits", lambda *a, **k: fits.append(1) or real(*a, **k))
    data = DocumentDataModule(embedded_documents=120, batch_size=32, topic_min_word_len=3)
    torch.manual_seed(0)
    fast = {**SMALL, "lr": 0.05, "warmup_steps": 1}
    task = TopicLMTask(num_topics=3, topic_init="lda", lda_max_iter=3, total_steps=4, **fast)
    lda_phi = _start_topic_word(task, data, tmp_path, steps=4)
    trained = task.topic_model.topic_word.detach().clone()
    assert len(fits) == 1 and not torch.allclose(trained, lda_phi, atol=1e-3)  # training moved it
    ckpt = tmp_path / "lda.ckpt"
    task.trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=False)["datamodule_hyper_parameters"]["topic_min_word_len"] == 3
    assert torch.equal(_start_topic_word(task, data, tmp_path), trained) and len(fits) == 1

    loaded = TopicLMTask.load_from_checkpoint(ckpt, map_location="cpu")
    assert loaded.hparams.topic_init == "lda"
    assert torch.equal(_start_topic_word(loaded, data, tmp_path), trained) and len(fits) == 1

    resumed = TopicLMTask(num_topics=3, topic_init="lda", lda_max_iter=3, total_steps=4, **fast)
    _trainer(4, tmp_path, enable_checkpointing=False).fit(resumed, datamodule=data, ckpt_path=ckpt)
    assert resumed.global_step == 4 and torch.equal(resumed.topic_model.topic_word, trained)


class _LearningRates(pl.Callback):
    """Each param group's learning rate at every training step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs = getattr(self, "lrs", []) + [[g["lr"] for g in trainer.optimizers[0].param_groups]]


def test_topic_word_lr_scale_gives_topic_word_its_own_scaled_learning_rate(dm, tmp_path):
    """``topic_word_lr_scale`` 0.1: ``topic_word`` alone in a second param group whose
    learning rate is 0.1 x the first's at every step of the warm-up/cosine schedule; the
    default keeps one group of every parameter."""
    from speechlab.tasks.base import warmup_cosine

    torch.manual_seed(0)
    task = TopicLMTask(num_topics=3, topic_word_lr_scale=0.1, total_steps=5,
                       **{**SMALL, "warmup_steps": 2})
    lrs = _LearningRates()
    _trainer(5, tmp_path, enable_checkpointing=False, callbacks=[lrs]).fit(task, datamodule=dm)
    groups = task.trainer.optimizers[0].param_groups
    phi = task.topic_model.topic_word
    assert [len(g["params"]) for g in groups] == [len(list(task.parameters())) - 1, 1]
    assert groups[1]["params"][0] is phi and all(p is not phi for p in groups[0]["params"])
    want = [SMALL["lr"] * warmup_cosine(step, 2, 5) for step in range(5)]
    assert [lr for lr, _ in lrs.lrs] == pytest.approx(want)
    assert [lr for _, lr in lrs.lrs] == pytest.approx([0.1 * w for w in want])

    task = TopicLMTask(num_topics=3, **SMALL)
    task.set_vocabularies(dm.lm_vocab, dm.topic_vocab)
    task.trainer = pl.Trainer(accelerator="cpu", logger=False, max_steps=5, enable_progress_bar=False)
    (group,) = task.configure_optimizers()["optimizer"].param_groups
    assert [id(p) for p in group["params"]] == [id(p) for p in task.parameters()]
