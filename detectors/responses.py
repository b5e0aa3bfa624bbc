"""FG803/FG804: how the fully connected layers respond to the client's own data.

The analytic inversion of a Linear layer (``∇W_i / ∇b_i``, Phong et al.
2017; the core of Robbing the Fed, Fowl et al., ICLR 2022, and of trap
weights, Boenisch et al., EuroS&P 2023) returns example ``n``'s input to the
layer exactly from every unit whose gradient only ``n`` reaches. A server can
arrange that without any weight pattern the static rules read, in the first
layer or deeper (there the input is the earlier layers' features, from which
the server solves for the image through the layers it wrote):

* **Sparse firing (FG803).** Leave the weights at an honest initialisation and
  set each unit's bias at a high quantile of its own response on public data,
  so each unit fires for about one example in a batch: 40-44 of 64 digits
  were rebuilt exactly against 3-9 for the honest model, and every static
  rule had called it clean. A unit is reached by an example when that
  example's gradient at the unit's output is not negligible
  (:data:`NEGLIGIBLE`: a ReLU unit that example switches on; a sigmoid's
  unless saturated; behind a ReLU or a leaky one, where the example switches
  the unit on, :func:`_mark_switched`), and it is rare when at most 1/8
  of the client's examples reach it. Reported when at least
  :data:`RARE_SHARE` of a layer's reached units are rare. Measured on every
  Linear layer of the benign zoo with a known architecture, six random batches
  of 64 digits each (``benchmarks/detector_calibration.py``): at most 24.3 %
  (the MLP, truncated-normal init), and 4-19 % in honest MLPs 256-4096 units
  wide, at init and trained, at every width (a count of isolated examples
  grows with the width instead: 19-25 of 64 at 1024 units, 39-46 at 4096, and
  was left out); three batches of 16 and of 32 digits: at most 20.8 % and
  21.7 %. Crafted: 96-99 % with every unit planted (first or second layer),
  44-50 % with half of them planted among honest units (35 of 64 rebuilt
  exactly; the limit had been 50 % and this passed). The cut was 1/16 (honest
  at most 19.4 %) until an adaptive server set the quantile for the client's
  batch instead (an independent review, QBI: each unit at 1/8-1/10 of the
  examples, which at batches of 8-16 still fires for one example or so):
  94-95 % of a batch of 16 rebuilt at ≥ 30 dB against 61 % for the honest
  MLP, biases alone changed, and clean; at 1/8 such layers read 55-84 %, and
  trap weights with the negative half scaled down (ratios 1.0-3.3, which
  FG401 does not read) 75-89 %. Honest federated training on one class per
  client reaches 35-43 % (docs/detectors.md), and isolates examples too (16
  of 64): a real leak, reported as one. Medium, not high, where the layer's
  input varies in fewer than :data:`MIN_DIRECTIONS` directions over the
  examples (an isolated example then gives that many numbers), or where the
  layer isolates no more examples than a fresh initialisation of ``--arch``
  does on them (units dying in honest training: 2-5 of 64 against the fresh
  MLP's 7).
* **Imprint in data space (FG804).** Robbing the Fed's rows measure one
  quantity; noise the data never excites (pixels always zero, directions of
  no variance; in a second layer, directions the first layer never
  produces) makes the rows differ in weight space (|cosine| 0.94 and less, 0.45
  in the second layer) but not in what they measure, and 29-32 of 64 digits
  were still rebuilt exactly. Units whose responses to the client's examples
  (``W_i · x``, centred) correlate at ``|r| ≥ 0.999`` measure one quantity;
  groups of four or more such units with four or more thresholds among the
  examples (where the units switch) bin the batch
  (:func:`measurement_groups`). Reported when eight or more units are in
  such groups, on the first layer where it happens (the layers after it see
  nothing but its one measurement): one large group, or many small ones
  (an independent review's 36 groups of 7 units, each under the 8 one group
  had to reach, had rebuilt 98 % of a batch of 16, clean). Benign zoo: largest
  correlation between two first-layer units 0.996 (an MLP trained on two
  classes, on digits 0 and 1); no units of any layer in such groups (4 in a
  hidden layer of that MLP trained from a zero head before thresholds counted
  only among the examples); every crafted imprint layer correlates at
  1.0 in all its units. Input features that vary by rounding alone are left
  out (:data:`ROUNDING`).

Every ``nn.Linear`` that one forward pass applies to batches of feature
vectors is measured, over all its calls where it applies more than once
(not the head), on at most :data:`MAX_UNITS` units, in eval mode and, for a
model with running statistics or dropout, again as its training runs it
(:meth:`LayerResponses.run`), and those applied to every token of an example
(:class:`TokenwiseSeen`: a unit is reached by an example when any of its
tokens reaches it, a unit only one token reaches gives that token's input,
and FG804 reads a sample of the tokens, its groups only where the rest of the
model treats their units alike, :func:`treated_alike`). References:
Phong et al., IEEE TIFS 2018; Fowl et al., ICLR 2022; Boenisch et al.,
"When the Curious Abandon Honesty", IEEE EuroS&P 2023.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import traceback
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fedguard.attacks.fc_inversion import MIN_BINS, SAME_MEASUREMENT, response_correlations
from fedguard.detectors.base import NEEDS_DATA, Detector, InspectContext, fresh_module, register_detector, rounded
from fedguard.dropout import TrainingDropout, draw_generator
from fedguard.layers import layer_input
from fedguard.torch_state import evaluating_one_by_one, normalising_as_in_training, running_statistics
from fedguard.types import Confidence, Rule, Severity

#: A unit is rare when at most this share of the client's examples reach it.
RARE = 1 / 8
#: A row of an example reaches a unit when its gradient at the unit's output, over the size of the example's whole
#: gradient at the layer's output (:func:`example_sizes`), is more than this share of the largest such at the unit:
#: below it, the row is switched off but for a trace. A red team's LeakyReLU of slope 1e-9 below planted biases gave
#: every example a gradient at every unit, none of them exactly zero, and rebuilt as many tokens as the ReLU it
#: stood for, clean. Each example at its own size, but no smaller than the median example's: in an honest
#: ConvNeXt-T at initialisation one photograph's gradient at the pointwise layers is 6e4 times the median
#: example's, and against the largest alone the other examples had read as switched off (FG803 on 12 layers, every
#: unit rare); an example that switches on no unit of a layer is as small as its trace, and is not made larger. On
#: the benign zoo (six batches of 64 digits, 582 layers and batches) the rare shares are those of exact zeros but
#: for 3, by at most 0.004 (with loss-scaled sizes, any cut up to 1e-3 had moved none by more than 0.02). At slopes
#: of 0.002 and 0.01 the switched-off rows' part of each unit's gradient is one unknown matrix seen through the next
#: layer's columns, which the server wrote, and a third red team's least-squares fit removed it (34 of 64 digits
#: rebuilt, clean): behind ReLUs and the leaky activations autograd names, rows count where they switch the unit on
#: (:func:`_mark_switched`).
NEGLIGIBLE = 1e-3
#: FG803 is medium, not high, in a layer applied per token where fewer than this share of its reached units are rare,
#: or whose rare units isolate fewer than :data:`SCATTERED` of the examples (a token each). Honest tiny ViTs trained
#: with Adam read 0.35-0.44 rare on 2-3 of 6 batches of 64 digits, isolating 3-15 of them (lr 0.01, 2x2 patches;
#: depth 4, lr 0.003), and had been malicious; planted, every unit: 0.95-1.0 and 24-41 isolated; 38-44 % of the
#: units: 0.39-0.45 and 17-18 isolated, medium now.
TOKENS_RARE_SHARE, SCATTERED = 0.5, 0.2
#: FG803: share of a layer's reached units that are rare.
RARE_SHARE = 0.35
#: FG803 is medium, not high, where the layer's input varies in fewer directions over the examples than this (and
#: than half the examples, which bound what a sample can show): an example a unit isolates then gives the server
#: that many numbers, not its input. Honest MLPs whose first layer died but for 8-10 units under FedAdam at tau 1e-9
#: had read 0.34-0.70 in their second layer, whose input varied in 8-10 directions (a live layer's: 63 of 64
#: examples); 16 principal components of a digit are about what it takes to draw it.
MIN_DIRECTIONS = 16
#: FG804: |correlation| of two units' responses that makes them one measurement; the fewest distinct thresholds among
#: them (the bins fc_inversion reads; also the fewest rare units FG803 reports).
SAME_RESPONSE, MIN_GROUP = SAME_MEASUREMENT, MIN_BINS
#: FG804, in a layer applied per token: singular values of a group's units' gradients below this share of the
#: largest are taken as none (:func:`gradient_rank`): float32's rounding in gradients of an exact structure is some
#: 1e-7 of them; honest near-collapsed groups part from one direction by 1e-2 and more.
TIED = 1e-4
#: FG804: the fewest units in groups measuring one quantity: twice the most an honest layer of the benign zoo had (4
#: units of a hidden layer of an MLP trained on two classes from a zero head, whose two rows move every hidden unit
#: along one direction; none since thresholds count only among the examples).
MIN_SAME_UNITS = 8
#: FG804: an input feature of a layer varies by the data when its spread over the examples exceeds this multiple of
#: float32's rounding error in it, measured as the difference from the same forward pass in float64
#: (:meth:`LinearSeen.varying_responses`). Honest models whose layer input the examples no longer move
#: (MobileNetV3-Small trained, then magnitude-pruned by 90-95 %; LeNet-5 with sigmoids and every weight scaled by
#: 0.01) vary by rounding alone, and that noise had correlated across hundreds of units (FG804, high). A feature that
#: float32 does not resolve in the model's own forward pass is not one a server reads off the update. (Measured per
#: unit against a bound, ``eps Σ_k |W_ik x_nk|``, as first written, an independent review's weights on constant
#: features that cancel exactly inflated the bound and hid 192 bins, 13 of 16 digits rebuilt, clean; against each
#: feature's own size, features that are small differences of larger ones upstream kept their noise.) Spread over
#: rounding error on 64 digits: MobileNetV3-Small trained 5 steps and pruned by 90 %, 0.04-1.0 (noise); LeNet-5 and
#: the MLP trained, 4e4-1e7; MobileNetV3-Small trained 5 steps, unpruned, 1.2-22 (its pooled features barely move).
ROUNDING = 4.0
#: FG804 trusts the float64 pass only where it agrees with the float32 one on the layer's input as a whole, to this
#: many of float32's epsilons of the input's size (root mean squares): honest models 0.3-1.6 (MobileNetV3-Small,
#: pruned or not, LeNet-5, LeNet-5 with sigmoids scaled by 0.01). An independent review had the two passes part on
#: purpose (1e8 + 12 - 1e8 is 16 in float32 and 12 in float64) and so switched an imprint's input off in the float64
#: pass alone, which hid it; past this bound every feature is taken as varying.
AGREEMENT = 8.0
EPSILON = float(torch.finfo(torch.float32).eps)
#: Units measured at most (the correlation matrix is units x units).
MAX_UNITS = 8192
#: Rows of a layer applied per token kept for FG804 and :func:`input_directions`: all of 64 examples of 8 tokens,
#: about 2.6 examples of a ViT-B/16 at 224x224 (0.57 GB for its 24 feed-forward layers).
SAMPLE_ROWS = 512
#: Examples per forward and backward pass: autograd keeps every layer's activations for the backward, and 64
#: photographs at 224x224 had taken ConvNeXt-T to 9.6 GB (EfficientNet-B0, a 21 MB model: 5.9 GB).
CHUNK = 16
#: Bytes autograd may keep for one chunk's backward: a chunk holds fewer than :data:`CHUNK` examples where theirs
#: would be more (:func:`_chunk_size`). Reading the layers applied per token runs such passes through models that
#: had none (a CNN whose only Linear layers are per position and its head): ConvNeXt-T and ViT-B/16 at 224x224 in
#: chunks of 16 had taken ``inspect --arch --data`` from 1.9 and 2.2 GB to 6.2 and 7.8 GB.
ACTIVATIONS = 1 << 29


@dataclass(frozen=True)
class LinearSeen:
    """One fully connected layer as one forward pass of the client's examples meets it."""

    name: str
    layer: nn.Linear
    #: What the layer reads, ``[examples, in_features]``, float64.
    inputs: torch.Tensor
    #: The gradient of the summed cross-entropy at the layer's output, ``[examples, units]``: row ``n`` is example
    #: ``n``'s own (no layer mixes examples in the passes here).
    grad: torch.Tensor
    #: What the first :data:`MAX_UNITS` units switch on at zero, ``[examples, units]``, float64: the layer's output,
    #: or the output of a normalisation layer that reads it as it is (:data:`NORMALISATIONS`), whose shift and
    #: scale move each unit's threshold.
    switching: torch.Tensor
    #: Float32's rounding error in ``inputs`` (them less the same forward pass in float64), when measured.
    rounding: torch.Tensor | None = None
    #: Whether the pass normalised as the client's training does
    #: (:func:`~fedguard.torch_state.normalising_as_in_training`), rather than in eval mode.
    as_in_training: bool = False
    #: How many times one forward pass applies the layer: :attr:`inputs`, :attr:`grad` and :attr:`switching` hold one
    #: row per example and call, the calls one after another (a unit only one row reaches gives that row's input).
    calls: int = 1
    #: The highest rate of the dropout calls the forward pass makes before this layer's (0 where none:
    #: :class:`~fedguard.dropout.TrainingDropout`); in a pass :attr:`as_in_training`, :attr:`inputs` are then what one
    #: draw of that dropout gives the layer (:func:`with_dropout_drawn`).
    dropout: float = 0.0

    def reach_counts(self) -> torch.Tensor:
        """Per example and unit, how many of the example's rows (one per call) reach the unit (:func:`reaching`),
        ``[examples, units]``."""
        grad = self.grad.abs().view(self.calls, -1, self.grad.shape[1])
        weighed = grad / example_sizes(grad.transpose(0, 1).flatten(1).norm(dim=1))[:, None]
        return reaching(weighed.flatten(0, 1), weighed.flatten(0, 1)).view_as(grad).sum(dim=0)

    def responses(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W x, b)`` of the first :data:`MAX_UNITS` units, float64: ``[examples, units]`` and ``[units]``."""
        return self.inputs @ self._weight().T, self._bias()

    def varying_responses(self) -> torch.Tensor:
        """``W (x - x̄)`` of the first :data:`MAX_UNITS` units, ``[examples, units]``, float64; with :attr:`rounding`
        measured, from only the input features that the examples move by more than :data:`ROUNDING` times float32's
        rounding error in them (each as a root mean square over the examples). The others add exact zeros, so a unit
        that reads nothing else responds with exact zeros."""
        centred = self.inputs - self.inputs.mean(dim=0)
        if self.rounding is not None:
            centred = centred * (centred.square().mean(dim=0) > ROUNDING**2 * self.rounding.square().mean(dim=0))
        return centred @ self._weight().T

    def _weight(self) -> torch.Tensor:
        return self.layer.weight[:MAX_UNITS].detach().double()

    def _bias(self) -> torch.Tensor:
        if self.layer.bias is None:
            return self.inputs.new_zeros(min(len(self.layer.weight), MAX_UNITS))
        return self.layer.bias[:MAX_UNITS].detach().double()


@dataclass(frozen=True)
class TokenwiseSeen(LinearSeen):
    """One fully connected layer that the forward pass applies to every token (position, patch) of an example, as
    one pass of the client's examples meets it: a transformer's feed-forward layers, ConvNeXt's pointwise ones.
    :attr:`inputs`, :attr:`grad` and :attr:`switching` hold a sample of its rows, a token each (the first
    :data:`SAMPLE_ROWS` in the order of the examples: FG804 and :func:`input_directions` read them), not all (a
    ViT-B/16 at 224x224 has 197 per example and layer); :attr:`calls` is its tokens per example over all calls."""

    #: Per example and unit, the largest and the second largest of the example's tokens' gradients at the unit's
    #: output (all calls), ``[examples, 2, units]`` for the first :data:`MAX_UNITS` units: what tells whether no
    #: token, one or more reach it (:func:`reaching`). A unit only one token of one example reaches hands the server
    #: that token's input to the layer, exactly.
    peaks: torch.Tensor = dataclasses.field(kw_only=True)
    #: Per example, the size of its gradient at the layer's output over all its tokens and those units.
    norms: torch.Tensor = dataclasses.field(kw_only=True)
    #: Per call, the dimension of the layer's input that holds the examples.
    layout: tuple[int, ...] = dataclasses.field(default=(0,), kw_only=True)

    def reach_counts(self) -> torch.Tensor:
        """Per example and unit, how many of the example's tokens reach the unit (:func:`reaching`): 0, 1, or 2 for
        two or more, ``[examples, units]``."""
        weighed = self.peaks / example_sizes(self.norms)[:, None, None]
        return reaching(weighed, weighed[:, 0]).sum(dim=1)


def linear_layers_seen(module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, as_in_training: bool = False
                       ) -> list[LinearSeen]:  # fmt: skip
    """Every ``nn.Linear`` of ``module`` that one forward pass of ``inputs`` applies to ``[examples, features]``
    inputs, once or more (:attr:`LinearSeen.calls`; a third red team's quantile biases in a layer applied to a digit
    and to its mirror image had rebuilt 67-94 % of batches of 8-64, clean, while only layers applied once were read),
    in the order it first applies them, with what each read and its output's gradient; not
    the head (the last one applied, when its output is as wide as the logits): the softmax reads every logit, no unit
    of it fires or not, and a head trained from zeros on a few classes holds rows that measure one quantity.

    Which layers those are is read off a pass of three examples, with gradients but no backward (three: a layer of
    two tokens per example in a chunk of two is then still told from its examples); the examples then go through in
    chunks of up to :data:`CHUNK` (in eval mode no layer mixes examples), and not at all when no layer qualifies (a
    CNN whose only Linear layer is its head). A call the forward makes again inside the backward (activation
    checkpointing) is not another call. With ``as_in_training``, the normalisation layers
    standardise as the client's training does (:attr:`LinearSeen.as_in_training`), and a layer after dropout reads
    what one draw of it gives (:func:`with_dropout_drawn`).
    """
    with _mode(as_in_training, inputs, module):
        layers = _linear_layers_seen(module, inputs, labels, as_in_training)
    return with_dropout_drawn(module, layers, inputs, labels) if as_in_training else layers


def _linear_layers_seen(module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, as_in_training: bool
                        ) -> list[LinearSeen | TokenwiseSeen]:  # fmt: skip
    names = {layer: name for name, layer in module.named_modules() if isinstance(layer, nn.Linear)}
    probe, logits = _linear_calls(module, names, inputs[:3], None)
    head = probe[-1].name if probe and probe[-1].output.shape[-1] == logits.shape[-1] else None
    calls = collections.defaultdict(list)
    for call in probe:
        calls[call.name].append(call)
    rows = {name: len(got) for name, got in calls.items() if all(_per_example(call) for call in got)}
    layouts = {name: tuple(_example_dims(call, len(logits)) for call in got) for name, got in calls.items()}
    tokenwise = {name: dims for name, dims in layouts.items() if all(dims)}
    tokens = {name: sum(call.read[..., 0].numel() for call in calls[name]) // len(logits) for name in tokenwise}
    measured = {name: count for name, count in (rows | tokens).items() if name != head}
    if not measured:
        return []
    seen = _in_chunks(module, names, measured, inputs, labels, tokenwise)
    layers = {name: layer for layer, name in names.items()}
    return [(TokenwiseSeen if name in tokenwise else LinearSeen)(
                name, layers[name], **seen[name], as_in_training=as_in_training, calls=measured[name],
                dropout=calls[name][0].dropout)
            for name in calls if name in seen]  # fmt: skip


def _per_example(call: _Call) -> bool:
    """Whether a call of a Linear layer reads one feature vector per example."""
    return call.read.ndim == 2 and call.output.ndim == 2


def _example_dims(call: _Call, examples: int) -> tuple[int, ...]:
    """The dimensions along which a call of a Linear layer applied per token (at least three dimensions, the
    features last) may read ``examples``: those of that size but the last (the first in ``batch_first`` layouts, the
    second in sequence-first ones, as torch's encoder layers keep by default; both where there are as many tokens,
    which the chunks' passes tell apart); none for a call that reads one feature vector per example."""
    read, output = call.read, call.output
    if read.ndim < 3 or output.shape[:-1] != read.shape[:-1]:
        return ()
    return tuple(dim for dim in range(read.ndim - 1) if read.shape[dim] == examples)


def _in_chunks(module: nn.Module, names: dict[nn.Linear, str], measured: dict[str, int], inputs: torch.Tensor,
               labels: torch.Tensor, tokenwise: dict[str, tuple[tuple[int, ...], ...]],
               draws: torch.Generator | None = None) -> dict[str, dict[str, torch.Tensor]]:  # fmt: skip
    """Each ``measured`` layer's fields, by name; ``measured`` gives the rows one forward pass gives each per example
    (its calls, or for a layer in ``tokenwise``, which holds the dimensions that may hold the examples in each call,
    its tokens over all calls; the first candidate that does in the first chunk is taken). ``inputs`` go through in
    chunks of up to :data:`CHUNK` (:func:`_chunk_size`). For a layer applied to feature vectors the fields are
    :class:`LinearSeen`'s ``inputs``, ``grad`` and ``switching`` (one row per example and call, call by call); for
    one applied per token, :class:`TokenwiseSeen`'s (a sample of the rows), ``peaks``, ``norms`` and ``layout``. A
    layer the model's own forward takes out of the gradient, or applies otherwise than the probe did, is left out.
    A layer whose output the forward modifies in place hands it a copy (:func:`_linear_calls`) from the chunk where
    that is seen on, that chunk going through again with ``draws`` (the generator a dropout pass draws its masks
    from) set back: the same masks as the first time, so a model reads as with its activations not in place."""
    layout, size, copied = {}, _chunk_size(module, inputs), set()
    parts: dict[str, list] = collections.defaultdict(list)
    broken: set[str] = set()
    for start in range(0, len(inputs), size):
        chunk_inputs, drawn = inputs[start : start + size], None if draws is None else draws.get_state()
        calls, _ = _linear_calls(module, names, chunk_inputs, labels[start : start + size], frozenset(copied))
        late = {call.name for call in calls if call.name in measured and call.name not in copied and call.in_place()}
        if late:  # modified in place (the output's version moved): this chunk again, with copies
            copied |= late
            if draws is not None:
                draws.set_state(drawn)
            calls, _ = _linear_calls(module, names, chunk_inputs, labels[start : start + size], frozenset(copied))
        chunk: dict[str, list[_Call]] = collections.defaultdict(list)
        for call in calls:
            if call.name in measured:
                chunk[call.name].append(call)
        for name, got in chunk.items():
            if any(call.output.grad is None for call in got):
                broken.add(name)
            elif name in tokenwise:
                if name not in layout:
                    layout[name] = _layout(got, tokenwise[name], len(chunk_inputs))
                if _laid_out(got, layout[name], len(chunk_inputs), measured[name]):
                    kept = sum(len(part[0]) for part in parts[name])
                    parts[name].append(_token_peaks(got, layout[name], SAMPLE_ROWS - kept))
                else:
                    broken.add(name)
            elif len(got) != measured[name] or not all(_per_example(call) for call in got):
                broken.add(name)
            else:
                parts[name].append([(call.read.double(), call.gradient().double(),
                                     call.switching[:, :MAX_UNITS].double()) for call in got])
    chunks = -(-len(inputs) // size)
    kept = {name: got for name, got in parts.items() if name not in broken and len(got) == chunks}
    fields = {}
    for name, got in kept.items():
        if name in tokenwise:
            fields[name] = dict(zip(("inputs", "grad", "switching"), (torch.cat([part[index] for part in got])
                                                                      for index in range(3))),
                                peaks=torch.cat([part[3] for part in got]), norms=torch.cat([part[4] for part in got]),
                                layout=layout[name])  # fmt: skip
        else:
            fields[name] = dict(zip(("inputs", "grad", "switching"), (
                torch.cat([part[call][index] for call in range(measured[name]) for part in got])
                for index in range(3))))  # fmt: skip
    return fields


def _chunk_size(module: nn.Module, inputs: torch.Tensor) -> int:
    """How many of ``inputs`` go through ``module`` at once with gradients: :data:`CHUNK`, fewer where autograd would
    keep more than :data:`ACTIVATIONS` bytes for them, as two examples through it measure (the tensors it saves for
    the backward, each storage once, the parameters' left out)."""
    parameters = {_storage(parameter)[0] for parameter in module.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        where, size = _storage(tensor)
        if where not in parameters:
            saved[where] = size
        return tensor

    probe = inputs[:2].float().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(probe)
    per_example = sum(saved.values()) / len(probe)
    return max(1, min(CHUNK, int(ACTIVATIONS // max(per_example, 1.0))))


def _storage(tensor: torch.Tensor) -> tuple[int, int]:
    """Where ``tensor``'s storage is and its bytes (a tensor without storage of its own, sparse or nested: itself)."""
    if tensor.layout is not torch.strided or tensor.is_nested:
        return id(tensor), tensor.numel() * tensor.element_size()
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _token_peaks(calls: list[_Call], dims: tuple[int, ...], rows: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """From one chunk's calls of a layer applied per token (``dims``: where each reads the examples): the first
    ``rows`` of its rows, a token each, in the order of the examples (:class:`LinearSeen`'s ``inputs``, ``grad``,
    ``switching``, float64), :attr:`TokenwiseSeen.peaks` and :attr:`TokenwiseSeen.norms`."""
    grad = torch.cat([call.gradient().movedim(dim, 0)[..., :MAX_UNITS].flatten(1, -2).abs().double()
                      for call, dim in zip(calls, dims)], dim=1)  # fmt: skip
    peaks = grad.topk(min(2, grad.shape[1]), dim=1).values
    peaks = torch.cat([peaks, torch.zeros_like(peaks[:, :1])], dim=1)[:, :2]  # one token: no second
    examples = -(-max(rows, 0) // grad.shape[1])  # those that hold the rows still to be kept
    sample = [torch.cat([_token_rows(tensor, dim, examples) for tensor, dim in zip(got, dims)], dim=1).flatten(0, 1)
              [: max(rows, 0)].double() for got in zip(*((call.read, call.gradient()[..., :MAX_UNITS],
                                                           call.switching[..., :MAX_UNITS]) for call in calls))]
    return *sample, peaks, grad.flatten(1).norm(dim=1)


def _token_rows(tensor: torch.Tensor, dim: int, examples: int | None = None) -> torch.Tensor:
    """A call's ``tensor`` (the examples along ``dim``, features last) as ``[examples, tokens, features]``, of its
    first ``examples`` only where given."""
    return tensor.movedim(dim, 0)[:examples].flatten(1, -2)


def _layout(calls: list[_Call], candidates: tuple[tuple[int, ...], ...], examples: int) -> tuple[int, ...] | None:
    """Per call, the first of its ``candidates`` (:func:`_example_dims` in the probe) along which the chunk's
    ``calls`` read its ``examples``; None where the calls are not the probe's."""
    if len(calls) != len(candidates):
        return None
    dims = [next((dim for dim in dims if _holds(call, dim, examples)), None) for call, dims in zip(calls, candidates)]
    return None if None in dims else tuple(dims)


def _laid_out(calls: list[_Call], dims: tuple[int, ...] | None, examples: int, tokens: int) -> bool:
    """Whether a chunk's ``calls`` of a layer applied per token read its ``examples`` as the first chunk's did: as
    many calls, each with the examples along its dimension in ``dims``, ``tokens`` of each over them all."""
    return (dims is not None and len(calls) == len(dims)
            and sum(call.read[..., 0].numel() for call in calls) == tokens * examples
            and all(_holds(call, dim, examples) for call, dim in zip(calls, dims)))


def _holds(call: _Call, dim: int, examples: int) -> bool:
    """Whether dimension ``dim`` of what a call of a Linear layer reads holds ``examples`` (the features last)."""
    return call.read.ndim > dim + 1 and call.read.shape[dim] == examples


def layers_seen(context: InspectContext, as_in_training: bool = False, tokenwise: bool = False
                ) -> list[LinearSeen | TokenwiseSeen]:  # fmt: skip
    """:func:`linear_layers_seen` of the received model on the client's examples, computed once per context (FG803,
    FG804, FG805 and FG301's relief read it); as in training, :func:`layers_in_training`. The layers applied per
    token (:class:`TokenwiseSeen`, which FG803 and FG804 read) only with ``tokenwise``."""
    module, (inputs, labels) = context.view.module, context.data
    if not as_in_training:
        seen = context.shared(("linear_layers_seen", False), lambda: linear_layers_seen(module, inputs, labels))
    else:
        seen = context.shared(("linear_layers_seen", True), lambda: layers_in_training(
            module, inputs, labels, lambda: layers_seen(context, tokenwise=True)))  # fmt: skip
    return seen if tokenwise else [layer for layer in seen if not isinstance(layer, TokenwiseSeen)]


def layers_in_training(module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                       in_eval: Callable[[], list[LinearSeen]]) -> list[LinearSeen]:  # fmt: skip
    """The layers as the client's training runs them, given the eval pass's (``in_eval()``): a model with running
    statistics is run again (:func:`linear_layers_seen` as in training); one without, but with dropout, is run with a
    draw of it (:func:`with_dropout_drawn`) and only the layers after dropout are judged again; any other model runs
    in training as in eval mode, and no layer is read again."""
    if running_statistics(module):
        return linear_layers_seen(module, inputs, labels, True)
    after = [dataclasses.replace(seen, as_in_training=True) for seen in in_eval() if seen.dropout]
    return with_dropout_drawn(module, after, inputs, labels)


def with_dropout_drawn(module: nn.Module, layers: list[LinearSeen], inputs: torch.Tensor, labels: torch.Tensor
                       ) -> list[LinearSeen]:  # fmt: skip
    """``layers`` (of a pass as in training) with those after dropout (:attr:`LinearSeen.dropout`) as one step of
    the client's training meets them: the examples go through ``module`` once more, normalised as in training and
    its dropout applied as training applies it (:class:`~fedguard.dropout.TrainingDropout`), the masks drawn from a
    generator seeded by ``inputs`` (:func:`~fedguard.dropout.draw_generator`); each such layer's input, switching and
    output gradient are then that pass's.

    Eval mode keeps dropout off, and a red team's units with biases just above every eval-mode response, on honest
    weights behind dropout 0.5, fired in training for about one example each: 94 / 76 / 62 % of batches of 8 / 32 /
    64 rebuilt at ≥ 30 dB, clean. The gradients go back as if nothing had been dropped: a dropout after a layer
    thins every layer's reach alike, honest or planted."""
    after = {seen.layer: seen.name for seen in layers if seen.dropout}
    if not after:
        return layers
    times = {seen.name: seen.calls for seen in layers if seen.dropout}
    tokenwise = {seen.name: tuple((dim,) for dim in seen.layout) for seen in layers if isinstance(seen, TokenwiseSeen)}
    draws = draw_generator(inputs)
    with TrainingDropout(draws), _mode(True, inputs, module):  # BatchNorm at statistics of a draw
        drawn = _in_chunks(module, after, times, inputs, labels, tokenwise, draws)
    return [dataclasses.replace(seen, **drawn[seen.name]) if seen.name in drawn else seen for seen in layers]


@dataclass
class _Call:
    """One call of a Linear layer in a forward pass."""

    name: str
    read: torch.Tensor
    output: torch.Tensor
    #: What the units switch on: the output, or a normalisation layer's where one reads the output as it is; of those
    #: (:attr:`readings`), the one an activation of :data:`SWITCHES` reads where one does (:func:`_mark_switched`).
    switching: torch.Tensor
    #: The highest rate of the dropout calls the forward pass makes before the layer's, 0 where none.
    dropout: float = 0.0
    #: What the forward goes on with: :attr:`output`, or a copy of it where the forward modifies it in place.
    handed: torch.Tensor | None = None
    #: :attr:`handed`'s version when the layer returned it: another after the forward, an in-place operation changed it.
    version: int = 0
    #: What the units may switch on, each with autograd's node when the forward made it (an operation in place gives
    #: a tensor another later): :attr:`handed`, then each normalisation layer's output of it as it is.
    readings: list[tuple[object, torch.Tensor]] = dataclasses.field(default_factory=list)
    #: Whether an activation of :data:`SWITCHES` reads what the units switch on (:func:`_mark_switched`).
    switched: bool = False

    def gradient(self) -> torch.Tensor:
        """The gradient at the output, at the rows and units the activation that reads it switches on where one does
        (:attr:`switched`), everywhere else."""
        return self.output.grad * (self.switching > 0) if self.switched else self.output.grad

    def in_place(self) -> bool:
        """Whether the forward modified what the layer handed on in place after the layer returned it."""
        return self.handed._version != self.version


#: Normalisation layers whose output the units of a Linear layer they read switch on.
NORMALISATIONS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _linear_calls(module: nn.Module, names: dict[nn.Linear, str], inputs: torch.Tensor, labels: torch.Tensor | None,
                  copied: frozenset[str] = frozenset()) -> tuple[list[_Call], torch.Tensor]:  # fmt: skip
    """One forward pass of ``inputs`` in the module's modes: each call of a Linear in ``names``, in order, and the
    logits; with ``labels``, the summed cross-entropy's gradient at each output (``output.grad``; None where the
    model's own forward turns gradients off) and which are switched by an activation (:attr:`_Call.switched`);
    without, the highest rate of the dropout calls before each call (:class:`~fedguard.dropout.TrainingDropout`; 0
    with labels). The layers in ``copied`` hand the forward a copy of their output: an activation that modifies it in
    place (``ReLU(inplace=True)``, as in torchvision's VGG and AlexNet) had left the output's gradient that of the
    activation's output, without its zeros, and quantile biases behind it read clean."""
    calls: list[_Call] = []
    noted = TrainingDropout() if labels is None else None  # the probe's pass: which layers come after dropout
    forward = [True]  # activation checkpointing runs the forward again inside the backward: not another call

    def record(layer, args, output):
        if not forward[0]:
            return None
        rate = max(noted.rates, default=0.0) if noted is not None else 0.0
        handed, switching = output.clone() if names[layer] in copied else output, output.detach()
        calls.append(_Call(names[layer], args[0].detach(), output, switching, rate, handed, handed._version,
                           [(handed.grad_fn, switching)]))
        if output.requires_grad:
            output.retain_grad()
        return handed

    def normalised(norm, args, output):
        for call in calls if forward[0] else ():
            if (call.handed is args[0] and not call.in_place() and isinstance(output, torch.Tensor)
                    and output.shape == args[0].shape):  # fmt: skip
                call.switching = output.detach()
                call.readings.append((output.grad_fn, call.switching))

    hooks = [layer.register_forward_hook(record) for layer in names]
    hooks += [norm.register_forward_hook(normalised) for norm in module.modules() if isinstance(norm, NORMALISATIONS)]
    try:
        with torch.enable_grad(), noted or contextlib.nullcontext():  # with gradients, torch's own encoder layers
            # run their Linear modules (their fused path without)
            logits = module(inputs.float().clone().requires_grad_(labels is not None))  # a gradient, frozen or not
            outputs, forward[0] = [call.output for call in calls if call.output.requires_grad], False
            if labels is not None and outputs and logits.requires_grad:
                _mark_switched(calls, logits)
                nn.functional.cross_entropy(logits, labels, reduction="sum").backward(inputs=outputs)
    finally:
        for hook in hooks:
            hook.remove()
    return calls, logits


#: Autograd's nodes of the activations that switch a row off below zero, or leave it there only a slope's term
#: (ReLU; LeakyReLU, PReLU, RReLU in eval mode; in place or not).
SWITCHES = frozenset({"ReluBackward0", "ReluBackward1", "LeakyReluBackward0", "LeakyReluBackward1",
                      "PreluKernelBackward0", "RreluWithNoiseBackward0", "RreluWithNoiseBackward1"})  # fmt: skip


def _mark_switched(calls: list[_Call], logits: torch.Tensor) -> None:
    """Mark the calls whose units switch on what an activation of :data:`SWITCHES` reads on the way to ``logits``
    (the output, or a normalisation layer's of it): a row reaches such a unit only where it switches it on
    (:meth:`_Call.gradient`). What else reaches the unit from the rows it switches off is a term a server fits away
    through weights it wrote, and had hidden quantile biases whose units each one example switches on (two red teams,
    clean): a leaky ReLU's slope times the next layer's gradient (34 of 64 digits rebuilt through PyTorch's default
    slope 0.01), a LayerNorm's mixing of the row's units between the layer and a ReLU (50 of 64), a pre-activation
    residual's skip from the output to the head (52 of 64). Behind a leaky activation whatever reads its output:
    judged so only where the layers reading it spanned few directions, a red team's slope term ran on to the head's
    10 directions through a full-rank layer every example switches on, or through a LayerNorm (52-53 of 64
    rebuilt, clean); an honest LeakyReLU MLP trained with Adam at lr 0.001 then reads 0.36 on two of four batches
    against its ReLU twin's 0.20 (docs/detectors.md). Judged so for every activation, an honest GELU ViT trained
    with Adam at lr 0.01 had read high (most of its units' rows below zero, where GELU's gradient is no slope): the
    others keep :data:`NEGLIGIBLE`'s cut."""
    readers: dict[object, list[object]] = collections.defaultdict(list)
    stack = [logits.grad_fn] if logits.grad_fn is not None else []  # logits that are the input itself: no graph
    met = set(stack)
    while stack:
        reader = stack.pop()
        for node, _ in reader.next_functions:
            if node is None:
                continue
            readers[node].append(reader)
            if node not in met:
                met.add(node)
                stack.append(node)
    for call in calls:
        for node, values in reversed(call.readings):  # a normalisation's output first, where a switch reads it
            if _switch_reads(node, readers):
                call.switched, call.switching = True, values
                break


#: Autograd's nodes that hand on each element as it is, in another shape, order or type.
PASSING = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "PermuteBackward0",
                     "TransposeBackward0", "TransposeBackward1", "SqueezeBackward0", "SqueezeBackward1",
                     "SqueezeBackward2", "UnsqueezeBackward0", "CloneBackward0", "ToCopyBackward0"})  # fmt: skip


def _switch_reads(node: object, readers: dict[object, list[object]]) -> bool:
    """Whether an activation of :data:`SWITCHES` reads what autograd's ``node`` computes, as it is or through
    :data:`PASSING` nodes (a reshape between a layer and its LeakyReLU had kept its planted units reached by every
    example)."""
    return any(type(reader).__name__ in SWITCHES
               or (type(reader).__name__ in PASSING and _switch_reads(reader, readers))
               for reader in readers.get(node, ()))  # fmt: skip


@contextlib.contextmanager
def _mode(as_in_training: bool, inputs: torch.Tensor, module: nn.Module):
    """The modes a pass runs ``module`` in: eval mode, a BatchNorm that keeps no running statistics at those of all
    of ``inputs`` (in chunks of 16 by their own, such a layer had put no example past 3.87 deviations: a red team's
    units past that rebuilt half a batch of 64, clean); with ``as_in_training``, as the client's training
    normalises."""
    with evaluating_one_by_one(module, inputs):
        if not as_in_training:
            yield module
            return
        with normalising_as_in_training(module, inputs):
            yield module


@dataclass(frozen=True)
class MeasurementGroup:
    """Units of one layer that measure one quantity on the examples (FG804)."""

    #: Their indices among the layer's units.
    units: torch.Tensor
    #: How many distinct thresholds they put on the measurement among the examples: the bins they cut the examples
    #: into, less one (thresholds below or above every example cut nothing, two between the same two examples one).
    thresholds: int


def measurement_groups(seen: LinearSeen) -> list[MeasurementGroup]:
    """The groups of at least :data:`MIN_GROUP` units of ``seen`` whose responses to the examples are one measurement,
    largest first: the unit with the most others correlated with it at ``|r| ≥`` :data:`SAME_RESPONSE` and those
    others, then the same among the units left; each with its count of distinct thresholds on the measurement.
    Responses are read from the input features the examples move (:meth:`LinearSeen.varying_responses`)."""
    response = seen.varying_responses()
    resolved = (response != 0).any(dim=0).nonzero()[:, 0]
    corr, index, _ = response_correlations(response[:, resolved])
    close = corr.abs() >= SAME_RESPONSE
    partners = close.sum(dim=1)  # per unit, the units left that correlate with it, itself included
    left = torch.ones(len(index), dtype=torch.bool)
    groups = []
    while len(index):
        centre = int(torch.where(left, partners, 0).argmax())
        if int(partners[centre]) < MIN_GROUP or not left[centre]:
            break
        members = (close[centre] & left).nonzero()[:, 0]
        left[members] = False
        partners -= close[:, members].sum(dim=1)
        # the cuts the units make in the examples: each unit's examples on (switching above zero; for a unit that
        # measures minus the quantity, the others, the same cut), counted once per distinct cut that parts them, and
        # the same from the examples' gradients (on where its gradient reaches the unit), the larger kept. A
        # threshold set by a bias, through a constant feature, by a normalisation layer after the units or by a
        # parameter added to their output counts alike (an offset on the input moves none); thresholds beyond every
        # example cut nothing, and two between the same two examples cut once
        units = resolved[index[members]]
        opposite = corr[centre, members] < 0
        thresholds = max(_cuts((seen.switching[:, units] > 0) ^ opposite), _cuts((seen.grad[:, units] != 0) ^ opposite))
        groups.append(MeasurementGroup(units, thresholds))
    return groups


def _cuts(on: torch.Tensor) -> int:
    """How many distinct cuts the columns of ``on`` (``[examples, units]``) make in the examples, but all or none."""
    cuts = on[:, on.any(dim=0) & ~on.all(dim=0)]
    return torch.unique(cuts, dim=1).shape[1] if cuts.shape[1] else 0


def binning_groups(seen: LinearSeen) -> list[MeasurementGroup]:
    """:func:`measurement_groups` with :data:`MIN_GROUP` or more thresholds: one threshold is an average, not bins
    (FG101's rows); in a layer applied per token, only groups whose units the rest of the model treats alike
    (:func:`treated_alike`)."""
    groups = [group for group in measurement_groups(seen) if group.thresholds >= MIN_GROUP]
    return [group for group in groups if treated_alike(seen, group)] if _several_tokens(seen) else groups


def _several_tokens(seen: LinearSeen) -> bool:
    """Whether ``seen`` reads several tokens of each example (a layer applied to ``[examples, 1, features]`` reads one
    feature vector per example, and is judged as such)."""
    return isinstance(seen, TokenwiseSeen) and seen.calls > 1


def treated_alike(seen: LinearSeen, group: MeasurementGroup) -> bool:
    """Whether the rest of the model treats the units of ``group`` alike enough for their bins to return single
    inputs: their gradients, on the rows that reach at least half as many of them as any row does and over the units
    all those rows reach, span at most ``thresholds / MIN_GROUP`` directions (:func:`gradient_rank`) and fewer than
    the rows and units they are read on. Robbing the Fed ties the next layer's columns (one direction: the
    difference of neighbouring bins' gradients is the inputs between them); a red team's bins with two units per
    threshold and the next layer's columns in two directions, solved two by two, rebuilt 23-26 of batches of 32
    (the honest model: 2-4), clean while one direction was asked for. Trained transformers' token features vary
    along a few directions, and units of an honest feed-forward layer then respond in near-perfect correlation with
    thresholds among the tokens: 6 of 50 honest models had been FG804 (high) on up to six of six batches (torch's
    encoder layers and torchvision's ViT trained with Adam at lr 0.01, a PointNet's per-point layer on 3 features, a
    ViT's patch embedding of 2x2 pixels pruned by 90 %), their units' gradients in as many directions as units."""
    rank, rows, units = gradient_rank(seen, group)
    return 0 < rank < min(rows, units) and rank * MIN_GROUP <= group.thresholds


def gradient_rank(seen: LinearSeen, group: MeasurementGroup) -> tuple[int, int, int]:
    """``(rank, rows, units)``: in how many directions the gradients of ``group``'s units lie (singular values above
    :data:`TIED` of the largest), read on the rows that reach at least half as many of the units as any row does and
    the units every one of those rows switches on (output above zero, gradient not zero: below zero a leaky
    activation's gradient is a trace, of a LeakyReLU of slope 1e-9 too, which had made a reviewer's bins read in 64
    directions, clean)."""
    grad = seen.grad[:, group.units]
    reached = (seen.switching[:, group.units] > 0) & (grad != 0)
    many = reached.sum(dim=1)
    rows = many >= max(int(many.max()), 1) / 2
    units = reached[rows].all(dim=0)
    shared = grad[rows][:, units]
    if min(shared.shape) < 2:
        return 0, *shared.shape
    values = torch.linalg.svdvals(shared)
    return int((values > TIED * values[0]).sum()), *shared.shape


def with_rounding(seen: LinearSeen, module: nn.Module, inputs: torch.Tensor) -> LinearSeen:
    """``seen`` with :attr:`LinearSeen.rounding` measured: the same examples through a float64 copy of ``module``
    (in the pass's modes, in chunks of :data:`CHUNK`). ``seen`` as it was when the model does not run in float64."""
    if isinstance(seen, TokenwiseSeen) and len(seen.layout) > 1:
        return seen  # its sample holds the rows of several calls, which a pass to the layer's first call does not
    try:
        twin, examples = copy.deepcopy(module).double(), inputs.double()
        layer = dict(twin.named_modules())[seen.name]
        with _mode(seen.as_in_training, examples, twin), torch.no_grad():
            if isinstance(seen, TokenwiseSeen):  # its rows as sampled, where it is applied once
                exact = torch.cat([_token_rows(layer_input(twin, layer, part, flatten=False), seen.layout[0])
                                   for part in examples.split(CHUNK)]).flatten(0, 1)[: len(seen.inputs)]  # fmt: skip
            else:
                exact = torch.cat([layer_input(twin, layer, part) for part in examples.split(CHUNK)])
    except Exception:  # the architecture's code is float32 only: every feature is taken as varying, as before
        return seen
    if exact.shape != seen.inputs.shape:
        return seen
    error = seen.inputs - exact
    if error.square().mean().sqrt() > AGREEMENT * EPSILON * seen.inputs.square().mean().sqrt():
        return seen  # float32 computes something else than the weights say: every feature is taken as varying
    return dataclasses.replace(seen, rounding=error - error.mean(dim=0))  # an offset moves no example apart


def example_sizes(norms: torch.Tensor) -> torch.Tensor:
    """What each example's gradients at a layer are measured against (:data:`NEGLIGIBLE`), from ``norms``, the size
    of each one's gradient at the layer's output over all its rows and units: that size, but no smaller than the
    median example's (and 1 where every one is zero)."""
    size = norms.clamp(min=float(norms.median()))
    return torch.where(size > 0, size, torch.ones_like(size))


def reaching(weighed: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Which of the gradient sizes ``weighed`` (over their example's :func:`example_sizes`, the units last) reach their
    unit: those above :data:`NEGLIGIBLE` times the largest of ``rows`` (all the rows of the unit, along the first
    dimension) at that unit."""
    return weighed > NEGLIGIBLE * rows.amax(dim=0)


def reach_rates(counts: torch.Tensor) -> torch.Tensor:
    """Per unit, the share of the examples whose gradient reaches it, from :meth:`LinearSeen.reach_counts`."""
    return (counts != 0).double().mean(dim=0)


def rare_share(rates: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Share of the reached units that at most :data:`RARE` of the examples reach, with the rare and reached masks,
    from :func:`reach_rates`."""
    live = rates > 0
    rare = live & (rates <= RARE)
    return float(rare.sum()) / max(int(live.sum()), 1), rare, live


def isolated_examples(counts: torch.Tensor) -> int:
    """How many examples are each the only one whose gradient reaches some unit, from one row of theirs (a call, a
    token), from :meth:`LinearSeen.reach_counts`: the examples a server reads off the layer's update exactly (that
    unit's weight gradient over its bias gradient gives that row's input)."""
    alone = counts.sum(dim=0) == 1
    return int((counts[:, alone] != 0).any(dim=1).sum())


def input_directions(seen: LinearSeen) -> int:
    """In how many directions the layer's input varies over the examples: the rank of the input features its weights
    read, each centred and scaled to unit spread (a feature of no spread left out). Unscaled, one feature a
    BatchNorm's gain had made 1e15 times the others (its weights zero) set the rank's tolerance and a red team's
    quantile biases read one direction where 52 were there (35-39 of 64 digits rebuilt)."""
    read = seen.inputs[:, (seen.layer.weight != 0).any(dim=0)]
    centred = read - read.mean(dim=0)
    spread = centred.square().mean(dim=0).sqrt()
    moving = centred[:, spread > 0] / spread[spread > 0]
    return int(torch.linalg.matrix_rank(moving)) if moving.numel() else 0


def _fresh_isolated(context: InspectContext, name: str, as_in_training: bool) -> int | None:
    """How many of the client's examples a fresh initialisation of ``--arch`` (seed 0) isolates at layer ``name``
    (:func:`isolated_examples`, in the same mode); None without ``--arch``, when the architecture cannot be built or
    run again, or has no such layer measured."""
    if context.fresh is None:
        return None
    inputs, labels = context.data
    try:
        fresh = fresh_module(context, inputs.device)
        in_eval = functools.partial(linear_layers_seen, fresh, inputs, labels)
        layers = layers_in_training(fresh, inputs, labels, in_eval) if as_in_training else in_eval()
        seen = next((s for s in layers if s.name == name), None)
    except Exception:  # the architecture's code cannot give a baseline here: the received model is judged alone
        return None
    return None if seen is None else isolated_examples(seen.reach_counts())


@register_detector("responses")
class LayerResponses(Detector):
    name = "responses"
    needs = frozenset({NEEDS_DATA})
    rules = (
        Rule(
            "FG803", "sparse-firing",
            "On the client's own data, many units of a fully connected layer fire for one example or so.",
            "A unit that only one example switches on hands that example's input to the layer to the server "
            "exactly: its weight gradient divided by its bias gradient. Biases set at a high quantile of each "
            "unit's response make that happen with honest-looking weights. Do not train on this model.",
            "Phong et al., IEEE TIFS 2018; Boenisch et al., When the Curious Abandon Honesty, IEEE EuroS&P 2023",
            url="https://eprint.iacr.org/2017/715",
        ),
        Rule(
            "FG804", "data-space-imprint",
            "On the client's own data, several units of a fully connected layer measure one and the same quantity.",
            "Units whose responses to your examples are perfectly correlated bin the batch by one measurement, "
            "as Robbing the Fed's imprint layer does, whatever their weights look like; differences of "
            "neighbouring bins' gradients return single inputs. Do not train on this model.",
            "Fowl et al., Robbing the Fed, ICLR 2022",
            url="https://arxiv.org/abs/2110.13057",
        ),
    )

    def run(self, context: InspectContext):
        """The layers in eval mode, then, for a model with running statistics or dropout, as the client's training
        runs them: normalised as it normalises (:func:`~fedguard.torch_state.normalising_as_in_training`), and the
        layers after dropout with one draw of it (:func:`with_dropout_drawn`). A red team's noisy imprint behind a
        BatchNorm left at its start (mean 0, variance 1) read raw pixels in eval mode and binned the batch
        standardised in training (8-11 of 16 digits rebuilt); quantile biases set so read as one dead layer (FG805,
        medium) in eval mode, while training isolated 22 of 64 digits. A rule is reported once per layer, from the
        eval pass where both report it."""
        reported = set()
        for as_in_training in (False, True):
            if as_in_training and len(context.data[0]) < 2:
                return
            try:
                layers = layers_seen(context, as_in_training, tokenwise=True)
            except Exception as exc:  # the architecture's code does not run so here: the eval pass alone
                if not as_in_training or _raised_by_fedguard(exc):
                    raise
                return
            for finding in self._findings(context, layers):
                if (finding.rule_id, finding.layer) not in reported:
                    reported.add((finding.rule_id, finding.layer))
                    yield finding

    def _findings(self, context: InspectContext, layers: list[LinearSeen]):
        binned = False
        for seen in layers:
            yield from self._sparse(context, seen)
            if not binned:  # the layers after one that bins the batch see nothing but that one measurement
                same = list(self._same(seen, context.view.module, context.data[0]))
                binned = bool(same)
                yield from same

    def _sparse(self, context: InspectContext, seen: LinearSeen):
        name, counts, module = seen.name, seen.reach_counts(), context.view.module
        examples = len(counts)
        rates = reach_rates(counts)
        share, rare, live = rare_share(rates)
        if share >= RARE_SHARE and int(rare.sum()) >= MIN_GROUP:
            isolated = isolated_examples(counts)
            directions = input_directions(seen)
            few = directions < min(MIN_DIRECTIONS, examples // 2)
            fresh = None if few else _fresh_isolated(context, name, seen.as_in_training)
            few = few or (fresh is not None and isolated <= fresh)
            scattered = _several_tokens(seen) and (isolated < SCATTERED * examples or share < TOKENS_RARE_SHARE)
            rows = "tokens" if isinstance(seen, TokenwiseSeen) else "inputs"
            them = "them" if seen.calls == 1 else (f"them (of the {examples * seen.calls} {rows} {name} reads from "
                                                   f"them, {seen.calls} each)")
            row = "token's input" if isinstance(seen, TokenwiseSeen) else "input"
            said = (f"On {examples} of your examples{_normalised(seen, module)}, {int(rare.sum())} of the "
                    f"{int(live.sum())} units of {name} that fire at all fire for at most {RARE:.0%} of {them} "
                    f"(median {float(rates[live].median()):.1%}; honest layers at initialisation or trained on "
                    f"every class: at most 24 %), and {isolated} of your examples are each the only one to reach some "
                    f"unit: each such unit's update is that example's {row} to {name}, exactly")  # fmt: skip
            if fresh is not None and few:
                said += (f"; no more than a fresh initialisation of --arch isolates on them ({fresh}), so the leak "
                         "is the architecture's. Do not train on this model before you know why so many of its units "
                         "are rare (units dying in training read so).")  # fmt: skip
            elif few:
                said += (f"; but that input varies in only {directions} directions over your examples (most units "
                         "before it fire for none of them), so the server gets that many numbers of each, not the "
                         "example. Do not train on this model before you know why so much of it is "
                         "silent.")  # fmt: skip
            elif scattered:
                said += (f"; but under {TOKENS_RARE_SHARE:.0%} of its units are rare, or under {SCATTERED:.0%} of "
                         "your examples isolated (a token each), as honest transformers trained hard can give (tiny "
                         "ViTs trained with Adam: 0.35-0.44 rare, up to 15 of 64 isolated). Do not train on this model "
                         "before you know why so many of its units are rare.")  # fmt: skip
            else:
                said += (". Planted biases do this; so can training on one class or two per client (non-IID rounds) "
                         "and units that learnt to fire for one class, and the leak is the same either way. Do not "
                         "train on this model.")  # fmt: skip
            yield self.finding(
                "FG803", "Layer fires for single examples", Severity.MEDIUM if few or scattered else Severity.HIGH,
                Confidence.MEDIUM, name, said,
                rare_units=int(rare.sum()), live_units=int(live.sum()), rare_share=rounded(share),
                median_firing=rounded(rates[live].median()), limit=RARE_SHARE, examples=examples,
                isolated_examples=isolated, input_directions=directions,
                **({"tokens" if isinstance(seen, TokenwiseSeen) else "calls": seen.calls} if seen.calls > 1 else {}),
                **({} if fresh is None else {"fresh_init_isolated": fresh}), **_mode_evidence(seen, module),
            )

    def _same(self, seen: LinearSeen, module: nn.Module, inputs: torch.Tensor):
        groups = binning_groups(seen)
        if sum(len(group.units) for group in groups) >= MIN_SAME_UNITS:  # what of it float32 resolves
            groups = binning_groups(with_rounding(seen, module, inputs))
        units = sum(len(group.units) for group in groups)
        if units < MIN_SAME_UNITS:
            return
        largest = groups[0]
        if len(groups) == 1:
            said = (f"{units} units of {seen.name} respond in perfect correlation (|r| ≥ {SAME_RESPONSE:g}) with "
                    f"{largest.thresholds} different thresholds: they bin")  # fmt: skip
        else:
            said = (f"{units} units of {seen.name} form {len(groups)} groups (the largest of {len(largest.units)}), "
                    f"each responding in perfect correlation (|r| ≥ {SAME_RESPONSE:g}) with {MIN_GROUP} or more "
                    "different thresholds: each group bins")  # fmt: skip
        yield self.finding(
            "FG804", "Units measure one quantity", Severity.HIGH, Confidence.HIGH, seen.name,
            f"On your examples{_normalised(seen, module)}, {said} your batch by one measurement so that neighbouring "
            "bins' gradients return single inputs (Robbing the Fed). Do not train on this model.",
            units=units, groups=len(groups), largest_group=len(largest.units), thresholds=largest.thresholds,
            layer_units=int(seen.layer.weight[:MAX_UNITS].shape[0]), min_correlation=SAME_RESPONSE,
            **_mode_evidence(seen, module),
        )


def _raised_by_fedguard(exc: BaseException) -> bool:
    """Whether the last Python code ``exc`` went through is fedguard's own (a fault of the check, to be seen) rather
    than the model's or torch's (a model that does not run as in training: its second pass left out). A fault of
    the dropout pass's own had been taken for the model's and hidden every finding of that pass."""
    frames = list(traceback.walk_tb(exc.__traceback__))
    return bool(frames) and str(frames[-1][0].f_globals.get("__name__", "")).startswith("fedguard.")


def _normalised(seen: LinearSeen, module: nn.Module) -> str:
    """How a finding says that its pass ran the layers as the client's training does."""
    if not seen.as_in_training:
        return ""
    said = []
    if running_statistics(module):
        said.append(" normalised as your training normalises them (BatchNorm by your data's own statistics; "
                    "at the model's running statistics, which the eval-mode checks use, the layer reads otherwise)")
    if seen.dropout:
        said.append(f" with one draw of the dropout your training applies before {seen.name} "
                    f"(rate {seen.dropout:g}; the eval-mode checks run without it)")
    return " and".join(said)


def _mode_evidence(seen: LinearSeen, module: nn.Module) -> dict[str, str | float]:
    if not seen.as_in_training:
        return {}
    evidence: dict[str, str | float] = {"normalisation": "as in training"} if running_statistics(module) else {}
    return evidence | ({"dropout": seen.dropout} if seen.dropout else {})
