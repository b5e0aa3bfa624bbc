"""Focused tests that pin down decisions of the attacks, the metrics, the exposure search and the threat model which
the broader tests leave free: each was written against a hand-made mutant of the code that the rest of the suite did
not catch (a flipped comparison, a dropped clamp, a moved constant). All are small, seeded and fast."""

from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pytest
import torch
from torch import nn

from fedguard.architectures import build_model
from fedguard.attacks.base import Budget
from fedguard.layers import find_head
from fedguard.threat import ServerView, ThreatModel

from .helpers import DIGITS_SHAPE as SHAPE
from .helpers import server_view


def _mlp(seed: int = 0) -> nn.Module:
    """The built-in MLP for 8x8 digits, seeded."""
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=SHAPE)


# --------------------------------------------------------------------------- label counts


def test_round_counts_gives_tied_remainders_to_the_lower_classes():
    """Hamilton's method hands equal remainders out in class order (a stable sort), so the counts are reproducible."""
    from fedguard.attacks.label_counts import round_counts

    assert round_counts(np.ones(3), 2).tolist() == [1, 1, 0]
    assert round_counts(np.zeros(4), 2).tolist() == [1, 1, 0, 0]


def test_round_counts_never_gives_a_negative_count():
    """A negative raw estimate is clipped to zero before scaling: counts stay non-negative and sum to the batch."""
    from fedguard.attacks.label_counts import round_counts

    assert round_counts(np.array([3.0, -1.0]), 2).tolist() == [2, 0]
    assert round_counts(np.array([5.0, -2.0, 1.0]), 4).tolist() == [3, 0, 1]


def test_the_class_conditional_model_needs_exactly_the_minimum_per_class():
    """With MIN_PER_CLASS_FOR_CONDITIONAL public examples of every class the conditional model is used; one fewer, not."""
    from fedguard.attacks.label_counts import MIN_PER_CLASS_FOR_CONDITIONAL as least
    from fedguard.attacks.label_counts import _Stats

    for per_class, used in ((least, True), (least - 1, False)):
        y = torch.arange(3).repeat_interleave(per_class)
        probs = torch.softmax(torch.randn(len(y), 3, generator=torch.Generator().manual_seed(0)), dim=1).double()
        stats = _Stats.__new__(_Stats)
        stats._summarise(probs, torch.ones(len(y), 4, dtype=torch.float64), y, 3)
        assert (stats.conditional is not None) is used, per_class


def test_readout_of_features_that_touch_zero_is_the_row_sums():
    """Non-negative features (after ReLU, zeros included) are read along the all-ones vector (Geng et al.'s row sums)."""
    from fedguard.attacks.label_counts import readout

    features = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.5], [1.0, 1.0, 0.0]])
    assert torch.equal(readout(features), torch.ones(3, dtype=torch.float64))
    assert not torch.equal(readout(features - 0.5), torch.ones(3, dtype=torch.float64))


