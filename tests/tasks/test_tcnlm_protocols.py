"""The controlled protocol (Zheng et al., 2023) next to the paper's: a TCNLM whose topic input is
the document's preceding sentences only (``topic_context: preceding``), and an LSTM that reads
whole documents as one stream (``stream: true``) — no future sentence reaches either, the stream
carries its state within a document and resets it between documents (oracle: the same LSTM run
on the concatenated document), and every protocol scores the same target tokens."""

import json
import math
import random
from collections import Counter

import pytest
import pytorch_lightning as pl
import torch

from speechlab.data.corpus import (
    DocumentDataModule,
    DocumentStreamDataset,
    ProcessedDocuments,
    SentenceDataset,
    collate_sentences,
    stream_schedule,
)
from speechlab.tasks.topic_lm import TopicLMTask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(embed_dim=16, hidden_size=24, factor_size=12, dropout=0.0, topic_hidden=16)
V_LM, V_TOPIC, BOS, EOS = 20, 10, 2, 3


def test_preceding_bags_hold_no_future_sentence(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"text": "Rocket moon. Orbit planet rocket. Cheese bread. Garlic oven cheese."}] * 6
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = dict(train=str(p), val_fraction=1 / 6, test_fraction=1 / 6, min_freq=1, stop_words="none",
                  topic_top_fraction=0.0, topic_min_count=1)
    dm = DocumentDataModule(topic_context="preceding", **common)
    dm.setup()
    tv, ds = dm.topic_vocab, dm.dataset("train")
    bags = [ds[i]["bow"] for i in range(4)]  # the first document's four sentences
    ids = {w: tv.id_of(w) for w in ("rocket", "moon", "orbit", "planet", "cheese", "bread", "garlic", "oven")}
    assert bags[0] == Counter()  # the first sentence: an empty bag
    assert bags[1] == Counter({ids["rocket"]: 1, ids["moon"]: 1})
    # sentence 2's words (cheese, bread) appear nowhere before it: not in its bag, in the next one
    assert bags[2] == Counter({ids["rocket"]: 2, ids["moon"]: 1, ids["orbit"]: 1, ids["planet"]: 1})
    assert bags[3] == bags[2] + Counter({ids["cheese"]: 1, ids["bread"]: 1})
    batch = collate_sentences([ds[0], ds[3]], len(tv))
    assert batch["bow"][0].sum() == 0 and batch["bow"][1, ids["cheese"]] == 1
    # the paper's protocol on the same document: sentence 0 sees the whole rest, future included
    others = DocumentDataModule(**common)
    others.setup()
    assert others.dataset("train")[0]["bow"][ids["garlic"]] == 1 and ds[0]["bow"][ids["garlic"]] == 0
    with pytest.raises(ValueError, match="topic_context"):
        DocumentDataModule(topic_context="future")


def _docs(*documents: list[list[int]]) -> ProcessedDocuments:
    """Hand-made documents: each sentence's LM ids are also its topic ids (mod V_TOPIC)."""
    return ProcessedDocuments([list(map(list, d)) for d in documents],
                              [[[w % V_TOPIC for w in s] for s in d] for d in documents], [None] * len(documents))


def _sentence_nll(task: TopicLMTask, docs: ProcessedDocuments, topic_context: str) -> torch.Tensor:
    ds = SentenceDataset(docs, BOS, EOS, topic_context)
    with torch.no_grad():
        return task.compute(collate_sentences([ds[i] for i in range(len(ds))], V_TOPIC))["sentence_nll"]


def test_a_later_sentence_reaches_earlier_scores_only_under_others():
    torch.manual_seed(0)
    task = TopicLMTask(num_topics=3, lm_vocab_size=V_LM, topic_vocab_size=V_TOPIC, **SMALL).eval()
    doc = [[4, 5, 6], [7, 8], [9, 10, 11, 12]]
    changed = [doc[0], doc[1], [13, 14, 15, 16, 17]]  # the last sentence perturbed (other topic words)
    a = {c: _sentence_nll(task, _docs(doc), c) for c in ("preceding", "others")}
    b = {c: _sentence_nll(task, _docs(changed), c) for c in ("preceding", "others")}
    torch.testing.assert_close(a["preceding"][:2], b["preceding"][:2], rtol=0, atol=0)
    assert (a["others"][:2] - b["others"][:2]).abs().min() > 1e-4, (a, b)


