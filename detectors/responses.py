"""FG803/FG804: how the first fully connected layer responds to the client's own data.

The analytic inversion of a first Linear layer (``∇W_i / ∇b_i``, Phong et
al. 2017; the core of Robbing the Fed, Fowl et al., ICLR 2022, and of trap
weights, Boenisch et al., EuroS&P 2023) returns example ``n`` exactly from
every unit that only ``n`` switches on. A server can arrange that without any
weight pattern the static rules read:

* **Sparse firing (FG803).** Leave the weights at an honest initialisation and
  set each unit's bias at a high quantile of its own response on public data,
  so each unit fires for about one example in a batch: 40-44 of 64 digits
  were rebuilt exactly against 3-9 for the honest model, and every static
  rule had called it clean. Reported when at least half of the layer's live
  units fire for at most 1/16 of the client's examples. Benign zoo
  (``benchmarks/detector_calibration.py``, 64 digits): at most 12.7 % of the
  units (kaiming-initialised MLP); crafted trap weights 16-30 %.
* **Imprint in data space (FG804).** Robbing the Fed's rows measure one
  quantity; noise the data never excites (pixels always zero, directions of
  no variance) makes the rows differ in weight space (|cosine| 0.94 and
  less) but not in what they measure, and 29-32 of 64 digits were still
  rebuilt exactly. Reported when four or more units' responses to the
  client's examples (``W_i · x``, centred) correlate at ``|r| ≥ 0.999``.
  Benign zoo: largest correlation between two units 0.996 (an MLP trained
  on two classes, on digits 0 and 1), never a group of four; every crafted
  imprint layer correlates at 1.0 in all its units.

Only a first layer that is a Linear reading the whole flattened input is
measured (the layer the inversion reads images from), on at most
:data:`MAX_UNITS` units. References: Phong et al., IEEE TIFS 2018; Fowl et
al., ICLR 2022; Boenisch et al., "When the Curious Abandon Honesty", IEEE
EuroS&P 2023.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedguard.attacks._head import find_first_layer, layer_input
from fedguard.attacks.fc_inversion import MIN_BINS, SAME_MEASUREMENT, response_correlations
from fedguard.detectors.base import NEEDS_DATA, Detector, InspectContext, register_detector, rounded
from fedguard.torch_state import evaluating
from fedguard.types import Confidence, Rule, Severity

#: A unit fires rarely when at most this share of the client's examples switch it on.
RARE = 1 / 16
#: FG803: share of the live units that fire rarely.
RARE_SHARE = 0.5
#: FG804: |correlation| of two units' responses that makes them one measurement, and the group size reported (the
#: bins fc_inversion reads; MIN_GROUP is also the fewest rarely-firing units FG803 reports).
SAME_RESPONSE, MIN_GROUP = SAME_MEASUREMENT, MIN_BINS
#: Units measured at most (the correlation matrix is units x units).
MAX_UNITS = 8192


def first_layer_responses(module: nn.Module, inputs: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor] | None:
    """``(name, W x, b)`` of the first layer on ``inputs`` (float64, ``[examples, units]`` and ``[units]``), or None
    when the input does not meet a Linear layer that reads all of it at once."""
    head = find_first_layer(module, tuple(inputs.shape[1:]), torch.device("cpu"))
    if head is None or not isinstance(head.module, nn.Linear):
        return None
    layer = head.module
    with evaluating(module), torch.no_grad():
        seen = layer_input(module, layer, inputs.float())
        if seen.shape[1] != layer.in_features or layer.in_features != math.prod(inputs.shape[1:]):
            return None  # applied per token, or reading features rather than the input
        weight = layer.weight[:MAX_UNITS].double()
        bias = torch.zeros(len(weight), dtype=torch.float64) if layer.bias is None else layer.bias[:MAX_UNITS].double()
        return head.name, seen.double() @ weight.T, bias


def firing_rates(pre: torch.Tensor) -> torch.Tensor:
    """Per unit, the share of the examples that switch it on; ``pre`` is ``[examples, units]`` pre-activations."""
    return (pre > 0).double().mean(dim=0)


def rare_share(fires: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Share of the live units (firing for some example) that fire for at most :data:`RARE` of the examples, with the
    rare and live masks, from :func:`firing_rates`."""
    live = fires > 0
    rare = live & (fires <= RARE)
    return float(rare.sum()) / max(int(live.sum()), 1), rare, live