def _prototype_view(seed: int = 0):
    """A FedAvg view of a linear head on class prototypes (the fast setting of the weight-update counts test)."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(10, 16, generator=gen) + torch.eye(10, 16)
    y = torch.arange(300) % 10
    index = np.concatenate([np.flatnonzero(y.numpy() == k)[:n] for k, n in enumerate([3, 0, 2, 1, 0, 4, 1, 0, 0, 1])])
    torch.manual_seed(seed)
    view, _, by = server_view(nn.Linear(16, 10), (prototypes[y], y), index, protocol="fedavg", local_steps=6, local_lr=0.1)
    return view, by


def test_the_weight_update_s_counts_are_weighed_no_more_than_their_floor_allows(monkeypatch):
    """A weight-update estimate claiming no spread is weighed as if its SD were MIN_FEATURE_SD, not as certain."""
    import fedguard.attacks.label_counts as lc

    feature = np.array([2.0, 1.0, 3.0, 0.0, 1.0, 3.0, 0.0, 1.0, 0.0, 1.0])
    monkeypatch.setattr(lc, "_feature_counts", lambda *args, **kwargs: (feature.copy(), np.zeros(10)))
    monkeypatch.setattr(lc, "_equation_sd", lambda *args, **kwargs: np.full(10, lc.MIN_FEATURE_SD))
    view, _ = _prototype_view()
    rec = lc.LabelCounts().run(view, Budget(1))
    simulated = np.array(rec.details["simulated_counts"])
    assert np.allclose(rec.details["raw_counts"], (simulated + feature) / 2, atol=2e-3)


def test_the_bias_solve_has_closed_while_four_times_its_misfit_is_within_the_floor():
    import fedguard.attacks.label_counts as lc

    assert lc._closed(0.0) and lc._closed(0.05) and not lc._closed(0.051)


@pytest.mark.parametrize("closed, directions", [(False, "each class's own"), (True, "pooled")])
def test_the_weight_update_is_read_along_each_class_s_own_directions_where_the_bias_solve_does_not_close(monkeypatch, closed, directions):
    """Where the bias equation's solve did not close each row of S is read along its own class's directions, else
    along the pooled ones; the details say which."""
    import fedguard.attacks.label_counts as lc

    asked = []
    real = lc._error_mass
    monkeypatch.setattr(lc, "_error_mass", lambda *args: asked.append(args[-1]) or real(*args))
    monkeypatch.setattr(lc, "_closed", lambda misfit: closed)
    view, by = _prototype_view()
    rec = lc.LabelCounts().run(view, Budget(60))
    assert asked == [not closed] and rec.details["weight_update_directions"] == directions
    true = torch.bincount(by, minlength=10)
    from_weights = torch.tensor(rec.details["weight_update_counts"], dtype=torch.float64)
    assert (from_weights - true).abs().max() < 0.3  # prototypes: either reading gets every count
    assert rec.label_counts.tolist() == true.tolist()


def test_the_confidence_of_a_class_in_its_own_examples_is_capped_at_0_99(monkeypatch):
    """n_k = -S[k, k] / (T (1 - a_k)) with the re-measured own confidence a_k kept as measured up to 0.99."""
    import fedguard.attacks.label_counts as lc

    mass = np.array([1.0, 2.0, 3.0])
    monkeypatch.setattr(lc, "_path_confidence", lambda path, ys: torch.full((3,), 0.5, dtype=torch.float64))
    monkeypatch.setattr(lc, "_error_mass", lambda *args: (mass, np.zeros(3)))
    monkeypatch.setattr(lc, "_own_confidence", lambda *args: np.array([0.9, 1.0, 0.2]))
    view = types.SimpleNamespace(local_steps=2, local_lr=0.1, seed=0)
    counts, _ = lc._feature_counts(view, [], None, None, None, 6, lambda: False)
    assert counts == pytest.approx(mass / (2 * (1 - np.array([0.9, 0.99, 0.2]))))


def test_the_bias_equation_s_sd_is_four_times_its_misfit_at_least():
    """Without a public batch to measure its error on, the bias equation's SD is MISFIT_SCALE (4) x misfit, floor 0.2."""
    import fedguard.attacks.label_counts as lc

    assert lc.MISFIT_SCALE == 4.0 and lc.MIN_EQUATION_SD == 0.2
    view = types.SimpleNamespace(num_classes=3, seed=0, local_steps=2, local_lr=0.1, model=None, local_batch_size=None)
    ys = torch.arange(3).repeat(20)
    args = (view, None, None, None, ys, torch.arange(0), np.array([1.0, 1.0, 1.0]), None)
    assert lc._equation_sd(*args, 0.5, lambda: True).tolist() == [2.0, 2.0, 2.0]
    assert lc._equation_sd(*args, 0.01, lambda: True).tolist() == [0.2, 0.2, 0.2]


# --------------------------------------------------------------------------- FC inversion


