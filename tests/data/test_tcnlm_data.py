"""DocumentDataModule and its parts: readers (clear errors), Usenet cleaning, vocabularies,
document-minus-sentence bags of words, splits by document, the embedded generator."""

import json
import re
from collections import Counter

import pytest
import torch

from speechlab.data.corpus import (
    BOS,
    EOS,
    NUM,
    PAD,
    UNK,
    DocumentDataModule,
    SentenceDataset,
    build_lm_vocab,
    build_topic_vocab,
    clean_usenet,
    collate_sentences,
    document_sentences,
    generate_documents,
    load_documents,
    read_folder_documents,
    read_jsonl_documents,
    split_sentences,
    tokenize,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_jsonl_reader_names_file_and_line(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text('{"text": "One. Two.", "label": "a"}\n\n{"text": 3}\n')
    with pytest.raises(ValueError, match=r"docs\.jsonl:3: missing or non-string 'text'"):
        read_jsonl_documents(p)
    p.write_text('{"text": "fine"}\n{"text": "broken"\n')
    with pytest.raises(ValueError, match=r"docs\.jsonl:2: malformed JSON"):
        read_jsonl_documents(p)
    p.write_text('["not", "an", "object"]\n')
    with pytest.raises(ValueError, match=r"docs\.jsonl:1: malformed entry \(expected a JSON object"):
        read_jsonl_documents(p)
    p.write_text('{"text": "fine", "label": 7}\n')
    (doc,) = read_jsonl_documents(p)
    assert (doc.text, doc.label) == ("fine", "7")


def test_empty_and_missing_document_sets_are_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no documents"):
        load_documents(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_documents(tmp_path / "nowhere")
    dm = DocumentDataModule(train=str(tmp_path / "empty.jsonl"))
    with pytest.raises(ValueError, match="no documents"):
        dm.setup()


def test_folder_reader_labels_by_subfolder(tmp_path):
    (tmp_path / "space").mkdir()
    (tmp_path / "space" / "1.txt").write_text("The rocket flies.")
    (tmp_path / "top.txt").write_text("Loose document.")
    (tmp_path / ".hidden.txt").write_text("skip me")
    docs = read_folder_documents(tmp_path)
    assert [(d.label, d.text) for d in docs] == [("space", "The rocket flies."), (None, "Loose document.")]


POST = """From: someone@example.com (Some One)
Subject: Re: orbits
Organization: Nowhere
Lines: 9

In article <1993@host.edu> other@host.edu writes:
> quoted text that must go
|> more quoted text

The shuttle reached orbit. Mail me at me@site.org or see http://x.org/page now!
%$#@ 1234 ||| 5678 ==== ****

--
Signature line
"""


def test_clean_usenet_strips_headers_quotes_signature_addresses():
    text = clean_usenet(POST)
    assert "Subject" not in text and "Organization" not in text
    assert "quoted" not in text and "In article" not in text
    assert "Signature" not in text
    assert "@" not in text and "http" not in text
    assert "%$#@" not in text
    assert "The shuttle reached orbit." in text
    assert document_sentences(POST, "usenet") == [["the", "shuttle", "reached", "orbit"],
                                                  ["mail", "me", "at", "or", "see", "now"]]
    with pytest.raises(ValueError, match="clean"):
        document_sentences(POST, "html")


def test_sentences_and_tokens():
    assert split_sentences("One two. Three?\nstill three!\n\nNew para") == [
        "One two.", "Three?", "still three!", "New para"]
    assert tokenize("Don't PANIC: 42 towels, 3.5 kg. Café") == ["don't", "panic", NUM, "towels", NUM, "kg", "cafe"]


def test_lm_vocab_specials_and_min_freq():
    v = build_lm_vocab([["a", "b", "a"], ["c", "a", "b"]], min_freq=2)
    assert v.words[:4] == [PAD, UNK, BOS, EOS]
    assert v.words[4:] == ["a", "b"]
    assert v.encode(["a", "zzz"]) == [4, v.id_of(UNK)]
    assert build_lm_vocab([["a"] * 3, ["b", "c", "d"]], min_freq=1, max_size=6).words[4:] == ["a", "b"]


def test_topic_vocab_removes_stop_words_frequent_and_rare():
    docs = [["the", "rocket", "moon", "moon", "the", NUM, "x", "isn't"] * 3 + ["orbit"] * 9 + ["rare"]]
    types = 990  # with the 4 others: 994 word types, so the top 0.1% is exactly one word
    docs.append([f"w{i}" for i in range(types) for _ in range(2)])
    v = build_topic_vocab(docs, frozenset({"the"}), top_fraction=0.001, min_count=2)
    assert "the" not in v and NUM not in v and "x" not in v and "isn't" not in v
    assert "orbit" not in v  # the most frequent remaining type (9 occurrences)
    assert "moon" in v and "rocket" in v and "w5" in v
    assert "rare" not in v  # fewer than min_count
    assert v.unk is None and v.encode(["moon", "unknown"]) == [v.id_of("moon")]
    with pytest.raises(ValueError, match="empty topic vocabulary"):
        build_topic_vocab([["a", "b"]], min_count=5)


def test_topic_vocab_min_word_len_drops_exactly_the_shorter_words():
    docs = [["ei", "pl", "rocket", "x", "ok", "moon", "the"], ["ei", "mf", "rocket", "orbit", "moon", "x"]]
    kw = dict(stop_words=frozenset({"the"}), top_fraction=0.0, min_count=1)
    # by count, then alphabetical: ei moon rocket 2; mf ok orbit pl 1 (x: one letter)
    assert build_topic_vocab(docs, **kw).words == ["ei", "moon", "rocket", "mf", "ok", "orbit", "pl"]
    assert build_topic_vocab(docs, **kw, min_word_len=2).words == build_topic_vocab(docs, **kw).words
    assert build_topic_vocab(docs, **kw, min_word_len=3).words == ["moon", "rocket", "orbit"]
    assert build_topic_vocab(docs, **kw, min_word_len=1).words[:4] == ["ei", "moon", "rocket", "x"]
    with pytest.raises(ValueError, match="min_word_len"):
        build_topic_vocab(docs, **kw, min_word_len=0)


def test_datamodule_topic_min_word_len_is_a_saved_data_option(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"text": "Ei pl rocket moon. Mf orbit ok today."}] * 6
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kw = dict(train=str(p), val_fraction=1 / 6, test_fraction=1 / 6, stop_words="none",
              topic_top_fraction=0.0, topic_min_count=1)
    default, three = DocumentDataModule(**kw), DocumentDataModule(**kw, topic_min_word_len=3)
    default.setup()
    three.setup()
    assert set(default.topic_vocab.words) == {"ei", "pl", "rocket", "moon", "mf", "orbit", "ok", "today"}
    assert set(three.topic_vocab.words) == {"rocket", "moon", "orbit", "today"}
    assert default.hparams.topic_min_word_len == 2 and three.hparams.topic_min_word_len == 3
    rebuilt = DocumentDataModule(**dict(three.hparams))  # as a checkpoint's data settings rebuild it
    rebuilt.setup()
    assert rebuilt.topic_vocab == three.topic_vocab


def test_sentence_examples_carry_the_document_minus_that_sentence(tmp_path):
    p = tmp_path / "d.jsonl"
    rows = [{"text": "Rocket moon rocket. Moon orbit today. Cheese bread.", "label": "x"}] * 6
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = DocumentDataModule(train=str(p), val_fraction=1 / 6, test_fraction=1 / 6, min_freq=1,
                            stop_words="none", topic_top_fraction=0.0, topic_min_count=1,
                            max_sentence_len=2, batch_size=8)
    dm.setup()
    ds = dm.dataset("train")
    assert len(ds) == 4 * 3  # 4 training documents of 3 sentences
    tv = dm.topic_vocab
    item = ds[0]  # first sentence of the first document
    expected = Counter({tv.id_of("moon"): 1, tv.id_of("orbit"): 1, tv.id_of("today"): 1, tv.id_of("cheese"): 1,
                        tv.id_of("bread"): 1})
    assert item["bow"] == expected  # rocket, moon, rocket removed with their sentence
    lv = dm.lm_vocab
    assert item["tokens"] == [lv.id_of(BOS), lv.id_of("rocket"), lv.id_of("moon")]  # cut to 2 words
    assert item["targets"] == [lv.id_of("rocket"), lv.id_of("moon"), lv.id_of(EOS)]
    batch = collate_sentences([ds[0], ds[2]], len(tv))
    assert batch["tokens"].shape == (2, 3) and batch["bow"].shape == (2, len(tv))
    assert batch["bow"][1, tv.id_of("rocket")] == 2 and batch["bow"][1, tv.id_of("cheese")] == 0
    assert batch["targets"][1].tolist() == [lv.id_of("cheese"), lv.id_of("bread"), lv.id_of(EOS)]
    padded = collate_sentences([ds[0]], len(tv), pad_to=5)
    assert padded["targets"][0, 3:].tolist() == [-100, -100]
    assert padded["tokens"][0, 3:].tolist() == [0, 0]


def test_splits_are_by_document_and_deterministic():
    a, b = DocumentDataModule(embedded_documents=60), DocumentDataModule(embedded_documents=60)
    a.setup()
    b.setup()
    ids = {k: [d.id for d in docs] for k, docs in a.documents.items()}
    assert [len(v) for v in ids.values()] == [48, 6, 6]
    assert not set(ids["train"]) & set(ids["val"]) and not set(ids["train"]) & set(ids["test"])
    assert ids == {k: [d.id for d in docs] for k, docs in b.documents.items()}
    assert a.lm_vocab == b.lm_vocab and a.topic_vocab == b.topic_vocab
    batch = next(iter(a.train_dataloader()))
    assert set(batch) == {"tokens", "targets", "lengths", "bow", "doc", "label"}
    assert batch["tokens"].shape[0] == 64 or batch["tokens"].shape[0] == len(a.dataset("train"))


def test_batches_carry_each_documents_label_id(tmp_path, caplog):
    """label (B,): the index of the sentence's document's label in the training documents'
    sorted labels; -1 for a document without a label or with one no training document has
    (counted in a warning)."""
    rows = [{"text": f"The {w} runs fast. A {w} sat down.", "label": lab}
            for w, lab in [("dog", "pets"), ("cat", "pets"), ("car", "autos"), ("bus", "autos"),
                           ("cow", None), ("owl", "birds")]]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows[:5]))
    test.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows[4:]))
    dm = DocumentDataModule(train=str(train), val=str(test), test=str(test), min_freq=1, topic_min_count=1,
                            stop_words="none", batch_size=64)
    with caplog.at_level("WARNING"):
        dm.setup()
    assert dm.label_names == ["autos", "pets"]
    assert dm.label_ids("train") == [1, 1, 0, 0, -1] and dm.label_ids("test") == [-1, -1]
    assert "1 test documents have a label no training document has" in caplog.text
    ds = dm.dataset("train")
    batch = next(iter(dm.val_dataloader()))
    assert batch["label"].tolist() == [-1] * len(batch["label"])
    for i in range(len(ds)):
        d, _ = ds.index[i]
        assert ds[i]["label"] == dm.label_ids("train")[d]
    with pytest.raises(ValueError, match="4 label ids for 5 documents"):
        SentenceDataset(dm.splits["train"], 2, 3, label_ids=[0, 1, 0, 1])


