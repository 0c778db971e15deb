"""Print the top words of each topic of a TCNLM checkpoint (rows of the topic-word matrix).

  speechlab tcnlm topics --checkpoint C --top-k 10 [--out topics.json]
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="TopicLMTask checkpoint (.ckpt)")
    parser.add_argument("--top-k", type=int, default=10, help="words per topic")
    parser.add_argument("--out", default=None, help="also write the lists as JSON here")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")


def main(args: argparse.Namespace) -> int:
    from speechlab.io import atomic_write_text, check_overwrite
    from speechlab.tcnlm.tools import load_task

    if args.out:
        check_overwrite(args.out, args.force)

    task = load_task(args.checkpoint)
    topics = task.topic_words(args.top_k)
    for i, words in enumerate(topics):
        print(f"topic {i:3d}: {' '.join(words)}")
    if args.out:
        atomic_write_text(args.out, json.dumps(topics, indent=1) + "\n")
    return 0
