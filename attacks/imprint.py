"""Robbing the Fed: the inputs a malicious imprint block reads off the update (malicious-server emulator).

A dishonest server puts a block in front of the model: ``K`` identical rows
measuring one statistic ``h(x)`` of the input (average brightness), biases a
ladder of ``K`` bin edges, then a layer that hands the input on
(:func:`fedguard.attacks.craft.imprint`). Row ``i`` is active for every
example with ``h(x) > edge_i``, so the difference of consecutive rows'
gradients holds only the examples whose measurement falls between two edges:

    (∇W_i - ∇W_{i+1}) / (∇b_i - ∇b_{i+1}) = x        (one example in the bin)

The same quotient as the analytic FC inversion
(:func:`fedguard.attacks.fc_inversion.invert_rows`), on bin differences. Bins
holding two or more examples give their weighted average; with the bins at
quantiles of the server's public data most examples have a bin to
themselves. The audit builds the block for the client's input shape,
computes the client's update under it (``emulates = "imprint"``), and this
attack reconstructs: "if the server had sent me this, what would leak?"

References
----------
Fowl, L., Geiping, J., Czaja, W., Goldblum, M. & Goldstein, T. "Robbing the
Fed: Directly Obtaining Private Data in Federated Learning with Modified
Models." ICLR 2022.
"""

from __future__ import annotations

import time
from typing import ClassVar

from fedguard.threat import ServerView
from fedguard.types import Reconstruction

from .base import Attack, Budget, register_attack, whole_option
from .fc_inversion import invert_rows

__all__ = ["ImprintEmulator", "DEFAULT_BINS"]

#: Bins of the imprint block (Fowl et al. use 128-1024; 256 rebuilds ~80 % of a batch of 64 digits).
DEFAULT_BINS = 256
WEIGHT, BIAS = "imprint.0.weight", "imprint.0.bias"


@register_attack("imprint")
class ImprintEmulator(Attack):
    """Robbing the Fed (Fowl et al. 2022): a crafted imprint block, inputs from bin differences.

    Parameters
    ----------
    num_bins : int
        Rows of the imprint block (bins of the measurement).

    References
    ----------
    Fowl, L. et al. "Robbing the Fed: Directly Obtaining Private Data in
    Federated Learning with Modified Models." ICLR 2022.
    """

    name: ClassVar[str] = "imprint"
    title: ClassVar[str] = "Imprint block (Robbing the Fed), malicious server"
    reference: ClassVar[str] = "Fowl, Geiping, Czaja, Goldblum & Goldstein, Robbing the Fed, ICLR 2022"
    kind: ClassVar[str] = "images"
    default_iterations: ClassVar[int] = 0
    emulates: ClassVar[str | None] = "imprint"
    default: ClassVar[bool] = False

    def __init__(self, num_bins: int = DEFAULT_BINS):
        self.num_bins = whole_option(num_bins, "imprint num_bins", 2)

    def crafter_options(self, view: ServerView) -> dict:
        return {"num_bins": self.num_bins, "linfunc": "randn"}

    def applies(self, view: ServerView) -> str | None:
        if WEIGHT not in view.tensors or BIAS not in view.tensors:
            return "the model has no imprint block (the audit inserts one for this emulator)"
        return None

    def run(self, view: ServerView, budget: Budget) -> Reconstruction:
        start = time.perf_counter()
        budget.check(0)
        grads = view.gradient_direction()  # quotients of bin differences need no scale, so no local schedule
        gw, gb = grads[WEIGHT].detach().cpu().double(), grads[BIAS].detach().cpu().double()
        rows, details = invert_rows(gw[:-1] - gw[1:], gb[:-1] - gb[1:], len(gb), view.threat.input_range)
        details = {"bins": len(gb), **details}
        return Reconstruction(
            attack=self.name,
            images=rows.float().reshape(-1, *view.input_shape),
            seconds=time.perf_counter() - start,
            details=details,
        )
