"""Training-step speed: cuDNN LSTM LM vs TCNLM (topic model + TC-LSTM LM).

One step = forward, backward and a fused Adam update of the whole model on a batch of
``--batch`` sentences of ``--seq`` tokens, vocabulary ``--vocab`` (softmax over it), under
bf16 autocast (``--precision fp32`` for none). Modes:

- ``lstm``: :class:`~speechlab.nn.lm.RNNLanguageModel` (cuDNN LSTM), eager;
- ``lstm+graph``: the same step captured as one CUDA graph;
- ``tcnlm``: the TCNLM step, eager (fused-backward recurrence, Python loop over time);
- ``tcnlm+compile``: the TC-LSTM step functions through ``torch.compile``;
- ``tcnlm+compile+graph``: compiled steps, the whole step captured as one CUDA graph;
- ``tcnlm+autotune+graph``: the same with the steps compiled in inductor's
  ``max-autotune-no-cudagraphs`` mode (Triton GEMM templates that can fuse the ``hc * us``
  scaling and other pointwise work into the products; autotuning costs minutes at the first
  step). Not in the default ``--modes``;
- ``tcnlm+triton+graph``: the forward and backward steps through the fused Triton kernels
  (:mod:`speechlab.nn.tc_lstm_triton`: 4 kernels per time step instead of 8), the whole step
  as one CUDA graph. Not in the default ``--modes`` either;
- ``tcnlm-autograd``: the plain autograd recurrence (:func:`tc_lstm_reference`), eager: what
  the custom backward saves.

Prints one markdown table (ms/step: median over ``--repeats`` timings of ``--iters`` steps each,
CUDA events) and the ratio of each TCNLM mode to the eager cuDNN LSTM step. Runs on CPU too
(``--device cpu``, graph modes skipped) for a smoke test.

  python bench/tcnlm.py --hidden 600 900
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's speechlab

from speechlab.nn.factorized_lstm import CUDAGraphStep, TopicCompositionalLM, compile_steps  # noqa: E402
from speechlab.nn.lm import RNNLanguageModel  # noqa: E402
from speechlab.nn.topic import NeuralTopicModel  # noqa: E402

# graph captures last: a failed capture can leave the process's CUDA state unusable
MODES = ("lstm", "tcnlm", "tcnlm-autograd", "tcnlm+compile", "lstm+graph", "tcnlm+compile+graph",
         "tcnlm+autotune+graph", "tcnlm+triton+graph")
DEFAULT_MODES = MODES[:-2]


def make_step(mode: str, args: argparse.Namespace, hidden: int, device: torch.device
              ) -> tuple[Callable[..., torch.Tensor], int]:
    """A training-step function ``(tokens, targets, bow) -> loss`` for ``mode`` and the model's
    parameter count."""
    torch.manual_seed(0)
    factor = args.factor or hidden
    if mode.startswith("lstm"):
        lm = RNNLanguageModel(args.vocab, args.embed, hidden, 1, "lstm", args.dropout).to(device)
        modules: list[torch.nn.Module] = [lm]
    else:
        lm = TopicCompositionalLM(args.vocab, args.topics, args.embed, hidden, factor, 1,
                                  args.dropout).to(device)
        ntm = NeuralTopicModel(args.topic_vocab, args.topics, 256).to(device)
        modules = [lm, ntm]
    params = [p for m in modules for p in m.parameters()]
    graph = mode.endswith("+graph")
    opt = torch.optim.Adam(params, lr=1e-4, fused=device.type == "cuda", capturable=graph)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=args.precision == "bf16",
                              cache_enabled=False)
    reference = mode == "tcnlm-autograd"

    def step(tokens: torch.Tensor, targets: torch.Tensor, bow: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with autocast:
            if mode.startswith("lstm"):
                logits, _, _ = lm(tokens)
                extra = 0.0
            else:
                out = ntm(bow)
                if reference:
                    emb = lm.dropout(lm.embedding(tokens))
                    hidden_states, _ = lm.rnn.layers[0](emb, out.topics, reference=True)
                    logits = lm.output(lm.dropout(hidden_states))
                else:
                    logits, _, _ = lm(tokens, out.topics)
                extra = (out.nll + out.kl).mean() / tokens.numel()
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)) + extra
        loss.backward()
        opt.step()
        return loss

    return step, sum(p.numel() for p in params)


def time_mode(mode: str, args: argparse.Namespace, hidden: int, device: torch.device) -> dict:
    if "autotune" in mode:
        compile_steps(True, mode="max-autotune-no-cudagraphs")
    else:
        compile_steps("compile" in mode)
    if "triton" in mode:
        from speechlab.nn.tc_lstm_triton import use_triton_steps

        use_triton_steps(True)
    step, n_params = make_step(mode, args, hidden, device)
    g = torch.Generator(device="cpu").manual_seed(1)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
    targets = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
    bow = torch.poisson(torch.full((args.batch, args.topic_vocab), 0.02), generator=g).to(device)
    t0 = time.perf_counter()
    if mode.endswith("+graph"):
        graphed = CUDAGraphStep(step, [tokens, targets, bow], warmup=3)

        def run() -> torch.Tensor:
            return graphed(tokens, targets, bow)
    else:
        def run() -> torch.Tensor:
            return step(tokens, targets, bow)
        run()
    loss = float(run())
    sync(device)
    setup_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        run()
    times = []
    for _ in range(args.repeats):
        times.append(timed(run, args.iters, device) / args.iters)
    loss_after = float(run())
    return {"mode": mode, "hidden": hidden, "ms": 1000 * statistics.median(times),
            "ms_min": 1000 * min(times), "params": n_params, "setup_s": setup_s,
            "loss": loss, "loss_after": loss_after}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Seconds for ``n`` calls (CUDA events on the GPU)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return time.perf_counter() - t


def isolated_rows(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    """Rows of each hidden size measured by a child process of this script."""
    import subprocess
    import tempfile

    rows = []
    skip = {"--hidden", "--isolate", "--json"}
    base, i = [], 0
    while i < len(argv):  # drop --hidden/--json and their values
        if argv[i] in skip:
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1
            continue
        base.append(argv[i])
        i += 1
    for hidden in args.hidden:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            proc = subprocess.run([sys.executable, __file__, *base, "--hidden", str(hidden), "--json", str(out)],
                                  stdout=subprocess.DEVNULL)
            if out.exists():
                rows += json.loads(out.read_text())
            else:
                rows += [{"mode": m, "hidden": hidden, "error": f"child process exit {proc.returncode}"}
                         for m in args.modes]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, nargs="+", default=[600, 900])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=30)
    p.add_argument("--vocab", type=int, default=34000)
    p.add_argument("--embed", type=int, default=300)
    p.add_argument("--factor", type=int, default=0, help="TC-LSTM factor size (0: = hidden)")
    p.add_argument("--topics", type=int, default=50)
    p.add_argument("--topic-vocab", type=int, default=3000)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--isolate", action="store_true",
                   help="run each hidden size in its own process (a failed graph capture cannot "
                        "spoil the other size's timings)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    if args.isolate and len(args.hidden) > 1:
        rows = isolated_rows(args, argv if argv is not None else sys.argv[1:])
    for hidden in [] if rows else args.hidden:
        for mode in args.modes:
            if mode.endswith("+graph") and device.type != "cuda":
                continue
            try:
                row = time_mode(mode, args, hidden, device)
            except Exception as e:  # report and go on: one failing mode must not hide the rest
                row = {"mode": mode, "hidden": hidden, "error": f"{type(e).__name__}: {e}"[:300]}
            finally:
                compile_steps(False)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"\nTraining step (fwd + bwd + Adam), batch {args.batch} x {args.seq} tokens, vocabulary "
          f"{args.vocab}, embedding {args.embed}, TCNLM {args.topics} topics, factor "
          f"{args.factor or 'hidden'}, topic vocabulary {args.topic_vocab}, {args.precision}; {name}, "
          f"torch {torch.__version__}; median of {args.repeats} x {args.iters} steps\n")
    print("| hidden | mode | ms/step | × cuDNN LSTM (eager) | × cuDNN LSTM (graph) | params | first step s |")
    print("|---|---|---|---|---|---|---|")
    for hidden in args.hidden:
        base = {r["mode"]: r.get("ms") for r in rows if r["hidden"] == hidden}
        for r in (r for r in rows if r["hidden"] == hidden):
            if "error" in r:
                print(f"| {hidden} | {r['mode']} | failed: {r['error']} | | | | |")
                continue
            ratio = [f"{r['ms'] / base[b]:.2f}" if base.get(b) else "–" for b in ("lstm", "lstm+graph")]
            print(f"| {hidden} | {r['mode']} | {r['ms']:.2f} | {ratio[0]} | {ratio[1]} | "
                  f"{r['params'] / 1e6:.1f}M | {r['setup_s']:.1f} |")
    if args.json:
        from speechlab.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
