import pytest
import torch

from speechlab.functional.ctc import ctc_greedy_decode
from speechlab.nn.encoders import ConvSubsampling, SpeechEncoder, SpeechEncoderConfig


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_subsampling_lengths_match_conv_output(stride):
    sub = ConvSubsampling(80, 32, stride=stride, channels=4)
    for t in [1, 2, 7, 8, 9, 100, 101]:
        y, lens = sub(torch.randn(1, t, 80), torch.tensor([t]))
        assert y.shape[1] == lens.item() == -(-t // stride)  # ceil(t / stride)


def test_bad_stride_is_rejected():
    with pytest.raises(ValueError, match="stride"):
        ConvSubsampling(80, 32, stride=3)


def test_padding_does_not_change_an_utterance():
    torch.manual_seed(0)
    enc = SpeechEncoder(SpeechEncoderConfig(hidden_size=16, conv_channels=4, dropout=0.0)).eval()
    short = torch.randn(1, 37, 80)
    batch = torch.cat([short, torch.zeros(1, 63, 80)], dim=1)
    other = torch.randn(1, 100, 80)
    alone, n_alone = enc(short, torch.tensor([37]))
    together, n_together = enc(torch.cat([batch, other]), torch.tensor([37, 100]))
    n = n_alone.item()
    assert n_together[0].item() == n
    torch.testing.assert_close(together[0, :n], alone[0, :n], atol=1e-5, rtol=1e-5)
    assert together[0, n:].abs().max() == 0


def test_greedy_decode_hand_computed():
    # frames: a a _ a b b _ _ c  (blank=0, a=1, b=2, c=3) -> a a b c ; second utterance cut at 3
    path = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    lp = torch.full((2, len(path), 4), -10.0)
    for t, k in enumerate(path):
        lp[0, t, k] = 0.0
        lp[1, t, k] = 0.0
    assert ctc_greedy_decode(lp, torch.tensor([9, 4])) == [[1, 1, 2, 3], [1, 1]]
