"""The attention decoder's hand-written BPTT (:mod:`speechlab.functional.decoder_bptt`) against
the autograd recurrence it replaces in CPU training (:meth:`AttentionDecoder.recurrence`): the
same outputs and every gradient in float64 to ~1e-10 (several shapes, padded frames, location
and content attention, 1 and 2 layers, inter-layer dropout masks), ``gradcheck``, a whole
Seq2SeqTask training step in float32, and that CPU training really dispatches to it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import speechlab.nn.decoder as decoder_module
from speechlab.functional.decoder_bptt import (
    AttentionWeights,
    LSTMWeights,
    attention_recurrence,
    location_windows,
    location_windows_backward,
)
from speechlab.nn.decoder import AttentionDecoder, AttentionDecoderConfig, Memory, frame_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64


def _decoder(kind: str, layers: int, dtype: torch.dtype = F64, dropout: float = 0.0,
             seed: int = 0) -> AttentionDecoder:
    torch.manual_seed(seed)
    config = AttentionDecoderConfig(embed_dim=6, hidden_size=8, num_layers=layers, attention=kind,
                                    attention_dim=5, location_channels=3, location_kernel=5,
                                    output_dim=8, dropout=dropout)
    return AttentionDecoder(11, 7, config).to(dtype).train()


def _inputs(b: int, u: int, t: int, lengths: list[int], seed: int = 1, dtype: torch.dtype = F64
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leaf ``embedded (B, U, 6)``, ``values (B, T, 7)``, ``keys (B, T, 5)`` and ``lengths``;
    the padded frames hold large values, so that any leak of them shows."""
    g = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(lengths)
    pad = ~frame_mask(lengths_t, t)
    values = torch.randn(b, t, 7, generator=g, dtype=dtype)
    keys = torch.randn(b, t, 5, generator=g, dtype=dtype)
    values[pad] = 50.0
    keys[pad] = -50.0
    embedded = torch.randn(b, u, 6, generator=g, dtype=dtype)
    return (embedded.requires_grad_(), values.requires_grad_(), keys.requires_grad_(), lengths_t)


def _recurrence_params(dec: AttentionDecoder) -> dict[str, torch.Tensor]:
    """Every decoder parameter the recurrence reads (``memory_proj`` acts through the keys)."""
    return {f"cells.{n}": p for n, p in dec.cells.named_parameters()} | {
        f"attention.{n}": p for n, p in dec.attention.named_parameters()
        if not n.startswith("memory_proj")}


def _outputs_and_grads(outputs: tuple[torch.Tensor, ...], weights: list[torch.Tensor],
                       wrt: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    loss = sum((o * w).sum() for o, w in zip(outputs, weights, strict=True))
    grads = torch.autograd.grad(loss, list(wrt.values()))
    named = dict(zip(("queries", "contexts", "alignments"), outputs, strict=True))
    return named | {f"d {n}": g for n, g in zip(wrt, grads, strict=True)}


def _assert_rel_close(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor],
                      rtol: float) -> None:
    assert got.keys() == ref.keys()
    for name, r in ref.items():
        g = got[name]
        assert g.shape == r.shape and g.dtype == r.dtype, name
        scale = r.abs().max().item()
        err = (g - r).abs().max().item()
        assert err <= rtol * max(scale, 1e-30), f"{name}: max error {err:.3g} (scale {scale:.3g})"


CASES = [  # (B, U, T, lengths)
    (1, 1, 4, [4]),
    (3, 6, 9, [9, 5, 2]),
    (2, 11, 13, [7, 13]),
    (4, 3, 6, [1, 6, 3, 4]),
]


