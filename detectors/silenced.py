"""FG805: the model discards the client's data: every example reaches the head as the same features.

Secure aggregation hides one client's update in the sum of many. A server that sends every client but its target a
model whose hidden layer is dead on their data (each ReLU unit's bias below its response to any input) receives zero
from them everywhere below the head, so the sum it is handed is the target's update alone, which it then inverts
(Pasquini et al., "Eluding Secure Aggregation in Federated Learning via Model Inconsistency", ACM CCS 2022). A non-
target client cannot see the attack on its own data, but it can see the tell: its examples' features are identical
by the time they reach the head, so the model's output cannot depend on them, and the update it would upload carries
nothing of them below the head. An independent review's models (the first layer's units all dead, by a margin of 0.3
or with every row made negative) aggregated with one target's model gave back the target's batch of 8 exactly, and
every rule had called them clean.

Measured on the client's examples in one forward and backward pass (eval mode, :func:`discarding_layers`): the head
receives the same features for every example while the examples differ, and the update is zero up to where they
merged. Honest models keep their examples apart at the head: the benign zoo with a known architecture, six batches
of 64 digits each, never reads so, a head initialised at zero included (its input still differs; only its output is
the same) and zero-initialised residual branches (ResNet's last BatchNorm of a block at weight 0: the skip carries
the data), but for one: MobileNetV3-Small magnitude-pruned by 90 % at initialisation, whose depthwise filters the
pruning empties, so that its output is the same for every input. A model whose every unit of a layer died in
training (a diverged run), or a hidden layer whose weights and biases start at zero before a ReLU, reads the same:
no update can train them, and the finding says both readings. Medium severity: the client's own data does not leak
through it.

A server that leaves a unit or a few alive keeps the examples apart, while the dead rows of the target's update
are still its own in the sum (a review's model: 255 of 256 units dead, clean). So a fully connected layer (as FG803
measures them, :func:`silent_units`) of at least :data:`MIN_UNITS` units in which at least :data:`DEAD_SHARE` fire
for none of the examples is reported too. Benign zoo (six batches of 16 and of 64 digits): at most 54 % of a
layer's units unreached (LeNet-5's 84-unit layer at initialisation), no model but the pruned MobileNetV3 above.
Known miss: half a layer dead, which honest layers reach.
"""

from __future__ import annotations

import torch
from torch import nn

from fedguard.detectors.base import NEEDS_DATA, Detector, InspectContext, register_detector, rounded
from fedguard.detectors.linear_passes import CHUNK, LinearSeen, layers_seen
from fedguard.detectors.responses import reach_rates
from fedguard.layers import forward_hooks
from fedguard.torch_state import evaluating
from fedguard.types import Confidence, Rule, Severity


#: A fully connected layer is silenced when at least this share of its units fire for none of the client's examples
#: (:func:`silent_units`), and it has at least :data:`MIN_UNITS` units.
DEAD_SHARE = 0.9
MIN_UNITS = 16


def silent_units(layer: LinearSeen) -> tuple[int, int]:
    """``(silent, units)`` of a fully connected layer as the client's examples met it: a unit is silent when no
    example switches it on (its response is never above zero) and no example's gradient reaches it (a unit that
    fires behind a layer initialised at zero gets no gradient either, yet is alive)."""
    response, bias = layer.responses()
    reached = reach_rates(layer.reach_counts())[: len(bias)] > 0
    return int((~reached & ((response + bias) <= 0).all(dim=0)).sum()), len(bias)


def _same_for_all(t: torch.Tensor) -> bool:
    """Whether every example (row along dimension 0) of ``t`` is the same."""
    return len(t) > 1 and bool(torch.equal(t, t[:1].expand_as(t)))


