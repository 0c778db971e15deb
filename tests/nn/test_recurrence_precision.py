"""Recurrences under CPU bf16 autocast on every x86-64 CPU (:mod:`speechlab.nn.recurrence`).

On a CPU whose oneDNN has no bf16 LSTM primitive (AVX2-only, e.g. AMD EPYC) an ``nn.LSTM`` under
CPU bf16 autocast raises "could not create a primitive descriptor for the LSTM forward
propagation primitive". ``ONEDNN_MAX_CPU_ISA=AVX2``, set before torch loads, makes any x86-64
CPU behave so: the subprocess tests train under it, so they exercise the AVX2 path on AVX-512
machines too. The unit tests force the probe's "unsupported" answer and compare the fallback
with the float32 module run without autocast (the oracle)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import speechlab.nn.recurrence as recurrence
from speechlab.nn.critic import CriticConfig, SequenceCritic
from speechlab.nn.decoder import AttentionDecoder, AttentionDecoderConfig
from speechlab.nn.encoders import SpeechEncoder, SpeechEncoderConfig
from speechlab.nn.lm import RNNLanguageModel
from speechlab.nn.recurrence import cpu_autocast_supports, needs_fp32, run_recurrence

REPO = Path(__file__).resolve().parents[2]
BF16 = torch.bfloat16


def _avx2_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", ONEDNN_MAX_CPU_ISA="AVX2")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def unsupported(monkeypatch):
    """The probe answers "this CPU runs no recurrence in the autocast dtype"."""
    monkeypatch.setattr(recurrence, "cpu_autocast_supports", lambda kind, dtype: False)


def _raw_lstm_runs() -> bool:
    """The oracle for the probe: does a plain nn.LSTM run under CPU bf16 autocast here?"""
    try:
        with torch.autocast("cpu", dtype=BF16):
            out, _ = nn.LSTM(3, 5)(torch.ones(4, 2, 3))
        out.float().sum().backward()
    except RuntimeError:
        return False
    return True


def test_probe_is_cached_agrees_with_a_plain_lstm_and_keeps_the_random_state():
    cpu_autocast_supports.cache_clear()
    rng = torch.get_rng_state()
    answer = cpu_autocast_supports(nn.LSTM, BF16)
    assert torch.equal(torch.get_rng_state(), rng), "the probe drew from the global generator"
    assert isinstance(answer, bool) and answer == _raw_lstm_runs()
    info = cpu_autocast_supports.cache_info()
    assert cpu_autocast_supports(nn.LSTM, BF16) is answer
    assert cpu_autocast_supports.cache_info().hits == info.hits + 1
    assert cpu_autocast_supports.cache_info().misses == info.misses  # probed once


def test_fallback_only_on_the_cpu_under_cpu_autocast(unsupported):
    lstm = nn.LSTM(3, 4)
    cpu, meta = torch.ones(2, 1, 3), torch.ones(2, 1, 3, device="meta")
    assert not needs_fp32(lstm, cpu)  # no autocast
    with torch.autocast("cpu", dtype=BF16):
        assert needs_fp32(lstm, cpu)
        assert not needs_fp32(lstm, meta)  # CUDA tensors (any other device) are left alone
    with pytest.raises(TypeError, match="not a recurrent module: Linear"):
        needs_fp32(nn.Linear(3, 4), cpu)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_recurrences_are_left_alone(unsupported):
    """On the GPU run_recurrence is the plain call even where the CPU answer is "unsupported":
    the same bf16 output, bit for bit, under CUDA autocast (and under CPU autocast too)."""
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 8, batch_first=True, bidirectional=True).cuda()
    x = torch.randn(3, 5, 6, device="cuda")
    for device, dtype in (("cuda", BF16), ("cpu", torch.float32)):
        with torch.autocast(device, dtype=BF16):
            got, ref = run_recurrence(lstm, x)[0], lstm(x)[0]
        assert got.dtype == ref.dtype == dtype and torch.equal(got, ref), device


def _lengths() -> torch.Tensor:
    return torch.tensor([5, 3, 4])


CASES = {
    "lstm": (lambda: nn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True),
             lambda x: (x, None)),
    "lstm_state": (lambda: nn.LSTM(6, 8, batch_first=True),
                   lambda x: (x, (torch.randn(1, 3, 8).to(x.dtype), torch.randn(1, 3, 8).to(x.dtype)))),
    "lstm_packed": (lambda: nn.LSTM(6, 8, batch_first=True, bidirectional=True),
                    lambda x: (pack_padded_sequence(x, _lengths(), batch_first=True,
                                                    enforce_sorted=False), None)),
    "gru": (lambda: nn.GRU(6, 8, batch_first=True), lambda x: (x, torch.randn(1, 3, 8))),
    "lstm_cell": (lambda: nn.LSTMCell(6, 8),
                  lambda x: (x[:, 0], (torch.randn(3, 8), torch.randn(3, 8)))),
}


def _first(out):
    """The output sequence (padded) of an RNN, ``h`` of an LSTMCell."""
    out = out[0] if isinstance(out, tuple) else out
    return pad_packed_sequence(out, batch_first=True)[0] if isinstance(out, PackedSequence) else out


@pytest.mark.parametrize("input_dtype", [torch.float32, BF16], ids=["fp32_in", "bf16_in"])
@pytest.mark.parametrize("case", list(CASES))
def test_fallback_equals_the_fp32_module(case, input_dtype, unsupported):
    """Under CPU bf16 autocast with the probe saying "unsupported", the outputs and parameter
    gradients are the float32 module's (run without autocast on the float32 inputs)."""
    make, args = CASES[case]
    torch.manual_seed(0)
    rnn = make()
    x, state = args(torch.randn(3, 5, 6).to(input_dtype))
    with torch.autocast("cpu", dtype=BF16):
        out = run_recurrence(rnn, x, state)
    got = _first(out)
    got.sum().backward()
    grads = [p.grad.clone() for p in rnn.parameters()]
    rnn.zero_grad()
    ref = _first(rnn(recurrence._cast(x, torch.float32), recurrence._cast(state, torch.float32)))
    ref.sum().backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    for g, p in zip(grads, rnn.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=0)


