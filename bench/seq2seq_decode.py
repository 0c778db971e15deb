"""Seq2seq decoding speed: utterances/s of greedy and batched beam search (beam 4, 8), without
fusion, with shallow fusion (RNN LM) and with cold/deep fusion, on CPU or GPU.

Randomly initialized models and synthetic encoder outputs: it needs only torch and speechlab's
``nn``/``decode``/``functional`` modules (no lhotse, soundfile, Lightning or jsonargparse), so it
runs from a bare checkout on the GPU machine. ``<eos>`` is suppressed so that every
configuration decodes exactly ``--out-len`` steps (same work per row; the max-length guard ends
the search). Encoder time is not included.

Targets (GPU, batch 64): beam 8 ≤ 3× greedy wall time; cold fusion ≤ 1.3× no fusion at equal beam.

examples:
  python bench/seq2seq_decode.py --device cpu --batch 16
  python bench/seq2seq_decode.py --device cuda --batch 64 --json bench_seq2seq_gpu.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _import_light(module: str) -> types.ModuleType:
    """Import ``speechlab.<...>`` modules without running the package ``__init__`` files (they
    pull in other models' code and compiled extensions this benchmark does not need)."""
    for pkg in ("speechlab", "speechlab.nn", "speechlab.functional", "speechlab.decode"):
        if pkg not in sys.modules:
            stub = types.ModuleType(pkg)
            stub.__path__ = [str(REPO / pkg.replace(".", "/"))]
            sys.modules[pkg] = stub
    return importlib.import_module(module)


decoder_mod = _import_light("speechlab.nn.decoder")
lm_mod = _import_light("speechlab.nn.lm")
search_mod = _import_light("speechlab.decode.beam_search")

CONFIGS: list[tuple[str, int]] = [(f, b) for f in ("none", "shallow", "deep", "cold") for b in (1, 4, 8)]


def build(fusion: str, vocab: int, memory_dim: int, args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    lm = lm_mod.RNNLanguageModel(vocab, args.lm_embed, args.lm_hidden, args.lm_layers, dropout=0.0)
    cfg = decoder_mod.AttentionDecoderConfig(
        embed_dim=64, hidden_size=args.dec_hidden, attention_dim=128, output_dim=args.dec_hidden,
        fusion_dim=128, dropout=0.0)
    kind = "none" if fusion == "shallow" else fusion
    dec = decoder_mod.AttentionDecoder(vocab, memory_dim, cfg, fusion=kind, lm_hidden_size=args.lm_hidden)
    with torch.no_grad():
        dec.output[-1].bias[0] = -1e4  # no <eos>: every run decodes exactly --out-len steps
    return dec.to(device).eval(), (lm.to(device).eval() if fusion != "none" else None)


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocator, kernels, cuDNN plans)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--frames", type=int, default=100, help="encoder frames per utterance (4 s at stride 4)")
    p.add_argument("--out-len", type=int, default=60, help="decoded tokens per utterance")
    p.add_argument("--vocab", type=int, default=29)
    p.add_argument("--memory-dim", type=int, default=256)
    p.add_argument("--dec-hidden", type=int, default=256)
    p.add_argument("--lm-embed", type=int, default=64)
    p.add_argument("--lm-hidden", type=int, default=512)
    p.add_argument("--lm-layers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--only", nargs="*", default=None, help="subset like none:1 cold:8")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here (atomically)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(args.batch, args.frames, args.memory_dim, generator=g).to(device)
    lens = torch.full((args.batch,), args.frames, dtype=torch.long, device=device)
    ratio = args.out_len / args.frames
    rows = []
    configs = CONFIGS if not args.only else [(s.split(":")[0], int(s.split(":")[1])) for s in args.only]
    for fusion, beam in configs:
        dec, lm = build(fusion, args.vocab, args.memory_dim, args, device)
        weight = 0.3 if fusion == "shallow" else 0.0
        with torch.no_grad():
            memory = dec.prepare_memory(enc, lens)

        def run(dec=dec, lm=lm, memory=memory, weight=weight, beam=beam) -> None:
            if beam == 1:
                out = search_mod.greedy_search(dec, memory, lm, weight, max_len_ratio=ratio)
                assert len(out[0].tokens) == args.out_len
            else:
                out = search_mod.beam_search(dec, memory, lm, weight, beam_size=beam, max_len_ratio=ratio)
                assert len(out[0][0].tokens) == args.out_len

        sec = timed(run, device, args.repeats)
        rows.append({"fusion": fusion, "beam": beam, "seconds": sec, "utt_per_s": args.batch / sec,
                     "ms_per_step": 1000 * sec / (args.out_len + 1)})
    by = {(r["fusion"], r["beam"]): r for r in rows}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\nseq2seq decoding, {name}, torch {torch.__version__}: batch {args.batch}, "
          f"{args.frames} encoder frames, {args.out_len} output tokens, decoder {args.dec_hidden}, "
          f"LM {args.lm_layers}x{args.lm_hidden} LSTM\n")
    print("| fusion | search | s / batch | utt/s | ms / step | × greedy (same fusion) | × no fusion (same beam) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        g1 = by.get((r["fusion"], 1))
        n0 = by.get(("none", r["beam"]))
        r["x_greedy"] = r["seconds"] / g1["seconds"] if g1 else None
        r["x_none"] = r["seconds"] / n0["seconds"] if n0 else None
        fmt = lambda x: f"{x:.2f}" if x is not None else "–"  # noqa: E731
        search = "greedy" if r["beam"] == 1 else f"beam {r['beam']}"
        print(f"| {r['fusion']} | {search} | {r['seconds']:.3f} | {r['utt_per_s']:.1f} | "
              f"{r['ms_per_step']:.2f} | {fmt(r['x_greedy'])} | {fmt(r['x_none'])} |")
    checks = []
    if ("none", 8) in by and ("none", 1) in by:
        x = by[("none", 8)]["x_greedy"]
        checks.append(f"beam 8 / greedy (no fusion) = {x:.2f}  (target ≤ 3.0: {'PASS' if x <= 3 else 'FAIL'})")
    for beam in (1, 4, 8):
        if ("cold", beam) in by and ("none", beam) in by:
            x = by[("cold", beam)]["x_none"]
            checks.append(f"cold / none at beam {beam} = {x:.2f}  (target ≤ 1.3: {'PASS' if x <= 1.3 else 'FAIL'})")
    print("\n" + "\n".join(checks))
    if args.json:
        meta = {"device": name, "torch": torch.__version__, **{k: v for k, v in vars(args).items()
                                                              if k != "json"}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.json.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"meta": meta, "rows": rows, "checks": checks}, f, indent=1, default=str)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
