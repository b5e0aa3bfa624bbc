"""The exact label of a single example from the sign of the head's gradient (iDLG).

For one example with label ``c``, cross-entropy over a softmax gives the
head's gradients

    g_b[j] = p_j - [j = c]        g_W[j, :] = (p_j - [j = c]) · o,

where ``o`` is the head's input. Only ``g_b[c] = p_c - 1`` is negative; and
when ``o`` is non-negative (after ReLU or sigmoid, as in every built-in
architecture) row ``c`` of ``g_W`` is the only row whose entries are
negative. Zhao et al. read the label from the weight rows' signs; with a bias
the bias alone gives it for any activation, so fedguard uses the bias when the
head has one (a FedAvg update over several steps on the same example keeps
its sign pattern: ``W_T - W_0`` has the opposite sign of the gradients, read
off ``-(W_T - W_0)``). Without a bias it reads the rows' norms, which need no
sign of ``o``: row ``c``'s factor ``1 - p_c`` is the sum of every other
``p_j``, so it is the largest. With two classes the two rows are opposite
(``p_j = 1 - p_c``) and their norms tie: the row that points against the
head's typical input (read along :func:`~fedguard.attacks.label_counts.readout`
of its inputs on the server's data: the all-ones vector after ReLU, which is
the sign rule) is the label's (digits 0 and 1 on a two-class MLP, 40 single
examples: the norms alone 16-22 of 40 right, a coin toss; the signs after ReLU
40 of 40, an independent review). The signs fail where ``o`` can be negative: on
an MLP whose bias-free head reads Tanh, LayerNorm or GELU features (100
single digits, FedSGD and FedAvg of 3 steps) the sign rule named the wrong
class for 109, 115 and 25 of 200 updates, and the image attacks it seeds
then read no leak where known labels read a high one (an independent
review); the norms name none wrongly, nor after ReLU or sigmoid.

References
----------
Zhao, B., Mopuri, K. R. & Bilen, H. "iDLG: Improved Deep Leakage from
Gradients." arXiv:2001.02610 (2020).
"""

from __future__ import annotations

import time
from typing import ClassVar

import torch

from fedguard.layers import find_head, layer_input
from fedguard.threat import ServerView
from fedguard.torch_state import evaluating
from fedguard.types import Reconstruction

from .base import KNOWN_LABELS, Attack, Budget, register_attack, unreadable_head
from .label_counts import readout

__all__ = ["IDLG", "idlg_label", "idlg_counts"]

#: Two rows' norms within this fraction of each other tie (a two-class head's rows are opposite, equal to rounding).
TIE = 1e-4
#: Inputs of the server's data the head's typical input is read on, to break a tie.
READOUT_EXAMPLES = 256


def idlg_label(view: ServerView) -> tuple[int, dict]:
    """The label of the single example behind ``view``'s update, and how it was read."""
    head = find_head(view.model, view.input_shape, view.device, view.num_classes)
    sign = 1.0 if view.protocol == "fedsgd" else -1.0  # FedAvg uploads W_T - W_0 = -lr * sum of gradients
    if head.bias is not None and head.bias in view.tensors:
        score = sign * view.tensors[head.bias].double()
        label = int(torch.argmin(score))
        return label, {"route": "bias", "negative_entries": int((score < 0).sum()),
                       "margin": float(torch.sort(score).values[1] - score[label])}  # fmt: skip
    rows = view.tensors[head.weight].double()
    norms = torch.linalg.vector_norm(rows, dim=1)
    order = torch.argsort(norms, descending=True)
    label = int(order[0])
    runner_up = float(norms[order[1]]) if len(norms) > 1 else 0.0
    margin = (float(norms[label]) - runner_up) / max(float(norms[label]), 1e-300)
    if len(norms) > 1 and margin < TIE:  # opposite rows: the one against the head's typical input is the label's
        with evaluating(view.model), torch.no_grad():
            features = layer_input(view.model, head.module, view.server_data(READOUT_EXAMPLES)[0][:READOUT_EXAMPLES])
        tied = order[:2]
        along = sign * (rows[tied] @ readout(features).to(rows.device))
        label = int(tied[int(torch.argmin(along))])
        return label, {"route": "weight_row_signs", "margin": float((along.max() - along.min()) / along.abs().max().clamp_min(1e-300))}
    return label, {"route": "weight_row_norms", "margin": margin}


def idlg_counts(view: ServerView) -> tuple[int, torch.Tensor, dict]:
    """:func:`idlg_label` with the batch's counts by class, ``[num_classes]`` int64: the one example in its class."""
    label, details = idlg_label(view)
    counts = torch.zeros(view.num_classes, dtype=torch.int64)
    counts[label] = 1
    return label, counts, details


@register_attack("idlg")
class IDLG(Attack):
    """The exact label of a one-example update (Zhao et al. 2020).

    References
    ----------
    Zhao, B., Mopuri, K. R. & Bilen, H. "iDLG: Improved Deep Leakage from
    Gradients." arXiv:2001.02610 (2020).
    """

    name: ClassVar[str] = "idlg"
    title: ClassVar[str] = "iDLG label of a single example"
    reference: ClassVar[str] = "Zhao, Mopuri & Bilen, iDLG: Improved Deep Leakage from Gradients, arXiv:2001.02610, 2020"
    kind: ClassVar[str] = "labels"
    default_iterations: ClassVar[int] = 0

    def applies(self, view: ServerView) -> str | None:
        if view.threat.labels == "known":
            return KNOWN_LABELS
        if view.batch_size != 1:
            return "iDLG needs a batch of one example (known to the server)"
        return unreadable_head(view)

    def run(self, view: ServerView, budget: Budget) -> Reconstruction:
        start = time.perf_counter()
        budget.check(0)
        label, counts, details = idlg_counts(view)
        return Reconstruction(
            attack=self.name,
            labels=torch.tensor([label]),
            label_counts=counts,
            seconds=time.perf_counter() - start,
            details=details,
        )
