"""Analytic inversion of a first fully connected layer: the input, read off the update in one division.

For a Linear layer ``z = W x + b`` and any loss, the gradients of row ``i``
over a batch are

    ∇W_i = Σ_n δ_{n,i} x_n        ∇b_i = Σ_n δ_{n,i},

with ``δ_{n,i} = ∂L/∂z_{n,i}``. So ``∇W_i / ∇b_i`` is a weighted average of
the inputs, and **exactly** ``x_n`` when only example ``n`` reaches row ``i``
(``δ`` of the others zero: a ReLU that is off for them, or a batch of one).
When the layer sees the raw input (an MLP's first layer), the quotient is an
image. No optimisation, no prior: the cost is one division per row
(Phong et al. 2017 for one example; Fowl et al. 2022 and Boenisch et al.
2023 use the same identity on crafted layers; here it runs on the model the
client actually received).

For a batch the server does not know which rows one example owns. Rows an
example owns alone all give *that* example, so fedguard keeps the quotients
that lie in the input range, merges those that agree (to
:data:`MERGE_TOLERANCE` RMS with the first, most strongly activated, member
of their group), and reports the ``batch_size`` largest groups: an exact
example is a group of several identical quotients, a mixture a singleton.
FedAvg updates are turned into one average gradient first (the quotient is
then close, not exact, as the weights move during the local steps).

Rows that measure one quantity (responses on the server's public examples
correlated at 0.999 or more, in groups of four or more: an imprint, even one
planted in the client's own architecture or hidden by noise where the data
never varies) are bins: each fires for every example above its threshold, so
the difference of two neighbours' gradients holds only the examples between
their thresholds, and those differences join the quotients (Fowl et al.,
2022). On an MLP with such rows, 1 of 16 digits came back from single rows.
Where the first layer does not give every example, a Linear layer further in
with such rows (not the head) is read too, its bins' differences giving that
layer's input, mapped back to images where the layers before it are affine on
the data (:func:`deeper_bins`): an imprint behind a first layer every example
passes had left one mixture in every first-layer quotient.

References
----------
Phong, L. T., Aono, Y., Hayashi, T., Wang, L. & Moriai, S. "Privacy-Preserving
Deep Learning via Additively Homomorphic Encryption." IEEE TIFS 13(5), 2018
(the ``∇W / ∇b`` identity, first shown in ATIS 2017).
Fowl, L., Geiping, J., Czaja, W., Goldblum, M. & Goldstein, T. "Robbing the
Fed: Directly Obtaining Private Data in Federated Learning with Modified
Models." ICLR 2022.
"""

from __future__ import annotations

import functools
import math
import time
from typing import ClassVar, Mapping

import torch

from fedguard.layers import Head, find_first_layer, first_and_linear_layers, layer_input, linear_layers
from fedguard.threat import NO_BATCH_SIZE, ServerView
from fedguard.torch_state import evaluating
from fedguard.types import Reconstruction

from .base import Attack, Budget, register_attack

__all__ = ["FCInversion", "MERGE_TOLERANCE", "affine_input_map", "bin_neighbours", "invert_rows", "response_correlations"]

#: ``(scale, shift)``: a layer reads ``scale * x + shift`` of the flattened input ``x``.
InputMap = tuple[torch.Tensor, torch.Tensor]

