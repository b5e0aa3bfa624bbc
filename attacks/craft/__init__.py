"""Crafters: the global models a malicious FL server sends to make updates leak data.

This is fedguard's red-team side. Each crafter takes an ordinary model and
returns a *new* module (a deep copy, modified) whose ``state_dict()`` is what a
dishonest server would broadcast, following one published attack. The tests
and benchmarks use them to measure ``fedguard inspect``'s detectors; they are
never used on a user's model.

Every crafter has the signature::

    crafter(model, *, input_shape, num_classes, data=None, seed=0, **options) -> nn.Module

and :func:`craft` runs one by name (``craft("imprint", model, input_shape=(1, 28, 28))``).

``data`` (optional, ``[N, C, H, W]`` in the client's input range) plays the
server's public/auxiliary data: crafters that calibrate thresholds or bins use
it, otherwise they fall back to the paper's distribution assumptions. Layers
are found generically, in *execution* order, by one traced forward pass with
hooks (first ``nn.Linear``, last ``nn.Linear``, every ``nn.Conv2d``), so every
built-in architecture and most user ones work. Crafters that insert a block in
front of the model return a :class:`FrontEndModel`, whose state_dict keys are
``imprint.<i>.*`` (the inserted ``nn.Sequential``) followed by ``model.*`` (the
original model's keys, unchanged).

Registered crafters (``CRAFTERS.names()``):

========================  ===============================================================
``mkor``                  Wang et al., WACV 2024 (naive MKOR parameters)
``mkor_inconspicuous``    Wang et al., WACV 2024 (MKOR's inconspicuous form)
``class_fishing``         Wen et al., ICML 2022 (class fishing)
``feature_fishing``       Wen et al., ICML 2022 (feature fishing)
``imprint``               Fowl et al., ICLR 2022 ("Robbing the Fed" imprint block)
``trap_weights``          Boenisch et al., EuroS&P 2023 ("curious abandon honesty")
``loki``                  Zhao et al., IEEE S&P 2024 (LOKI scaled-identity conv + imprint)
``oversized_fc``          Phong et al., IEEE TIFS 2018; Fowl et al., ICLR 2022; Zhao et al., CVPR 2023
                          (capacity: a far too wide fully connected layer)
========================  ===============================================================

One module each (``_mkor``, ``_fishing``, ``_imprint``, ``_trap_weights``,
``_loki``, ``_oversized``); what they share is ``_base`` (the registry,
:class:`FrontEndModel`, the checks), ``_sites`` (the traced layers),
``_pass_through`` (MKOR's convolution filters) and ``_options`` (each
crafter's options read off its signature, and their checks). Import from
this package.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from fedguard import checks
from fedguard.architectures import (
    build_model,
    check_float32,
    check_input_shape,
    check_num_classes,
    classifier_logits,
    resolve_input_shape,
)
from fedguard.attacks.craft._base import CRAFTERS, FrontEndModel, Shape, check_data
from fedguard.attacks.craft._options import READS_DATA, check_options, crafter_options, get_crafter
from fedguard.errors import InputError, first_line, keyword_names, kind_of
from fedguard.modelview import first_non_finite
from fedguard.torch_state import own_torch_state

# imported (and so registered) in the order of the table above, which is the order the CLI and the docs list them in
from fedguard.attacks.craft._mkor import mkor, mkor_inconspicuous  # isort: skip
from fedguard.attacks.craft._fishing import class_fishing, feature_fishing  # isort: skip
from fedguard.attacks.craft._imprint import imprint  # isort: skip
from fedguard.attacks.craft._trap_weights import trap_weights  # isort: skip
from fedguard.attacks.craft._loki import loki  # isort: skip
from fedguard.attacks.craft._oversized import oversized_fc  # isort: skip


__all__ = [
    "CRAFTERS",
    "READS_DATA",
    "FrontEndModel",
    "NothingToPlant",
    "check_options",
    "craft",
    "crafter_options",
    "craft_model",
    "mkor",
    "mkor_inconspicuous",
    "class_fishing",
    "feature_fishing",
    "imprint",
    "trap_weights",
    "loki",
    "oversized_fc",
]


def _parametrised(model: nn.Module) -> str | None:
    """The first layer whose weight is computed from other tensors (``torch.nn.utils.parametrizations``, the older
    hook-based ``weight_norm`` / ``spectral_norm``, or ``prune`` before ``prune.remove``): writing its ``weight``
    changes nothing the model computes (a crafted LeNet with weight norm had come out unchanged, reported crafted)."""
    from torch.nn.utils import parametrize

    for layer_name, module in model.named_modules():
        if parametrize.is_parametrized(module) or hasattr(module, "weight_g") or hasattr(module, "weight_orig"):
            return layer_name or type(module).__name__
    return None


@keyword_names(aliases={"--set": "option"})  # a crafter's options are keyword arguments here
def craft(
    name: str,
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int | None = None,
    data: torch.Tensor | np.ndarray | None = None,
    seed: int = 0,
    **options: Any,
) -> nn.Module:
    """Run the crafter called ``name`` on ``model`` (left unchanged) and return the crafted module.

    Parameters
    ----------
    name : str
        A crafter in :data:`CRAFTERS` (``mkor``, ``imprint``, ``class_fishing``, ...).
    model : torch.nn.Module
        The honest float32 model to start from; a deep copy is crafted.
    input_shape : (C, H, W)
        The inputs the model takes.
    num_classes : int, optional
        None: the count of the logits ``model`` gives (any other count is refused).
    data : tensor or numpy array, optional
        The server's public inputs ``[N, C, H, W]`` (no labels), only for the crafters in :data:`READS_DATA`.
    seed : int
        Seeds the crafter's random draws.
    **options
        The crafter's own options (:func:`crafter_options` lists them with their defaults; ``docs/craft.md`` says
        what each does).

    Returns
    -------
    torch.nn.Module
        The crafted model; its ``state_dict()`` is what the malicious server sends.

    Raises
    ------
    InputError
        One line naming the problem: an unknown crafter (listing the valid ones), a ``model`` that is not a
        float32 ``nn.Module``, a bad ``input_shape``, ``num_classes`` or ``seed``, an option the crafter does not have or a
        value it cannot take, public ``data`` that are not finite inputs of ``input_shape``, or a model the
        crafter cannot work on (e.g. no ``nn.Linear`` layer).
    """
    fn = get_crafter(name)
    if not isinstance(model, nn.Module):
        raise InputError(f"model is {kind_of(model)}; pass an nn.Module (e.g. fedguard.architectures.build_model('lenet'))")
    check_float32(model, "model", "pass model.float()")
    shape = check_input_shape(input_shape)
    device = next((p.device for p in model.parameters()), None)  # a zero input where the model is
    probe = torch.zeros(1, *shape, dtype=torch.float32, device=device)
    counted = num_classes is None  # then the head's own count: nothing to check it against
    if counted:
        num_classes = classifier_logits(model, probe, "craft", probe=True).shape[1]
    num_classes = check_num_classes(num_classes)
    if num_classes == 1:  # as audit and inspect --data refuse it
        raise InputError("a model of one class has a zero cross-entropy gradient for every example: no crafted model "
                         "leaks anything through it; craft a model of 2 classes or more")  # fmt: skip
    if data is not None and name not in READS_DATA:  # as the command line refuses --data
        raise InputError(f"{name} reads no public data (only {', '.join(sorted(READS_DATA))} do); pass data=None")
    if data is not None and not isinstance(data, (torch.Tensor, np.ndarray)):
        raise InputError(f"data is {kind_of(data)}; pass the server's public inputs as one tensor [N, C, H, W], "
                         "without labels (e.g. fedguard.data.load_data('digits', input_shape=...)[0])")
    data = check_data(data, shape)  # once here: the crafters that read it take finite inputs of the shape
    seed = checks.seed(seed, "seed")
    check_options(name, options, with_data=data is not None)
    given = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "its default options"
    kind = getattr(model, "arch_name", type(model).__name__)  # "lenet" rather than FeatureNet
    parametrised = _parametrised(model)
    if parametrised is not None:
        raise InputError(f"{name} cannot craft this {kind}: layer {parametrised} computes its weight "
                         "from others (weight or spectral norm, or pruning not made permanent), which crafters do not "
                         "write; remove that first (torch.nn.utils.parametrize.remove_parametrizations, prune.remove)")  # fmt: skip
    if not counted and any(isinstance(m, nn.Linear) for m in model.modules()):  # (without one, the crafter says why)
        logits = classifier_logits(model, probe, "craft", probe=True).shape[1]
        if num_classes != logits:  # the crafters size their rows and targets by it: a model's head is what it is
            raise InputError(f"num_classes={num_classes} but the model gives {logits} logits; "
                             f"pass num_classes={logits} or None")
    # the crafters build their layers and noise on the CPU: a model on a GPU is crafted as a CPU copy and moved back
    source = model if device is None or device.type == "cpu" else copy.deepcopy(model).cpu()
    try:  # the caller's generators, grad mode and default dtype kept (a float64 default had broken every crafter)
        with np.errstate(all="ignore"), own_torch_state():  # an overflow is reported below, as one line
            crafted = fn(source, input_shape=shape, num_classes=num_classes, data=data, seed=seed, **options)
    except InputError:
        raise
    except (Exception, SystemExit) as exc:  # a size too large, or the model's own code (SystemExit: sys.exit() in it)
        overflow = "overflow" in str(exc)  # a value beyond float32 (about 3.4e38)
        why = str(exc).splitlines()[0] if type(exc) is ValueError and str(exc) else first_line(exc)  # a crafter's own words
        fix = (f"with {given} the weights go beyond float32's range (3.4e38): use smaller values" if overflow
               else "" if "; " in why else "change its options or the model")
        raise InputError(f"{name} cannot craft this {kind}: {why}" + (f"; {fix}" if fix else "")) from None
    spoilt = first_non_finite(crafted.state_dict())
    if spoilt is not None:  # a huge but finite option overflowed float32: such a model shows nothing a detector looks for
        raise InputError(f"{name} with {given} gives {spoilt} NaN or infinite values (beyond float32's 3.4e38); use values "
                         "nearer 1 (a huge one overflows, and so does a tiny one the crafter divides by)")  # fmt: skip
    if _unchanged(source, crafted):  # no layer it works on, or planted already: a file that is the model would mislead
        raise NothingToPlant(f"{name} found nothing to plant in this {kind} with {given} (no layer of "
                             "the kind it changes where it looks, or its parameters are there already); pick another "
                             "attack or architecture")  # fmt: skip
    return crafted if source is model else crafted.to(device)


class NothingToPlant(InputError):
    """The crafter left the model as it was: it has no layer of the kind the crafter changes, or carries the
    crafter's parameters already (the audit then attacks it as received)."""


def _unchanged(model: nn.Module, crafted: nn.Module) -> bool:
    """Whether ``crafted`` holds exactly ``model``'s tensors under the same names."""
    before, after = model.state_dict(), crafted.state_dict()
    return before.keys() == after.keys() and all(
        before[k].shape == after[k].shape and torch.equal(before[k], after[k]) for k in before
    )


def craft_model(
    name: str,
    arch: str,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    data: torch.Tensor | None = None,
    seed: int = 0,
    **options: Any,
) -> nn.Module:
    """Build ``arch`` (initialised from ``seed``; ``num_classes`` None: the architecture's own count, 10 for the
    built-ins) and craft it with ``name`` (errors as :func:`craft`)."""
    get_crafter(name)  # fail on a bad name before building anything
    shape = resolve_input_shape(arch, input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(checks.seed(seed, "seed"))
        model = build_model(arch, num_classes=num_classes, input_shape=shape)
    return craft(name, model, input_shape=shape, num_classes=num_classes, data=data, seed=seed, **options)