def test_a_noisy_copy_of_an_exact_example_does_not_take_another_example_s_slot():
    """An approximate quotient within NOISY_MERGE_TOLERANCE of an exact row is the same example, not a new one."""
    from fedguard.attacks.fc_inversion import invert_rows

    x0, x1 = torch.full((16,), 0.2, dtype=torch.float64), torch.linspace(0.1, 0.9, 16, dtype=torch.float64)
    quotients = torch.stack([x0, x0, x0 + 0.005, x1])
    gb = torch.tensor([3.0, 2.0, 1.5, 1.0], dtype=torch.float64)
    rows, details = invert_rows(quotients * gb[:, None], gb, 2)
    assert details["group_sizes"] == [2, 1] and details["approximate_rows"] == 1
    assert torch.allclose(rows[0], x0) and torch.allclose(rows[1], x1)


def test_two_examples_0_005_apart_are_two_exact_examples():
    """Exact quotients merge only to MERGE_TOLERANCE (1e-3 RMS): two examples 0.005 apart each keep their group."""
    from fedguard.attacks.fc_inversion import invert_rows

    x0 = torch.linspace(0.2, 0.8, 16, dtype=torch.float64)
    quotients = torch.stack([x0, x0, x0 + 0.005, x0 + 0.005])
    gb = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    rows, details = invert_rows(quotients * gb[:, None], gb, 2)
    assert details["group_sizes"] == [2, 2] and details["approximate_rows"] == 0
    assert torch.allclose(rows[0], x0) and torch.allclose(rows[1], x0 + 0.005)


def test_a_quotient_just_outside_the_range_is_read_as_a_noisy_example():
    """A quotient whose RMS excess over the input range is 0.015 (under NEAR_RANGE, 0.02) is kept, clipped."""
    from fedguard.attacks.fc_inversion import invert_rows

    q = torch.full((16,), 1.015, dtype=torch.float64)
    rows, details = invert_rows(q[None] * 2.0, torch.tensor([2.0], dtype=torch.float64), 1)
    assert details["rows_in_range"] == 0 and details["approximate_rows"] == 1
    assert torch.equal(rows, torch.ones(1, 16, dtype=torch.float64))
    rows, details = invert_rows((q + 0.01)[None] * 2.0, torch.tensor([2.0], dtype=torch.float64), 1)  # 0.025 out
    assert len(rows) == 0


def _circle(n: int = 32) -> torch.Tensor:
    """``n`` 2-D public examples evenly on a circle: their responses correlate as the cosine of the rows' angle."""
    t = torch.arange(n, dtype=torch.float64) * 2 * math.pi / n
    return torch.stack([torch.cos(t), torch.sin(t)], dim=1).float()


def test_units_correlated_at_0_996_are_not_bins():
    """Honest units reach 0.996 correlation: only SAME_MEASUREMENT (0.999) makes rows one measurement."""
    from fedguard.attacks.fc_inversion import bin_neighbours

    angles = torch.tensor([0.0, 0.03, 0.06, 0.09])  # neighbours at 0.99955, the ends at 0.996
    layer = nn.Linear(2, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.cos(angles), torch.sin(angles)], dim=1))
        layer.bias.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert len(bin_neighbours(layer, _circle())[0]) == 0
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0]]).expand(4, 2))  # one measurement, four thresholds: bins
    assert len(bin_neighbours(layer, _circle())[0]) == 3


# --------------------------------------------------------------------------- class fishing


def _fishing_head_view(digits, zero_rows, bias_value: float):
    """A view of the MLP whose head has rows ``zero_rows`` zeroed with bias ``bias_value``."""
    model = _mlp(0)
    head = model[-1]  # the built-in MLP's last Linear layer
    with torch.no_grad():
        head.weight[zero_rows] = 0.0
        head.bias[zero_rows] = bias_value
    view, _, _ = server_view(model, digits, [0], seed=0)
    return view


def test_a_fishing_head_is_planted_from_a_bias_of_exactly_100(digits):
    """Zeroed head rows with biases of PLANTED_BIAS (100) beside one live row are a planted fishing head; 99 is not."""
    from fedguard.attacks.class_fishing import PLANTED_BIAS, ClassFishing

    assert PLANTED_BIAS == 100.0
    assert ClassFishing().planted(_fishing_head_view(digits, list(range(1, 10)), 100.0))
    assert not ClassFishing().planted(_fishing_head_view(digits, list(range(1, 10)), 99.0))