# --------------------------------------------------------------------------- the document stream

def _stream_nll(task: TopicLMTask, docs: ProcessedDocuments, lanes: int) -> dict[tuple[int, int], float]:
    """Per (document, sentence) NLL from the stream batches, run in order with the carried state."""
    sents = SentenceDataset(docs, BOS, EOS)
    stream = DocumentStreamDataset(sents, lanes, lambda items: collate_sentences(items, V_TOPIC))
    out, state = {}, None
    with torch.no_grad():
        for k in range(len(stream)):
            res = task.compute(stream[k], state)
            state = res["state"]
            for row, i in enumerate(stream.batches[k]):
                if i is not None:
                    out[sents.index[i]] = res["sentence_nll"][row].item()
    return out


def _concatenated_nll(task: TopicLMTask, sentences: list[list[int]]) -> list[float]:
    """The oracle: the same LSTM over the document's tokens as one sequence, from a zero state."""
    tokens = [t for s in sentences for t in (BOS, *s)]
    targets = torch.tensor([t for s in sentences for t in (*s, EOS)])
    with torch.no_grad():
        logits, _, _ = task.lm(torch.tensor([tokens]))
    nll = torch.nn.functional.cross_entropy(logits[0], targets, reduction="none")
    return [chunk.sum().item() for chunk in nll.split([len(s) + 1 for s in sentences])]


def test_document_stream_carries_the_state_within_and_resets_between_documents():
    torch.manual_seed(0)
    task = TopicLMTask(lm_type="lstm", lm_vocab_size=V_LM, **SMALL).eval()
    documents = [[[4, 5, 6], [7, 8], [9, 10, 11]],            # lane 1
                 [[12, 13], [14, 15, 16, 17], [4], [5, 6]],   # lane 0 (the longest, first)
                 [[8, 9, 10], [11, 12]],                      # lane 1 again, after document 0
                 [[13, 14, 15]]]                              # lane 0, after document 1
    assert stream_schedule([[0, 1, 2], [3, 4, 5, 6], [7, 8], [9]], 2) == [
        [3, 0], [4, 1], [5, 2], [6, 7], [9, 8]]
    got = _stream_nll(task, _docs(*documents), lanes=2)
    assert len(got) == sum(map(len, documents))
    for d, doc in enumerate(documents):
        expected = _concatenated_nll(task, doc)
        assert [got[d, s] for s in range(len(doc))] == pytest.approx(expected, rel=1e-5, abs=1e-5), d

    # sentence 1 changed: sentence 2's score changes (the state carries it), sentence 0's does not
    changed = [documents[0][0], [16, 17, 18, 19], documents[0][2]]
    other = _stream_nll(task, _docs(changed, *documents[1:]), lanes=2)
    assert abs(other[0, 2] - got[0, 2]) > 1e-4 and other[0, 0] == got[0, 0]
    # document 0 (before document 2 in its lane) replaced: document 2's scores stay as they were
    other = _stream_nll(task, _docs([[18, 19, 18], [17]], *documents[1:]), lanes=2)
    assert [other[2, s] for s in range(2)] == [got[2, s] for s in range(2)]


def test_stream_lanes_are_balanced_and_every_item_is_read_once_in_order():
    rng = random.Random(0)
    for lanes in (1, 3, 8):
        # a few very long documents among many short ones, as in 20 Newsgroups
        lengths = [rng.choice([1, 2, 3, 5, 8]) for _ in range(200)] + [60, 45, 40]
        rng.shuffle(lengths)
        starts = [sum(lengths[:d]) for d in range(len(lengths))]
        docs = [list(range(s, s + n)) for s, n in zip(starts, lengths, strict=True)]
        batches = stream_schedule(docs, lanes)
        assert all(len(b) == lanes for b in batches)
        items = [i for b in batches for i in b if i is not None]
        assert sorted(items) == list(range(sum(lengths)))
        for lane in range(lanes):  # each document's items consecutive and in order in one lane
            read = [b[lane] for b in batches if b[lane] is not None]
            for doc in docs:
                if doc[0] in read:
                    k = read.index(doc[0])
                    assert read[k:k + len(doc)] == doc
        fewest = max(max(lengths), math.ceil(sum(lengths) / lanes))  # no schedule has fewer
        assert len(batches) <= math.ceil(4 / 3 * fewest), (lanes, len(batches), fewest)
        # the lanes end together: at most a short document's length of batches less than half
        # filled (reading the documents in turn instead leaves the long ones alone at the end)
        if lanes > 1:
            assert max(lengths) <= sum(lengths) / lanes
            sparse = sum(sum(i is not None for i in b) < lanes / 2 for b in batches)
            assert sparse <= 8, (lanes, sparse)


