"""``speechlab tcnlm generate|topics|coherence``: tools for TopicLMTask checkpoints.

  speechlab tcnlm generate --checkpoint C --topic 3          # or --topic 3:0.7,5:0.3, or all
  speechlab tcnlm topics --checkpoint C --top-k 10
  speechlab tcnlm coherence --checkpoint C --lda --out coherence.json

Sampling and topic mixtures are :mod:`speechlab.tasks.topic_lm` functions; the LDA baseline is
in :mod:`speechlab.data.corpus`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from speechlab.data.corpus import DocumentDataModule, doc_word_sparse, lda_top_words
from speechlab.functional.topic import topic_npmi
from speechlab.io import atomic_write_text, check_overwrite
from speechlab.tasks.topic_lm import TopicLMTask, parse_topic_mixture, sample_sentences


def datamodule_from_checkpoint(checkpoint: str, overrides: dict[str, Any] | None = None) -> DocumentDataModule:
    """The :class:`DocumentDataModule` of a checkpoint's saved data settings (set up), with the
    non-``None`` values of ``overrides`` replacing saved ones."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hp = dict(ckpt.get("datamodule_hyper_parameters") or {})
    if not hp:
        raise ValueError(f"{checkpoint}: no data settings saved in the checkpoint "
                         "(train with a DocumentDataModule, or pass --train)")
    hp.update({k: v for k, v in (overrides or {}).items() if v is not None})
    dm = DocumentDataModule(**{k: v for k, v in hp.items() if not k.startswith("_")})
    dm.setup("test")
    return dm


def coherence_report(task: TopicLMTask, dm: DocumentDataModule, reference: str = "test", top_k: int = 10,
                     lda: bool = False, lda_iter: int = 20, seed: int = 0) -> dict[str, Any]:
    """NPMI of the task's topics (and optionally LDA's) on the ``reference`` split's documents."""
    if not task.is_tcnlm or task.label_topics:
        raise ValueError("coherence needs a TCNLM checkpoint with a topic model (the LSTM baseline "
                         "has no topics; a topic_source: label model's topics are its labels)")
    assert task.topic_vocab is not None and dm.topic_vocab is not None
    if task.topic_vocab != dm.topic_vocab:
        raise ValueError("the data's topic vocabulary differs from the checkpoint's: same data settings needed")
    v = len(task.topic_vocab)
    ref = dm.splits[reference].doc_term_matrix(v, binary=True)
    npmi = task.npmi(ref, top_k)
    report: dict[str, Any] = {"reference": reference, "reference_documents": int(ref.shape[0]),
                              "top_k": top_k, "tcnlm": {"npmi_mean": float(npmi.mean()),
                                                        "npmi": npmi.tolist(),
                                                        "topics": task.topic_words(top_k)}}
    if lda:
        top = lda_top_words(doc_word_sparse(dm.splits["train"], v), task.hparams.num_topics, top_k,
                            lda_iter, seed)
        lda_npmi = topic_npmi(top, ref)
        report["lda"] = {"npmi_mean": float(lda_npmi.mean()), "npmi": lda_npmi.tolist(),
                         "topics": [task.topic_vocab.tokens(r) for r in top.tolist()], "max_iter": lda_iter}
    return report


# ------------------------------------------------------------------------------- generate

def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="TopicLMTask checkpoint (.ckpt)")
    parser.add_argument("--topic", default=None,
                        help="K (one topic), K:W,K:W,... (a mixture, normalized) or 'all' (each topic "
                             "in turn); required for a TCNLM, not allowed for a plain LSTM")
    parser.add_argument("--num", type=int, default=5, help="sentences per topic setting")
    parser.add_argument("--max-len", type=int, default=30, help="words per sentence at most")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="also write the sentences as JSON here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")


