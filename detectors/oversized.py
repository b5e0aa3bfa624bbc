"""FG601: an oversized fully connected layer — capacity to memorise the batch.

A malicious server can swap a small classifier head for a very wide linear
layer: with more units than the client has samples, most units fire for one
sample only and ∇W_i / ∇b_i returns that sample exactly (the analytic attack
of Phong et al., 2018, scaled up by Fowl et al., ICLR 2022 and Boenisch et
al., EuroS&P 2023).

Without ``--arch`` only shape tells. Only linear layers with a bias count
(the leak is ∇W_i / ∇b_i; lookup tables and bias-free projections cannot
leak this way). A layer with at least 1024 units is medium severity when it
widens its input at least 6×, or, behind convolutions, widens ≥ 2× and
holds most of the parameters or feeds the classifier directly. Honest heads
narrow towards the classes (ResNet, VGG, AlexNet heads shrink; MobileNetV3's
widens 1.8×). A transformer feed-forward block (attention parameters in the
model, by name or, in an unnamed list, as a fused ``[3d, d]`` query-key-value
projection followed by a ``[d, d]`` output projection; and the next layer
maps back to the block's input width; PyTorch's
default ``dim_feedforward=2048`` at small ``d_model`` widens 32×) and a pure-MLP
layer that widens 4–6× and dominates the parameters are low severity only.
Known false-positive risk: an honest MLP whose first hidden layer is ≥ 6× its
input (e.g. tabular 30→1024); confirm with ``--arch``. With ``--arch`` any
shape drift is reported by FG701 at high severity.
"""

from __future__ import annotations

from fedguard.detectors.base import Detector, InspectContext, register_detector, rounded
from fedguard.modelview import CONV, LINEAR
from fedguard.types import Confidence, Rule, Severity

MIN_UNITS = 1024
MAJORITY = 0.5
WIDENING = 6
ATTENTION_WORDS = ("attn", "attention", "in_proj", "q_proj", "query")


@register_detector("oversized")
class OversizedFC(Detector):
    name = "oversized"
    rules = (
        Rule(
            "FG601", "oversized-fc",
            "A fully connected layer far wider than the architecture warrants.",
            "A linear layer with far more units than its input and the rest of the network justify "
            "lets most units fire for a single sample, so the update reveals samples exactly. Compare "
            "the model with the architecture you expect (--arch) or last round's model (--reference).",
            "Phong et al., Privacy-Preserving Deep Learning via Additively Homomorphic Encryption, 2018; "
            "Fowl et al., ICLR 2022; Boenisch et al., EuroS&P 2023",
            url="https://eprint.iacr.org/2017/715",
        ),
    )

    def run(self, context: InspectContext):
        view = context.view
        total = view.n_parameters
        layers = view.weight_layers()
        attention = any(word in name for name in view.tensors for word in ATTENTION_WORDS) or _fused_attention(layers)
        for position, layer in enumerate(layers):
            if layer.kind != LINEAR or layer is layers[-1]:
                continue
            units, fan_in = layer.out_features, layer.fan_in
            share = layer.weight.numel() / total
            behind_convs = any(other.kind == CONV for other in layers[:position])
            if units < MIN_UNITS or layer.bias is None:
                continue
            following = layers[position + 1]
            feeds_head = following is layers[-1]
            # a transformer feed-forward block: expands, then maps back to its input width
            contracts_back = attention and following.out_features == fan_in
            widening = units >= WIDENING * fan_in or (
                behind_convs and units >= 2 * fan_in and (share >= MAJORITY or feeds_head)
            )
            if widening and not contracts_back:
                severity, confidence = Severity.MEDIUM, Confidence.MEDIUM
            elif units >= 4 * fan_in and (share >= MAJORITY or contracts_back):
                severity, confidence = Severity.LOW, Confidence.LOW
            else:
                continue
            if view.module is None:
                check = "Check it against the architecture you expect with --arch or --reference."
            elif _as_in(view.module, layer.name, layer.weight.shape):
                check = ("It is as wide in the architecture you gave (--arch): the width is the risk whoever chose it; "
                         "with --data, FG803 measures whether its units fire for single examples.")  # fmt: skip
            else:  # the message had said "as wide in the architecture you gave" beside FG701's other shape
                check = "The architecture you gave (--arch) has no layer of this shape here (FG701 says how it differs)."
            yield self.finding(
                "FG601", "Oversized fully connected layer", severity, confidence, layer.name,
                f"{layer.name} widens {fan_in} inputs to {units} units and holds {share:.0%} of the parameters: "
                f"enough capacity for units to fire for single samples and leak them. {check}",
                units=units, fan_in=fan_in, widening=rounded(units / fan_in), parameter_share=rounded(share),
            )


def _as_in(module, name: str, shape) -> bool:
    """Whether ``module`` (the architecture of ``--arch``) has the weight of layer ``name`` in that ``shape``."""
    weight = dict(module.named_parameters()).get(f"{name}.weight")
    return weight is not None and tuple(weight.shape) == tuple(shape)


def _fused_attention(layers) -> bool:
    """Whether the model holds a fused attention projection by shape alone (``nn.MultiheadAttention``'s
    ``in_proj`` of ``3d`` rows over ``d`` inputs, then its ``d x d`` ``out_proj``): what an unnamed list keeps of it."""
    return any(
        a.kind == LINEAR and b.kind == LINEAR and a.out_features == 3 * a.fan_in and (b.out_features, b.fan_in) == (a.fan_in, a.fan_in)
        for a, b in zip(layers, layers[1:])
    )
