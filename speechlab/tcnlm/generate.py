"""Sample sentences from a TCNLM conditioned on a topic or topic mixture (or from an LSTM LM).

  speechlab tcnlm generate --checkpoint C --topic 3
  speechlab tcnlm generate --checkpoint C --topic 3:0.7,5:0.3 --num 10 --temperature 0.8
  speechlab tcnlm generate --checkpoint C --topic all --out samples.json
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
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


def main(args: argparse.Namespace) -> int:
    from speechlab.io import atomic_write_text, check_overwrite
    from speechlab.tcnlm.tools import load_task, parse_topic_mixture, sample_sentences

    if args.out:
        check_overwrite(args.out, args.force)

    task = load_task(args.checkpoint, args.device)
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
        top = task.topic_words(5)
        for spec, t in zip(specs, mixtures, strict=True):
            result[spec] = sample_sentences(task, t, args.num, args.max_len, args.temperature, args.seed)
            label = " + ".join(f"{w:.2f}*[{' '.join(top[i])}]" for i, w in enumerate(t.tolist()) if w > 0)
            print(f"topic {spec}: {label}")
            for s in result[spec]:
                print(f"  {s}")
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return 0
