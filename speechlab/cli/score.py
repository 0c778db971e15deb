"""``speechlab score``: WER/CER of hypotheses against references (:mod:`speechlab.score`).

This module and the library module it calls import neither torch nor Lightning, so the command
starts in well under a second (``tests/project/test_layers.py`` checks it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from speechlab.errors import CLIError
from speechlab.score import (
    HYP_FIELDS,
    NORMALIZERS,
    REF_FIELDS,
    MissingIdsError,
    check_ids,
    read_transcripts,
)
from speechlab.score import score as score_transcripts


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref", required=True, type=Path, help="reference manifest / TSV")
    parser.add_argument("--hyp", required=True, type=Path, help="hypothesis JSONL / TSV")
    parser.add_argument(
        "--normalize", choices=sorted(NORMALIZERS), default="speechlab",
        help="text normalization applied to both sides (default: speechlab)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument(
        "--worst", type=int, default=10, metavar="N",
        help="list the N utterances with the most word errors (default 10; 0: none)",
    )
    parser.add_argument(
        "--show-alignments", type=int, default=0, metavar="K",
        help="print the word alignment of the K worst utterances",
    )
    parser.add_argument(
        "--ref-field", default=None, metavar="KEY",
        help=f"JSONL key of the reference text (default: first of {', '.join(REF_FIELDS)})",
    )
    parser.add_argument(
        "--hyp-field", default=None, metavar="KEY",
        help=f"JSONL key of the hypothesis text (default: first of {', '.join(HYP_FIELDS)})",
    )


def score(args: argparse.Namespace) -> int:
    """Score hypotheses against references: corpus WER and CER with S/D/I counts and the worst utterances.

    REF and HYP are JSONL manifests (``{"id", "text", ...}``; without ``"id"`` the stem of
    ``"audio_filepath"``), ``speechlab test`` outputs (``{"id", "ref", "hyp"}``: REF reads ``"ref"``,
    HYP reads ``"hyp"``), lhotse cuts (``.jsonl.gz``), or ``id<TAB>text`` files (Kaldi-style
    ``id text`` when a line has no tab). Utterances are matched by id; an id present in one file
    and not the other is an error. Both sides are normalized with speechlab's one normalizer
    (``speechlab.data.text.normalize_text``) unless ``--normalize none``; the report says which.
    Rates are computed from counts summed over the corpus (never averaged over utterances).

      speechlab score --ref data/test.jsonl --hyp exp/test_hyps.jsonl --show-alignments 3
      speechlab score --ref ref.tsv --hyp hyp.tsv --json > score.json
    """
    if args.worst < 0 or args.show_alignments < 0:
        raise CLIError("--worst and --show-alignments must be >= 0")
    refs = read_transcripts(args.ref, args.ref_field or REF_FIELDS)
    hyps = read_transcripts(args.hyp, args.hyp_field or HYP_FIELDS)
    if not refs:
        raise CLIError(f"{args.ref}: no utterances")
    try:
        check_ids(refs, hyps, ref_name=f"REF {args.ref}", hyp_name=f"HYP {args.hyp}")
    except MissingIdsError as e:
        raise CLIError(str(e)) from None
    report = score_transcripts(refs, hyps, normalize=args.normalize == "speechlab")
    if args.json:
        d = {"ref": str(args.ref), "hyp": str(args.hyp)}
        d.update(report.to_dict(worst=args.worst, alignments=args.show_alignments))
        print(json.dumps(d, indent=1, ensure_ascii=False))
    else:
        header = [f"ref: {args.ref}", f"hyp: {args.hyp}"]
        print(report.format(args.worst, args.show_alignments, header=header), end="")
    return 0
