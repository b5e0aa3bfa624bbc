"""Defenses a client applies to its update before upload, for the audit to attack the update as it would leave.

- :class:`DPSGD`: DP-SGD (Abadi et al., *Deep Learning with Differential
  Privacy*, CCS 2016) during local training: each example's gradient clipped
  to ``max_grad_norm``, Gaussian noise of ``noise_multiplier * max_grad_norm``
  added to their sum at every step, through Opacus' per-example gradients
  (``GradSampleModule``) and ``DPOptimizer``. The round's ``epsilon`` at
  ``delta`` comes from Opacus' RDP accountant over the local steps, at a
  sample rate of local batch over batch (1 for FedSGD); rounds compose, so a
  client's total budget is larger.
- :class:`Pruning`: the smallest-magnitude ``fraction`` of each tensor of the
  update set to zero (Zhu et al., *Deep Leakage from Gradients*, NeurIPS
  2019, section 5: pruning over 20 % defends DLG on their nets).
- :class:`GaussianNoise`: noise of standard deviation ``std`` added to every
  value of the update (Zhu et al. 2019: variance 1e-2 or more defends DLG,
  at a cost in accuracy). No DP guarantee: nothing bounds an example's share.

:func:`parse_defense` turns the ``fedguard audit`` options into one of them.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fedguard import checks
from fedguard.architectures import first_line
from fedguard.errors import InputError

#: Names of the defenses, as ``--defense`` takes them.
DEFENSES = ("none", "dp-sgd", "prune", "noise")
#: Opacus' default delta is the caller's; this one is the usual 1e-5 (below 1 / examples for datasets of <= 100k).
DEFAULT_DELTA = 1e-5


@dataclass(frozen=True)
class DPSGD:
    """DP-SGD during local training (clip each example's gradient, add Gaussian noise at every step).

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation over the clipping norm (sigma), ``> 0`` (clipping alone gives no guarantee).
    max_grad_norm : float
        Each example's gradient is clipped to this L2 norm (C), ``> 0``.
    delta : float
        The ``delta`` at which the round's ``epsilon`` is reported, in ``(0, 1)``.
    """

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float = DEFAULT_DELTA
    name: ClassVar[str] = "dp-sgd"

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", checks.finite(self.noise_multiplier, "--noise-multiplier", positive=True))
        object.__setattr__(self, "max_grad_norm", checks.finite(self.max_grad_norm, "--max-grad-norm", positive=True))
        delta = checks.finite(self.delta, "--delta", positive=True)
        object.__setattr__(self, "delta", delta)
        if delta >= 1:
            raise InputError(f"--delta {delta:g} is no guarantee; give a small probability such as 1e-5 (below 1 / examples)")

    def epsilon(self, steps: int, sample_rate: float) -> float:
        """The round's epsilon at :attr:`delta` (Opacus' RDP accountant)."""
        accountant = _opacus("accountants").RDPAccountant()
        for _ in range(steps):
            accountant.step(noise_multiplier=float(self.noise_multiplier), sample_rate=float(sample_rate))
        with warnings.catch_warnings():  # at tiny noise the best RDP order is the smallest Opacus tries: a loose bound
            warnings.simplefilter("ignore")
            return float(accountant.get_epsilon(delta=float(self.delta)))

    def settings(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm, "delta": self.delta}


@dataclass(frozen=True)
class Pruning:
    """Set the smallest-magnitude ``fraction`` of each update tensor's values to zero (``0 <= fraction < 1``)."""

    fraction: float
    name: ClassVar[str] = "prune"

    def __post_init__(self) -> None:
        fraction = checks.finite(self.fraction, "--prune-fraction", positive=False)
        object.__setattr__(self, "fraction", fraction)
        if fraction >= 1:
            raise InputError(f"--prune-fraction {fraction:g} would upload nothing; give a share below 1, e.g. 0.9")

    def apply(self, tensors: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        pruned = {}
        for name, value in tensors.items():
            drop = int(self.fraction * value.numel())
            if drop == 0:
                pruned[name] = value
                continue
            threshold = value.abs().flatten().kthvalue(drop).values
            pruned[name] = torch.where(value.abs() <= threshold, torch.zeros_like(value), value)
        return pruned

    def settings(self) -> dict[str, Any]:
        return {"fraction": self.fraction}


@dataclass(frozen=True)
class GaussianNoise:
    """Add Gaussian noise of standard deviation ``std`` (``> 0``) to every value of the update."""

    std: float
    name: ClassVar[str] = "noise"

    def __post_init__(self) -> None:
        object.__setattr__(self, "std", checks.finite(self.std, "--noise-std", positive=True))

    def apply(self, tensors: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {name: value + self.std * torch.randn(value.shape, generator=generator, dtype=value.dtype,
                                                     device=generator.device)
                for name, value in tensors.items()}  # fmt: skip

    def settings(self) -> dict[str, Any]:
        return {"std": self.std}


Defense = DPSGD | Pruning | GaussianNoise


def parse_defense(name: str, noise_multiplier: float | None = None, max_grad_norm: float | None = None,
                  delta: float | None = None, prune_fraction: float | None = None,
                  noise_std: float | None = None) -> Defense | None:  # fmt: skip
    """The defense ``--defense NAME`` and its options name (None for ``none``); InputError when an option the
    defense needs is missing."""
    if name == "none":
        return None
    if name == "dp-sgd":
        if noise_multiplier is None:
            raise InputError("--defense dp-sgd needs --noise-multiplier (sigma; e.g. 1.0)")
        return DPSGD(noise_multiplier, 1.0 if max_grad_norm is None else max_grad_norm,
                     DEFAULT_DELTA if delta is None else delta)  # fmt: skip
    if name == "prune":
        if prune_fraction is None:
            raise InputError("--defense prune needs --prune-fraction (the share of each tensor set to zero, e.g. 0.9)")
        return Pruning(prune_fraction)
    if name == "noise":
        if noise_std is None:
            raise InputError("--defense noise needs --noise-std (the noise's standard deviation, e.g. 0.01)")
        return GaussianNoise(noise_std)
    raise InputError(f"unknown defense {name!r}; use one of {', '.join(DEFENSES)}")


class PrivateGradients:
    """The clipped, noised mean gradient of a mini-batch, as DP-SGD takes its step (Opacus).

    ``net``'s trainable ``params`` get per-example gradients from
    ``GradSampleModule``; ``DPOptimizer.pre_step`` clips each example's to
    ``max_grad_norm``, sums them, adds the noise (drawn from ``generator``) and
    divides by ``expected_batch_size``. InputError for a model Opacus cannot
    give per-example gradients for (BatchNorm mixes a batch's examples).
    Opacus' hooks stay on ``net``: pass a copy that is trained and dropped.
    """

    def __init__(self, net: nn.Module, params: Mapping[str, nn.Parameter], dp: DPSGD, expected_batch_size: int,
                 generator: torch.Generator):  # fmt: skip
        GradSampleModule, DPOptimizer = _opacus("grad_sample").GradSampleModule, _opacus("optimizers").DPOptimizer
        with warnings.catch_warnings():  # Opacus' notes on secure RNG and on hooks
            warnings.simplefilter("ignore")
            try:
                self.module = GradSampleModule(net)
            except Exception as exc:  # opacus' UnsupportedModuleError and its kin for layers it cannot handle
                raise InputError(
                    f"DP-SGD cannot train this model ({first_line(exc)}): per-example gradients need layers without "
                    "BatchNorm; audit the model your DP training really uses (e.g. after opacus ModuleValidator.fix)"
                ) from None
        self.params = list(params.values())
        self.optimizer = DPOptimizer(
            torch.optim.SGD(self.params, lr=0.0), noise_multiplier=float(dp.noise_multiplier),
            max_grad_norm=float(dp.max_grad_norm), expected_batch_size=int(expected_batch_size), generator=generator,
        )  # fmt: skip

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The mini-batch's loss and the private gradient of each parameter."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.module(inputs), labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss.backward()
            unused = [p for p in self.params if getattr(p, "grad_sample", None) is None]
            for p in unused:  # a parameter the forward does not use (an auxiliary head): zero for every example
                p.grad_sample = torch.zeros((len(labels), *p.shape), dtype=p.dtype, device=p.device)
            self.optimizer.pre_step()
        return loss.detach(), [p.grad.detach().clone() for p in self.params]


def _opacus(module: str):
    """``opacus.<module>``, or InputError saying how to install it (the ``dp`` extra)."""
    try:
        return importlib.import_module(f"opacus.{module}")
    except ImportError:
        raise InputError("--defense dp-sgd needs Opacus; install it with pip install 'fedguard[dp]' (or opacus)") from None
