"""fedguard.dropout: dropout as training applies it, in a pass that otherwise runs in eval mode."""

from __future__ import annotations

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


@pytest.mark.parametrize("func", [F.dropout, F.dropout1d, F.dropout2d, F.dropout3d])
def test_a_draw_drops_as_training_does(func):
    """Each element (or each channel of channel-wise dropout) zeroed at the rate, the rest scaled by 1 / (1 - p)."""
    x = torch.rand(64, 32, *([4] * {F.dropout: 1, F.dropout1d: 1, F.dropout2d: 2, F.dropout3d: 3}[func])) + 0.5
    with TrainingDropout(torch.Generator().manual_seed(0)):
        out = func(x, 0.25, training=False)
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert abs(float(kept.float().mean()) - 0.75) < 0.02
    if func is not F.dropout:  # a channel is kept or dropped whole
        per_channel = kept.flatten(2).float()
        assert bool(((per_channel.mean(2) == 0) | (per_channel.mean(2) == 1)).all())


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
