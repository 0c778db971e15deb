"""NPMI coherence of a TCNLM's topics on reference documents (document co-occurrence), and of a
scikit-learn LDA with as many topics on the same training documents and vocabulary (--lda).

  speechlab tcnlm coherence --checkpoint C [--reference test] [--top-k 10] [--lda] [--out F]

The documents are rebuilt from the data settings saved in the checkpoint (paths relative to the
working directory; --train/--test override them); the topic vocabulary must come out the same.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def main(args: argparse.Namespace) -> int:
    from speechlab.io import atomic_write_text, check_overwrite
    from speechlab.tcnlm.tools import coherence_report, datamodule_from_checkpoint, load_task

    if args.out:
        check_overwrite(args.out, args.force)

    task = load_task(args.checkpoint)
    dm = datamodule_from_checkpoint(args.checkpoint, {"train": args.train, "test": args.test})
    report = coherence_report(task, dm, args.reference, args.top_k, args.lda, args.lda_iter, args.seed)
    print(f"NPMI (top {args.top_k} words, {report['reference_documents']} {args.reference} documents): "
          f"TCNLM {report['tcnlm']['npmi_mean']:.4f}"
          + (f"   LDA {report['lda']['npmi_mean']:.4f}" if "lda" in report else ""))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    return 0
