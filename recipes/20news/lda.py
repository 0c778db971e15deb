"""Classic LDA baseline for the TCNLM topic table: scikit-learn's LatentDirichletAllocation
(batch variational Bayes) on the same training documents and topic vocabulary as the 20
Newsgroups recipes, scored by the same NPMI (top 10 words, document co-occurrence on the test
documents) as ``speechlab test`` reports for TCNLM. CPU only. The topic vocabulary is the one
the recipe's data options build (``--recipe recipes/20news/tcnlm_10_lda.yaml``: without
two-letter tokens, ``topic_min_word_len: 3``).

  python recipes/20news/lda.py --topics 10 30 50 --max-iter 20 --json lda.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "recipes"))
from effective_config import effective_configs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", type=Path, default=REPO / "recipes" / "20news" / "tcnlm_50.yaml")
    p.add_argument("--train", default=None, help="override the recipe's training documents")
    p.add_argument("--test", default=None, help="override the recipe's test documents")
    p.add_argument("--topics", type=int, nargs="+", default=[10, 30, 50])
    p.add_argument("--max-iter", type=int, default=20)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from speechlab.data.corpus import DocumentDataModule, doc_word_sparse, lda_top_words
    from speechlab.functional.topic import topic_npmi
    from speechlab.io import atomic_write_text

    data = dict(effective_configs([args.recipe])[0]["data"]["init_args"])  # includes resolved
    data.update({k: v for k, v in (("train", args.train), ("test", args.test)) if v})
    dm = DocumentDataModule(**data)
    dm.setup("test")
    assert dm.topic_vocab is not None
    v = len(dm.topic_vocab)
    train = doc_word_sparse(dm.splits["train"], v)
    ref = dm.splits["test"].doc_term_matrix(v, binary=True)
    print(f"topic vocabulary {v}; {train.shape[0]} training, {ref.shape[0]} reference (test) documents")
    rows = []
    for k in args.topics:
        t0 = time.time()
        top = lda_top_words(train, k, args.top_k, args.max_iter, args.seed)
        npmi = topic_npmi(top, ref)
        topics = [dm.topic_vocab.tokens(r) for r in top.tolist()]
        rows.append({"topics": k, "npmi_mean": float(npmi.mean()), "npmi": npmi.tolist(), "words": topics,
                     "seconds": round(time.time() - t0, 1), "max_iter": args.max_iter})
        print(f"LDA {k} topics: NPMI {float(npmi.mean()):.4f} ({time.time() - t0:.0f}s)")
        for i in npmi.argsort(descending=True)[:3].tolist():
            print(f"  {npmi[i]:+.3f} {' '.join(topics[i])}")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
