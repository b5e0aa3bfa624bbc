"""A read-only view of a loaded model: its parameters grouped into layers.

A state_dict is a flat mapping of names to tensors. Detectors want layers: the
weight and bias of one ``nn.Linear`` or ``nn.Conv2d`` together, what kind of
layer it is, and which weight layer follows it. ``ModelView`` derives that from
the names and shapes alone, or from the ``nn.Module`` when an architecture is
known (``--arch``), in which case the module's own layer types win.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from fedguard.rowstats import RowStats, compute_row_stats, finite, weight_rows

#: Layer kinds a detector can ask for.
LINEAR, CONV, NORM, EMBEDDING, OTHER = "linear", "conv", "norm", "embedding", "other"

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_NORM_WORDS = ("norm", "bn", "ln", "gn")


@dataclass(frozen=True)
class Layer:
    """The tensors under one name prefix (``features.0.weight`` -> ``features.0``).

    ``weight`` and ``bias`` are the tensors as loaded (any dtype, possibly
    memory-mapped); use :attr:`stats` and :meth:`rows` for arithmetic.
    """

    name: str
    kind: str
    tensors: Mapping[str, torch.Tensor]
    index: int
    keys: Mapping[str, str] = field(default_factory=dict)
    #: Saved under names of the server's choosing and read as this layer (:func:`_read_renamed_layers`): ``"as
    #: stored"``, or ``"transposed"`` for a weight stored input-major, whose rows here are the stored columns.
    renamed: str = ""
    #: What the detectors compute once on this layer and share within one run, by name
    #: (:func:`fedguard.detectors.rows.row_directions`); :func:`fedguard.inspect.run_detectors` empties it after.
    shared: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def key(self, leaf: str) -> str:
        """The state_dict name of one of this layer's tensors."""
        return self.keys.get(leaf) or (f"{self.name}.{leaf}" if self.name else leaf)

    @property
    def weight(self) -> torch.Tensor | None:
        return self.tensors.get("weight")

    @property
    def bias(self) -> torch.Tensor | None:
        return self.tensors.get("bias")

    def weight_f32(self) -> torch.Tensor:
        """The weight as float32 (a copy only when the stored dtype differs)."""
        return self.weight.detach().to(torch.float32)

    def bias_f32(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.detach().to(torch.float32)

    def rows(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """The weight as float32 rows (one per output unit / filter), all or those at ``index``."""
        rows = weight_rows(self.weight)
        return (rows if index is None else rows[index]).to(torch.float32)

    @cached_property
    def stats(self) -> RowStats:
        """Per-row statistics, computed once and shared by every detector."""
        return compute_row_stats(self.weight)

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def fan_in(self) -> int:
        w = self.weight
        return int(w.numel() // w.shape[0]) if w.shape[0] else 0

    @property
    def is_recurrent_input(self) -> bool:
        """A recurrent layer's input weights (``weight_ih_l0``), read as the linear layer ``NAME.ih_l0``."""
        return bool(_RNN_INPUT.fullmatch(self.key("weight").rpartition(".")[2]))

    @property
    def is_weight_layer(self) -> bool:
        return self.kind in (LINEAR, CONV) and self.weight is not None


@dataclass(frozen=True)
class ModelView:
    """Parameters of one model, by name in file order, grouped into layers.

    Parameters
    ----------
    tensors : mapping
        Every tensor of the state_dict, in the order stored.
    layers : tuple of Layer
        The tensors grouped by name prefix, in order of first appearance.
    module : nn.Module or None
        The architecture, when the user named one with ``--arch``.
    non_finite : tuple of str
        The floating-point tensors holding NaN or infinite values, in the order stored (found once, while the
        layers' copies set those values to 0).
    """

    tensors: Mapping[str, torch.Tensor]
    layers: tuple[Layer, ...]
    module: nn.Module | None = None
    non_finite: tuple[str, ...] = ()

    @classmethod
    def from_state_dict(
        cls, tensors: Mapping[str, torch.Tensor], module: nn.Module | None = None
    ) -> "ModelView":
        module_kinds = _kinds_from_module(module) if module is not None else {}
        groups: dict[str, dict[str, torch.Tensor]] = {}
        keys: dict[str, dict[str, str]] = {}
        spoilt = tuple(name for name, t in tensors.items() if not finite(t))
        for name, (tensor, stored) in effective_tensors(tensors, spoilt).items():
            prefix, leaf = _split(name)
            groups.setdefault(prefix, {})[leaf] = tensor
            keys.setdefault(prefix, {})[leaf] = stored
        renamed = _read_renamed_layers(groups, keys, module_kinds)
        layers = tuple(
            Layer(
                name=prefix,
                kind=module_kinds.get(prefix) or _infer_kind(prefix, group),
                tensors=group,
                index=i,
                keys=keys[prefix],
                renamed=renamed.get(prefix, ""),
            )
            for i, (prefix, group) in enumerate(groups.items())
        )
        return cls(
            tensors=tensors,
            layers=layers,
            module=module,
            non_finite=spoilt,
        )

    def weight_layers(self) -> list[Layer]:
        """Linear and conv layers, in order: the layers that transform data."""
        return [layer for layer in self.layers if layer.is_weight_layer]

    def scored_layers(self, min_fan_in: int = 1, kinds: tuple[str, ...] = (LINEAR, CONV)) -> Iterator[Layer]:
        """Weight layers of ``kinds`` with at least ``min_fan_in`` inputs: the layers the weight-pattern detectors score.

        Their NaN and infinite values read as 0 (:func:`effective_tensors`); FG002 reports them.
        """
        for layer in self.weight_layers():
            if layer.kind in kinds and layer.fan_in >= min_fan_in:
                yield layer

    def next_weight_layer(self, layer: Layer) -> Layer | None:
        """The first linear/conv layer stored after ``layer``."""
        for other in self.layers[layer.index + 1 :]:
            if other.is_weight_layer:
                return other
        return None

    @property
    def n_parameters(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


_PARAMETRIZED = ".parametrizations."


def effective_tensors(
    tensors: Mapping[str, torch.Tensor], non_finite: Iterable[str] | None = None
) -> dict[str, tuple[torch.Tensor, str]]:
    """Name -> (the tensor a layer computes with, the stored key it comes from).

    Reparametrised weights are folded back into the ``weight`` (or ``bias``)
    the layer uses, so the checks see them: ``torch.nn.utils.prune``'s
    ``weight_orig * weight_mask``, the old spectral norm's ``weight_orig``
    (beside ``weight_u``/``weight_v``), weight normalisation's ``g v / ||v||``
    (``weight_g``/``weight_v``, or ``parametrizations.weight.original0/1``),
    and any other parametrisation's ``original`` but ``orthogonal``'s (beside
    its ``0.base``, ``original`` holds the skew-symmetric generator, not the
    weight: read as one, an honest orthogonal layer was MKOR's pass-through,
    FG102). Saved this way, an imprint
    layer was otherwise read as no layer at all. A layer that also stores the
    folded name itself keeps both: its stored weight is checked, and the
    other layout's tensors are left for FG003. NaN and infinite values read
    as 0, so one of them cannot hide the rest of a layer from the checks
    (FG002 reports them from the stored tensors). ``non_finite`` names the
    tensors that hold them, when known (found here otherwise).
    """
    spoilt = {name for name, t in tensors.items() if not finite(t)} if non_finite is None else set(non_finite)
    tensors = {name: _zeroed(t) if name in spoilt else t for name, t in tensors.items()}
    out: dict[str, tuple[torch.Tensor, str]] = {name: (t, name) for name, t in tensors.items()}

    def fold(target: str, value: torch.Tensor | None, stored: str, *parts: str) -> None:
        if value is None or target in tensors:  # not a layout we can fold, or the layer stores its weight as well
            return
        for part in parts:
            out.pop(part, None)
        out[target] = (value, stored)

    for name, t in tensors.items():
        stem = name[:-5]
        if name.endswith("_orig") and f"{stem}_mask" in tensors:
            mask = tensors[f"{stem}_mask"]
            fold(stem, t.float() * mask.float() if mask.shape == t.shape else None, name, name, f"{stem}_mask")
        elif name.endswith("_orig") and f"{stem}_u" in tensors and f"{stem}_v" in tensors:
            fold(stem, t, name, name)  # spectral norm divides by the largest singular value: the pattern stays
        elif name.endswith("_g") and f"{name[:-2]}_v" in tensors:
            fold(name[:-2], _weight_norm(t, tensors[f"{name[:-2]}_v"]), f"{name[:-2]}_v", name, f"{name[:-2]}_v")
        elif (_PARAMETRIZED in name or name.startswith(_PARAMETRIZED[1:])) and name.endswith((".original", ".original0")):
            base, _, rest = f".{name}".rpartition(_PARAMETRIZED)
            leaf = rest.rsplit(".", 1)[0]
            target = f"{base[1:]}.{leaf}" if base else leaf
            if name.endswith(".original"):
                if name[: -len("original")] + "0.base" not in tensors:  # orthogonal's: the weight is base @ exp(A)
                    fold(target, t, name, name)
            elif name[:-1] + "1" in tensors:
                fold(target, _weight_norm(t, tensors[name[:-1] + "1"]), name[:-1] + "1", name, name[:-1] + "1")
    return out


def first_non_finite(tensors: Mapping[str, object]) -> str | None:
    """The name of the first floating-point tensor in ``tensors`` holding a NaN or infinite value (others skipped)."""
    return next((name for name, t in tensors.items()
                 if isinstance(t, torch.Tensor) and not finite(t)), None)


def _zeroed(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` with its NaN and infinite values set to 0."""
    return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)


def _weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """``g v / ||v||`` (torch's weight_norm), the norm taken over the dimensions where ``g`` has size 1 (all of them
    for a scalar ``g``: ``dim=None``); None when ``g`` and ``v`` do not pair up that way."""
    if not (g.is_floating_point() and v.is_floating_point()) or v.ndim == 0:
        return None
    g, v = g.float(), v.float()
    if g.numel() == 1:
        g = g.reshape([1] * v.ndim)
    if g.ndim != v.ndim or any(a not in (1, b) for a, b in zip(g.shape, v.shape)):
        return None
    dims = [d for d in range(v.ndim) if g.shape[d] == 1]
    norms = v.pow(2).sum(dim=dims, keepdim=True).sqrt() if dims else v.abs()
    return v * g / norms.clamp_min(torch.finfo(v.dtype).tiny)


#: A recurrent layer's input weights (``weight_ih_l0``, ``bias_ih_l1_reverse``): rows that read the data as a linear
#: layer's do, and where an imprint's identical rows had passed unscored. The recurrent ``hh`` weights stay unscored
#: (an IRNN's identity ``weight_hh`` is honest).
_RNN_INPUT = re.compile(r"(weight|bias)_(ih_l\d+(?:_reverse)?)")


def _split(name: str) -> tuple[str, str]:
    """``a.b.weight`` -> (``a.b``, ``weight``); fused projections such as
    ``attn.in_proj_weight`` / ``in_proj_bias`` become their own layer ``attn.in_proj``, and a recurrent layer's
    ``rnn.weight_ih_l0`` / ``bias_ih_l0`` the layer ``rnn.ih_l0``."""
    prefix, _, leaf = name.rpartition(".")
    rnn = _RNN_INPUT.fullmatch(leaf)
    if rnn:
        return (f"{prefix}.{rnn.group(2)}" if prefix else rnn.group(2)), rnn.group(1)
    for kind in ("weight", "bias"):
        stem = leaf[: -len(kind) - 1]
        if leaf.endswith(f"_{kind}") and stem:
            return (f"{prefix}.{stem}" if prefix else stem), kind
    return prefix, leaf


#: A recurrent layer's state weights under torch's own names (``weight_hh_l0``, ``bias_hr_l1_reverse``) and a Mamba
#: layer's state matrix (``A_log``, beside its skip vector ``D``: mamba_ssm and transformers' MambaMixer), whose rows
#: are one and the same ``log(1..N)`` by design (read as a layer, an honest Mamba was an imprint, FG301 high).
_STATE_WEIGHTS = re.compile(r"(weight|bias)_(hh|hr)_l\d+(?:_reverse)?|A_log")


#: Fixed tables a model computes from positions and keeps beside its layers: rotary caches (``inv_freq``, ``freqs``,
#: ``freqs_cis``, ``cos_cached``/``sin_cached``) and sinusoidal encodings (``pe``). Their rows are ``t * inv_freq``
#: (parallel) or smooth in ``t``; read as a layer with ``inv_freq`` as its bias, an honest rotary attention was
#: malicious (FG301, FG502).
_FIXED_TABLES = re.compile(r"_?(inv_freq|freqs?(_cis)?|(cos|sin)(_cached)?|pe|sinusoids?|pos(itional)?_(enc|encoding)s?)")


def _renamed_parts(group: Mapping[str, torch.Tensor]) -> tuple[str, str | None] | None:
    """The leaves of a layer saved under names of the server's choosing (``imp.kernel`` and ``imp.bias``, ``imp.W``
    and ``imp.B``): a group with no ``weight`` whose floating-point tensors are one kernel (2-D, or 3- to 5-D with
    several filters) and at most one 1-D tensor as long as its rows (or, for a 2-D one, its columns: a weight stored
    input-major). None for anything else: two 2-D tensors, a norm layer's buffers, a recurrent or state-space layer's
    state weights (:data:`_STATE_WEIGHTS`; an honest IRNN keeps an identity there), a fixed table
    (:data:`_FIXED_TABLES`), a tensor named ``bias`` (a 2-D ``down_proj_bias`` of stacked experts), a single-filter
    tensor such as a positional embedding ``(1, tokens, width)`` with no bias as long as its rows beside it (one
    that has one is that layer, stored with a leading dimension of one). A 1-D ``weight`` beside a kernel named
    ``bias`` is a layer whose names were swapped (it had been read as a norm layer, and no check looked at the
    kernel)."""
    floating = {leaf: t for leaf, t in group.items() if t.is_floating_point()}
    if any(_FIXED_TABLES.fullmatch(leaf) for leaf in floating):
        return None
    swapped = "weight" in floating and floating["weight"].ndim == 1 and "bias" in floating and floating["bias"].ndim >= 2
    vectors = [leaf for leaf, t in floating.items() if t.ndim == 1]

    def is_kernel(t: torch.Tensor) -> bool:
        k = _unbatched(t)  # a leading dimension of one only beside a bias (its length is checked below)
        return (k is t or bool(vectors)) and (k.ndim == 2 or k.ndim in (3, 4, 5) and len(k) > 1)

    kernels = [leaf for leaf, t in floating.items() if (leaf != "bias" or swapped) and t.ndim >= 2 and is_kernel(t)]
    if ("weight" in group and not swapped or len(kernels) != 1 or len(vectors) > 1 or len(kernels) + len(vectors) != len(floating)
            or any(b in group for b in _NORM_BUFFERS) or any(_STATE_WEIGHTS.fullmatch(leaf) for leaf in floating)):
        return None
    weight, bias = _unbatched(floating[kernels[0]]), floating[vectors[0]] if vectors else None
    if bias is not None and len(bias) != len(weight) and (weight.ndim != 2 or len(bias) != weight.shape[1]):
        return None
    return kernels[0], vectors[0] if vectors else None


def _unbatched(t: torch.Tensor) -> torch.Tensor:
    """``t`` without a leading dimension of one (``(1, 128, 64)`` -> ``(128, 64)``); ``t`` itself otherwise."""
    return t[0] if t.ndim >= 3 and len(t) == 1 else t


def _read_renamed_layers(groups: dict[str, dict[str, torch.Tensor]], keys: dict[str, dict[str, str]],
                         known: Iterable[str]) -> dict[str, str]:
    """Read the layers saved under other names (:func:`_renamed_parts`) as ``weight`` and ``bias``, in place, and
    return how each was read (``"as stored"`` or ``"transposed"``, by prefix); ``known`` prefixes (the layers of
    ``--arch``) are left alone. Renamed so, an imprint block holding 200k of a model's 471k
    parameters had been FG003 low only: clean. A 2-D weight stored input-major (used as ``x @ W``) is read
    transposed, so its rows are still the units: a bias as long as a weight's columns and not its rows marks one, and
    when every such mark in the file says input-major, its square and bias-free weights are read that way too (a
    square layer read the wrong way round had hidden MKOR's opposite rows from FG104)."""
    parts = {prefix: found for prefix, group in groups.items()  # a parametrisation's own tensors are no layer
             if prefix not in known and _PARAMETRIZED not in f".{prefix}." and (found := _renamed_parts(group))}  # fmt: skip

    def marks(axis: int) -> bool:
        for prefix, (kernel, vector) in parts.items():
            w = _unbatched(groups[prefix][kernel])
            if vector is not None and w.ndim == 2 and len(groups[prefix][vector]) == w.shape[axis] != w.shape[1 - axis]:
                return True
        return False

    input_major = marks(1) and not marks(0)
    read = {}
    for prefix, (kernel, vector) in parts.items():
        group = groups[prefix]
        weight, bias = _unbatched(group.pop(kernel)), group.pop(vector) if vector else None
        transposed = weight.ndim == 2 and (input_major or bias is not None and len(bias) != len(weight))
        group.update(weight=weight.t() if transposed else weight, **({"bias": bias} if bias is not None else {}))
        names = keys[prefix]
        names.update(weight=names.pop(kernel), **({"bias": names.pop(vector)} if vector else {}))
        read[prefix] = "transposed" if transposed else "as stored"
    return read


def _kinds_from_module(module: nn.Module) -> dict[str, str]:
    kinds = {}
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            kinds[name] = LINEAR
        elif isinstance(sub, nn.modules.conv._ConvNd):
            kinds[name] = CONV
        elif isinstance(sub, _NORM_TYPES):
            kinds[name] = NORM
        elif isinstance(sub, nn.Embedding):
            kinds[name] = EMBEDDING
    return kinds


def _infer_kind(prefix: str, group: Mapping[str, torch.Tensor]) -> str:
    """A layer's kind from its tensors and name alone (no module given). A 2-D weight is always scored as a Linear
    layer: a name is the server's to choose, and crafted layers named ``ensemble_head`` or ``patch_embed`` (with or
    without a bias) had passed as lookup tables, clean. ``--arch`` tells an ``nn.Embedding`` apart."""
    weight = group.get("weight")
    words = prefix.lower()
    if any(buffer in group for buffer in _NORM_BUFFERS):
        return NORM
    if weight is None:
        return OTHER
    if weight.ndim == 1:
        return NORM if any(w in words for w in _NORM_WORDS) or "bias" in group else OTHER
    bias = group.get("bias")
    if bias is not None and bias.ndim >= 2 and bias.shape == weight.shape:
        return NORM  # an element-wise affine (LayerNorm over several dimensions): a Linear's or a conv's bias is 1-D
    if weight.ndim == 2:
        return LINEAR
    if weight.ndim in (3, 4, 5):
        return CONV
    return OTHER