def generate(args: argparse.Namespace) -> int:
    """Sample sentences from a TCNLM conditioned on a topic or topic mixture (or from an LSTM LM).

      speechlab tcnlm generate --checkpoint C --topic 3
      speechlab tcnlm generate --checkpoint C --topic 3:0.7,5:0.3 --num 10 --temperature 0.8
      speechlab tcnlm generate --checkpoint C --topic all --out samples.json
    """
    if args.out:
        check_overwrite(args.out, args.force)

    task = TopicLMTask.load(args.checkpoint, map_location=args.device)
    result: dict[str, list[str]] = {}
    if not task.is_tcnlm:
        if args.topic is not None:
            raise ValueError("this checkpoint is a plain LSTM LM: --topic does not apply")
        result["unconditioned"] = sample_sentences(task, None, args.num, args.max_len,
                                                   args.temperature, args.seed)
        print("\n".join(result["unconditioned"]))
    else:
        k = task.hparams.num_topics
        if args.topic is None:
            raise ValueError("--topic is required for a TCNLM (K, K:W,K:W,... or all)")
        specs = [str(i) for i in range(k)] if args.topic == "all" else [args.topic]
        mixtures = [parse_topic_mixture(s, k) for s in specs]  # validate all before sampling
        # a topic is shown by its top words, or by its label (topic_source: label)
        top = ([[name] for name in task.label_names or []] if task.label_topics else task.topic_words(5))
        for spec, t in zip(specs, mixtures, strict=True):
            result[spec] = sample_sentences(task, t, args.num, args.max_len, args.temperature, args.seed)
            label = " + ".join(f"{w:.2f}*[{' '.join(top[i])}]" for i, w in enumerate(t.tolist()) if w > 0)
            print(f"topic {spec}: {label}")
            for s in result[spec]:
                print(f"  {s}")
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return 0


# --------------------------------------------------------------------------------- topics

def add_topics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="TopicLMTask checkpoint (.ckpt)")
    parser.add_argument("--top-k", type=int, default=10, help="words per topic")
    parser.add_argument("--out", default=None, help="also write the lists as JSON here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")


def topics(args: argparse.Namespace) -> int:
    """Print the top words of each topic of a TCNLM checkpoint (rows of the topic-word matrix).

      speechlab tcnlm topics --checkpoint C --top-k 10 [--out topics.json]
    """
    if args.out:
        check_overwrite(args.out, args.force)

    task = TopicLMTask.load(args.checkpoint)
    words_of_topics = task.topic_words(args.top_k)
    for i, words in enumerate(words_of_topics):
        print(f"topic {i:3d}: {' '.join(words)}")
    if args.out:
        atomic_write_text(args.out, json.dumps(words_of_topics, indent=1) + "\n")
    return 0


# ------------------------------------------------------------------------------ coherence

def add_coherence_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="TopicLMTask checkpoint (.ckpt)")
    parser.add_argument("--reference", default="test", choices=["train", "val", "test"],
                        help="documents whose co-occurrence defines NPMI")
    parser.add_argument("--top-k", type=int, default=10, help="words per topic")
    parser.add_argument("--lda", action="store_true", help="also fit and score an LDA")
    parser.add_argument("--lda-iter", type=int, default=20, help="LDA (batch VB) iterations")
    parser.add_argument("--train", default=None, help="override the training documents' source")
    parser.add_argument("--test", default=None, help="override the test documents' source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also write the report as JSON here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")


def coherence(args: argparse.Namespace) -> int:
    """NPMI coherence of a TCNLM's topics on reference documents (document co-occurrence), and of a
    scikit-learn LDA with as many topics on the same training documents and vocabulary (--lda).

      speechlab tcnlm coherence --checkpoint C [--reference test] [--top-k 10] [--lda] [--out F]

    The documents are rebuilt from the data settings saved in the checkpoint (paths relative to the
    working directory; --train/--test override them); the topic vocabulary must come out the same.
    """
    if args.out:
        check_overwrite(args.out, args.force)

    task = TopicLMTask.load(args.checkpoint)
    dm = datamodule_from_checkpoint(args.checkpoint, {"train": args.train, "test": args.test})
    report = coherence_report(task, dm, args.reference, args.top_k, args.lda, args.lda_iter, args.seed)
    print(f"NPMI (top {args.top_k} words, {report['reference_documents']} {args.reference} documents): "
          f"TCNLM {report['tcnlm']['npmi_mean']:.4f}"
          + (f"   LDA {report['lda']['npmi_mean']:.4f}" if "lda" in report else ""))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    return 0
