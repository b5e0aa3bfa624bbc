"""FG102/FG103/FG501: pass-through units — one dominant weight, the same in every unit.

MKOR (Wang et al., WACV 2024) turns a network into a wire: later FC layers
become identities (one-hot rows) and convolutions become "copy" filters (a
single 1 at the centre tap of one input channel), "min" filters (centre −1,
bias 1) or "shift" filters (a single 1 off centre), so the private input
reaches the leaking layer unchanged. LOKI (Zhao et al., IEEE S&P 2024) uses
the same identity kernels scaled by hundreds.

A unit is a pass-through when its largest |weight| is at least ``DOMINANCE``
times its runner-up (a one-hot row has ratio ∞; the inconspicuous variant's
small noise keeps it far above 50). Pass-through units matter when several
share one magnitude (within 2 %): honest units never do. Measured on the
benign zoo (tests/zoo.py), pruning is the one honest source of single-weight
units: a 90 %-pruned MobileNetV3 at init keeps depthwise filters with one
weight each, clustered near the uniform init's bound. Those layers' other
units are sparse too (under 50 % non-zero), whereas MKOR's pass-through units
sit beside dense filters or fill the layer, so sparse layers are not scored.

Pass-through units only *carry* data to a leaking layer; on their own they
are also what honest identity (``nn.init.eye_``, IRNN) and Dirac
(``nn.init.dirac_``, DiracNets) initialisations look like. So FG102/FG103
are medium severity (suspicious); the leak that makes an MKOR model
malicious is reported by its own rule (FG101 averaging rows, FG202, FG301).
Scaled identities (FG501, LOKI) have no honest counterpart and stay high.

A whole stack of pass-through convolutions (FG105, high) is the leak
itself: the image reaches the head, whose gradient rows are class-mean
inputs. That is all MKOR's inconspicuous form changes in a network with a
single fully connected layer. The held-out benign set's Dirac-initialised
models (a DiracNet-style pair of convolutions, a Dirac stem) never have it
in every convolution.
"""

from __future__ import annotations

import torch

from fedguard.detectors.base import Detector, InspectContext, register_detector, rounded
from fedguard.detectors.rows import dominance, largest_equal_group, pruned_beside
from fedguard.modelview import CONV, LINEAR
from fedguard.types import Confidence, Rule, Severity

DOMINANCE = 50.0
SAME_MAGNITUDE = 0.02
MIN_GROUP = 3
#: Identity taps of this size or more are "scaled" (LOKI uses ~500; honest weights stay far below 10).
SCALED = 10.0
#: Convolutions a model needs for FG105 (one pass-through layer alone is a Dirac-initialised stem), unless that one
#: reads an input tap with both signs: MKOR's copy and min filters (centre +1, and centre -1 with bias 1), which no
#: Dirac or identity initialisation has; a one-convolution net crafted so (its only Linear the head) came out clean.
MIN_STACK = 2
#: Pass-through filters of one size that count a convolution into FG105's stack (not enough for FG103 alone): MKOR's
#: inconspicuous form on a one-channel input plants a copy and a min filter in the first convolution and copies of
#: those two channels after it; a 1->8->8 network crafted so, two such filters in each convolution, came out clean.
STACK_GROUP = 2
#: Fewest inputs per unit scored. With 2, one weight is 50 times the other by chance in 1 % of uniformly initialised
#: rows: a 2-input layer of 1000 units (a two-moons classifier) had 3 such rows of one size and was called
#: suspicious at init and after training. With 3 inputs the chance is about 1e-4 per row, and three of one size
#: (within 2 %) do not occur; no pass-through layer of fewer inputs carries anything to copy.
MIN_FAN_IN = 3