def test_a_head_of_zero_rows_alone_is_no_fishing_head(digits):
    """Every row zeroed leaves no class fished for: not planted, however large the biases."""
    from fedguard.attacks.class_fishing import ClassFishing

    assert not ClassFishing().planted(_fishing_head_view(digits, list(range(10)), 1000.0))


# --------------------------------------------------------------------------- feature fishing (scripted rounds)


def _scripted_fishing(monkeypatch, digits, examples: list[tuple[float, float]], max_rounds: int = 16):
    """Feature fishing run against a scripted client: ``examples`` are (feature value, weight); a boundary at ``v``
    leaves the target bias's gradient at ``-(weight of examples below v) / B``. The inversion is stubbed out."""
    import fedguard.attacks.feature_fishing as ff
    from fedguard.types import Reconstruction

    view, _, _ = server_view(_mlp(0), digits, list(range(8)), seed=0)
    head = find_head(view.model, view.input_shape, view.device, view.num_classes)
    public = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], dtype=torch.float64)
    plan = ff.FishingPlan(target=0, feature=0, multiplier=1000.0, public=public)
    batch = int(view.batch_size)

    def gradient(boundary: float) -> dict:
        below = sum(w for f, w in examples if f < boundary)
        bias = torch.zeros(10, dtype=torch.float64)
        bias[0] = -below / batch
        return {head.bias: bias}

    def next_round(options):
        return types.SimpleNamespace(as_gradient=lambda: gradient(options["feature_val"]))

    view = dataclasses.replace(view, tensors=gradient(plan.high), next_round=next_round)
    monkeypatch.setattr(ff.FeatureFishing, "_plan", lambda self, v: plan)
    monkeypatch.setattr(ff, "invert_isolated", lambda v, h, g, labels, b, through: (
        Reconstruction(attack="stub", images=torch.zeros(len(labels), *SHAPE)), "stub"))
    return ff.FeatureFishing(max_rounds=max_rounds).run(view, Budget(1)).details


def test_a_window_reading_1_25_examples_is_not_one_example(monkeypatch, digits):
    """A window within COUNT_TOLERANCE (0.2) of one example is one; 1.25 is not: it is split, never 'isolated'."""
    details = _scripted_fishing(monkeypatch, digits, [(0.25, 1.25)])
    assert details["rounds_ended"] != "isolated" and details["rounds"] > 2
    assert _scripted_fishing(monkeypatch, digits, [(0.25, 1.15)])["rounds_ended"] == "isolated"


def test_feature_fishing_sends_at_most_max_rounds_models(monkeypatch, digits):
    """The rounds stop when max_rounds crafted models have been answered, not one later."""
    details = _scripted_fishing(monkeypatch, digits, [(0.15, 1.0), (0.15, 1.0), (0.35, 1.0), (0.35, 1.0)], max_rounds=3)
    assert details["rounds"] == 3 and details["rounds_ended"] == "max_rounds"


def test_without_a_single_example_the_smallest_window_is_inverted(monkeypatch, digits):
    """When the rounds end without one example isolated, the window holding the fewest (at least ~1) is inverted."""
    details = _scripted_fishing(monkeypatch, digits, [(0.15, 1.0)] * 2 + [(0.65, 1.0)] * 3, max_rounds=3)
    assert details["rounds_ended"] == "max_rounds" and details["examples_fished"] == 2


# --------------------------------------------------------------------------- MKOR


def _mkor_view(digits, batch: int = 20):
    from fedguard.attacks.craft import craft

    evil = craft("mkor_inconspicuous", _mlp(0), input_shape=SHAPE, num_classes=10, seed=0)
    view, _, _ = server_view(evil, digits, list(range(batch)), seed=0)
    return view


def _mkor_with_counts(monkeypatch, view, counts):
    import fedguard.attacks.mkor as mkor

    features = torch.full((10, 64), 0.5, dtype=torch.float64)
    monkeypatch.setattr(mkor, "class_features", lambda *args: (features, torch.tensor(counts, dtype=torch.float64)))
    return mkor.MKOR().run(view, Budget(1))


