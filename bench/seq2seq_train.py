"""Training-step speed of the attention seq2seq models against the CTC recipe, side by side.

The models are the tiny recipes' (``recipes/tiny/{ctc,seq2seq,seq2seq_cold}.yaml``, model
``init_args`` as written), the batches are real ones from a manifest (``SpeechDataModule`` with
``--max-duration`` seconds of audio per batch, the same batches for every model). One training
step = forward, loss, backward, AdamW step. The models are timed in turns (round-robin, one step
each per round) so that a machine whose load changes during the run slows all of them alike; the
table gives the median ms per step, steps/s, the ratio to CTC's steps/s and audio seconds per
second.

On the CPU, the plain rows run the decoder's teacher-forced recurrence with its hand-written
backward (:meth:`AttentionDecoder.bptt_recurrence`, :mod:`speechlab.functional.decoder_bptt`: the
weight gradients once per batch, not once per token); rows ``… (autograd recurrence)`` run the
same recurrence through autograd step by step (``decoder.cpu_bptt = False``), as before it.
Rows ``… (CUDA graphs)`` (on a GPU) run the decoder's teacher-forced recurrence as CUDA graphs
(``decoder.cuda_graphs: true``: one graph per padded batch shape, captured while every batch is
seen once in the warm-up, float32 inside). Rows ``… (step by step)`` are the anchor: the same model with teacher forcing run token by token
through :meth:`AttentionDecoder.step` (:meth:`AttentionDecoder.forward_stepwise`) and the
location features computed as a convolution then a projection — what the code did before
``AttentionDecoder.forward`` batched the embeddings, the LM, fusion and the output DNN over the
sequence and ``Attention.location_features`` became one product.

  OMP_NUM_THREADS=1 python bench/seq2seq_train.py --manifest data/tiny/train.jsonl --device cpu
  python bench/seq2seq_train.py --manifest data/synth10k/train.jsonl --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "recipes"))

from effective_config import effective_configs  # noqa: E402

from speechlab.data.speech import SpeechDataModule  # noqa: E402
from speechlab.nn.decoder import AttentionDecoder  # noqa: E402
from speechlab.nn.lm import RNNLanguageModel  # noqa: E402
from speechlab.tasks.ctc import CTCTask  # noqa: E402
from speechlab.tasks.rnnlm import lm_bundle  # noqa: E402
from speechlab.tasks.seq2seq import Seq2SeqTask  # noqa: E402


class StepwiseDecoder(torch.nn.Module):
    """Wraps a decoder so that its ``forward`` is :meth:`AttentionDecoder.forward_stepwise`."""

    def __init__(self, decoder: AttentionDecoder) -> None:
        super().__init__()
        self.inner = decoder
        att = decoder.attention
        if att.kind == "location":  # and the location features as a convolution + projection
            att.location_features = lambda a, filters=None: att.location_proj(
                att.location_conv(a[:, None, :]).transpose(1, 2))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, memory, inputs, lm=None, sampling_prob=0.0):  # noqa: ANN001
        return self.inner.forward_stepwise(memory, inputs, lm, sampling_prob)


def recipe_model_args(name: str) -> dict[str, Any]:
    """``model.init_args`` of ``recipes/tiny/<name>.yaml`` as ``speechlab fit`` reads it (a
    variant holds only what it changes), without its files."""
    config = effective_configs([REPO / "recipes/tiny" / f"{name}.yaml"], in_process=True)[0]
    args = config["model"]["init_args"]
    return {k: v for k, v in args.items() if k not in ("output_dir", "lm_checkpoint", "test_lm_checkpoint")}


def build_models(lm_path: Path, ctc_weight: float, cuda_graphs: bool = False,
                 autograd_rows: bool = False) -> dict[str, torch.nn.Module]:
    from speechlab.nn.decoder import AttentionDecoderConfig
    from speechlab.nn.encoders import SpeechEncoderConfig

    def s2s(name: str, **kw: Any) -> Seq2SeqTask:
        a = recipe_model_args(name)
        a["encoder"] = SpeechEncoderConfig(**a["encoder"])
        a["decoder"] = AttentionDecoderConfig(**a["decoder"])
        return Seq2SeqTask(**{**a, **kw})

    ctc_args = recipe_model_args("ctc")
    ctc_args["encoder"] = SpeechEncoderConfig(**ctc_args["encoder"])
    models: dict[str, torch.nn.Module] = {"ctc": CTCTask(**ctc_args)}
    for label, recipe, kw in (("seq2seq none", "seq2seq", {}),
                              (f"seq2seq none + CTC {ctc_weight}", "seq2seq", {"ctc_weight": ctc_weight}),
                              ("seq2seq cold", "seq2seq_cold", {"fusion": "cold", "lm_checkpoint": str(lm_path)})):
        models[label] = s2s(recipe, **kw)
        if cuda_graphs:
            graphed = s2s(recipe, **kw)
            graphed.decoder.config.cuda_graphs = True
            models[f"{label} (CUDA graphs)"] = graphed
        if autograd_rows:
            eager = s2s(recipe, **kw)
            eager.decoder.cpu_bptt = False
            models[f"{label} (autograd recurrence)"] = eager
        slow = s2s(recipe, **kw)
        slow.decoder = StepwiseDecoder(slow.decoder)
        models[f"{label} (step by step)"] = slow
    return models


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="training manifest to draw batches from")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: autocast (bf16-mixed), as recipes with precision bf16-mixed")
    p.add_argument("--max-duration", type=float, default=30.0, help="seconds of audio per batch")
    p.add_argument("--batches", type=int, default=8, help="distinct batches, cycled")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--ctc-weight", type=float, default=0.3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    dev = torch.device(args.device)

    dm = SpeechDataModule(args.manifest, max_duration=args.max_duration, num_workers=0, dither=0.0)
    dm.setup("fit")
    batches = []
    for b in dm.train_dataloader():
        batches.append({k: v.to(dev) if torch.is_tensor(v) else v for k, v in b.items()})
        if len(batches) == args.batches:
            break
    lm_path = Path("/tmp/speechlab_bench_lm.pt")
    config = {"vocab_size": 29, "embed_dim": 64, "hidden_size": 256, "num_layers": 1, "dropout": 0.1}
    from speechlab.data.text import CharVocab
    torch.save(lm_bundle(RNNLanguageModel(**config), config, CharVocab()), lm_path)
    models = build_models(lm_path, args.ctc_weight, cuda_graphs=dev.type == "cuda",
                          autograd_rows=dev.type == "cpu")
    opts = {}
    for name, m in models.items():
        m.to(dev).train()
        opts[name] = torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-4)

    def one_step(name: str, batch: dict[str, Any]) -> float:
        m, opt = models[name], opts[name]
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = m.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {n: [] for n in models}
    warmup = max(args.warmup, len(batches))  # every batch once (CUDA graphs: one capture per shape)
    failed: dict[str, str] = {}
    for i in range(warmup + args.steps):
        batch = batches[i % len(batches)]
        for name in models:
            if name in failed:
                continue
            try:
                dt = one_step(name, batch)
            except Exception as e:  # noqa: BLE001 - one row's failure is reported, the rest run
                failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                print(f"{name}: failed: {failed[name]}", file=sys.stderr)
                continue
            if i >= warmup:
                times[name].append(dt)
    audio = statistics.mean(float(b["feature_lens"].sum()) / 100.0 for b in batches)  # 10 ms frames
    ctc_ms = statistics.median(times["ctc"]) * 1e3
    rows = ["| model | ms / step (median) | steps/s | ÷ CTC steps/s | audio s/s |",
            "|---|---:|---:|---:|---:|"]
    result = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "precision": args.precision,
              "max_duration": args.max_duration, "audio_s_per_batch": audio, "rows": {}}
    for name, ts in times.items():
        if name in failed:
            rows.append(f"| {name} | failed: {failed[name]} | | | |")
            result["rows"][name] = {"failed": failed[name]}
            continue
        ms = statistics.median(ts) * 1e3
        rows.append(f"| {name} | {ms:.1f} | {1e3 / ms:.2f} | {ctc_ms / ms:.2f} | {audio * 1e3 / ms:.0f} |")
        result["rows"][name] = {"ms": ms, "steps_per_s": 1e3 / ms, "ratio_to_ctc": ctc_ms / ms}
    print(f"device {result['device']}, {result['threads']} thread(s), {args.precision}, "
          f"{len(batches)} batches of ~{audio:.1f} s audio ({args.max_duration:g} s max), "
          f"{args.steps} timed steps each, round-robin")
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