def _models() -> dict[str, tuple[nn.Module, object]]:
    torch.manual_seed(0)
    feats, lens = torch.randn(2, 24, 20), torch.tensor([24, 17])
    enc = SpeechEncoderConfig(input_dim=20, hidden_size=8, num_layers=2, conv_channels=4)
    decoder = AttentionDecoder(10, 16, AttentionDecoderConfig(
        embed_dim=8, hidden_size=12, num_layers=2, attention_dim=8, location_channels=2,
        location_kernel=3, output_dim=12))
    memory = decoder.prepare_memory(torch.randn(2, 6, 16), torch.tensor([6, 4]))
    tokens = torch.tensor([[0, 3, 4, 5], [0, 6, 7, 0]])
    return {
        "encoder_lstm": (SpeechEncoder(enc), lambda m: m(feats, lens)),
        "encoder_gru": (SpeechEncoder(dataclasses.replace(enc, rnn_type="gru")),
                        lambda m: m(feats, lens)),
        "rnn_lm": (RNNLanguageModel(10, 8, 12, num_layers=2), lambda m: m(tokens)),
        "decoder": (decoder, lambda m: m(memory, tokens)),
        "critic_gru": (SequenceCritic(16, CriticConfig(channels=8, kernel_size=3, gru=True)),
                       lambda m: m(torch.randn(2, 6, 16), torch.tensor([6, 4]))),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_every_recurrence_of_the_models_takes_the_fallback(name, unsupported):
    """Each model's nn.LSTM / nn.GRU / nn.LSTMCell goes through run_recurrence: with the probe
    saying "unsupported" it sees float32 inputs with CPU autocast off."""
    model, run = _models()[name]
    seen: list[tuple[torch.dtype, bool]] = []

    def hook(module, args) -> None:
        x = args[0].data if isinstance(args[0], PackedSequence) else args[0]
        seen.append((x.dtype, torch.is_autocast_enabled("cpu")))

    for m in model.modules():
        if isinstance(m, recurrence.KINDS):
            m.register_forward_pre_hook(hook)
    with torch.autocast("cpu", dtype=BF16):
        run(model)
    assert seen and all(s == (torch.float32, False) for s in seen), seen


CHILD = textwrap.dedent("""
    import json, math, sys
    from pathlib import Path

    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader

    from tests.tasks.test_bf16 import make
    from tests.nn.test_recurrence_precision import _raw_lstm_runs
    from speechlab.nn.recurrence import cpu_autocast_supports

    class Loss(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.loss = (float(loss.detach()), str(loss.dtype))

    out = {"probe": cpu_autocast_supports(torch.nn.LSTM, torch.bfloat16), "raw": _raw_lstm_runs()}
    for name in sys.argv[2:]:
        task, batch = make(name, Path(sys.argv[1]))
        rec = Loss()
        pl.Trainer(max_steps=1, accelerator="cpu", precision="bf16-mixed", logger=False,
                   enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[rec], default_root_dir=sys.argv[1]
                   ).fit(task, train_dataloaders=DataLoader([batch], batch_size=None))
        out[name] = rec.loss
    print("RESULT " + json.dumps(out))
""")


def test_bf16_mixed_trains_lstm_models_with_onednn_capped_at_avx2(tmp_path):
    """A child process with ONEDNN_MAX_CPU_ISA=AVX2 trains one bf16-mixed step of the models
    with an nn.LSTM (RNN LM, the TCNLM paper's LSTM baseline, Cold Fusion seq2seq with its LM,
    the CTC encoder) and the CTC task on the Conformer encoder (bf16 attention and depthwise
    convolutions): it succeeds with finite float32 losses, and the probe agrees with what a
    plain nn.LSTM does under autocast there."""
    names = ["rnnlm", "lstm_lm", "seq2seq_cold", "ctc", "ctc_conformer"]
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), *names], env=_avx2_env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert res["probe"] == res["raw"], res
    for name in names:
        loss, dtype = res[name]
        assert dtype == "torch.float32" and torch.isfinite(torch.tensor(loss)), (name, res[name])


@pytest.mark.slow
def test_bf16_suite_and_lstm_recipes_pass_with_onednn_capped_at_avx2(espeak):
    """tests/tasks/test_bf16.py (8 tasks, 4 of them also on the Conformer encoder) and the two 20news LSTM recipes' fast_dev_run (their
    fixture synthesises the espeak-ng corpus) in a pytest run whose oneDNN is capped at AVX2
    (about 30 s)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
           str(REPO / "tests" / "tasks" / "test_bf16.py"),
           str(REPO / "tests" / "recipes" / "test_recipes.py::test_recipe_fast_dev_run[20news/lstm_equal_params.yaml]"),
           str(REPO / "tests" / "recipes" / "test_recipes.py::test_recipe_fast_dev_run[20news/lstm_equal_size.yaml]")]
    proc = subprocess.run(cmd, env=_avx2_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"^14 passed", proc.stdout.splitlines()[-1]), proc.stdout[-2000:]