#: Quotients closer than this (RMS over the input, in input units) are the same example.
#: Exact quotients agree to float32 rounding (~1e-6); mixtures of two digits differ by > 0.05.
MERGE_TOLERANCE = 1e-3
#: Quotients at most this far outside the input range (RMS of the excess, in input units) are read as noisy examples,
#: and such quotients (with the in-range ones seen once) closer than NOISY_MERGE_TOLERANCE as the same one. Measured on
#: the built-in MLP, digits, 3 seeds, Gaussian noise on the update at 0.1 % / 1 % of its norm, where the exact test
#: kept no quotient at all: batch 4, 11 / 9 of 12 examples at >= 30 dB; batch 16, 14 / 2 of 48; batch 64, 15 / 2 of
#: 192 (49 / 40 at >= 20 dB). Without noise batches 4 and 16 are unchanged, batch 64 gains (21 of 192 at >= 30 dB
#: against 20, 51 against 36 at >= 20 dB). An RMS excess of 0.05 let in more mixtures than examples (batch 64 without
#: noise: 2 of 192 at >= 30 dB). ``benchmarks/fc_inversion_fidelity.py`` prints these figures (its own noise draws)
#: and 8-bit quantisation's: 8 of 12 at batch 4 since the in-range quotients seen once join the noisy ones (0 before).
NEAR_RANGE = 0.02
NOISY_MERGE_TOLERANCE = 0.02
#: Rows whose bias gradient is below this fraction of the largest carry only rounding.
ACTIVE_FRACTION = 1e-6
#: At most this many rows (the most strongly activated) are clustered.
MAX_ROWS = 4096
#: Rows whose responses correlate this much measure one quantity; MIN_BINS such rows make bins (FG804 reads the same).
SAME_MEASUREMENT = 0.999
MIN_BINS = 4
#: The bin search reads at most this many of the server's public examples, evenly spaced. FG804's threshold was set on
#: 64 (honest units reach 0.996 there, ``benchmarks/detector_calibration.py``); all 1 781 spare digits through the
#: built-in MLP's first layer had taken 6 ms of a 9 ms attack at batch 16 (``benchmarks/analytic_speed.py``).
BIN_EXAMPLES = 128
#: Entries of the Jacobian from images to a deeper layer's input that :func:`deeper_bins` forms (float64: 128 MB).
MAX_JACOBIAN = 1 << 24
#: Units are screened on a random sketch of this many dimensions before their exact correlations: two units at
#: SAME_MEASUREMENT (2.6 degrees apart) stay above SCREEN_CORRELATION (26 degrees) unless one chi-squared draw of 32
#: degrees of freedom exceeds another a hundredfold, which does not happen; a unit without MIN_BINS such partners on
#: the sketch cannot be in a group of bins.
SKETCH_DIM = 32
SCREEN_CORRELATION = 0.9
#: Fewer public examples than this say nothing of which units measure one quantity (two examples make every pair of
#: units correlate at +-1: every honest unit had been a bin), and none at all had raised: the weight rows decide then.
MIN_PUBLIC = 16


def _close(a: torch.Tensor, b: torch.Tensor | None, tolerance: float) -> torch.Tensor:
    """``[len(a), len(b)]``: which rows of ``a`` and ``b`` (``a`` itself when None) agree to ``tolerance`` RMS.

    Squared distances from one matrix product, as ``torch.cdist`` forms them past 25 rows, but in float64 and of
    rows centred on ``a``'s mean, so the rounding stays far below the tolerance at any scale (in float32, as
    ``cdist`` forms them, 8 binary images in [0, 255] of 3 072 values had each been farther from itself than the
    tolerance: an independent review). 95 us on 33 quotients of 784 values (``cdist``: 73 us in float32; 129 us on
    20, where it takes its exact route). A row always agrees with itself."""
    centre = a.mean(dim=0)
    a = (a - centre).double()
    squares_a = (a * a).sum(dim=1, keepdim=True)
    if b is None:
        b, squares_b = a, squares_a.T
    else:
        b = (b - centre).double()
        squares_b = (b * b).sum(dim=1)
    close = torch.addmm(squares_a, a, b.T, alpha=-2).add_(squares_b) <= tolerance**2 * a.shape[1]
    return close.fill_diagonal_(True) if b is a else close


