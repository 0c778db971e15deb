"""Gram-CTC speed and memory against torch's ctc_loss, printed as a markdown table.

    python bench/gram_ctc.py --device cuda          # H200: speechlab CUDA vs torch native/cuDNN
    python bench/gram_ctc.py --device cpu           # speechlab C++ vs torch CPU vs reference

Rows: batch/frames/target length, gram set (unigrams: 29 outputs; unigrams + all bigrams of
the 28 characters: 813 outputs), implementation. Columns: milliseconds for the forward
(loss with ``log_probs.requires_grad``) and for forward + backward (``loss.backward()``),
median over repeats, and peak extra memory of forward + backward (CUDA: allocator peak above
the inputs; CPU: not measured). Every utterance has ``T`` frames and ``U`` random characters;
reduction is "mean", fp32.

``speechlab`` rows use the public ``gram_ctc_loss`` with its default ``validate=True``, on
inputs all on the device: the kernels flag bad lengths / target ids and reading the flags is
one host synchronisation; ``speechlab (validate=False)`` skips the check. On CUDA two more
rows keep the default: ``(lengths on CPU)`` passes the lengths as CPU tensors (checked on
the host; the target ids still through the flags: one sync) and ``(lengths+targets on
CPU)`` the targets too (everything checked on the host, copied through pinned memory: no
sync). torch's ``ctc_loss`` also synchronises (it copies the lengths to the host).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speechlab import ops  # noqa: E402
from speechlab.data.grams import GramSet  # noqa: E402
from speechlab.data.text import CharVocab  # noqa: E402
from speechlab.functional import gram_ctc_loss  # noqa: E402

CONFIGS = [(32, 500, 100), (32, 1000, 200), (128, 500, 100)]


def make_inputs(b: int, t: int, u: int, v: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((t, b, v), generator=g)
    lp = logits.log_softmax(-1).to(device).requires_grad_(True)
    targets = torch.randint(1, 29, (b, u), generator=g)
    il = torch.full((b,), t, dtype=torch.int64)
    tl = torch.full((b,), u, dtype=torch.int64)
    return lp, targets.to(device), il.to(device), tl.to(device), targets, il, tl


def time_cuda(fn: Callable[[], None], iters: int, repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end) / iters)
    return statistics.median(out)


def time_cpu(fn: Callable[[], None], iters: int, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        out.append((time.perf_counter() - t0) * 1e3 / iters)
    return statistics.median(out)


def peak_mb(fn: Callable[[], None]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_one(
    name: str,
    loss_fn: Callable[[], torch.Tensor],
    lp: torch.Tensor,
    device: str,
    iters: int,
    repeats: int,
) -> dict:
    def fwd() -> None:
        loss_fn()

    def fwd_bwd() -> None:
        lp.grad = None
        loss_fn().backward()

    timer = time_cuda if device == "cuda" else time_cpu
    row = {
        "impl": name,
        "fwd_ms": timer(fwd, iters, repeats),
        "fwd_bwd_ms": timer(fwd_bwd, iters, repeats),
    }
    row["peak_mb"] = peak_mb(fwd_bwd) if device == "cuda" else None
    return row


def run(
    device: str, configs: list[tuple[int, int, int]], iters: int, repeats: int, reference: bool
) -> list[dict]:
    vocab = CharVocab()
    sets = {
        "unigrams (29)": GramSet.unigrams(vocab),
        "+all bigrams (813)": GramSet.all_ngrams(vocab, 2),
    }
    rows = []
    for b, t, u in configs:
        for gname, grams in sets.items():
            lp, tg, il, tl, tg_cpu, il_cpu, tl_cpu = make_inputs(b, t, u, len(grams), device)
            cands: list[tuple[str, Callable[[], torch.Tensor]]] = [
                (
                    f"speechlab {device}",
                    lambda lp=lp, tg=tg, il=il, tl=tl, g=grams: gram_ctc_loss(lp, tg, il, tl, g),
                ),
                (
                    f"speechlab {device} (validate=False)",
                    lambda lp=lp, tg=tg, il=il, tl=tl, g=grams: gram_ctc_loss(
                        lp, tg, il, tl, g, validate=False
                    ),
                ),
            ]
            if device == "cuda":
                cands += [
                    (
                        "speechlab cuda (lengths on CPU)",
                        lambda lp=lp, tg=tg, il=il_cpu, tl=tl_cpu, g=grams: gram_ctc_loss(
                            lp, tg, il, tl, g
                        ),
                    ),
                    (
                        "speechlab cuda (lengths+targets on CPU)",
                        lambda lp=lp, tg=tg_cpu, il=il_cpu, tl=tl_cpu, g=grams: gram_ctc_loss(
                            lp, tg, il, tl, g
                        ),
                    ),
                ]
            if len(grams) == 29:

                def native(lp=lp, tg=tg, il=il, tl=tl):
                    with torch.backends.cudnn.flags(enabled=False):
                        return F.ctc_loss(lp, tg, il, tl)

                cands.append((f"torch {device} native", native))
                if device == "cuda":
                    flat = tg_cpu.reshape(-1).to(torch.int32)
                    ils, tls = il_cpu.tolist(), tl_cpu.tolist()
                    if torch._use_cudnn_ctc_loss(lp, flat, ils, tls, 0):
                        cands.append(
                            (
                                "torch cuda cuDNN",
                                lambda lp=lp, flat=flat, ils=ils, tls=tls: F.ctc_loss(
                                    lp, flat, ils, tls
                                ),
                            )
                        )
                if reference and (b, t, u) == configs[0]:
                    cands.append(
                        (
                            "speechlab reference",
                            lambda lp=lp, tg=tg, il=il, tl=tl, g=grams: gram_ctc_loss(
                                lp, tg, il, tl, g, backend="reference"
                            ),
                        )
                    )
            for name, fn in cands:
                it, rep = (1, 2) if "reference" in name else (iters, repeats)
                row = bench_one(name, fn, lp, device, it, rep)
                row.update(config=f"B{b} T{t} U{u}", grams=gname)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            del lp
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| config | grams | implementation | ms fwd | ms fwd+bwd | peak MB (fwd+bwd) |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        peak = "–" if r["peak_mb"] is None else f"{r['peak_mb']:.1f}"
        lines.append(
            f"| {r['config']} | {r['grams']} | {r['impl']} | {r['fwd_ms']:.3f} | "
            f"{r['fwd_bwd_ms']:.3f} | {peak} |"
        )
    return "\n".join(lines)


def profile(device: str, config: tuple[int, int, int]) -> str:
    """Per-kernel times (torch.profiler) of 10 forward+backward calls, both gram sets."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    out = []
    vocab = CharVocab()
    for grams in (GramSet.unigrams(vocab), GramSet.all_ngrams(vocab, 2)):
        lp, tg, il, tl, *_ = make_inputs(*config, len(grams), device)
        for _ in range(3):
            gram_ctc_loss(lp, tg, il, tl, grams).backward()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with prof(activities=acts) as p:
            for _ in range(10):
                lp.grad = None
                gram_ctc_loss(lp, tg, il, tl, grams).backward()
            if device == "cuda":
                torch.cuda.synchronize()
        key = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
        out.append(
            f"{len(grams)} outputs, B{config[0]} T{config[1]} U{config[2]}, 10 calls\n"
            + p.key_averages().table(sort_by=key, row_limit=14)
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument(
        "--configs",
        nargs="*",
        default=None,
        help="B,T,U triples, e.g. 32,500,100 (default: the three of the issue)",
    )
    p.add_argument(
        "--iters", type=int, default=None, help="calls per timing (default 20 cuda, 2 cpu)"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="timings per row (median; default 5 cuda, 3 cpu)"
    )
    p.add_argument(
        "--no-reference", action="store_true", help="skip the pure-PyTorch reference row"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--profile", action="store_true", help="print per-kernel times and exit")
    p.add_argument(
        "--out", type=Path, default=None, help="also write the table (.md) and rows (.json)"
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    configs = [tuple(int(x) for x in c.split(",")) for c in a.configs] if a.configs else CONFIGS
    iters = a.iters or (20 if a.device == "cuda" else 2)
    repeats = a.repeats or (5 if a.device == "cuda" else 3)
    if a.profile:
        print(profile(a.device, configs[0]))
        return 0
    if a.profile:
        print(profile(a.device, configs[0]))
        return 0
    av = ops.available_backends()
    dev_name = (
        torch.cuda.get_device_name()
        if a.device == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    header = f"Gram-CTC benchmark on {dev_name}; torch {torch.__version__}; backends: " + ", ".join(
        f"{k}={'yes' if ok else 'no'}" for k, (ok, _) in av.items()
    )
    rows = run(a.device, configs, iters, repeats, reference=not a.no_reference)
    text = header + "\n\n" + table(rows)
    print(text)
    if a.out:
        a.out.with_suffix(".md").write_text(text + "\n")
        a.out.with_suffix(".json").write_text(
            json.dumps({"header": header, "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