def discarding_layers(module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[str, str] | None:
    """``(head, where)`` when the model discards ``inputs`` (examples that differ): the head (the last Linear to
    output as many values as the logits) receives the same features for every example, and the update (the summed
    cross-entropy's gradient) is zero in every trainable parameter before the first module from which every example
    gives the same output (and in its own, when it merged the examples itself). ``where`` names the layer the
    examples die in: that module when it merged them, else the last one with parameters before it (a functional
    ``F.relu`` between them merged them). None otherwise.

    Each condition keeps an honest model out: a head initialised at zero gives every example the same logits, but
    its input differs; a residual branch whose last BatchNorm starts at zero gives the same output, but the skip
    carries the data to the head; a layer initialised at zero before a smooth activation (tanh) merges the
    examples, yet trains (its gradient is not zero); modules after the head (a temperature, a normalisation of the
    logits) are not the head."""
    names = {m: name for name, m in module.named_modules()}
    # per leaf call, in order: the module, whether every example read the same input (None: no tensor input) and
    # gave the same output, and the output's shape; flags only, so that a large model's activations are not kept
    calls: list[tuple[nn.Module, bool | None, bool, torch.Size]] = []

    def record(mod, args, output):
        if next(mod.children(), None) is not None or not isinstance(output, torch.Tensor):
            return  # containers: their leaves say where the examples merged
        if output.dim() == 0 or len(output) != len(inputs):  # a scalar (a learned temperature), a reshaped batch
            return
        read = args[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0 else None
        calls.append((mod, None if read is None else _same_for_all(read), _same_for_all(output), output.shape))

    if _same_for_all(inputs):
        return None
    with forward_hooks(module, (nn.Module,), record), evaluating(module), torch.no_grad():
        logits = module(inputs.float())
    heads = [i for i, (m, _, _, shape) in enumerate(calls) if isinstance(m, nn.Linear) and shape == logits.shape]
    if not heads or not calls[heads[-1]][1]:  # the head's input differs between examples (or is no tensor)
        return None
    head = heads[-1]
    # the first module to give every example the same output; else a function just before the head merged them
    merged = next((i for i, call in enumerate(calls[:head]) if call[2]), head)
    itself = calls[merged][1] is False  # it merged differing inputs itself, not a function before it
    upstream = [m for m, *_ in calls[: merged + itself]]
    below = list(dict.fromkeys(p for m in upstream for p in m.parameters(recurse=False) if p.requires_grad))
    if not below:
        return None
    with evaluating(module), torch.enable_grad():  # the update in chunks, as FG803 takes its gradients
        for start in range(0, len(inputs), CHUNK):
            chunk = module(inputs[start : start + CHUNK].float())
            loss = nn.functional.cross_entropy(chunk, labels[start : start + CHUNK].to(chunk.device), reduction="sum")
            grads = torch.autograd.grad(loss, below, allow_unused=True)
            if any(g is not None and bool(torch.any(g != 0)) for g in grads):
                return None
    weighted = [m for m in upstream if next(m.parameters(recurse=False), None) is not None]
    where = calls[merged][0] if itself or not weighted else weighted[-1]
    return names[calls[head][0]], names[where]


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
        inputs, labels = context.data
        merged = discarding_layers(context.view.module, inputs, labels)
        if merged is None:
            yield from self._silenced_layers(context)
            return
        head, where = merged
        yield self.finding(
            "FG805", "Model discards your data", Severity.MEDIUM, Confidence.HIGH, where,
            f"All {len(inputs)} of your examples reach {head} as the same features (from {where} on, every example "
            "gives the same output), so the model's output cannot depend on your data and the update you would "
            "upload carries nothing of it below the head. Sent to every client but one, such a model leaves that "
            "client's update alone in the securely aggregated sum (model inconsistency); a diverged or over-pruned "
            "model reads the same. Either way training on it teaches nothing: do not, and report it to the federation.",
            examples=len(inputs), head=head,
        )

    def _silenced_layers(self, context: InspectContext):
        """The first fully connected layer (as FG803 measures them) in which at least :data:`DEAD_SHARE` of the units
        fire for none of the examples (their response is never above zero and no gradient reaches them); nothing when
        no gradient reaches any such layer (a head at zero passes none back, honestly)."""
        seen, examples = layers_seen(context), len(context.data[0])
        if not any(bool((layer.grad != 0).any()) for layer in seen):
            return
        for layer in seen:
            name, (dead, units) = layer.name, silent_units(layer)
            if units >= MIN_UNITS and dead >= DEAD_SHARE * units:
                yield self.finding(
                    "FG805", "Layer silent on your data", Severity.MEDIUM, Confidence.HIGH, name,
                    f"{dead} of the {units} units of {name} fire for none of your {examples} examples (honest "
                    "layers: at most 54 %), so their rows of the update you would upload are zero. Sent to every "
                    "client but one, such a model leaves those rows of that client's update alone in the securely "
                    "aggregated sum (model inconsistency); a diverged model reads the same. Either way do not train "
                    "on it, and report it to the federation.",
                    dead_units=dead, units=units, dead_share=rounded(dead / units), examples=examples,
                )
                return
