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
  (:data:`~fedguard.detectors.linear_passes.NEGLIGIBLE`: a ReLU unit that
  example switches on; a sigmoid's unless saturated; behind a ReLU or a leaky
  one, where the example switches the unit on,
  :func:`~fedguard.detectors.linear_passes._mark_switched`), and it is rare
  when at most 1/8 of the client's examples reach it. Reported when at least
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
  out (:data:`~fedguard.detectors.linear_passes.ROUNDING`).

The layers are read as :mod:`~fedguard.detectors.linear_passes` passes the
client's examples through them: every ``nn.Linear`` that one forward pass
applies to batches of feature vectors, over all its calls (not the head), on
at most :data:`~fedguard.detectors.linear_passes.MAX_UNITS` units, in eval
mode and, for a model with running statistics or dropout, again as its
training runs it (:meth:`LayerResponses.run`), and those applied to every
token of an example
(:class:`~fedguard.detectors.linear_passes.TokenwiseSeen`: a unit is reached
by an example when any of its tokens reaches it, a unit only one token
reaches gives that token's input, and FG804 reads a sample of the tokens, its
groups only where the rest of the model treats their units alike,
:func:`treated_alike`). References:
Phong et al., IEEE TIFS 2018; Fowl et al., ICLR 2022; Boenisch et al.,
"When the Curious Abandon Honesty", IEEE EuroS&P 2023.
"""

from __future__ import annotations

import functools
import traceback
from dataclasses import dataclass

import torch
from torch import nn

from fedguard.attacks.fc_inversion import MIN_BINS, SAME_MEASUREMENT, response_correlations
from fedguard.detectors.base import NEEDS_DATA, Detector, InspectContext, fresh_module, register_detector, rounded
from fedguard.detectors.linear_passes import (
    MAX_UNITS, LinearSeen, TokenwiseSeen, input_directions, layers_in_training, layers_seen, linear_layers_seen,
    with_rounding,
)
from fedguard.torch_state import running_statistics
from fedguard.types import Confidence, Rule, Severity

#: A unit is rare when at most this share of the client's examples reach it.
RARE = 1 / 8
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
#: FG804: a group measures its quantity exactly where the median of its units' ``1 - |r|`` with the group's centre is
#: at most this. Crafted imprint layers: 1e-16 (the crafter's imprint) to 1e-10 (the layers behind it), 2.7e-6 for
#: the tests' imprint in a second layer read through float32, 1.9e-5 with 0.3 % noise on it in directions the data
#: excites (as many digits rebuilt); honest layers whose training aligned their units (an MLP and LeNet-5 trained 3
#: epochs with SGD or Adam on two digit classes, groups of 26-70 units): medians 2.9e-4 to 8.1e-4, no unit closer
#: than 5.5e-5. Groups short of exact make FG804 medium: their bins leak as well (that imprint with 1-3 % noise,
#: 1.6e-4 to 6.1e-4, rebuilt 2-9 of 16 digits), but training on few classes gives them too (a hidden layer's units
#: all receive one gradient direction from a two-class head).
EXACT_RESPONSE = 5e-5




















































@dataclass(frozen=True)
class MeasurementGroup:
    """Units of one layer that measure one quantity on the examples (FG804)."""

    #: Their indices among the layer's units.
    units: torch.Tensor
    #: How many distinct thresholds they put on the measurement among the examples: the bins they cut the examples
    #: into, less one (thresholds below or above every example cut nothing, two between the same two examples one).
    thresholds: int
    #: The median ``1 - |r|`` of the units' responses with the group's centre: how far from exactly one measurement.
    departure: float = 0.0


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
        others = members[members != centre]
        departure = float((1 - corr[centre, others].abs()).median()) if len(others) else 0.0
        groups.append(MeasurementGroup(units, thresholds, max(departure, 0.0)))
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
        layers after dropout with one draw of it (:func:`linear_passes.with_dropout_drawn`). A red team's noisy
        imprint behind a BatchNorm left at its start (mean 0, variance 1) read raw pixels in eval mode and binned the batch
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
        exact = sum(len(group.units) for group in groups if group.departure <= EXACT_RESPONSE) >= MIN_SAME_UNITS
        if len(groups) == 1:
            said = (f"{units} units of {seen.name} respond in perfect correlation (|r| ≥ {SAME_RESPONSE:g}) with "
                    f"{largest.thresholds} different thresholds: they bin")  # fmt: skip
        else:
            said = (f"{units} units of {seen.name} form {len(groups)} groups (the largest of {len(largest.units)}), "
                    f"each responding in perfect correlation (|r| ≥ {SAME_RESPONSE:g}) with {MIN_GROUP} or more "
                    "different thresholds: each group bins")  # fmt: skip
        said = (f"On your examples{_normalised(seen, module)}, {said} your batch by one measurement so that neighbouring "
                "bins' gradients return single inputs (Robbing the Fed).")  # fmt: skip
        if exact:
            said += " Do not train on this model."
        else:
            said += (f" Not exactly one measurement, though (median 1 - |r| {largest.departure:.1e}; planted imprint "
                     f"layers: {EXACT_RESPONSE:g} and less): training on few classes aligns a hidden layer's units so, "
                     "and the leak is the same either way. Do not train on this model before you know why its units "
                     "respond alike.")  # fmt: skip
        yield self.finding(
            "FG804", "Units measure one quantity", Severity.HIGH if exact else Severity.MEDIUM,
            Confidence.HIGH if exact else Confidence.MEDIUM, seen.name, said,
            units=units, groups=len(groups), largest_group=len(largest.units), thresholds=largest.thresholds,
            departure=rounded(largest.departure), exact_below=EXACT_RESPONSE,
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