def _take(rows: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``rows[keep]`` (``keep`` a boolean mask over the rows) by ``index_select``: the same rows, in a fraction of the
    time advanced indexing takes on rows of hundreds of values."""
    return rows.index_select(0, keep.nonzero()[:, 0])


def _group(quotients: torch.Tensor, tolerance: float, limit: int) -> tuple[torch.Tensor, list[int], int]:
    """The ``limit`` largest groups of ``quotients`` (rows, strongest first) that agree to ``tolerance`` RMS, as their
    means, with the groups' sizes and how many groups there are. Each quotient joins the group of the first quotient
    that agrees with it."""
    if not len(quotients):
        return quotients, [], 0
    if bool((torch.linalg.vector_norm(quotients - quotients[0], dim=1) <= tolerance * math.sqrt(quotients.shape[1])).all()):
        return quotients.mean(dim=0, keepdim=True), [len(quotients)], 1  # one example (a batch of one): one group
    leader = _close(quotients, None, tolerance).to(torch.int8).argmax(dim=0)
    leaders, members = torch.unique(leader, return_inverse=True)
    sizes = torch.bincount(members, minlength=len(leaders))
    order = torch.argsort(-sizes, stable=True)[:limit]
    sums = torch.zeros(len(leaders), quotients.shape[1], dtype=quotients.dtype, device=quotients.device)
    sums.index_add_(0, members, quotients)
    return (sums / sizes[:, None]).index_select(0, order), sizes[order].tolist(), len(leaders)


def invert_rows(
    grad_w: torch.Tensor, grad_b: torch.Tensor, limit: int, input_range=(0.0, 1.0), input_map: InputMap | None = None
) -> tuple[torch.Tensor, dict]:
    """Inputs recovered from a Linear layer's gradients ``[out, in]`` and ``[out]``.

    Returns rows ``[k, in]`` (``k <= limit``; fewer when fewer distinct
    quotients exist) and the numbers behind them: first the largest groups of
    two or more in-range quotients that agree exactly (examples several rows
    give); the slots they leave go to the other quotients, the in-range ones
    seen once and those near the range (:data:`NEAR_RANGE`, clipped), merged
    at :data:`NOISY_MERGE_TOLERANCE`, largest groups first
    (``details.approximate_rows``): an example one row gives, or the
    quotients of an update with noise, quantisation or clipping in it, none
    of them exact (8-bit quantisation leaves them in range but each a little
    off, so the exact test had kept mixtures in their place).
    ``input_map`` ``(scale, shift)``: the layer reads ``scale * x + shift``
    (a normalisation the model applies first), undone on each quotient
    before the range check.
    """
    dtype = torch.promote_types(grad_w.dtype, torch.float32)  # the update's precision, at least float32
    gw, gb = grad_w.to(dtype), grad_b.to(dtype)
    peak = float(gb.abs().max()) if gb.numel() else 0.0
    active = torch.nonzero(gb.abs() > ACTIVE_FRACTION * peak).flatten() if peak > 0 else torch.zeros(0, dtype=torch.long)
    active = active[torch.argsort(gb[active].abs(), descending=True)][:MAX_ROWS]
    kept = gb.index_select(0, active)  # index_select, not gw[active]: the same rows, a quarter of the time
    quotients = gw.index_select(0, active) / kept[:, None]
    if input_map is not None:
        quotients = (quotients - input_map[1].to(dtype)) / input_map[0].to(dtype)
    lo, hi = input_range
    slack = 1e-4 * (hi - lo)
    low, high = quotients.amin(dim=1), quotients.amax(dim=1)  # two passes: aminmax along a dim is several times slower
    in_range = (low >= lo - slack) & (high <= hi + slack)
    exact, sizes, distinct = _group(_take(quotients, in_range), MERGE_TOLERANCE * (hi - lo), len(quotients))
    repeated = torch.tensor(sizes, dtype=torch.long) >= 2
    rows, group_sizes = _take(exact, repeated)[:limit], [size for size in sizes if size >= 2][:limit]
    approximate = 0
    if len(rows) < limit:
        excess = torch.linalg.vector_norm(quotients - quotients.clamp(lo, hi), dim=1) / math.sqrt(gw.shape[1])
        near = _take(quotients, ~in_range & (excess <= NEAR_RANGE * (hi - lo))).clamp(lo, hi)
        tolerance = NOISY_MERGE_TOLERANCE * (hi - lo)
        once = _take(exact, ~repeated)  # strongest first, ahead of the near-range ones where group sizes tie
        extra, extra_sizes, _ = _group(torch.cat([once, near]), tolerance, len(once) + len(near))
        if len(rows) and len(extra):  # not a second copy of an example the exact quotients gave
            new = ~_close(extra, rows, tolerance).any(dim=1)
            extra, extra_sizes = _take(extra, new), [size for size, keep in zip(extra_sizes, new.tolist()) if keep]
        extra, extra_sizes = extra[: limit - len(rows)], extra_sizes[: limit - len(rows)]
        rows, group_sizes, approximate = torch.cat([rows, extra]), group_sizes + extra_sizes, len(extra)
    details = {
        "active_rows": int(len(active)),
        "rows_in_range": int(in_range.sum()),
        "distinct_quotients": distinct,
        "group_sizes": group_sizes,
        "approximate_rows": approximate,
    }
    if not len(rows):  # what the reports say instead of a row of dashes
        details["why_nothing"] = ("no unit of the layer is active in the update (its bias gradient is zero)" if not len(active)
                                  else "no active unit's quotient lies in or near the input range")  # fmt: skip
    return rows.clamp(lo, hi), details


@functools.lru_cache(maxsize=16)
def _probes(input_shape: tuple, lo, hi, dtype: torch.dtype) -> torch.Tensor:
    """:func:`affine_input_map`'s four probes (the ends of the input range, two uniform draws of seed 0), built once
    per shape and range: the generator, the draw and the concatenation had cost 40-60 us of every call. Never handed
    out itself, only copies."""
    gen = torch.Generator().manual_seed(0)
    ends = [torch.full((1, *input_shape), float(end), dtype=dtype) for end in (lo, hi)]
    return torch.cat([*ends, lo + (hi - lo) * torch.rand(2, *input_shape, generator=gen, dtype=dtype)])


def affine_input_map(model: torch.nn.Module, layer: torch.nn.Module, input_shape, device, input_range) -> InputMap | None:
    """``(scale, shift)`` with ``layer``'s input ``= scale * x + shift`` (flattened) for every input ``x``.

    None when the steps before ``layer`` are not per-value affine with a
    non-zero scale, or differ between training and evaluation (BatchNorm on
    the batch's own statistics): the server cannot undo them exactly. Probed
    on the ends of the input range and two random inputs, in both modes.
    """
    lo, hi = input_range
    probes = _probes(tuple(input_shape), lo, hi, torch.get_default_dtype()).to(device, copy=True)  # a forward may
    # write to its input
    buffers = {name: b.clone() for name, b in model.named_buffers()}  # training mode updates BatchNorm's statistics
    try:
        with evaluating(model), torch.no_grad():
            seen = layer_input(model, layer, probes).double()
            model.train()
            trained = layer_input(model, layer, probes).double()
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    flat = probes.flatten(1).double()
    scale = (seen[1] - seen[0]) / (hi - lo)
    shift = seen[0] - scale * lo
    tolerance = 1e-5 * float(seen.abs().max().clamp_min(1e-12))
    if bool((scale.abs() * (hi - lo) <= tolerance).any()):  # a value the layer does not see: nothing to undo
        return None
    if float((scale * flat + shift - seen).abs().max()) > tolerance or float((trained - seen).abs().max()) > tolerance:
        return None
    return scale.float().cpu(), shift.float().cpu()


def _unit_rows(rows: torch.Tensor, centre: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(unit, index, norm)``: the responses (rows of ``rows``, ``[units, examples]``, centred unless ``centre`` is
    False) of the units at ``index`` whose response varies, scaled to unit length, and every unit's response norm."""
    if centre:
        rows = rows - rows.mean(dim=1, keepdim=True)
    norm = torch.linalg.vector_norm(rows, dim=1)
    index = (norm > 1e-9 * float(norm.max())).nonzero()[:, 0] if norm.numel() else norm.nonzero()[:, 0]
    return rows.index_select(0, index) / norm[index, None], index, norm


def response_correlations(response: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(r, index, norm)``: the signed correlations ``[k, k]`` of the units' responses (the columns of ``response``,
    ``[examples, units]``, centred over the examples) for the ``k`` units at ``index`` whose response varies, and
    every unit's response norm."""
    unit, index, norm = _unit_rows(response.T, centre=True)
    return unit @ unit.T, index, norm


@functools.lru_cache(maxsize=4)
def _sketch_matrix(dims: int, dtype: torch.dtype) -> torch.Tensor:
    """The fixed ``[dims, SKETCH_DIM]`` Gaussian of :func:`_screened` (seed 0), drawn once per ``dims``: a fresh
    generator and its draw had cost 20-25 us of each call. Read only (a matrix product's operand); ``dtype``: the
    default dtype it is drawn in, as the draw on each call was. Four kept (19 MB each for 3x224x224 inputs)."""
    return torch.randn(dims, SKETCH_DIM, generator=torch.Generator().manual_seed(0), dtype=dtype)


def _screened(weight: torch.Tensor, readout: torch.Tensor | None) -> torch.Tensor:
    """Indices of the rows of ``weight`` whose responses (``weight @ readout``, or the rows themselves when
    ``readout`` is None) have at least :data:`MIN_BINS` responses, themselves included, correlated at
    :data:`SCREEN_CORRELATION` or more on a fixed random sketch of :data:`SKETCH_DIM` dimensions: every member of a
    group of bins, and in an honest layer few or none. The sketch is ``weight @ (readout @ gaussian)``: the responses
    themselves are never formed."""
    dims = weight.shape[1] if readout is None else readout.shape[1]
    if dims <= SKETCH_DIM:
        return torch.arange(weight.shape[0])
    gaussian = _sketch_matrix(dims, torch.get_default_dtype())
    sketch = weight @ (gaussian if readout is None else readout @ gaussian)
    sketch = sketch / torch.linalg.vector_norm(sketch, dim=1, keepdim=True).clamp_min(1e-30)  # a constant unit: 0
    return ((sketch @ sketch.T >= SCREEN_CORRELATION).sum(dim=1) >= MIN_BINS).nonzero()[:, 0]


def bin_neighbours(layer: torch.nn.Linear, public: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs ``(lower, upper)`` of neighbouring bins: rows in groups of :data:`MIN_BINS` or more that measure
    one quantity, each next to the row of the next higher threshold.

    Rows measure one quantity when their responses correlate at :data:`SAME_MEASUREMENT` or more on the server's
    public examples (:data:`BIN_EXAMPLES` of them; without :data:`MIN_PUBLIC` of them, when the weight rows themselves
    do): an imprint's rows, even with noise where the data never varies. Only the rows a random sketch keeps (:func:`_screened`) are
    correlated exactly. A unit with threshold ``t`` fires for every example whose measurement exceeds ``t``, so two
    neighbours' gradient difference holds only the examples between their thresholds (Fowl et al., ICLR 2022).
    Layers of more than :data:`MAX_ROWS` units are not grouped.
    """
    none = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    if layer.out_features > MAX_ROWS:  # the units x units correlations would take gigabytes
        return none
    # float32: a correlation is good to about 1e-5 there, far inside SAME_MEASUREMENT's margin (honest units reach
    # 0.996), and the units x units products take a third of the time they take in float64
    weight = layer.weight.detach().float().cpu()
    bias = layer.bias.detach().float().cpu()
    readout = None  # the weight rows themselves
    if public is not None and len(public) >= MIN_PUBLIC and public[0].numel() == weight.shape[1]:
        public = public[:: max(1, len(public) // BIN_EXAMPLES)][:BIN_EXAMPLES].detach().float().cpu().flatten(1)
        shifted = public - public[0]  # exactly 0 where a pixel is constant: its mean can no longer round off it
        readout = (shifted - shifted.mean(dim=0)).T  # a unit's responses, centred over the examples: its row @ this
    candidates = _screened(weight, readout)
    unit, varying, norm = _unit_rows(weight[candidates] if readout is None else weight[candidates] @ readout, centre=False)
    index, norm = candidates[varying], norm[varying]
    same = unit @ unit.T >= SAME_MEASUREMENT  # the same sign: a flipped row reads the bins from the other side
    lower, upper, free = [], [], torch.ones(len(index), dtype=torch.bool)
    for u in (same.sum(dim=1) >= MIN_BINS).nonzero()[:, 0].tolist():  # an honest layer has none: no loop over units
        group = (same[u] & free).nonzero()[:, 0]
        if not free[u] or len(group) < MIN_BINS:
            continue
        free[group] = False
        order = index[group[torch.argsort(-bias[index[group]] / norm[group])]]  # ascending threshold -b/|r|
        lower.append(order[:-1])
        upper.append(order[1:])
    return (torch.cat(lower), torch.cat(upper)) if lower else none


def deeper_bins(view: ServerView, grads: Mapping[str, torch.Tensor], first: Head,
                layers: list[Head] | None = None) -> tuple[torch.Tensor, dict] | None:
    """Inputs read off bins planted in a Linear layer past the first (not the head), through the layers before it.

    An imprint further in (Fowl et al.'s block behind layers that hand the input on: an independent review planted
    one in an MLP's second layer behind an orthogonal first layer every example passes) gives, from neighbouring
    bins, that layer's input for single examples. Where the layers before it are affine on the data (checked on
    public examples to 1e-4), the server solves for the image: the least-squares preimage nearest the public mean
    image (exact where the map is injective), then grouped as the first layer's quotients are
    (:func:`invert_rows`). ``(rows, details)`` of the first layer with bins (flattened images), or None when no
    layer has them. ``layers``: the model's Linear layers in execution order, when the caller has them already.
    """
    if view.auxiliary is None or len(view.auxiliary[0]) < MIN_PUBLIC:
        return None
    public = view.auxiliary[0][:: max(1, len(view.auxiliary[0]) // BIN_EXAMPLES)][:BIN_EXAMPLES].to(view.device).float()
    layers = linear_layers(view.model, view.input_shape, view.device) if layers is None else layers
    if layers and layers[-1].module.out_features == view.num_classes:  # the head (as find_head reads it)
        layers = layers[:-1]
    for layer in layers:
        if layer.module is first.module or layer.bias is None:
            continue
        grad_w = weight_gradient(layer, grads)
        if grad_w is None or layer.bias not in grads or not len(bin_neighbours(layer.module, None)[0]):
            continue  # (an honest layer has no rows alike: no pass over the public data for it)
        with evaluating(view.model), torch.no_grad():
            features = layer_input(view.model, layer.module, public)
        lower, upper = bin_neighbours(layer.module, features)
        if not len(lower):
            continue
        details = {"layer": layer.name, "bin_differences": int(len(lower))}
        if layer.module.in_features * math.prod(view.input_shape) > MAX_JACOBIAN:
            details["why_nothing"] = "the map from images to its input is too large to solve here: its bins give features"
            return torch.zeros(0, math.prod(view.input_shape)), details
        preimage = _affine_preimage(view.model, layer.module, public, view.input_shape)
        if preimage is None:
            details["why_nothing"] = "the layers before it are not affine on the data: its bins give features, not images"
            return torch.zeros(0, math.prod(view.input_shape)), details
        grad_w, grad_b = grad_w.detach().cpu().double(), grads[layer.bias].detach().cpu().double()
        diff_w, diff_b = grad_w[lower] - grad_w[upper], grad_b[lower] - grad_b[upper]
        active = diff_b.abs() > ACTIVE_FRACTION * float(diff_b.abs().max())
        images = preimage(diff_w[active] / diff_b[active, None])
        rows, found = invert_rows(images * diff_b[active, None], diff_b[active], int(view.batch_size), view.threat.input_range)
        return rows, {**details, **found}
    return None


def _affine_preimage(model: torch.nn.Module, layer: torch.nn.Module, public: torch.Tensor, input_shape):
    """A map from ``layer``'s inputs to images, when the model's steps before ``layer`` are affine on the public
    examples (``f(x) = A (x - x0) + f(x0)``, ``x0`` their mean, to 1e-4 relative on each): the least-squares
    preimage nearest ``x0``; None when they are not."""
    x0 = public.mean(dim=0, keepdim=True)

    def features(flat: torch.Tensor) -> torch.Tensor:
        return layer_input(model, layer, flat.reshape(-1, *input_shape))

    with evaluating(model):
        jacobian = torch.autograd.functional.jacobian(lambda flat: features(flat[None])[0], x0.flatten()).double()
        with torch.no_grad():
            f0 = features(x0.flatten()[None])[0].double()
            probe = public[:8].flatten(1).double()
            predicted = (probe - x0.flatten().double()) @ jacobian.T + f0
            actual = features(public[:8].flatten(1)).double()
    if bool((torch.linalg.vector_norm(actual - predicted, dim=1) > 1e-4 * torch.linalg.vector_norm(actual, dim=1)).any()):
        return None
    inverse = torch.linalg.pinv(jacobian)
    return lambda targets: x0.flatten().double().cpu() + (targets - f0.cpu()) @ inverse.T.cpu()


def weight_gradient(layer: Head, grads: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """``layer``'s ∇W from the update: its own, or rebuilt from ``torch.nn.utils.parametrizations.weight_norm``'s
    magnitude ``g`` and direction ``v`` (``W = g v / ‖v‖`` per row, Salimans & Kingma 2016), ``∇W = (‖v‖ / g) ∇v +
    ∇g v / ‖v‖``; None when the update holds neither (a frozen weight, another parametrisation)."""
    if layer.weight in grads:
        return grads[layer.weight]
    stem = layer.weight[: -len("weight")] + "parametrizations.weight."
    norm = getattr(getattr(layer.module, "parametrizations", {}), "weight", None)
    if not (norm is not None and len(norm) == 1 and type(norm[0]).__name__ == "_WeightNorm" and norm[0].dim == 0
            and f"{stem}original0" in grads and f"{stem}original1" in grads):  # fmt: skip
        return None
    g, v = norm.original0.detach(), norm.original1.detach()
    length = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    if not bool((g != 0).all() and (length > 0).all()):  # a row without magnitude or direction has no such ∇W
        return None
    return length / g * grads[f"{stem}original1"] + grads[f"{stem}original0"] * v / length


@register_attack("fc_inversion")
class FCInversion(Attack):
    """Exact inputs from a first Linear layer's update, ``∇W_i / ∇b_i`` (Phong et al. 2017).

    References
    ----------
    Phong, L. T. et al. "Privacy-Preserving Deep Learning via Additively
    Homomorphic Encryption." IEEE TIFS 2018.
    Fowl, L. et al. "Robbing the Fed." ICLR 2022.
    """

    name: ClassVar[str] = "fc_inversion"
    title: ClassVar[str] = "Analytic FC inversion (∇W / ∇b)"
    reference: ClassVar[str] = "Phong et al., Privacy-Preserving Deep Learning via Additively Homomorphic Encryption, IEEE TIFS 2018"
    kind: ClassVar[str] = "images"
    default_iterations: ClassVar[int] = 0

    def _layer(self, view: ServerView):
        return find_first_layer(view.model, view.input_shape, view.device)

    def applies(self, view: ServerView) -> str | None:
        layer = self._layer(view)
        if layer is None or not isinstance(layer.module, torch.nn.Linear):
            return "the input meets a convolution first, not a Linear layer (no ∇W/∇b identity on the input)"
        if layer.module.in_features != math.prod(view.input_shape):
            return "the first Linear layer does not see the raw input (it would recover features, not images)"
        if layer.bias is None:
            return "the first Linear layer has no bias (the quotient needs ∇b)"
        if layer.bias not in view.tensors:
            return "the first Linear layer's bias is not in the update (frozen; the quotient needs ∇b)"
        if weight_gradient(layer, view.tensors) is None:
            return ("the first Linear layer's weight is not in the update (frozen, or reparametrised other than by "
                    "torch's weight_norm, whose ∇W the server rebuilds)")  # fmt: skip
        if view.batch_size is None:
            return NO_BATCH_SIZE
        return None

    def run(self, view: ServerView, budget: Budget) -> Reconstruction:
        start = time.perf_counter()
        budget.check(0)
        if view.batch_size > 1:  # one pass finds the first layer and the Linear layers deeper_bins may read
            layer, linears = first_and_linear_layers(view.model, view.input_shape, view.device)
        else:  # one example: no deeper search, and the pass can stop at the first layer
            layer, linears = self._layer(view), None
        grads = view.gradient_direction()  # the quotient needs no scale, so no local schedule
        input_map = affine_input_map(view.model, layer.module, view.input_shape, view.device, view.threat.input_range)
        span = view.threat.input_range[1] - view.threat.input_range[0]
        identity = input_map is not None and bool(  # the raw input, to float32 rounding of the probes' range
            (input_map[0] - 1).abs().max() <= 1e-5 and input_map[1].abs().max() <= 1e-5 * span
        )
        grad_w, grad_b = weight_gradient(layer, grads).detach().cpu(), grads[layer.bias].detach().cpu()
        lower, upper = (bin_neighbours(layer.module, view.auxiliary[0] if view.auxiliary is not None else None)
                        if view.batch_size > 1 else ((), ()))  # one example: every active row's quotient is it already
        if len(lower):  # rows that measure one quantity: neighbouring bins' differences are single inputs too
            grad_w = torch.cat([grad_w, grad_w.index_select(0, lower) - grad_w.index_select(0, upper)])
            grad_b = torch.cat([grad_b, grad_b[lower] - grad_b[upper]])
        rows, details = invert_rows(
            grad_w, grad_b, int(view.batch_size), view.threat.input_range, None if identity else input_map
        )
        details["bin_differences"] = int(len(lower))
        if view.batch_size > 1 and len(rows) - details["approximate_rows"] < view.batch_size:
            deeper = deeper_bins(view, grads, layer, linears)  # the first layer missed examples: bins deeper?
            if deeper is not None:  # ahead of the first layer's, which are mixtures
                rows, details["deeper_bins"] = torch.cat([deeper[0].to(rows.dtype), rows]), deeper[1]
        if input_map is not None and not identity:
            details["input_map"] = "the model's own per-value affine first step (a normalisation), undone"
        if input_map is None and not len(rows) and details["active_rows"]:
            details["inconclusive"] = ("the first Linear layer reads the input through steps the server cannot undo "
                                       "exactly (e.g. BatchNorm on the batch's own statistics), so its quotients are "
                                       "not images in the input range")  # fmt: skip
        images = rows.float().reshape(-1, *view.input_shape)
        details["layer"] = layer.name
        details["protocol"] = view.protocol + (" (as one average gradient: approximate)" if view.protocol == "fedavg" else "")
        return Reconstruction(
            attack=self.name,
            images=images,
            labels=None,
            seconds=time.perf_counter() - start,
            details=details,
        )
