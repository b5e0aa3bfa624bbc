"""fedguard.dropout: which tensors training thins by dropout, and the draw's seed."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedguard.dropout import DropoutTrail, draw_generator


class _Read(nn.Module):
    """Runs ``before`` on the input and records what a Linear layer then reads."""

    def __init__(self, before):
        super().__init__()
        self.before, self.layer, self.read = before, nn.Linear(16, 4), None

    def forward(self, x):
        self.read = self.before(x)
        return self.layer(self.read)


@pytest.mark.parametrize(("before", "rate"), [
    (nn.Dropout(0.5), 0.5),
    (lambda x: F.dropout(x, 0.3, training=False), 0.3),  # the model's own code, in eval mode
    (nn.Sequential(nn.Dropout(0.5), nn.ReLU()), 0.5),  # ReLU commutes with the mask and the scale
    (nn.Sequential(nn.Dropout(0.5), nn.ReLU(inplace=True), nn.Identity()), 0.5),
    (nn.Sequential(nn.Dropout(0.5), nn.Dropout(0.5)), 0.75),  # keep rates multiply
    (lambda x: torch.flatten(nn.Dropout(0.25)(x.view(-1, 4, 2, 2)), 1), 0.25),  # PyTorch's MNIST example
    (lambda x: nn.Dropout(0.5)(x) + 0, 0.0),  # a sum moves what the mask zeroes
    (nn.Sequential(nn.Dropout(0.5), nn.Tanh()), 0.0),  # tanh does not commute with the scale
    (nn.Identity(), 0.0),
    (nn.Dropout(0.0), 0.0),
])  # fmt: skip
def test_the_trail_gives_the_rate_training_drops_a_layers_input_at(before, rate):
    model = _Read(before).eval()
    with DropoutTrail() as trail:
        model(torch.rand(3, 16))
    assert trail.rate(model.read) == pytest.approx(rate)


def test_a_layer_that_reads_around_the_dropout_reads_no_dropout():
    """In eval mode a dropout returns its input itself: a layer reading that input beside it is not thinned."""
    features, dropped = torch.rand(3, 16), None
    with DropoutTrail() as trail:
        dropped = nn.Dropout(0.5).eval()(features)
    assert dropped is not features and torch.equal(dropped, features)
    assert trail.rate(features) == 0.0 and trail.rate(dropped) == 0.5


def test_the_draw_is_the_datas_own():
    """The same examples draw the same masks; other examples (unknown to a server) draw others."""
    x = torch.rand(8, 1, 8, 8)
    same = [torch.rand(4, generator=draw_generator(x)) for _ in range(2)]
    assert torch.equal(*same)
    assert not torch.equal(same[0], torch.rand(4, generator=draw_generator(x[1:])))