def test_embedded_generator_is_deterministic_and_prefix_stable():
    docs = generate_documents(20, seed=3)
    assert docs == generate_documents(20, seed=3)
    assert generate_documents(7, seed=3) == docs[:7]
    assert generate_documents(20, seed=4) != docs
    assert {d.label for d in docs} == {"space", "sport", "cooking", "computers", "medicine"}
    assert all(len(document_sentences(d.text)) >= 5 for d in docs)


def test_static_length_pads_every_batch():
    dm = DocumentDataModule(embedded_documents=30, static_length=True, max_sentence_len=12, batch_size=4)
    dm.setup()
    for batch in [next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))]:
        assert batch["tokens"].shape[1] == 13
    assert torch.all(next(iter(dm.train_dataloader()))["lengths"] <= 13)


def test_20news_cleaning_on_real_posts(shared_data):
    """The Usenet cleaner on the first 300 real test posts: the header block, quotes and e-mail
    addresses go, and most posts keep some prose. (Header-like lines of messages forwarded inside
    a body are kept, without their addresses: docs/tcnlm.md.)"""
    docs = read_jsonl_documents(shared_data / "text" / "20news" / "test.jsonl")
    assert len(docs) == 7532 and len({d.label for d in docs}) == 20
    kept = 0
    for doc in docs[:300]:
        text = clean_usenet(doc.text)
        header = doc.text.split("\n\n", 1)[0].splitlines()
        assert header[0].split(":")[0] in ("From", "Subject", "Organization") and header[0] not in text
        assert not [h for h in header if h.startswith(("Subject:", "Organization:", "Lines:")) and h in text]
        assert not any(line.lstrip().startswith(">") for line in text.splitlines())
        assert not re.search(r"\w@\w+\.\w", text)  # no e-mail address
        kept += bool(document_sentences(doc.text, "usenet"))
    assert kept >= 280
