"""FG805: the model discards the client's data: every example reaches the head as the same features.

Secure aggregation hides one client's update in the sum of many. A server that sends every client but its target a
model whose hidden layer is dead on their data (each ReLU unit's bias below its response to any input) receives
zero from them everywhere below the head, so the sum it is handed is the target's update alone, which it then
inverts (Pasquini et al., "Eluding Secure Aggregation in Federated Learning via Model Inconsistency", ACM CCS 2022).
A non-target client cannot see the attack on its own data, but it can see the tell: its examples' features are
identical by the time they reach the head, so the model's output cannot depend on them, and the update it would
upload is zero below the head. An independent review's models (the first layer's units all dead, by a margin of
0.3 or with every row made negative) aggregated with one target's model gave back the target's batch of 8
exactly, and every rule had called them clean.

Measured on the client's examples in one forward pass (eval mode): the input of the head (the last Linear, Conv or
other leaf with parameters to run) is the same for every example while the examples differ. Honest models keep
their examples apart at the head: the benign zoo with a known architecture, six batches of 64 digits each, never
merges two examples there, a head initialised at zero included (its input still differs; only its output is the
same) and zero-initialised residual branches (ResNet's last BatchNorm of a block at weight 0: the skip carries the
data), but for one: MobileNetV3-Small magnitude-pruned by 90 % at initialisation, whose depthwise filters the
pruning empties, so that its output is the same for every input. A model whose every unit of a layer died in
training (a diverged run) reads the same. Such models teach the client nothing either, and the finding says both
readings. Medium severity: the client's own data does not leak through it.
"""

from __future__ import annotations

import torch
from torch import nn

from fedguard.detectors.base import NEEDS_DATA, Detector, InspectContext, register_detector
from fedguard.layers import forward_hooks
from fedguard.torch_state import evaluating
from fedguard.types import Confidence, Rule, Severity


def _same_for_all(t: torch.Tensor) -> bool:
    """Whether every example (row along dimension 0) of ``t`` is the same."""
    return len(t) > 1 and bool(torch.equal(t, t[:1].expand_as(t)))


def merging_layers(module: nn.Module, inputs: torch.Tensor) -> tuple[str, str] | None:
    """``(head, where)`` when ``inputs`` (differing examples) all reach the head as the same features: the head's
    name and that of the last module before it whose input still told the examples apart and whose output did not;
    None otherwise (or when the examples are alike to begin with)."""
    names = {m: name for name, m in module.named_modules()}
    calls: list[tuple[str, bool, bool, bool]] = []  # name, has parameters, input merged, output merged

    def record(mod, args, output):
        if next(mod.children(), None) is not None or not args or not isinstance(args[0], torch.Tensor):
            return  # containers: their leaves say where the examples merged
        if not isinstance(output, torch.Tensor) or len(args[0]) != len(inputs) or len(output) != len(inputs):
            return
        has_parameters = next(mod.parameters(recurse=False), None) is not None
        calls.append((names[mod], has_parameters, _same_for_all(args[0].detach()), _same_for_all(output.detach())))

    if _same_for_all(inputs):
        return None
    with forward_hooks(module, (nn.Module,), record), evaluating(module), torch.no_grad():
        module(inputs.float())
    weighted = [call for call in calls if call[1]]
    if not weighted or not weighted[-1][2]:
        return None
    head = weighted[-1][0]
    where = next((name for name, _, merged_in, merged_out in reversed(calls) if not merged_in and merged_out), head)
    return head, where


@register_detector("silenced")
class SilencedData(Detector):
    name = "silenced"
    needs = frozenset({NEEDS_DATA})
    rules = (
        Rule(
            "FG805", "discarded-input",
            "On the client's own data, every example reaches the head as the same features: the model discards it.",
            "A model whose hidden layer is dead on your data returns a zero update below the head. Sent to every "
            "client but one, it leaves that one's update alone in the securely aggregated sum, for the server to "
            "invert. Your own data does not leak through it, but a server that sends it is attacking another "
            "client; do not train on it, and tell the federation.",
            "Pasquini et al., Eluding Secure Aggregation in Federated Learning via Model Inconsistency, ACM CCS 2022",
            url="https://arxiv.org/abs/2111.07380",
        ),
    )

    def run(self, context: InspectContext):
        inputs, _ = context.data
        merged = merging_layers(context.view.module, inputs)
        if merged is None:
            return
        head, where = merged
        yield self.finding(
            "FG805", "Model discards your data", Severity.MEDIUM, Confidence.HIGH, where,
            f"All {len(inputs)} of your examples reach {head} as the same features (from {where} on, every example "
            "gives the same output), so the model's output cannot depend on your data and the update you would "
            "upload is zero below the head. Sent to every client but one, such a model leaves that client's update "
            "alone in the securely aggregated sum (model inconsistency); a diverged or over-pruned model reads the "
            "same. Either way training on it teaches nothing: do not, and report it to the federation.",
            examples=len(inputs), head=head,
        )
