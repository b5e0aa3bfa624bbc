"""fedguard.dropout: dropout as training applies it, in a pass that otherwise runs in eval mode."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedguard.dropout import TrainingDropout, draw_generator


class _Calls(nn.Module):
    def __init__(self):
        super().__init__()
        self.none, self.all, self.alpha = nn.Dropout(0.0), nn.Dropout(1.0), nn.AlphaDropout(0.2)

    def forward(self, x):
        x = F.dropout(x, p=0.3, training=self.training)  # the model's own code, p by keyword
        x = self.none(self.all(x)).view(-1, 4, 2, 2)  # dropping nothing or everything is not noted
        return self.alpha(F.dropout2d(x, 0.5, self.training).flatten(1))


def test_the_calls_are_noted_in_order_and_eval_mode_left_as_it_is():
    x = torch.rand(3, 16)
    with TrainingDropout() as noted:
        out = _Calls().eval()(x)
    assert noted.rates == [0.3, 0.5, 0.2] and torch.equal(out, x)


@pytest.mark.parametrize(("func", "shape", "together"), [
    (F.dropout, (64, 32, 4), ()),
    (torch.dropout, (64, 32), ()),
    (F.dropout1d, (64, 32, 4), (2,)),
    (F.dropout2d, (64, 32, 4, 4), (2, 3)),
    (torch.feature_dropout, (64, 32, 4), (2,)),
    (F.dropout2d, (64, 32, 4), (2,)),  # 3-D: torch drops channels as dropout1d does
    (F.dropout1d, (64, 32), (1,)),  # 2-D: unbatched to torch, each row one channel
    (F.dropout3d, (8, 3, 4, 4), (1, 2, 3)),  # 4-D: unbatched
])  # fmt: skip
def test_a_draw_drops_as_training_does(func, shape, together):
    """Each element, or each channel as torch counts channels at that rank, zeroed at the rate; the rest scaled by
    1 / (1 - p). (A review: channel-wise dropout of an input of another rank had been left undropped.)"""
    x = torch.rand(shape) + 0.5
    with TrainingDropout(torch.Generator().manual_seed(0)):
        out = func(x, 0.25, False)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    if together:
        assert torch.equal(kept.float().amax(dim=together), kept.float().amin(dim=together))
    if kept.numel() // max(1, math.prod(shape[d] for d in together)) >= 1000:
        assert abs(float(kept.float().mean()) - 0.75) < 0.03


def test_in_place_dropout_thins_its_input_and_the_gradient_goes_back_whole():
    x, y = torch.rand(64, 32) + 0.5, torch.rand(64, 32, requires_grad=True)
    with TrainingDropout(torch.Generator().manual_seed(0)):
        F.dropout(x, 0.5, False, True)  # the result unused
        kept = x != 0
        torch.dropout_(x, 0.5, False)
        out = F.dropout(y, 0.5, False)
    assert 0.2 < float((x != 0).float().mean()) < 0.3 and not bool((x[~kept] != 0).any())
    out.sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))  # as if nothing had been dropped


def test_alpha_dropout_keeps_the_mean_and_variance_of_selus_output():
    x = torch.randn(200_000)
    with TrainingDropout(torch.Generator().manual_seed(0)):
        out = F.alpha_dropout(x, 0.2, training=False)
    assert abs(float(out.mean())) < 0.01 and abs(float(out.var()) - 1) < 0.02
    assert abs(float((out != x).float().mean()) - 1) < 0.01  # the kept ones are shifted and scaled too


def test_the_draw_is_the_datas_own():
    """The same examples draw the same masks; other examples (unknown to a server) draw others."""
    x = torch.rand(8, 1, 8, 8)
    same = [torch.rand(4, generator=draw_generator(x)) for _ in range(2)]
    assert torch.equal(*same)
    assert not torch.equal(same[0], torch.rand(4, generator=draw_generator(x[1:])))
