"""What the attacking server knows: the threat model of ``fedguard audit``.

Every attack sees the update only through a :class:`ServerView` built from a
:class:`ThreatModel`: knowledge the threat model withholds is simply absent
(``None``), so an attack cannot use it by accident. The defaults are what a
curious server realistically knows in cross-device or cross-silo FL:

=====================  =======  =====================================================
field                  default  why a server knows it
=====================  =======  =====================================================
``architecture``       yes      it built the model and sent the weights
``batch_size``         always   FedAvg weights each client by its example count
``labels``             infer    not sent; recovered from the update (iDLG, counts)
``local_schedule``     yes      local steps, lr and mini-batch size are set by the server
``auxiliary_data``     yes      public data of the task's domain (a validation set)
``input_range``        (0, 1)   the preprocessing (pixels in [0, 1]) is part of the task
=====================  =======  =====================================================

``labels="known"`` models a server with side knowledge of the true labels
(stronger); turning ``local_schedule`` or ``auxiliary_data`` off models a
weaker one. ``architecture`` and ``batch_size`` cannot be turned off: every
attack fedguard runs needs both, and the update does not give the batch size
away. The label proportions it carries fit smaller batches as well as the
true one: 16 threes and 16 sevens read as one of each, and on the ConvNet
(FedSGD, digits) the counts the proportions give at the true size are up to
0.42 of an example from whole numbers, while some smaller size comes closer
in 13 of 24 random batches of 8-64 and in all 5 skewed ones. The audit uses
the client's data outside the audited batch as the stand-in for the
server's public data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from fedguard import checks
from fedguard.checks import is_number
from fedguard.errors import InputError
from fedguard.update import average_gradient

__all__ = ["LABEL_KNOWLEDGE", "NO_BATCH_SIZE", "NO_GRADIENT", "ThreatModel", "ServerView"]

LABEL_KNOWLEDGE: tuple[str, ...] = ("infer", "known")
#: Why an attack that needs :meth:`ServerView.as_gradient` cannot run when it is None.
NO_GRADIENT = "the server does not know the local schedule to turn the FedAvg update into a gradient"
#: Why an attack that needs the batch size cannot run without it.
NO_BATCH_SIZE = "the server does not know the batch size (threat model)"


@dataclass(frozen=True)
class ThreatModel:
    """What the server knows besides the update itself (the module docstring says why each default).

    Parameters
    ----------
    architecture, batch_size : bool
        Always True: every attack needs both (False is an InputError).
    labels : {"infer", "known"}
        ``infer`` (default): the attacks recover the labels from the update; ``known``: the server has them.
    local_schedule : bool
        Whether the server knows FedAvg's local steps, learning rate and mini-batch size (default True).
    auxiliary_data : bool
        Whether the server has public data of the task (default True); the audit lends it the client's data outside
        the batch.
    input_range : (float, float)
        The range the inputs are preprocessed to (default ``(0.0, 1.0)``): the attacks' box constraint.

    Raises
    ------
    InputError
        For a value of the wrong type, an unknown ``labels``, a bad ``input_range``, or ``architecture`` or
        ``batch_size`` False.
    """

    architecture: bool = True
    batch_size: bool = True
    labels: str = "infer"
    local_schedule: bool = True
    auxiliary_data: bool = True
    input_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("architecture", "batch_size", "local_schedule", "auxiliary_data"):
            checks.flag(getattr(self, name), f"threat model {name}")
        pair = self.input_range
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(is_number(v) and math.isfinite(v) for v in pair)
                and pair[0] < pair[1]):
            raise InputError(f"threat model input_range is {pair!r:.60}; give (low, high), two finite numbers with low < high, such as (0.0, 1.0)")
        object.__setattr__(self, "input_range", (float(pair[0]), float(pair[1])))
        if not isinstance(self.labels, str) or self.labels not in LABEL_KNOWLEDGE:
            raise InputError(f"unknown label knowledge {self.labels!r}; use one of {', '.join(LABEL_KNOWLEDGE)}")
        if not self.architecture:
            raise InputError(
                "every attack fedguard runs needs the architecture, which the server has because it sent the model; "
                "an audit without it is not meaningful"
            )
        if not self.batch_size:
            raise InputError(
                "every attack fedguard runs needs the batch size, which the server has because FedAvg weights each "
                "client by its example count; an audit without it is not meaningful"
            )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_range"] = list(self.input_range)
        return out


@dataclass(frozen=True)
class ServerView:
    """Everything one attack may use: the update plus what the threat model grants.

    Parameters
    ----------
    model : nn.Module
        The global model as sent (weights before local training), on ``device``.
    tensors : mapping of str to tensor
        The uploaded update by parameter name (gradient or ``W_T - W_0``).
    protocol : {"fedsgd", "fedavg"}
    batch_size : int or None
        Examples in the batch, when the server knows it.
    local_steps, local_lr, local_batch_size : optional
        FedAvg's local schedule, when the server knows it.
    num_classes : int
        Outputs of the model.
    input_shape : (C, H, W)
    labels : tensor or None
        Labels the attack may assume for the batch: the true ones when the threat
        model says ``known``, else those recovered by an earlier label attack.
    label_counts : tensor or None
        Examples per class, known or recovered.
    label_source : str or None
        Where ``labels`` came from, in words (``"recovered by label_counts"``), for the reports.
    auxiliary : (inputs, labels) or None
        Public data of the same domain (the server's own).
    next_round : callable or None
        ``next_round(options) -> ServerView``: the client's update of the same
        batch when the server sends the model crafted with ``options`` in a
        later round. Only malicious-server emulations have it (fedguard plays
        the client); multi-round attacks need it.
    threat : ThreatModel
    device : torch.device
    seed : int
    """

    model: Any
    tensors: Any
    protocol: str
    batch_size: int | None
    local_steps: int | None
    local_lr: float | None
    local_batch_size: int | None
    num_classes: int
    input_shape: tuple[int, int, int]
    threat: ThreatModel
    device: torch.device
    seed: int = 0
    labels: Any = None
    label_counts: Any = None
    label_source: str | None = None
    auxiliary: Any = field(default=None, repr=False)
    next_round: Any = field(default=None, repr=False)

    @classmethod
    def of_update(cls, model: Any, update: Any, threat: ThreatModel, *, num_classes: int, input_shape: tuple[int, int, int],
                  device: torch.device, seed: int = 0, labels: torch.Tensor | None = None,
                  auxiliary: Any = None) -> "ServerView":
        """What ``threat`` lets a server see of ``update`` (an :class:`~fedguard.update.Update` of ``model``): its
        batch size; FedAvg's local schedule where the threat model grants it; the batch's true ``labels`` and their
        counts where it says labels are known; the public data ``auxiliary`` where it grants public data."""
        schedule = threat.local_schedule and update.protocol == "fedavg"
        known = threat.labels == "known" and labels is not None
        return cls(
            model=model,
            tensors=update.tensors,
            protocol=update.protocol,
            batch_size=update.batch_size,
            local_steps=update.local_steps if schedule else None,
            local_lr=update.local_lr if schedule else None,
            local_batch_size=update.local_batch_size if schedule else None,
            num_classes=num_classes,
            input_shape=tuple(input_shape),
            threat=threat,
            device=device,
            seed=seed,
            labels=labels.clone() if known else None,
            label_counts=torch.bincount(labels, minlength=num_classes) if known else None,
            label_source="known (threat model)" if known else None,
            auxiliary=auxiliary if threat.auxiliary_data else None,
        )

    def server_data(self, need: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(inputs, labels)`` the server runs the model on: its public data of the domain, or without it ``need``
        (at least 64) inputs of seeded uniform noise in the input box, unlabelled (None)."""
        if self.threat.auxiliary_data and self.auxiliary is not None and len(self.auxiliary[1]) > 0:
            x, y = self.auxiliary
            return x.to(self.device), y.to(self.device)
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 17)
        lo, hi = self.threat.input_range
        x = lo + (hi - lo) * torch.rand(max(need, 64), *self.input_shape, generator=gen)
        return x.to(self.device), None

    def gradient_direction(self) -> dict[str, torch.Tensor]:
        """The update as the average gradient up to a positive factor, which needs no schedule: FedSGD's gradient,
        FedAvg's ``-(W_T - W_0)`` (``T lr`` times it). Enough for attacks that read quotients (``∇W / ∇b``) or
        cosines, in which the factor cancels."""
        if self.protocol == "fedsgd":
            return dict(self.tensors)
        return {k: -v for k, v in self.tensors.items()}

    def as_gradient(self) -> dict[str, torch.Tensor] | None:
        """The update as one average gradient (:func:`~fedguard.update.average_gradient`), or None for FedAvg without
        the schedule."""
        if self.protocol == "fedavg" and (self.local_steps is None or self.local_lr is None):
            return None
        return average_gradient(self.tensors, self.protocol, self.local_steps, self.local_lr)
