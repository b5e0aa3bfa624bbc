"""Robbing the Fed's imprint block in front of the model (Fowl et al., ICLR 2022)."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

import numpy as np
import torch
from torch import nn

from fedguard.attacks.craft._base import CRAFTERS, FrontEndModel, Shape, dry_check, front_block, seeded_generator
from fedguard.errors import InputError


def _measurement(linfunc: str, n: int, mode: int, gen: torch.Generator) -> torch.Tensor:
    """The imprint block's linear query (one row), as in the paper's code."""
    if linfunc == "avg":
        return torch.full((n,), 1.0 / n)
    if linfunc == "fourier":
        return torch.cos(math.pi / n * (torch.arange(n) + 0.5) * mode) / n * max(mode, 0.33) * 4
    if linfunc == "randn":
        if n == 1:  # one input value: the only direction there is
            return torch.ones(1)
        w = torch.randn(n, generator=gen)
        return (w - w.mean()) / w.std() / math.sqrt(n)
    raise ValueError(f"unknown linfunc {linfunc!r}; use 'avg', 'fourier' or 'randn'")


def _ladder(
    num_bins: int,
    linfunc: str,
    values: torch.Tensor | None,
    fit: str,
    loc: float | None,
    scale: float | None,
) -> np.ndarray:
    """Bin edges (float64): bins[0] far below (the paper's -10 sigma), then the i/K quantiles."""
    if values is not None and fit == "quantile":
        v = values.double().numpy()
        mu, sd = float(v.mean()), float(v.std()) or 1.0
        edges = np.quantile(v, np.arange(1, num_bins) / num_bins)
    else:
        dist = fit if fit in ("normal", "laplace") else ("laplace" if linfunc == "fourier" else "normal")
        if values is not None:
            mu, sd = float(values.double().mean()), float(values.double().std()) or 1.0
        else:
            mu, sd = 0.0, 1.0  # the paper assumes standardised inputs
        mu = mu if loc is None else float(loc)
        sd = sd if scale is None else float(scale)
        q = np.arange(1, num_bins) / num_bins
        if dist == "laplace":
            b = sd / math.sqrt(2.0)  # Laplace with standard deviation sd
            edges = np.where(q < 0.5, mu + b * np.log(2 * q), mu - b * np.log(2 - 2 * q))
        else:
            nd = NormalDist(mu, sd)
            edges = np.array([nd.inv_cdf(float(p)) for p in q])
    return np.concatenate([[mu - 10.0 * sd], edges])


def _strictly_decreasing(values: np.ndarray) -> torch.Tensor:
    """float32 copy of a non-increasing sequence with ties (e.g. tied quantiles) split by one ulp."""
    out = values.astype(np.float32)
    for i in range(1, len(out)):
        if out[i] >= out[i - 1]:
            out[i] = np.nextafter(out[i - 1], np.float32(-np.inf))
    return torch.from_numpy(out)


@CRAFTERS.register("imprint")
def imprint(
    model: nn.Module,
    *,
    input_shape: Shape,
    num_classes: int,
    data: torch.Tensor | None = None,
    seed: int = 0,
    num_bins: int = 128,
    linfunc: Literal["avg", "fourier", "randn"] = "avg",
    mode: int = 0,
    gain: float = 1.0,
    fit: Literal["quantile", "normal", "laplace"] = "quantile",
    loc: float | None = None,
    scale: float | None = None,
) -> FrontEndModel:
    """Robbing the Fed: an imprint block in front of the model.

    Returns a :class:`FrontEndModel` whose ``imprint`` is
    ``Sequential(Linear(C*H*W, K), ReLU, Linear(K, C*H*W))``; keys
    ``imprint.0.weight/bias``, ``imprint.2.weight/bias``, then ``model.*``.

    * ``imprint.0.weight``: K identical rows, the measurement ``h`` times
      ``gain`` (``linfunc="avg"``: all ``1/(CHW)``, the average brightness;
      ``"fourier"``: a DCT-II mode ``mode``; ``"randn"``: a fixed random
      direction with unit output variance);
    * ``imprint.0.bias``: ``-gain * bins``, a monotone ladder: ``bins[0]`` far
      below the distribution (the paper's -10 sigma), then the ``i/K``
      quantiles of the measurement: empirical ones on ``data``
      (``fit="quantile"``), else a normal fit (Laplace for ``fourier``), with
      the paper's standard-normal assumption when there is no data;
    * ``imprint.2``: weights ``1/gain`` everywhere, bias the default draw minus
      the mean bin (as in the paper's code).

    For one example, bin ``i`` is active iff ``h(x) > bins[i]``; with
    ``dW_i`` and ``db_i`` its gradients, ``(dW_i - dW_{i+1}) / (db_i -
    db_{i+1})`` is exactly the one example whose measurement falls between
    the two edges.

    References
    ----------
    L. Fowl, J. Geiping, W. Czaja, M. Goldblum, T. Goldstein, "Robbing the
    Fed: Directly Obtaining Private Data in Federated Learning with Modified
    Models", ICLR 2022 (code: breaching ``ImprintBlock``).
    """
    n = math.prod(input_shape)
    if linfunc == "fourier" and mode >= n:  # a higher mode aliases a lower one, scaled up (mode=100000: weights of 130)
        raise InputError(f"imprint mode={mode} is beyond the {n} DCT modes of a {'x'.join(map(str, input_shape))} input; "
                         f"give a mode from 0 to {n - 1}")  # before the block is built: refused at once, whatever its size
    out = front_block(model, input_shape, num_bins, seed, "imprint", "num_bins")
    first, second = out.imprint[0], out.imprint[2]
    gen = seeded_generator(seed)
    h = _measurement(linfunc, n, mode, gen)
    values = data.flatten(1) @ h if data is not None else None
    bins = _ladder(num_bins, linfunc, values, fit, loc, scale)
    with torch.no_grad():
        first.weight.copy_(h.repeat(num_bins, 1) * gain)
        first.bias.copy_(_strictly_decreasing(-bins * gain))
        second.weight.fill_(1.0 / gain)
        second.bias.sub_(float(bins.mean()))
    return dry_check(out, input_shape, "imprint")
