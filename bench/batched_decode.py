"""Batched CTC / Gram-CTC beam search (``BatchedPrefixBeamSearch``) against batched greedy
decoding, the C++ prefix beam search (one thread, and one utterance per thread on every core)
and torchaudio's flashlight ``ctc_decoder`` (unigrams only), on the same emissions: decoder-only
throughput (utterances per second) and wall time relative to batched greedy decoding.

  python bench/batched_decode.py --device cuda            # the H200 (issue 18's table)
  python bench/batched_decode.py --device cpu --batch 8 --frames 100 --repeat 1   # a CPU smoke run

Emissions: ``--batch`` utterances of ``--frames`` frames (250 = 10 s at stride 4) of peaky random
log-probs (a blank-or-token path with the right token's logit raised by 6, as a trained model
emits), for two output sets: the 29-output unigram set (blank + a-z, space, apostrophe) and the
813-output bigram set (those + all 784 bigrams). Every decoder gets the same log-probs; the
batched rows include moving the transcripts to the host. No LM here (issue 18's LM rows come
when the batched search has one).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from speechlab.data.text import DEFAULT_CHARS
from speechlab.decode.batched_prefix_beam import BatchedPrefixBeamSearch
from speechlab.decode.prefix_beam import PrefixBeamSearch, native_available


def gram_sets() -> dict[str, list[str]]:
    chars = list(DEFAULT_CHARS)
    return {"29 outputs (unigrams)": chars,
            "813 outputs (+ 784 bigrams)": chars + ["".join(p) for p in itertools.product(chars, repeat=2)]}


def emissions(batch: int, frames: int, outputs: int, seed: int = 0) -> torch.Tensor:
    """``(batch, frames, outputs)`` log-probs: per frame blank (p 0.5) or a random token,
    whose logit is raised by 6 over N(0, 1) noise."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, outputs, generator=gen)
    blank = torch.rand(batch, frames, generator=gen) < 0.5
    token = torch.randint(1, outputs, (batch, frames), generator=gen)
    label = torch.where(blank, torch.zeros_like(token), token)
    logits.scatter_add_(-1, label[..., None], torch.full((batch, frames, 1), 6.0))
    return logits.log_softmax(-1)


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Median wall seconds of ``fn`` over ``repeat`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def greedy(lp: torch.Tensor, grams: list[str]) -> list[str]:
    """Batched greedy decoding: argmax, merge repeats, drop blanks (on the device), texts on the host."""
    ids = lp.argmax(-1)
    keep = (ids != 0) & torch.cat([torch.ones_like(ids[:, :1], dtype=torch.bool), ids[:, 1:] != ids[:, :-1]], 1)
    ids, keep = ids.cpu().tolist(), keep.cpu().tolist()
    return ["".join(grams[i - 1] for i, k in zip(row, ks, strict=True) if k) for row, ks in zip(ids, keep, strict=True)]


def flashlight_decoder(chars: list[str], beam: int) -> Callable[[torch.Tensor, torch.Tensor], list[str]] | None:
    """torchaudio's lexicon-free flashlight decoder (None when flashlight-text is missing)."""
    try:
        from torchaudio.models.decoder import ctc_decoder
    except (ImportError, RuntimeError):  # torchaudio raises RuntimeError without flashlight-text
        return None
    tokens = ["-", *["|" if c == " " else c for c in chars]]
    fl = ctc_decoder(lexicon=None, tokens=tokens, lm=None, beam_size=beam, beam_threshold=math.inf,
                     blank_token="-", sil_token="|", log_add=True)

    def decode(lp: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return [" ".join("".join(tokens[i] for i in h[0].tokens.tolist() if i != 0)
                         .replace("|", " ").split()) for h in fl(lp.float(), lengths)]
    return decode


def bench_set(grams: list[str], args: argparse.Namespace, device: torch.device
              ) -> tuple[list[tuple[str, float, list[str] | None]], list[str]]:
    """``[(decoder, seconds per batch, best texts)]`` for one output set (batched greedy first),
    and the batched beam search's texts."""
    chars = list(DEFAULT_CHARS)
    lp_cpu = emissions(args.batch, args.frames, len(grams) + 1)
    lp = lp_cpu.to(device)
    lengths = torch.full((args.batch,), args.frames)
    opts = {"beam_size": args.beam, "token_beam": args.token_beam}
    cpu_repeat = max(1, args.repeat // 2)
    batched = BatchedPrefixBeamSearch(chars, grams, device=device, dtype=torch.float32, **opts)
    reference = batched.decode_batch(lp, lengths)
    rows: list[tuple[str, float, list[str] | None]] = [
        ("batched greedy", timed(lambda: greedy(lp, grams), device, args.repeat), None),
        ("batched beam (float32)", timed(lambda: batched.decode_batch(lp, lengths), device, args.repeat),
         reference)]
    if native_available():
        torch.set_num_threads(1)
        cpu = PrefixBeamSearch(chars, grams, **opts)
        rows.append(("C++ search, 1 thread", timed(lambda: cpu.decode_batch(lp_cpu, lengths),
                                                    torch.device("cpu"), cpu_repeat),
                     cpu.decode_batch(lp_cpu, lengths)))
        searches = [PrefixBeamSearch(chars, grams, **opts) for _ in range(args.threads)]

        def one(b: int) -> str:
            return searches[b % args.threads].decode(lp_cpu[b])[0].text

        def all_cores() -> list[str]:
            with ThreadPoolExecutor(args.threads) as pool:  # ctypes calls release the GIL
                return list(pool.map(one, range(args.batch)))
        rows.append((f"C++ search, {args.threads} threads", timed(all_cores, torch.device("cpu"), cpu_repeat),
                     all_cores()))
    fl = flashlight_decoder(chars, args.beam) if len(grams) == len(chars) else None
    if fl is not None:
        rows.append(("flashlight ctc_decoder (CPU)", timed(lambda: fl(lp_cpu, lengths), torch.device("cpu"),
                                                            cpu_repeat), fl(lp_cpu, lengths)))
    return rows, reference


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--frames", type=int, default=250)
    p.add_argument("--beam", type=int, default=16)
    p.add_argument("--token-beam", type=int, default=0, help="tokens tried per frame (0: all)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="threads of the 'C++ search, every core' row (one utterance each)")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}; batch {args.batch} x {args.frames} frames; beam {args.beam}, "
          f"token_beam {args.token_beam}; median of {args.repeat}; torch {torch.__version__}")
    print("\n| output set | decoder | ms per batch | utterances/s | ÷ batched greedy | same best text |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for label, grams in gram_sets().items():
        rows, reference = bench_set(grams, args, device)
        base = rows[0][1]
        for decoder, seconds, texts in rows:
            same = "–" if texts is None else f"{sum(a == b for a, b in zip(texts, reference, strict=True))}/{args.batch}"
            print(f"| {label} | {decoder} | {1000 * seconds:.1f} | {args.batch / seconds:,.0f} | "
                  f"{seconds / base:.2f} | {same} |")

if __name__ == "__main__":
    main()