def _rows(loader) -> list[tuple[int, tuple[int, ...]]]:
    """(document, target ids) of every scored row of a loader's batches."""
    return [(int(d), tuple(t[t != -100].tolist())) for b in loader for d, t in zip(b["doc"], b["targets"], strict=True)
            if (t != -100).any()]


def test_every_protocol_scores_the_same_target_tokens(monkeypatch):
    loaders = {}
    for name, kw in {"others": {}, "preceding": {"topic_context": "preceding"}, "stream": {"stream": True}}.items():
        dm = DocumentDataModule(embedded_documents=40, batch_size=8, **kw)
        dm.setup()
        loaders[name] = dm
    rows = {name: _rows(dm.val_dataloader()) for name, dm in loaders.items()}
    assert sorted(rows["others"]) == sorted(rows["preceding"]) == sorted(rows["stream"])
    tokens = {name: sum(len(t) for _, t in r) for name, r in rows.items()}
    assert len(set(tokens.values())) == 1 and tokens["others"] > 100, tokens

    # under DDP every document stays on one rank, every sentence is scored once, steps are equal
    dm = loaders["stream"]
    shards, steps = [], set()
    for rank in range(3):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None, r=rank: r)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 3)
        for split in ("val", "train"):
            loader = dm.val_dataloader() if split == "val" else dm.train_dataloader()
            steps.add((split, len(loader)))
        shards.append(_rows(dm.val_dataloader()))
    monkeypatch.undo()
    assert len(steps) == 2, steps  # one batch count per split, whatever the rank
    assert sorted(r for shard in shards for r in shard) == sorted(rows["others"])
    docs = [{d for d, _ in shard} for shard in shards]
    assert not (docs[0] & docs[1] or docs[0] & docs[2] or docs[1] & docs[2]) and all(docs)


def test_validation_of_the_stream_equals_the_concatenated_oracle(tmp_path):
    """Through Lightning: ``val/ppl`` of the stream LSTM is the perplexity of the LSTM over each
    document's concatenated tokens, and again on validations with 4 and then 3 lanes (the carry
    starts afresh with each validation)."""
    dm = DocumentDataModule(embedded_documents=30, batch_size=4, stream=True)
    dm.setup()
    torch.manual_seed(0)
    task = TopicLMTask(lm_type="lstm", **SMALL)
    task.set_vocabularies(dm.lm_vocab, dm.topic_vocab)
    task.eval()
    ds = dm.dataset("val")
    nll, n = 0.0, 0
    for doc in dm.splits["val"].lm_sentences:
        sents = [s for s in doc if s]
        nll += sum(_concatenated_nll(task, sents))
        n += sum(len(s) + 1 for s in sents)
    assert n == sum(len(ds[i]["targets"]) for i in range(len(ds)))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path)
    three_lanes = DocumentDataModule(embedded_documents=30, batch_size=3, stream=True)
    for data in (dm, dm, three_lanes):
        ppl = trainer.validate(task, datamodule=data, verbose=False)[0]["val/ppl"]
        assert ppl == pytest.approx(float(torch.exp(torch.tensor(nll / n))), rel=1e-4)


def test_a_tcnlm_refuses_a_document_stream():
    task = TopicLMTask(num_topics=3, lm_vocab_size=V_LM, topic_vocab_size=V_TOPIC, **SMALL)
    stream = DocumentStreamDataset(SentenceDataset(_docs([[4, 5]]), BOS, EOS), 2,
                                   lambda items: collate_sentences(items, V_TOPIC))
    with pytest.raises(ValueError, match="lm_type: lstm"):
        task.compute(stream[0])
