"""Defenses a client applies to its update before upload, for the audit to attack the update as it would leave.

- :class:`DPSGD`: DP-SGD (Abadi et al., *Deep Learning with Differential
  Privacy*, CCS 2016) during local training: each example's gradient clipped
  to ``max_grad_norm``, Gaussian noise of ``noise_multiplier * max_grad_norm``
  added to their sum at every step, through Opacus' per-example gradients
  (``GradSampleModule``) and ``DPOptimizer``. The round's ``epsilon`` at
  ``delta`` is for neighbours that differ in one example *replaced*: the
  batch's size is public (the server is told it, and divides by it), so
  adding or removing an example would be no secret, and the local
  mini-batches are fixed slices of the batch, not Poisson samples, so no
  subsampling amplification applies. One example replaced moves a step's
  clipped sum by up to ``2 * max_grad_norm`` (Opacus' add/remove convention
  counts ``max_grad_norm``), so Opacus' RDP accountant composes the local
  steps that hold one example (the most any example is in) at noise
  multiplier ``sigma / 2`` and sample rate 1 (sigma 1, one step, delta 1e-5:
  epsilon 10.7, where the add/remove reading had reported 4.73; an
  independent review). Rounds compose, so a client's total budget is larger.
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
import math
import random
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.weight_norm import WeightNorm

from fedguard import checks
from fedguard.errors import COMMAND_LINE, InputError, first_line, keyword_names, kind_of

__all__ = ["DEFENSES", "DEFAULT_DELTA", "DPSGD", "Defense", "GaussianNoise", "Pruning"]

#: Names of the defenses, as ``--defense`` takes them.
DEFENSES = ("none", "dp-sgd", "prune", "noise")
#: Opacus' default delta is the caller's; this one is the usual 1e-5 (below 1 / examples for datasets of <= 100k).
DEFAULT_DELTA = 1e-5
#: Largest delta taken: a guarantee that fails with probability above 1 % is none (delta should be below 1 / examples).
MAX_DELTA = 0.01
#: Smallest delta taken: below the smallest normal float64 the accountant's log(delta) is lost (a subnormal delta had
#: been flushed to 0 and blamed on the noise multiplier).
MIN_DELTA = 1e-300
#: Epsilon of a round above which the report notes that the guarantee bounds little (the level measures only the
#: attacks run); epsilon 10 lets one example change an outcome's odds by e^10, about 22 000 times.
WEAK_EPSILON = 10.0
#: Largest move of the other examples' outputs, relative to the largest of them, when one example is replaced: without
#: mixing they are the same computation on the same numbers (equal on the CPU; cuDNN's nondeterministic kernels stay
#: near 1e-7); a batch mean at batch 512 moves them by about 1e-2 (the replacement is ten times its example).
INDEPENDENCE_TOLERANCE = 1e-5
#: Largest relative gap between the mean of the per-example gradients and the batch's gradient: they agree to float
#: rounding (LeNet, MLP, GroupNorm and LayerNorm nets: <= 1e-6); a layer that mixes examples (a batch mean) gave 0.05.
PER_EXAMPLE_TOLERANCE = 1e-3
#: Largest noise standard deviation taken (``--noise-std``, ``sigma * C``): float32 noise draws of several standard
#: deviations, summed over a step's parameters, must stay finite (float32 ends at 3.4e38; 1e39 had turned the update
#: into infinities, refused as a model whose loss is not finite).
MAX_NOISE_STD = 1e30
#: Smallest noise standard deviation taken: float32's smallest normal number (below it the draws round to nothing,
#: and the update had been reported as defended).
MIN_NOISE_STD = float(torch.finfo(torch.float32).tiny)


@dataclass(frozen=True)
class DPSGD:
    """DP-SGD during local training (clip each example's gradient, add Gaussian noise at every step).

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation over the clipping norm (sigma), ``> 0`` (clipping alone gives no guarantee).
    max_grad_norm : float
        Each example's gradient is clipped to this L2 norm (C), ``> 0``; default 1.0.
    delta : float
        The ``delta`` at which the round's ``epsilon`` is reported, in ``(0, 0.01]``; default 1e-5.

    Raises
    ------
    InputError
        For a value out of its range, or noise that float32 cannot hold (beyond its range or below its smallest
        normal number).
    """

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float = DEFAULT_DELTA
    name: ClassVar[str] = "dp-sgd"

    @keyword_names(aliases={"--noise-multiplier": "noise_multiplier", "--max-grad-norm": "max_grad_norm", "--delta": "delta"})
    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", checks.finite(self.noise_multiplier, "--noise-multiplier", positive=True))
        object.__setattr__(self, "max_grad_norm", checks.finite(self.max_grad_norm, "--max-grad-norm", positive=True))
        delta = checks.finite(self.delta, "--delta", positive=True)
        object.__setattr__(self, "delta", delta)
        if delta > MAX_DELTA:
            raise InputError(f"--delta {delta:g} is no guarantee; give a small probability of at most {MAX_DELTA:g}, "
                             "below 1 / examples (e.g. 1e-5)")
        if delta < MIN_DELTA:
            raise InputError(f"--delta {delta:.3g} is below {MIN_DELTA:g}, too small to compute an epsilon with; give a "
                             f"probability such as {DEFAULT_DELTA:g}")
        # the fix names the factor out of range: a clipping norm of 1 with a noise multiplier of 1e31 had been told to
        # "clip to a norm such as 1"
        fix = ("give a --noise-multiplier such as 1.0" if 1e-3 <= self.max_grad_norm <= 1e3
               else "clip to a --max-grad-norm such as 1")  # fmt: skip
        if self.noise_multiplier * self.max_grad_norm > MAX_NOISE_STD:
            raise InputError(f"--noise-multiplier {self.noise_multiplier:g} times --max-grad-norm {self.max_grad_norm:g} "
                             f"is noise beyond float32's range (at most {MAX_NOISE_STD:g}); {fix}")  # fmt: skip
        if self.max_grad_norm < MIN_NOISE_STD:
            raise InputError(f"--max-grad-norm {self.max_grad_norm:g} is below float32's smallest normal number "
                             f"({MIN_NOISE_STD:.3g}): the clipping would round to nothing; clip to a norm such as 1")  # fmt: skip
        if self.noise_multiplier * self.max_grad_norm < MIN_NOISE_STD:
            raise InputError(f"--noise-multiplier {self.noise_multiplier:g} times --max-grad-norm {self.max_grad_norm:g} "
                             f"is below float32's smallest normal number ({MIN_NOISE_STD:.3g}): the noise would round to "
                             f"nothing; {fix}")  # fmt: skip

    def epsilon(self, steps_per_example: int, examples: int) -> float:
        """The round's epsilon at :attr:`delta` for one example replaced (Opacus' RDP accountant at noise multiplier
        ``sigma / 2``, see the module docstring) over the ``steps_per_example`` local steps whose mini-batch holds one
        example, each at sample rate 1 (fixed slices: no subsampling amplification).
        InputError when :attr:`delta` is not below ``1 / examples``: a release of one of the batch's ``examples``
        outright meets such a guarantee."""
        if self.delta * examples >= 1:
            raise InputError(f"--delta {self.delta:g} is not below 1 / {examples} (one over the batch's examples): it "
                             f"allows one example to be released outright; give a delta such as {DEFAULT_DELTA:g}")
        accountant = _opacus("accountants").RDPAccountant()
        for _ in range(int(steps_per_example)):
            accountant.step(noise_multiplier=float(self.noise_multiplier) / 2, sample_rate=1.0)  # sensitivity 2C
        with warnings.catch_warnings():  # at tiny noise the best RDP order is the smallest Opacus tries: a loose bound
            warnings.simplefilter("ignore")
            try:
                epsilon = float(accountant.get_epsilon(delta=float(self.delta)))
            except ArithmeticError:  # sigma so small that the accountant's orders overflow
                epsilon = math.inf
        if not math.isfinite(epsilon):
            raise InputError(f"--noise-multiplier {self.noise_multiplier:g} adds too little noise for any privacy "
                             "bound (epsilon overflows); give a noise multiplier such as 0.5 or 1")
        return epsilon

    def settings(self) -> dict[str, Any]:
        """The defense's settings as the report records them (``update.defense_settings``)."""
        return {"noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm, "delta": self.delta}


@dataclass(frozen=True)
class Pruning:
    """Set the smallest-magnitude ``fraction`` of each update tensor's values to zero.

    Parameters
    ----------
    fraction : float
        The share of each tensor's values zeroed, ``0 <= fraction < 1`` (InputError otherwise).
    """

    fraction: float
    name: ClassVar[str] = "prune"

    @keyword_names(aliases={"--prune-fraction": "fraction"})
    def __post_init__(self) -> None:
        fraction = checks.finite(self.fraction, "--prune-fraction", positive=False)
        object.__setattr__(self, "fraction", fraction)
        if fraction >= 1:
            raise InputError(f"--prune-fraction {fraction:g} would upload nothing; give a share below 1, e.g. 0.9")

    def apply(self, tensors: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``tensors`` pruned (new tensors; ``generator`` unused: pruning draws nothing)."""
        pruned = {}
        for name, value in tensors.items():
            drop = int(self.fraction * value.numel())
            if drop == 0:
                pruned[name] = value
                continue
            flat = value.flatten().clone()  # exactly `drop` values: a threshold had zeroed every value tied with it
            flat[torch.topk(value.abs().flatten(), drop, largest=False, sorted=False).indices] = 0
            pruned[name] = flat.reshape(value.shape)
        return pruned

    def settings(self) -> dict[str, Any]:
        """The defense's settings as the report records them (``update.defense_settings``)."""
        return {"fraction": self.fraction}


@dataclass(frozen=True)
class GaussianNoise:
    """Add Gaussian noise to every value of the update.

    Parameters
    ----------
    std : float
        The noise's standard deviation, on the update's scale, ``> 0`` and within float32's normal range
        (InputError otherwise).
    """

    std: float
    name: ClassVar[str] = "noise"

    @keyword_names(aliases={"--noise-std": "std"})
    def __post_init__(self) -> None:
        object.__setattr__(self, "std", checks.finite(self.std, "--noise-std", positive=True))
        if self.std > MAX_NOISE_STD:
            raise InputError(f"--noise-std {self.std:g} is beyond float32's range (at most {MAX_NOISE_STD:g}); give a "
                             "standard deviation on the update's scale, e.g. 0.01")
        if self.std < MIN_NOISE_STD:
            raise InputError(f"--noise-std {self.std:g} is below float32's smallest normal number ({MIN_NOISE_STD:.3g}): "
                             "the noise would round to nothing; give a standard deviation on the update's scale, e.g. 0.01")

    def apply(self, tensors: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``tensors`` with noise drawn from ``generator`` added (new tensors, on the generator's device)."""
        return {name: value + self.std * torch.randn(value.shape, generator=generator, dtype=value.dtype,
                                                     device=generator.device)
                for name, value in tensors.items()}  # fmt: skip

    def settings(self) -> dict[str, Any]:
        """The defense's settings as the report records them (``update.defense_settings``)."""
        return {"std": self.std}


Defense = DPSGD | Pruning | GaussianNoise


def check_defense(defense: Any) -> Defense | None:
    """``defense`` when it is one of this module's defenses or None; InputError otherwise."""
    if defense is not None and not isinstance(defense, (DPSGD, Pruning, GaussianNoise)):
        raise InputError(f"defense is {kind_of(defense)}; pass a fedguard.defenses DPSGD, Pruning or GaussianNoise, or None")
    return defense


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
    divides by the mini-batch's size. InputError for a model without
    per-example gradients: BatchNorm, layers Opacus has no per-example
    gradients for (``nn.MultiheadAttention``, ``nn.LSTM``, ``nn.GRU``,
    ``nn.RNN``, the legacy ``torch.nn.utils.weight_norm``; each named with
    Opacus' replacement) or wrong ones (convolutions that pad other than with
    zeros), or any computation that mixes the batch's examples: checked at
    the first step by replacing one example (no other example's output may
    move: ``h - h.mean(0)`` or ``F.batch_norm`` have no parameters for the
    per-example gradients to show them), and at every step by the per-example
    gradients' mean against the batch's gradient.
    Opacus' hooks stay on ``net``: pass a copy that is trained and dropped.
    """

    def __init__(self, net: nn.Module, params: Mapping[str, nn.Parameter], dp: DPSGD, generator: torch.Generator):
        GradSampleModule, DPOptimizer = _opacus("grad_sample").GradSampleModule, _opacus("optimizers").DPOptimizer
        with warnings.catch_warnings():  # Opacus' notes on secure RNG and on hooks
            warnings.simplefilter("ignore")
            batch_norms = sorted({type(m).__name__ for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)})
            if batch_norms:
                raise _mixes_examples(f"it has {batch_norms[0]}, which normalises by the batch's statistics")
            _check_opacus_layers(net)
            try:
                self.module = GradSampleModule(net)
            except Exception as exc:  # opacus' UnsupportedModuleError and its kin for layers it cannot handle
                raise _mixes_examples(f"Opacus: {first_line(exc)[:120]}") from None
        self.params = list(params.values())
        self.checked = False  # whether a step has replaced one example to see that the others' outputs stay
        # expected_batch_size is each mini-batch's own, set at every step (__call__)
        self.optimizer = DPOptimizer(
            torch.optim.SGD(self.params, lr=0.0), noise_multiplier=float(dp.noise_multiplier),
            max_grad_norm=float(dp.max_grad_norm), expected_batch_size=1, generator=generator,
        )  # fmt: skip

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The mini-batch's loss and the private gradient of each parameter."""
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.expected_batch_size = len(labels)  # a last, shorter mini-batch is averaged over its own size
        if not self.checked and len(labels) > 1:
            _check_independent(self.module._module, inputs)
            self.checked = True
        logits = self.module(inputs)
        loss = F.cross_entropy(logits, checks.class_labels(labels, logits))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss.backward()
            for p in self.params:
                if getattr(p, "grad_sample", None) is None:  # unused by the forward (an auxiliary head): zero for all
                    p.grad_sample = torch.zeros((len(labels), *p.shape), dtype=p.dtype, device=p.device)
            self._check_per_example()
            self.optimizer.pre_step()
        return loss.detach(), [p.grad.detach().clone() for p in self.params]

    def _check_per_example(self) -> None:
        """InputError when the per-example gradients do not average to the batch's gradient: a layer mixes the
        batch's examples (a batch statistic), so clipping each would bound no example's share."""
        gap = sum(float((p.grad_sample.mean(0) - p.grad).pow(2).sum()) for p in self.params if p.grad is not None)
        size = sum(float(p.grad.pow(2).sum()) for p in self.params if p.grad is not None)
        if gap > (PER_EXAMPLE_TOLERANCE**2) * max(size, 1e-30):
            raise _mixes_examples(f"the mean of its per-example gradients is {math.sqrt(gap / max(size, 1e-30)):.1%} off "
                                  "the batch's gradient, so a layer mixes the batch's examples or Opacus computes its "
                                  "per-example gradients wrongly")


#: Layers Opacus computes no per-example gradients for, with its drop-in replacement (``ModuleValidator.fix`` swaps
#: them in). They had failed inside their forward ("MultiheadAttention.forward() missing 2 required positional
#: arguments"), blamed on --arch, --input-shape and --data.
OPACUS_REPLACEMENTS = {nn.MultiheadAttention: "opacus.layers.DPMultiheadAttention", nn.LSTM: "opacus.layers.DPLSTM",
                       nn.GRU: "opacus.layers.DPGRU", nn.RNN: "opacus.layers.DPRNN"}  # fmt: skip


def _check_opacus_layers(net: nn.Module) -> None:
    """InputError naming the first layer of ``net`` that Opacus computes no per-example gradients for, or wrong ones."""
    for name, module in net.named_modules():
        replacement = next((r for kind, r in OPACUS_REPLACEMENTS.items() if isinstance(module, kind)), None)
        if replacement is not None:
            raise _no_per_example(f"its layer {name} is a torch {type(module).__name__}, for which Opacus computes no "
                                  f"per-example gradients; use {replacement}, a drop-in replacement")  # fmt: skip
        if isinstance(module, nn.modules.conv._ConvNd) and module.padding_mode != "zeros" and _pads(module):
            raise _no_per_example(f"its layer {name} is a convolution with padding_mode {module.padding_mode!r}, whose "
                                  "per-example gradients Opacus computes as if it padded with zeros (3.5 % off on "
                                  "lenet5_stride2); pad with torch.nn.functional.pad before a zero-padded convolution")  # fmt: skip
        if any(isinstance(hook, WeightNorm) for hook in module._forward_pre_hooks.values()):
            raise _no_per_example(f"its layer {name} has the legacy torch.nn.utils.weight_norm, whose weight Opacus does not "
                                  "see; use torch.nn.utils.parametrizations.weight_norm")  # fmt: skip


def _check_independent(net: nn.Module, inputs: torch.Tensor) -> None:
    """InputError when replacing the first example of ``inputs`` by a larger one (ten times it, plus one) moves
    another example's output: a computation mixes the batch's examples, so clipping each example's gradient bounds
    no example's share. Both passes draw the same random numbers (torch's generators, the modules' own, Python's
    and numpy's), so dropout leaves the other examples' outputs as they were, to float rounding; a batch mean moves
    them by about the change over the batch's size (1/512 of it at batch 512), a batch maximum when the larger
    example takes it. The training goes on as if the check had not run: every random state and buffer is put back."""
    other = inputs.clone()
    other[0] = inputs[0] * 10 + 1
    devices = [inputs.device] if inputs.device.type == "cuda" else []
    own = [g for m in net.modules() for g in vars(m).values() if isinstance(g, torch.Generator)]
    state = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices], [g.get_state() for g in own],
             random.getstate(), np.random.get_state(), {name: b.clone() for name, b in net.named_buffers()})  # fmt: skip

    def replay() -> None:
        torch.set_rng_state(state[0])
        for device, cuda_state in zip(devices, state[1]):
            torch.cuda.set_rng_state(cuda_state, device)
        for generator, generator_state in zip(own, state[2]):
            generator.set_state(generator_state)
        random.setstate(state[3])
        np.random.set_state(state[4])
        for name, buffer in net.named_buffers():
            buffer.copy_(state[5][name])

    with torch.no_grad():
        try:
            first = net(inputs)
            replay()
            second = net(other)
        finally:
            replay()
    if not (isinstance(first, torch.Tensor) and first.shape == second.shape and len(first) > 1):
        return  # outputs the training step itself refuses
    before, after = first[1:].double(), second[1:].double()
    if not bool(torch.isfinite(before).all()):
        return  # the step itself refuses a loss that is not finite
    scale = float(before.abs().max())
    moved = float((after - before).abs().max()) if bool(torch.isfinite(after).all()) else math.inf
    if moved > INDEPENDENCE_TOLERANCE * max(scale, 1e-30):
        raise _mixes_examples(f"replacing one example moved the other examples' outputs by up to {moved:.3g} "
                              f"(largest {scale:.3g}), so a computation mixes the batch's examples (a batch statistic, "
                              "or randomness drawn from a source the check cannot replay)")


def _pads(conv: nn.modules.conv._ConvNd) -> bool:
    """Whether ``conv`` pads its input at all (``padding_mode`` matters only then)."""
    return conv.padding == "same" or (isinstance(conv.padding, tuple) and any(conv.padding))


def _built_by() -> str:
    """How to audit another model: the flag on the command line; from Python, where ``compute_update`` takes a
    module and the audit an ``arch``, what builds it."""
    return "through --arch module:callable" if COMMAND_LINE.get() else "built by a package.module:callable architecture"


def _no_per_example(why: str) -> InputError:
    return InputError(f"DP-SGD cannot train this model: {why} (or audit the model your DP training uses, {_built_by()})")


def _mixes_examples(why: str) -> InputError:
    return InputError(
        f"DP-SGD cannot train this model: {why}; per-example gradients need layers that treat each example alone. "
        f"Audit the model your DP training uses (GroupNorm for BatchNorm, as opacus ModuleValidator.fix does), {_built_by()}"
    )


def _opacus(module: str):
    """``opacus.<module>``, or InputError saying how to install it (the ``dp`` extra)."""
    try:
        return importlib.import_module(f"opacus.{module}")
    except ImportError:
        raise InputError("--defense dp-sgd needs Opacus; install it with pip install 'fedguard[dp]' (or opacus)") from None