@register_detector("responses")
class FirstLayerResponses(Detector):
    name = "responses"
    needs = frozenset({NEEDS_DATA})
    rules = (
        Rule(
            "FG803", "sparse-firing",
            "On the client's own data, most units of the first fully connected layer fire for one example or so.",
            "A unit that only one example switches on hands that example to the server exactly: its weight "
            "gradient divided by its bias gradient is the input. Biases set at a high quantile of each unit's "
            "response make that happen with honest-looking weights. Do not train on this model.",
            "Phong et al., IEEE TIFS 2018; Boenisch et al., When the Curious Abandon Honesty, IEEE EuroS&P 2023",
            url="https://eprint.iacr.org/2017/715",
        ),
        Rule(
            "FG804", "data-space-imprint",
            "On the client's own data, several first-layer units measure one and the same quantity.",
            "Units whose responses to your examples are perfectly correlated bin the batch by one measurement, "
            "as Robbing the Fed's imprint layer does, whatever their weights look like; differences of "
            "neighbouring bins' gradients return single inputs. Do not train on this model.",
            "Fowl et al., Robbing the Fed, ICLR 2022",
            url="https://arxiv.org/abs/2110.13057",
        ),
    )

    def run(self, context: InspectContext):
        inputs, _ = context.data
        measured = first_layer_responses(context.view.module, inputs)
        if measured is None:
            return
        name, response, bias = measured
        yield from self._sparse(name, response + bias, len(inputs))
        yield from self._same(name, response, bias)

    def _sparse(self, name: str, pre: torch.Tensor, examples: int):
        fires = firing_rates(pre)
        share, rare, live = rare_share(fires)
        if share >= RARE_SHARE and int(rare.sum()) >= MIN_GROUP:
            yield self.finding(
                "FG803", "First layer fires for single examples", Severity.HIGH, Confidence.MEDIUM, name,
                f"On {examples} of your examples, {int(rare.sum())} of the {int(live.sum())} units of {name} that "
                f"fire at all fire for at most {RARE:.0%} of them (median {float(fires[live].median()):.1%}): each "
                "such unit's update is one of your inputs, exactly. Do not train on this model.",
                rare_units=int(rare.sum()), live_units=int(live.sum()), rare_share=rounded(share),
                median_firing=rounded(fires[live].median()), limit=RARE_SHARE, examples=examples,
            )

    def _same(self, name: str, response: torch.Tensor, bias: torch.Tensor):
        corr, index, norm = response_correlations(response)
        if len(index) < MIN_GROUP:
            return
        close = corr.abs() >= SAME_RESPONSE
        best = int(close.sum(dim=1).argmax())
        group = index[close[best]]
        # each unit's threshold on the shared measurement (a unit measuring minus the quantity has its sign flipped)
        thresholds = bias[group] / norm[group] * torch.sign(corr[best, close[best]])
        bins = 1 + int((thresholds.sort().values.diff() > 1e-4 * float(thresholds.abs().max())).sum())
        if len(group) < MIN_GROUP or bins < MIN_GROUP:  # one threshold: an average, not bins (FG101's rows)
            return
        yield self.finding(
            "FG804", "First-layer units measure one quantity", Severity.HIGH, Confidence.HIGH, name,
            f"On your examples, {len(group)} units of {name} respond in perfect correlation (|r| ≥ {SAME_RESPONSE:g}) "
            f"with {bins} different thresholds: they bin your batch by one measurement so that neighbouring bins' "
            "gradients return single inputs (Robbing the Fed). Do not train on this model.",
            units=len(group), thresholds=bins, layer_units=int(response.shape[1]), min_correlation=SAME_RESPONSE,
        )