_RULES = (
    Rule(
        "FG102", "identity-fc",
        "Fully connected units that copy one input each (identity / one-hot rows).",
        "Rows with a single non-zero weight of one common size forward their input unchanged. "
        "MKOR makes the FC layers after the first one identities so class-mean inputs reach the "
        "gradient intact. Honest trained or initialised rows are dense. Do not train on this model.",
        "Wang et al., Maximum Knowledge Orthogonality Reconstruction, WACV 2024",
        url="https://arxiv.org/abs/2310.19222",
    ),
    Rule(
        "FG105", "pass-through-stack",
        "Copy/min/shift filters in every convolution of the model.",
        "When every convolution passes part of its input through, the image reaches the fully connected "
        "layers intact and their gradient rows are class-mean images: MKOR's convolutional construction, "
        "whose inconspicuous form leaves the dense layers untouched. Honest Dirac or identity "
        "initialisations touch some layers, not the whole stack. Do not train on this model.",
        "Wang et al., Maximum Knowledge Orthogonality Reconstruction, WACV 2024",
        url="https://arxiv.org/abs/2310.19222",
    ),
    Rule(
        "FG103", "copy-conv-filters",
        "Convolution filters with one non-zero tap: copy, min or shift filters.",
        "A filter whose only weight is ±1 at one tap copies (centre), inverts (centre −1 with bias 1: "
        "MKOR's min filter) or shifts (off-centre) one input channel, passing the private image through "
        "the convolutional stack. Learned filters are never delta functions of one common size.",
        "Wang et al., Maximum Knowledge Orthogonality Reconstruction, WACV 2024",
        url="https://arxiv.org/abs/2310.19222",
    ),
    Rule(
        "FG501", "scaled-identity",
        "Identity kernels or rows scaled far beyond honest weights (LOKI).",
        "Identity kernels multiplied by a large constant (LOKI uses ~500) separate clients' inputs "
        "into disjoint channels so they survive secure aggregation. Do not train on this model.",
        "Zhao et al., LOKI: Large-scale Data Reconstruction Attack against Federated Learning "
        "through Model Manipulation, IEEE S&P 2024",
        url="https://arxiv.org/abs/2303.12233",
    ),
)


@register_detector("passthrough")
class PassThrough(Detector):
    name = "passthrough"
    rules = _RULES

    def run(self, context: InspectContext):
        convs, wired, mirrored = [], [], False
        for layer in context.view.scored_layers(min_fan_in=MIN_FAN_IN):
            if layer.kind == CONV:
                convs.append(layer.name)
            stats = layer.stats
            fewest = STACK_GROUP if layer.kind == CONV else MIN_GROUP
            candidates = (stats.peak_to_rest >= DOMINANCE).nonzero()[:, 0]
            if candidates.numel() < fewest:
                continue
            index, value, ratio = dominance(layer.rows(candidates))
            keep = ratio >= DOMINANCE
            candidates, index, value = candidates[keep], index[keep], value[keep]
            group = largest_equal_group(value.abs(), rel=SAME_MAGNITUDE)
            if group.numel() < fewest or pruned_beside(layer.rows(), candidates[group]):
                continue
            if layer.kind == CONV:
                wired.append(layer.name)
                taps = index[group]  # a copy and a min filter: one input tap, read with both signs
                mirrored |= bool(torch.isin(taps[value[group] > 0], taps[value[group] < 0]).any())
            if group.numel() >= MIN_GROUP:
                yield self._finding(layer, stats.rows, candidates[group], index[group], value[group])
        if convs and wired == convs and (len(convs) >= MIN_STACK or mirrored):
            yield self.finding(
                "FG105", "Pass-through convolution stack", Severity.HIGH, Confidence.HIGH, None,
                (f"every one of the {len(convs)} convolutions has copy/min/shift filters" if len(convs) > 1 else
                 "its one convolution has a copy and a min filter of the same input tap")
                + ": the input reaches the "
                "fully connected layers unchanged, so their update holds class-mean images (MKOR). "
                "Do not train on this model.",
                convolutions=len(convs), first=convs[0], last=convs[-1],
            )

    def _finding(self, layer, n_rows: int, members: torch.Tensor, columns: torch.Tensor, values: torch.Tensor):
        count = members.numel()
        magnitude = float(values.abs().median())
        fraction = count / n_rows
        severity = Severity.MEDIUM
        evidence = dict(
            passthrough_units=count, units=n_rows, fraction=rounded(fraction),
            magnitude=rounded(magnitude), distinct_inputs=int(columns.unique().numel()),
            negative=int((values < 0).sum()),
        )
        if layer.kind == CONV and layer.weight.ndim >= 3:
            evidence.update(self._taps(layer, columns))
        if magnitude >= SCALED:
            rule, title = "FG501", "Scaled identity units (LOKI)"
            what = f"identity weights scaled to {magnitude:.4g}"
            severity = Severity.HIGH
        elif layer.kind == LINEAR:
            rule, title, what = "FG102", "Identity / one-hot FC rows", f"a single weight of {magnitude:.4g}"
        else:
            rule, title, what = "FG103", "Copy / min / shift filters", f"a single tap of {magnitude:.4g}"
        return self.finding(
            rule, title, severity, Confidence.HIGH, layer.name,
            f"{count} of {n_rows} units of {layer.name} have {what} and nothing else: they pass their "
            "input through unchanged so the update exposes it (MKOR/LOKI). Do not train on this model.",
            **evidence,
        )

    @staticmethod
    def _taps(layer, columns: torch.Tensor) -> dict:
        kernel = layer.weight.shape[2:]
        taps = int(torch.tensor(kernel).prod())
        centre = taps // 2
        tap = columns % taps
        return {"centre_taps": int((tap == centre).sum()), "off_centre_taps": int((tap != centre).sum()),
                "kernel": list(kernel)}