def test_mkor_reports_only_classes_of_half_an_example_or_more(monkeypatch, digits):
    """A class whose rows read under half an example (estimation noise) is not reported as found."""
    rec = _mkor_with_counts(monkeypatch, _mkor_view(digits), [0.6, 0.3, 10, 9.1, 0, 0, 0, 0, 0, 0])
    assert rec.details["classes_found"] == [0, 2, 3]


def test_mkor_keeps_one_image_for_a_class_found_whose_count_rounds_to_zero(monkeypatch, digits):
    """Every class found gets at least one image, even where Hamilton's rounding hands it no example."""
    rec = _mkor_with_counts(monkeypatch, _mkor_view(digits), [0.55, 0, 10, 10, 0, 0, 0, 0, 0, 0])
    assert torch.bincount(rec.labels, minlength=10).tolist()[:4] == [1, 0, 10, 10]


def test_mkor_s_averaging_bias_is_half_as_much_again_as_the_lowest_input_mean(digits):
    """For a model computing (x - 0.5) / 0.2 first, the black image's mean -2.5 sets the rows' bias to 3.75."""
    from fedguard.attacks.mkor import MKOR

    class Norm(nn.Module):
        def forward(self, x):
            return (x - 0.5) / 0.2

    torch.manual_seed(0)
    model = nn.Sequential(Norm(), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    view, _, _ = server_view(model, digits, [0], seed=0)
    assert MKOR().crafter_options(view) == {"first_bias": pytest.approx(3.75, rel=1e-5)}


def _owned_head_model(owned: int, averaging: bool = True, classes: int = 10) -> nn.Module:
    """A 64 -> 32 -> ``classes`` MLP whose first-layer rows 0..owned-1 reach one class each (averaging their input, as
    MKOR's rows do, unless ``averaging`` is False) and the rest every class."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, classes))
    with torch.no_grad():
        model[3].weight.fill_(0.3)
        for j in range(owned):
            model[3].weight[:, j] = 0.0
            model[3].weight[j, j] = 1.0
            if averaging:
                model[1].weight[j] = 1 / 64
    return model


def test_mkor_is_planted_from_half_the_classes_and_under_seven_with_its_rows(digits):
    """Class-owned first-layer rows for 5 of 10 classes are an MKOR model, MKOR's rows or not (chance gives honest rows
    to at most two classes from seven on); for 4 they are not. With 4 classes, rows for 2 are MKOR's only where they
    are (averaging here; neither averaging nor opposite pairs, the other paths not cut: chance)."""
    from fedguard.attacks.mkor import MKOR

    for classes, owned, averaging, planted in ((10, 5, True, True), (10, 4, True, False), (10, 5, False, True),
                                               (4, 2, True, True), (4, 2, False, False)):  # fmt: skip
        view, _, _ = server_view(_owned_head_model(owned, averaging, classes), digits, [0, 1], seed=0)
        assert MKOR().planted(dataclasses.replace(view, num_classes=classes)) is planted, (classes, owned, averaging)


@pytest.mark.parametrize("classes", [2, 3])
def test_honest_models_of_few_classes_are_not_mkor_models_and_crafted_ones_are(digits, classes):
    """With few classes honest first-layer rows reach one class alone by chance (every class, at 2-4 classes): the
    audit had attacked every honest two-class model as MKOR's and noted that a malicious server had sent it. Honest
    models of three inits and a trained one are not MKOR's; MKOR's naive (noise 0 and 0.1) and inconspicuous models
    are."""
    from fedguard.attacks.craft import craft
    from fedguard.attacks.mkor import MKOR, class_rows

    x, y = digits[0], digits[1] % classes

    def view_of(model):
        return dataclasses.replace(server_view(model, (x, y), [0, 1, 2, 3], seed=0)[0], num_classes=classes)

    chance = 0
    for seed in range(4):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, classes))
        if seed == 3:  # trained
            opt = torch.optim.Adam(model.parameters(), lr=0.01)
            for _ in range(60):
                opt.zero_grad()
                nn.functional.cross_entropy(model(x[:512]), y[:512]).backward()
                opt.step()
        view = view_of(model)
        chance += sum(len(r) > 0 for r in class_rows([model[1], model[3], model[5]], classes)) >= 2
        assert not MKOR().planted(view), seed
        if seed == 0:
            for crafter, options in (("mkor", {}), ("mkor", {"noise": 0.1}), ("mkor_inconspicuous", {})):
                crafted = craft(crafter, model, input_shape=SHAPE, num_classes=classes, **options)
                assert MKOR().planted(view_of(crafted)), (crafter, options)
    assert chance >= 2  # the honest rows that had read as planted are there


def test_a_lone_linear_head_is_not_an_mkor_model(digits):
    """Logistic regression (one Linear layer) owns a row per class in any model: never called MKOR-planted."""
    from fedguard.attacks.mkor import MKOR

    torch.manual_seed(0)
    view, _, _ = server_view(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), digits, [0, 1], seed=0)
    assert MKOR().applies(view) is None and not MKOR().planted(view)


# --------------------------------------------------------------------------- metrics


def test_only_a_reconstruction_at_level_high_counts_as_recovered():
    """recovered_fraction counts 30 dB / SSIM 0.9 only at level high: a medium one (guess nearly as close) is not."""
    from fedguard.metrics import recovered_fraction
    from fedguard.types import LeakageLevel

    medium = types.SimpleNamespace(level=LeakageLevel.MEDIUM, psnr=31.0, ssim=0.6)
    high = types.SimpleNamespace(level=LeakageLevel.HIGH, psnr=31.0, ssim=0.6)
    assert recovered_fraction([medium], 1) == 0.0 and recovered_fraction([high, medium], 2) == 0.5


def test_the_label_accuracy_of_an_image_attack_is_over_the_labels_it_gave():
    """One rebuilt image labelled right out of a batch of four: its labels are all right (1.0), not 1 of 4."""
    from fedguard.metrics import score
    from fedguard.types import Reconstruction

    true_x = torch.rand(4, *SHAPE, generator=torch.Generator().manual_seed(0))
    true_y = torch.tensor([3, 1, 4, 1])
    rec = Reconstruction(attack="t", images=true_x[:1].clone(), labels=torch.tensor([3]))
    assert score(rec, true_x, true_y, 10, title="t", reference="r", kind="images").label_accuracy == 1.0


def test_a_label_beyond_the_classes_is_wrong_not_the_last_class():
    """A rebuilt label equal to num_classes is outside the classes: it counts as wrong."""
    from fedguard.metrics import score
    from fedguard.types import Reconstruction

    true_x = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(0))
    rec = Reconstruction(attack="t", images=true_x.clone(), labels=torch.tensor([10]))
    assert score(rec, true_x, torch.tensor([9]), 10, title="t", reference="r", kind="images").label_accuracy == 0.0


# --------------------------------------------------------------------------- exposure


def test_coarser_counts_are_tried_up_to_a_window_of_exactly_the_stable_rounds():
    """The 5x coarser window is a what-if while it fits in the stable rounds, equality included."""
    from fedguard.exposure import FederationSettings, what_ifs

    labels = [label for label, _, _ in what_ifs(FederationSettings(window=10, stable_rounds=50))]
    assert "counts per 50 rounds" in labels
    assert "counts per 50 rounds" not in [label for label, _, _ in what_ifs(FederationSettings(window=10, stable_rounds=49))]


def test_the_population_is_users_per_round_over_participation_rounded():
    """5 users a round at participation 0.3 are a population of 17 (16.7 rounded), as exposure() simulates it."""
    from fedguard.attacks.federation import NotIdentifiable
    from fedguard.exposure import FederationSettings, exposure

    assert FederationSettings(users_per_round=5, participation=0.3).users == 17
    with pytest.raises(NotIdentifiable, match="the 17 users"):
        exposure(users_per_round=5, participation=0.3, rounds=10, window=10)


def test_the_client_s_sample_has_4_users_or_128_coordinates_by_default():
    """Without dim, exposure samples max(4 users, 128) of the update's non-zero coordinates (at most all of them)."""
    from fedguard.exposure import exposure

    update = np.random.default_rng(0).standard_normal(1000)
    assert exposure(users_per_round=1, participation=1.0, rounds=10, client_update=update).dim == 128
    assert exposure(users_per_round=1, participation=1.0, rounds=10, client_update=update[:100]).dim == 100


