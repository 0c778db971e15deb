import pickle
from dataclasses import asdict

import pytest
import torch

from speechlab.errors import InputError
from speechlab.functional.ctc import ctc_greedy_decode
from speechlab.nn import count_parameters
from speechlab.nn.encoders import ConvSubsampling, SpeechEncoder, SpeechEncoderConfig

#: a tiny Conformer: d_model 16, 2 heads, ffn 24, 2 blocks, kernel 5
TINY_CONFORMER = dict(kind="conformer", hidden_size=16, num_heads=2, ffn_dim=24, num_layers=2,
                      depthwise_conv_kernel_size=5, conv_channels=4, dropout=0.0)


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_subsampling_lengths_match_conv_output(stride):
    sub = ConvSubsampling(80, 32, stride=stride, channels=4)
    for t in [1, 2, 7, 8, 9, 100, 101]:
        y, lens = sub(torch.randn(1, t, 80), torch.tensor([t]))
        assert y.shape[1] == lens.item() == -(-t // stride)  # ceil(t / stride)


def test_bad_stride_is_rejected():
    with pytest.raises(ValueError, match="stride"):
        ConvSubsampling(80, 32, stride=3)


@pytest.mark.parametrize("config", [dict(hidden_size=16, conv_channels=4, dropout=0.0),
                                    dict(TINY_CONFORMER, stride=2), dict(TINY_CONFORMER, stride=4),
                                    dict(TINY_CONFORMER, stride=8)],
                         ids=["lstm", "conformer-2", "conformer-4", "conformer-8"])
def test_padding_does_not_change_an_utterance(config):
    """torchaudio's Conformer alone fails this: its depthwise convolutions read the padding
    (a 0.17 difference in the last valid frames here)."""
    torch.manual_seed(0)
    enc = SpeechEncoder(SpeechEncoderConfig(**config)).eval()
    short = torch.randn(1, 37, 80)
    batch = torch.cat([short, torch.zeros(1, 63, 80)], dim=1)
    other = torch.randn(1, 100, 80)
    alone, n_alone = enc(short, torch.tensor([37]))
    together, n_together = enc(torch.cat([batch, other]), torch.tensor([37, 100]))
    n = n_alone.item()
    assert n_together[0].item() == n
    torch.testing.assert_close(together[0, :n], alone[0, :n], atol=1e-5, rtol=1e-5)
    assert together[0, n:].abs().max() == 0


@pytest.mark.parametrize("stride", [2, 4, 8])
def test_conformer_shapes_lengths_and_frame_rate(stride):
    enc = SpeechEncoder(SpeechEncoderConfig(**TINY_CONFORMER, stride=stride)).eval()
    assert enc.output_dim == 16 and enc.frame_rate == 100.0 / stride
    lens = torch.tensor([101, 37, 9])
    out, out_lens = enc(torch.randn(3, 101, 80), lens)
    expected = [-(-t // stride) for t in (101, 37, 9)]  # ceil(t / stride)
    assert out.shape == (3, expected[0], 16)
    assert out_lens.tolist() == expected
    for i, n in enumerate(expected):
        assert out[i, n:].abs().sum() == 0
        assert out[i, :n].abs().sum(-1).min() > 0


def test_conformer_batch_padded_past_its_longest_utterance():
    """A batch whose features run past its longest utterance (torchaudio's key padding mask
    is max(lengths) long) encodes each utterance as alone, with the full T' frames."""
    torch.manual_seed(0)
    enc = SpeechEncoder(SpeechEncoderConfig(**TINY_CONFORMER)).eval()
    x = torch.randn(1, 40, 80)
    alone, n = enc(x, torch.tensor([40]))
    padded, n_padded = enc(torch.cat([x, torch.zeros(1, 24, 80)], dim=1), torch.tensor([40]))
    assert padded.shape == (1, 16, 16) and n_padded.item() == n.item() == 10
    torch.testing.assert_close(padded[:, :10], alone, atol=1e-5, rtol=1e-5)
    assert padded[:, 10:].abs().max() == 0


def test_conformer_parameter_count_by_hand():
    d, f, k, layers, c, feats = 16, 24, 5, 2, 4, 80
    enc = SpeechEncoder(SpeechEncoderConfig(**TINY_CONFORMER, input_dim=feats, stride=4))
    convs = (1 * c * 9 + c) + (c * c * 9 + c)  # two 3x3 conv2d, 1 -> c -> c channels
    proj = c * (feats // 4) * d + d  # 80 bins -> 40 -> 20
    ffn = 2 * d + (d * f + f) + (f * d + d)  # LayerNorm, Linear d->f, Linear f->d
    attention = 2 * d + (3 * d * d + 3 * d) + (d * d + d)  # LayerNorm, in_proj (q, k, v), out_proj
    conv_module = (2 * d  # LayerNorm
                   + (d * 2 * d + 2 * d)  # pointwise conv d -> 2d (GLU halves it)
                   + (d * k + d)  # depthwise conv
                   + 2 * d  # BatchNorm1d weight and bias
                   + (d * d + d))  # pointwise conv d -> d
    block = 2 * ffn + attention + conv_module + 2 * d  # + final LayerNorm
    assert count_parameters(enc) == convs + proj + layers * block
    # the same sum written out: 188 + 1,296 + 2 x (2 x 840 + 1,120 + 976 + 32)
    assert count_parameters(enc) == 9100


def test_ffn_dim_defaults_to_four_times_d_model():
    enc = SpeechEncoder(SpeechEncoderConfig(**{**TINY_CONFORMER, "ffn_dim": None}))
    assert enc.conformer.conformer.conformer_layers[0].ffn1.sequential[1].out_features == 64


@pytest.mark.parametrize("change, match", [({"num_heads": 3}, "multiple of encoder.num_heads 3"),
                                           ({"depthwise_conv_kernel_size": 4}, "odd"),
                                           ({"kind": "transformer"}, "kind"),
                                           ({"stride": 3}, "stride must be 1, 2, 4 or 8")])
def test_bad_conformer_config_is_rejected(change, match):
    with pytest.raises(InputError, match=match):
        SpeechEncoderConfig(**{**TINY_CONFORMER, **change})


def test_old_configs_load_as_the_lstm_encoder():
    """Hyper-parameters saved before ``kind`` existed (a dict, or a pickled config whose
    ``__dict__`` lacks the field) give the RNN encoder they were trained with."""
    old = {k: v for k, v in asdict(SpeechEncoderConfig(hidden_size=8, num_layers=1)).items()
           if k not in ("kind", "num_heads", "ffn_dim", "depthwise_conv_kernel_size")}
    from_dict = SpeechEncoder(SpeechEncoderConfig(**old))
    assert isinstance(from_dict.rnn, torch.nn.LSTM) and from_dict.conformer is None
    pickled = SpeechEncoderConfig(hidden_size=8, num_layers=1, rnn_type="gru")
    for name in ("kind", "num_heads", "ffn_dim", "depthwise_conv_kernel_size"):
        del pickled.__dict__[name]
    restored = pickle.loads(pickle.dumps(pickled))
    assert "kind" not in restored.__dict__
    enc = SpeechEncoder(restored)
    assert isinstance(enc.rnn, torch.nn.GRU) and enc.output_dim == 16
    assert set(enc.state_dict()) == set(SpeechEncoder(SpeechEncoderConfig(
        hidden_size=8, num_layers=1, rnn_type="gru")).state_dict())


def test_greedy_decode_hand_computed():
    # frames: a a _ a b b _ _ c  (blank=0, a=1, b=2, c=3) -> a a b c ; second utterance cut at 3
    path = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    lp = torch.full((2, len(path), 4), -10.0)
    for t, k in enumerate(path):
        lp[0, t, k] = 0.0
        lp[1, t, k] = 0.0
    assert ctc_greedy_decode(lp, torch.tensor([9, 4])) == [[1, 1, 2, 3], [1, 1]]
