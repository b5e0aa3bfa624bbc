"""What each fully connected layer of a model sees of the client's examples: per example, its input and the gradient
at its output, from one forward and backward pass of the examples (in chunks), in eval mode or as the client's
training runs it.

FG803 and FG804 (:mod:`~fedguard.detectors.responses`), FG805 (:mod:`~fedguard.detectors.silenced`) and FG301's
relief (:mod:`~fedguard.detectors.imprint`) read these passes: one per inspection (:func:`layers_seen`). Every
``nn.Linear`` that one forward pass applies to batches of feature vectors is measured (:class:`LinearSeen`), over all
its calls where it applies more than once, on at most :data:`MAX_UNITS` units, and those applied to every token of an
example (:class:`TokenwiseSeen`). A row of an example reaches a unit where its gradient there is not negligible
(:data:`NEGLIGIBLE`); behind a ReLU or a leaky activation, where the example switches the unit on
(:func:`_mark_switched`). The analytic inversion of a Linear layer (Phong et al., IEEE TIFS 2018) reads exactly
those rows: a unit only one row reaches gives that row's input.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fedguard.detectors.base import InspectContext
from fedguard.dropout import TrainingDropout, draw_generator
from fedguard.layers import layer_input
from fedguard.torch_state import evaluating_one_by_one, normalising_as_in_training, running_statistics

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
