"""TC-LSTM and the neural topic model against independent oracles: torch's LSTM (one topic,
identity factorization), autograd (the custom backward), hand-computed ELBO terms."""

import math

import pytest
import torch

from speechlab.functional.topic import gaussian_kl
from speechlab.nn.factorized_lstm import (
    TCLSTMLayer,
    TCLSTMRecurrence,
    TopicCompositionalLM,
    tc_lstm_reference,
)
from speechlab.nn.topic import NeuralTopicModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _identity_tc_layer(lstm: torch.nn.LSTM) -> TCLSTMLayer:
    """A one-topic TC-LSTM layer whose factorization W_a diag(W_b t) W_c with t = 1, W_b = 1,
    W_c = I reproduces the LSTM's weights W_a = W."""
    e, h = lstm.input_size, lstm.hidden_size
    assert e == h
    layer = TCLSTMLayer(e, h, num_topics=1, factor_size=h)
    with torch.no_grad():
        eye = torch.eye(h).expand(4, h, h)
        layer.w_c.copy_(eye)
        layer.u_c.copy_(eye)
        layer.w_b.fill_(1.0)
        layer.u_b.fill_(1.0)
        layer.w_a.copy_(lstm.weight_ih_l0.view(4, h, h))
        layer.u_a.copy_(lstm.weight_hh_l0.view(4, h, h))
        layer.bias.copy_((lstm.bias_ih_l0 + lstm.bias_hh_l0).view(4, h))
    return layer


def test_one_topic_identity_factorization_equals_torch_lstm():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 6, batch_first=True)
    layer = _identity_tc_layer(lstm)
    x = torch.randn(3, 5, 6, requires_grad=True)
    h0, c0 = torch.randn(3, 6), torch.randn(3, 6)
    out, (h, c) = layer(x, torch.ones(3, 1), (h0, c0))
    ref, (h_ref, c_ref) = lstm(x, (h0[None], c0[None]))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(h, h_ref[0])
    torch.testing.assert_close(c, c_ref[0])
    # and the gradients agree (custom backward vs cuDNN-free torch LSTM autograd)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad((out * g).sum(), x)
    (gx_ref,) = torch.autograd.grad((ref * g).sum(), x)
    torch.testing.assert_close(gx, gx_ref)


def test_one_step_equals_lstm_cell():
    torch.manual_seed(1)
    lstm = torch.nn.LSTM(4, 4, batch_first=True)
    cell = torch.nn.LSTMCell(4, 4)
    with torch.no_grad():
        cell.weight_ih.copy_(lstm.weight_ih_l0)
        cell.weight_hh.copy_(lstm.weight_hh_l0)
        cell.bias_ih.copy_(lstm.bias_ih_l0)
        cell.bias_hh.copy_(lstm.bias_hh_l0)
    layer = _identity_tc_layer(lstm)
    x, h0, c0 = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    _, (h, c) = layer(x[:, None], torch.ones(2, 1), (h0, c0))
    h_ref, c_ref = cell(x, (h0, c0))
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(c, c_ref)


def test_custom_backward_passes_gradcheck():
    torch.manual_seed(0)
    L, B, H, F = 4, 2, 3, 5
    dt = torch.float64
    args = [torch.randn(L, 4, B, H, dtype=dt), 0.5 * torch.randn(B, H, dtype=dt),
            0.5 * torch.randn(B, H, dtype=dt), torch.randn(4, B, F, dtype=dt),
            0.3 * torch.randn(4, F, H, dtype=dt), 0.3 * torch.randn(4, H, F, dtype=dt)]
    args = [a.requires_grad_() for a in args]
    assert torch.autograd.gradcheck(TCLSTMRecurrence.apply, args)


def test_layer_gradients_match_the_autograd_reference():
    torch.manual_seed(0)
    layer = TCLSTMLayer(5, 7, num_topics=3, factor_size=4)
    x = torch.randn(2, 6, 5)
    topics = torch.softmax(torch.randn(2, 3), -1)
    grads = []
    for reference in (False, True):
        layer.zero_grad()
        out, (h, c) = layer(x, topics, reference=reference)
        (out.pow(2).sum() + h.sum() + 0.5 * c.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in layer.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    assert all(g.abs().sum() > 0 for g in grads[0].values())


def test_recurrence_matches_reference_forward():
    torch.manual_seed(2)
    L, B, H, F = 3, 4, 5, 6
    args = [torch.randn(L, 4, B, H), torch.randn(B, H), torch.randn(B, H), torch.randn(4, B, F),
            torch.randn(4, F, H), torch.randn(4, H, F)]
    for a, b in zip(TCLSTMRecurrence.apply(*args), tc_lstm_reference(*args), strict=True):
        torch.testing.assert_close(a, b)


def test_topics_change_the_language_model():
    torch.manual_seed(0)
    lm = TopicCompositionalLM(20, num_topics=3, embed_dim=8, hidden_size=8, factor_size=8, dropout=0.0)
    tokens = torch.randint(0, 20, (2, 5))
    a, _, _ = lm(tokens, torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))
    b, _, _ = lm(tokens, torch.tensor([[0, 0, 1.0], [0, 0, 1.0]]))
    assert a.shape == (2, 5, 20)
    assert (a - b).abs().max() > 1e-3
    # step() continues the sequence exactly as forward() computes it
    t = torch.tensor([[0.2, 0.3, 0.5]] * 2)
    full, _, _ = lm(tokens, t)
    state = None
    for i in range(5):
        logits, _, state = lm.step(tokens[:, i], t, state)
        torch.testing.assert_close(logits, full[:, i])