_SMALL_FEDERATION = dict(users_per_round=5, rounds=60, window=10, participation=0.5, seed=0, workers=1, time_limit=1)


def test_a_column_certified_exact_but_matching_no_true_user_is_reported_wrong(monkeypatch):
    """A recovered column that is 'exact' yet matches no true user is 'wrong'; whether the client is exposed is then
    its update's error against its own update (a server uses an estimate that near whatever its columns)."""
    import fedguard.exposure as exposure_module

    honest = exposure_module.exposure(**_SMALL_FEDERATION)
    monkeypatch.setattr(exposure_module, "match_users", lambda result, participation, counts: np.full(result.updates.shape[0], -1))
    result = exposure_module.exposure(**_SMALL_FEDERATION)
    assert "wrong" in {p.client_status for p in result.points} and "wrong" not in {p.client_status for p in honest.points}
    assert result.rounds_to_exposure == honest.rounds_to_exposure


def test_a_miss_the_time_limit_decided_leaves_not_exposed_undecided(monkeypatch):
    """Never exposed, with a prefix whose integer program timed out: the search is not complete."""
    import fedguard.exposure as exposure_module

    real = exposure_module.disaggregate

    def slow_and_unrecovered(*args, **kwargs):
        result = real(*args, **kwargs)
        return dataclasses.replace(result, timed_out=1, updates=np.full_like(result.updates, np.nan))

    monkeypatch.setattr(exposure_module, "disaggregate", slow_and_unrecovered)
    result = exposure_module.exposure(**_SMALL_FEDERATION)
    assert result.rounds_to_exposure is None and not result.complete