@pytest.mark.parametrize("kind", ["location", "content"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize(("b", "u", "t", "lengths"), CASES)
def test_bptt_recurrence_equals_the_autograd_recurrence_in_float64(kind, layers, b, u, t, lengths):
    """Queries, contexts, alignments and the gradients of the embedded inputs, the memory
    values and keys and every recurrence parameter, for random output gradients (all three
    outputs), to 1e-10 relative."""
    dec = _decoder(kind, layers)
    embedded, values, keys, lengths_t = _inputs(b, u, t, lengths)
    memory = Memory(values, keys, frame_mask(lengths_t, t), lengths_t)
    wrt = {"embedded": embedded, "values": values, "keys": keys} | _recurrence_params(dec)
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(s, generator=g, dtype=F64) for s in ((b, u, 8), (b, u, 7), (b, u, t))]

    ref = _outputs_and_grads(dec.recurrence(embedded, memory), weights, wrt)
    got_out = dec.bptt_recurrence(embedded, memory)
    assert type(got_out[0].grad_fn).__name__ == "_AttentionRecurrenceBackward"
    got = _outputs_and_grads(got_out, weights, wrt)
    _assert_rel_close(got, ref, rtol=1e-10)
    assert (got["alignments"][~memory.mask[:, None, :].expand(b, u, t)] == 0).all()
    for name in ("d values", "d keys"):  # nothing reaches the padded frames
        assert (got[name][~memory.mask] == 0).all(), name


def test_bptt_recurrence_with_only_some_outputs_used():
    """Outputs that the loss does not read get no gradient (None in the backward): the rest
    still match."""
    dec = _decoder("location", 1)
    embedded, values, keys, lengths_t = _inputs(3, 5, 8, [8, 6, 3])
    memory = Memory(values, keys, frame_mask(lengths_t, 8), lengths_t)
    wrt = {"embedded": embedded, "values": values, "keys": keys} | _recurrence_params(dec)
    for used in ([0], [1], [2], [0, 1]):
        grads = []
        for out in (dec.recurrence(embedded, memory), dec.bptt_recurrence(embedded, memory)):
            loss = sum((out[i] * (i + 1.5)).sin().sum() for i in used)
            grads.append(dict(zip(wrt, torch.autograd.grad(loss, list(wrt.values())),
                                  strict=True)))
        _assert_rel_close(grads[1], grads[0], rtol=1e-10)


class _GivenMasks(nn.Module):
    """Stands in for the decoder's dropout inside :meth:`AttentionDecoder.recurrence`: the
    ``i``-th call multiplies by ``masks[i]`` (the inter-layer dropout of step ``i // (L−1)``)."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.masks = list(masks.transpose(0, 1).flatten(0, 1))  # (U·(L−1), B, H), step-major
        self.p = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.masks.pop(0)


@pytest.mark.parametrize("kind", ["location", "content"])
def test_bptt_recurrence_applies_the_given_inter_layer_dropout_masks(kind):
    """3 layers, dropout masks given: the autograd recurrence with the same masks in place of
    its dropout gives the same outputs and gradients."""
    dec = _decoder(kind, 3)
    b, u, t = 3, 7, 9
    embedded, values, keys, lengths_t = _inputs(b, u, t, [9, 4, 6])
    memory = Memory(values, keys, frame_mask(lengths_t, t), lengths_t)
    keep = torch.rand(2, u, b, 8, generator=torch.Generator().manual_seed(3)) > 0.3
    masks = keep.to(F64) / 0.7
    wrt = {"embedded": embedded, "values": values, "keys": keys} | _recurrence_params(dec)
    g = torch.Generator().manual_seed(4)
    weights = [torch.randn(s, generator=g, dtype=F64) for s in ((b, u, 8), (b, u, 7), (b, u, t))]
    att = dec.attention
    got = _outputs_and_grads(attention_recurrence(
        embedded, values, keys, memory.mask, dec.init_state(memory)["alignment"],
        [LSTMWeights(c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh) for c in dec.cells],
        AttentionWeights(att.query_proj.weight, att.energy.weight[0],
                         att.location_filters() if kind == "location" else None),
        masks), weights, wrt)
    dec.dropout = _GivenMasks(masks)
    ref = _outputs_and_grads(dec.recurrence(embedded, memory), weights, wrt)
    assert not dec.dropout.masks  # every mask used once
    _assert_rel_close(got, ref, rtol=1e-10)


def test_the_decoder_draws_inter_layer_dropout_masks_in_training():
    """num_layers 2 with dropout: :meth:`bptt_recurrence` passes masks of zeros and
    ``1/(1−p)`` (about a fraction ``p`` dropped), and no masks in eval (where it does not run
    in :meth:`forward` anyway) or with one layer."""
    seen = []

    def spy(*args, **kwargs):
        seen.append(args[-1])
        return attention_recurrence(*args, **kwargs)

    embedded, values, keys, lengths_t = _inputs(4, 30, 8, [8, 8, 5, 2])
    memory = Memory(values, keys, frame_mask(lengths_t, 8), lengths_t)
    mp = pytest.MonkeyPatch()
    mp.setattr(decoder_module, "attention_recurrence", spy)
    try:
        _decoder("location", 2, dropout=0.25).bptt_recurrence(embedded, memory)
        _decoder("location", 1, dropout=0.25).bptt_recurrence(embedded, memory)
    finally:
        mp.undo()
    masks = seen[0]
    assert masks.shape == (1, 30, 4, 8)
    assert set(masks.unique().tolist()) == {0.0, 1 / 0.75}
    assert 0.15 < (masks == 0).double().mean().item() < 0.35
    assert seen[1] is None


@pytest.mark.parametrize("kind", ["location", "content"])
def test_attention_recurrence_passes_gradcheck(kind):
    """``torch.autograd.gradcheck`` of :func:`attention_recurrence` with respect to every
    float input (2 layers, dropout masks, a padded frame)."""
    torch.manual_seed(5)
    b, u, t, e, d, n, a, k = 2, 3, 5, 3, 4, 3, 3, 3
    lengths = torch.tensor([5, 3])
    mask = frame_mask(lengths, t)
    first = mask.to(F64) / lengths[:, None].to(F64)

    def leaf(*shape: int, scale: float = 0.5) -> torch.Tensor:
        return (scale * torch.randn(*shape, dtype=F64)).requires_grad_()

    cells = [LSTMWeights(leaf(4 * n, e + d), leaf(4 * n, n), leaf(4 * n), leaf(4 * n)),
             LSTMWeights(leaf(4 * n, n), leaf(4 * n, n), leaf(4 * n), leaf(4 * n))]
    att = AttentionWeights(leaf(a, n), leaf(a, scale=1.0),
                           leaf(k, a, scale=2.0) if kind == "location" else None)
    masks = (torch.rand(1, u, b, n) > 0.3).to(F64) / 0.7
    inputs = [leaf(b, u, e), leaf(b, t, d), leaf(b, t, a), *att[:2],
              *([att.filters] if att.filters is not None else []), *(w for c in cells for w in c)]

    def fn(embedded, values, keys, query, energy, *rest):
        filters, rest = (rest[0], rest[1:]) if kind == "location" else (None, rest)
        cells = [LSTMWeights(*rest[i:i + 4]) for i in range(0, len(rest), 4)]
        return attention_recurrence(embedded, values, keys, mask, first, cells,
                                    AttentionWeights(query, energy, filters), masks)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_location_windows_backward_is_the_gradient_of_the_windows():
    torch.manual_seed(6)
    for b, t, k in ((3, 10, 5), (2, 3, 7), (1, 1, 1), (4, 6, 3)):
        alignment = torch.randn(b, t, dtype=F64, requires_grad=True)
        grad_windows = torch.randn(b, t, k, dtype=F64)
        (ref,) = torch.autograd.grad((location_windows(alignment, k) * grad_windows).sum(),
                                     alignment)
        got = location_windows_backward(grad_windows.permute(2, 0, 1))
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


# ---- the decoder and the task --------------------------------------------------------------


def _task(num_layers: int = 1, kind: str = "location", fusion: str = "none", lm=None):
    from speechlab.nn.encoders import SpeechEncoderConfig
    from speechlab.tasks.seq2seq import Seq2SeqTask

    torch.manual_seed(7)
    enc = SpeechEncoderConfig(input_dim=20, hidden_size=24, num_layers=1, dropout=0.1)
    dec = AttentionDecoderConfig(embed_dim=16, hidden_size=32, num_layers=num_layers,
                                 attention=kind, attention_dim=16, location_channels=4,
                                 location_kernel=7, output_dim=32, fusion_dim=16, dropout=0.1)
    return Seq2SeqTask(encoder=enc, decoder=dec, fusion=fusion, lm_checkpoint=lm,
                       spec_augment=False, label_smoothing=0.1, ctc_weight=0.3).train()


def _batch(seed: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([160, 131, 97])
    features = torch.randn(3, 160, 20, generator=g)
    features[frame_mask(lens, 160).logical_not()] = 0
    target_lens = torch.tensor([9, 12, 5])
    targets = torch.randint(1, 28, (3, 12), generator=g)
    targets[frame_mask(target_lens, 12).logical_not()] = 0
    return {"features": features, "feature_lens": lens, "targets": targets,
            "target_lens": target_lens}


def _step_grads(task, batch: dict[str, torch.Tensor], seed: int) -> tuple[float, dict]:
    task.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks in both paths (one layer: none inside)
    loss = task.compute_loss(batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in task.named_parameters()
                         if p.grad is not None}


@pytest.mark.parametrize("kind", ["location", "content"])
def test_a_seq2seq_training_step_has_the_autograd_gradients_in_float32(kind):
    """A whole Seq2SeqTask training step (encoder, decoder with dropout, CE + CTC) on the CPU:
    the loss and every parameter's gradient with the BPTT recurrence equal those with the
    autograd recurrence (``decoder.cpu_bptt = False``), to float32 rounding: most to ~1e-7 of
    their largest entry; the attention's smallest gradients (``query_proj``, ``memory_proj``'s
    bias: sums that nearly cancel) to ~1e-4."""
    task, batch = _task(kind=kind), _batch()
    loss, grads = _step_grads(task, batch, seed=9)
    task.decoder.cpu_bptt = False
    ref_loss, ref_grads = _step_grads(task, batch, seed=9)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert grads.keys() == ref_grads.keys()
    assert any(n.startswith("decoder.cells") for n in grads)
    _assert_rel_close(grads, ref_grads, rtol=1e-3)


def test_cpu_training_dispatches_to_the_bptt_recurrence(monkeypatch):
    """In CPU training (float32, no autocast) :meth:`AttentionDecoder.forward` runs
    :func:`attention_recurrence` and not the autograd loop; in eval, under no_grad, with
    ``cpu_bptt = False`` or under bf16 autocast it runs :meth:`AttentionDecoder.recurrence`."""
    calls = {"bptt": 0, "autograd": 0}
    bptt, autograd_loop = decoder_module.attention_recurrence, AttentionDecoder.recurrence

    def count_bptt(*args, **kwargs):
        calls["bptt"] += 1
        return bptt(*args, **kwargs)

    def count_autograd(self, *args, **kwargs):
        calls["autograd"] += 1
        return autograd_loop(self, *args, **kwargs)

    monkeypatch.setattr(decoder_module, "attention_recurrence", count_bptt)
    monkeypatch.setattr(AttentionDecoder, "recurrence", count_autograd)
    for layers in (1, 2):
        task, batch = _task(num_layers=layers), _batch()
        task.compute_loss(batch).backward()
        assert calls == {"bptt": 1, "autograd": 0}, layers
        calls.update(bptt=0)
        task.eval()
        task.compute_loss(batch)
        with torch.no_grad():
            task.train()
            task.compute_loss(batch)
        task.decoder.cpu_bptt = False
        task.compute_loss(batch)
        task.decoder.cpu_bptt = True
        with torch.autocast("cpu", dtype=torch.bfloat16):
            task.compute_loss(batch)
        assert calls == {"bptt": 0, "autograd": 4}, layers
        calls.update(autograd=0)


def test_cold_fusion_training_step_dispatches_and_matches(tmp_path):
    """Cold fusion (the frozen LM and fusion outside the recurrence): the BPTT path runs and
    gives the autograd path's gradients."""
    from speechlab.data.text import CharVocab
    from speechlab.nn.lm import RNNLanguageModel
    from speechlab.tasks.rnnlm import lm_bundle

    config = {"vocab_size": len(CharVocab()), "embed_dim": 8, "hidden_size": 16, "num_layers": 1,
              "dropout": 0.0}
    torch.manual_seed(10)
    torch.save(lm_bundle(RNNLanguageModel(**config), config, CharVocab()), tmp_path / "lm.pt")
    task, batch = _task(fusion="cold", lm=str(tmp_path / "lm.pt")), _batch()
    assert task.decoder.uses_cpu_bptt(torch.zeros(1, 1, 16), Memory(
        torch.zeros(1, 2, 48), torch.zeros(1, 2, 16), torch.ones(1, 2, dtype=torch.bool),
        torch.tensor([2])))
    loss, grads = _step_grads(task, batch, seed=11)
    task.decoder.cpu_bptt = False
    ref_loss, ref_grads = _step_grads(task, batch, seed=11)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    _assert_rel_close(grads, ref_grads, rtol=1e-3)


def test_step_product_is_the_matrix_product():
    """:class:`StepProduct`: ``x Wᵀ`` (to rounding: another BLAS path), for a weight or a transposed one."""
    from speechlab.functional.decoder_bptt import StepProduct

    torch.manual_seed(12)
    w, x = torch.randn(96, 40, dtype=torch.float64), torch.randn(5, 40, dtype=torch.float64)
    torch.testing.assert_close(StepProduct(w)(x), x @ w.t(), rtol=1e-12, atol=1e-12)
    assert StepProduct(w.t())(torch.randn(3, 96, dtype=torch.float64)).shape == (3, 40)