def _fixed_ntm(decoder: str) -> NeuralTopicModel:
    ntm = NeuralTopicModel(vocab_size=3, num_topics=2, hidden_size=4, latent_size=2, decoder=decoder)
    with torch.no_grad():
        for lin, bias in ((ntm.mu, [1.0, 0.0]), (ntm.logvar, [0.0, math.log(2.0)])):
            lin.weight.zero_()
            lin.bias.copy_(torch.tensor(bias))
        ntm.to_topics.weight.zero_()  # t = softmax(0) = uniform, whatever z is
        ntm.to_topics.bias.zero_()
        ntm.topic_word.copy_(torch.log(torch.tensor([[0.5, 0.5, 1e-30], [1e-30, 0.5, 0.5]])))
    return ntm


def test_elbo_kl_term_hand_computed():
    ntm = _fixed_ntm("mixture")
    bow = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 4.0]])
    for training in (True, False):  # the KL is of q(z|d), sampled or not
        ntm.train(training)
        out = ntm(bow)
        expected = 0.5 + 0.5 * (1 - math.log(2.0))
        torch.testing.assert_close(out.kl, torch.full((2,), expected))
    # mixture of beta with t = (1/2, 1/2): p = (1/4, 1/2, 1/4)
    expected_nll = torch.tensor([-(2 * math.log(0.25) + math.log(0.5)), -4 * math.log(0.25)])
    torch.testing.assert_close(out.nll, expected_nll)
    torch.testing.assert_close(out.elbo, -(expected_nll + expected))
    torch.testing.assert_close(out.topics, torch.full((2, 2), 0.5))


def test_ntm_samples_in_training_and_uses_the_mean_in_eval():
    torch.manual_seed(0)
    ntm = NeuralTopicModel(vocab_size=10, num_topics=4, hidden_size=8)
    with torch.no_grad():
        ntm.logvar.bias.fill_(0.0)
        ntm.to_topics.weight.mul_(10)
    bow = torch.poisson(torch.full((3, 10), 2.0))
    ntm.train()
    assert not torch.allclose(ntm(bow).topics, ntm(bow).topics)
    ntm.eval()
    torch.testing.assert_close(ntm(bow).topics, ntm(bow).topics)
    mu, logvar = ntm.encode(bow)
    torch.testing.assert_close(ntm(bow).kl, gaussian_kl(mu, logvar))
    torch.testing.assert_close(ntm(bow).topics.sum(-1), torch.ones(3))


def test_product_decoder_gives_normalized_word_distributions():
    torch.manual_seed(0)
    ntm = NeuralTopicModel(vocab_size=6, num_topics=3, hidden_size=8)
    logp = ntm.word_log_probs(torch.softmax(torch.randn(4, 3), -1))
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(4))
    with pytest.raises(ValueError, match="decoder"):
        NeuralTopicModel(6, 3, decoder="sum")


def _cuda_layer() -> tuple[TCLSTMLayer, torch.Tensor, torch.Tensor]:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.manual_seed(0)
    layer = TCLSTMLayer(16, 32, num_topics=4, factor_size=24).to("cuda")
    x = torch.randn(8, 10, 16, device="cuda")
    topics = torch.softmax(torch.randn(8, 4, device="cuda"), -1)
    return layer, x, topics


@pytest.mark.cuda
def test_compiled_steps_match_the_reference_on_gpu():
    from speechlab.nn.factorized_lstm import compile_steps

    layer, x, topics = _cuda_layer()
    ref_out, _ = layer(x, topics, reference=True)
    ref_grad = torch.autograd.grad(ref_out.square().sum(), layer.u_a)[0]
    try:
        compile_steps(True)
        out, _ = layer(x, topics)
        grad = torch.autograd.grad(out.square().sum(), layer.u_a)[0]
    finally:
        compile_steps(False)
    assert (out - ref_out).norm() / ref_out.norm() < 1e-4
    assert (grad - ref_grad).norm() / ref_grad.norm() < 1e-4


@pytest.mark.cuda
def test_cuda_graph_step_replays_the_eager_step():
    from speechlab.nn.factorized_lstm import CUDAGraphStep

    layer, x, topics = _cuda_layer()
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)  # lr 0: replays must repeat the loss

    def step(xs: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = layer(xs, topics)[0].square().mean()
        loss.backward()
        opt.step()
        return loss

    graphed = CUDAGraphStep(step, [x])
    with torch.no_grad():
        expected = layer(x * 2, topics)[0].square().mean()
    got = graphed(x * 2).clone()
    assert abs(got.item() - expected.item()) <= 1e-5 * abs(expected.item())


def test_bf16_products_stay_close_to_float32():
    """Under autocast the recurrence's products run in bf16 (state and gates in float32)."""
    torch.manual_seed(3)
    L, B, H, F = 6, 4, 16, 12
    base = [torch.randn(L, 4, B, H), 0.5 * torch.randn(B, H), 0.5 * torch.randn(B, H),
            torch.randn(4, B, F), 0.3 * torch.randn(4, F, H), 0.3 * torch.randn(4, H, F)]
    results = []
    for mm_dtype in (None, torch.bfloat16):
        args = [a.clone().requires_grad_() for a in base]
        hs, h, c = TCLSTMRecurrence.apply(*args, mm_dtype)
        assert hs.dtype == h.dtype == c.dtype == torch.float32
        (hs.square().sum() + c.sum()).backward()
        results.append([hs, *(a.grad for a in args)])
    for ref, low in zip(*results, strict=True):
        assert low.dtype == ref.dtype
        assert (low - ref).norm() / ref.norm() < 2e-2