# --------------------------------------------------------------------------- threat model


def _plain_view(**changes) -> ServerView:
    """A FedAvg view of a tiny update, with public data unless changed."""
    fields = dict(model=None, tensors={"w": torch.tensor([1.0, -2.0])}, protocol="fedavg", batch_size=8, local_steps=2,
                  local_lr=0.5, local_batch_size=None, num_classes=10, input_shape=SHAPE, threat=ThreatModel(),
                  device=torch.device("cpu"), auxiliary=(torch.zeros(5, *SHAPE), torch.arange(5)))
    fields.update(changes)
    return ServerView(**fields)


def test_without_public_data_the_server_runs_at_least_64_noise_inputs():
    """server_data(8) without public data gives 64 unlabelled inputs of noise in the input box, not 8."""
    x, y = _plain_view(auxiliary=None).server_data(8)
    assert x.shape == (64, *SHAPE) and y is None and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert len(_plain_view(auxiliary=None).server_data(100)[0]) == 100


def test_a_threat_model_without_auxiliary_data_hides_the_public_data():
    """auxiliary_data=False withholds the public data from server_data even when the view carries it."""
    x, y = _plain_view(threat=ThreatModel(auxiliary_data=False)).server_data(8)
    assert y is None and len(x) == 64
    assert len(_plain_view().server_data(8)[0]) == 5


def test_an_input_range_of_zero_width_is_refused():
    """(low, high) needs low < high: (1, 1) is an error."""
    from fedguard.errors import InputError

    with pytest.raises(InputError, match="low < high"):
        ThreatModel(input_range=(1.0, 1.0))


def test_the_gradient_direction_of_a_fedavg_update_is_its_negative():
    """FedAvg's W_T - W_0 points against the gradient: the direction is -(W_T - W_0), a positive multiple of it."""
    view = _plain_view()
    assert torch.equal(view.gradient_direction()["w"], torch.tensor([-1.0, 2.0]))
    assert torch.allclose(view.as_gradient()["w"], view.gradient_direction()["w"] / (2 * 0.5))
