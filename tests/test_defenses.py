"""Client-side defenses (fedguard.defenses) as compute_update and the audit apply them."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from click.testing import CliRunner

from fedguard.architectures import build_model
from fedguard.cli import main
from fedguard.data import load_data
from fedguard.defenses import DPSGD, GaussianNoise, Pruning, parse_defense
from fedguard.errors import InputError
from fedguard.update import compute_update

from .cli_checks import assert_input_error
from .helpers import lenet8


@pytest.fixture(scope="module")
def batch():
    x, y = load_data("digits")
    return x[:8], y[:8]


def _max_difference(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_dp_sgd_clips_each_example_and_averages(batch):
    """With noise negligible, DP-SGD's FedSGD update is the mean of the per-example gradients each clipped to C
    (computed one example at a time here); with C above every example's norm it is the plain gradient."""
    x, y = batch
    model = lenet8()
    clip = 0.5
    clipped = []
    for i in range(len(y)):
        grad = compute_update(model, x[i : i + 1], y[i : i + 1]).tensors
        norm = sum(float(g.pow(2).sum()) for g in grad.values()) ** 0.5
        clipped.append({k: g * min(1.0, clip / norm) for k, g in grad.items()})
    expected = {k: sum(c[k] for c in clipped) / len(y) for k in clipped[0]}
    private = compute_update(model, x, y, defense=DPSGD(1e-9, max_grad_norm=clip))
    assert _max_difference(private.tensors, expected) < 1e-6
    assert _max_difference(compute_update(model, x, y, defense=DPSGD(1e-9, max_grad_norm=100.0)).tensors,
                           compute_update(model, x, y).tensors) < 1e-6


def test_dp_sgd_noise_epsilon_and_seed(batch):
    """Noise of sigma * C per step over the batch: the update's distance to the noise-free one matches
    sigma * C * sqrt(d) / B; epsilon is Opacus' RDP accountant's over the steps that hold one example (5 steps of
    4 over 8 in fixed slices: 3), at sample rate 1, since fixed slices get no subsampling amplification (rate 0.5
    over 5 steps had given 8.23 against 9.01), and at sigma / 2: one example replaced moves a clipped sum by up to
    2C (the batch's size is public, so neighbours differ by a replacement; at sigma it had read 9.01 for 21.4);
    the same seed gives the same update, another seed another."""
    from opacus.accountants import RDPAccountant

    x, y = batch
    model = lenet8()
    dp = DPSGD(1.0, max_grad_norm=1.0, delta=1e-5)
    clean = compute_update(model, x, y, defense=DPSGD(1e-9))
    noisy = compute_update(model, x, y, defense=dp, seed=3)
    d = sum(t.numel() for t in clean.tensors.values())
    distance = sum(float((noisy.tensors[k] - clean.tensors[k]).pow(2).sum()) for k in clean.tensors) ** 0.5
    assert distance == pytest.approx(d**0.5 / len(y), rel=0.05)
    assert _max_difference(compute_update(model, x, y, defense=dp, seed=3).tensors, noisy.tensors) == 0
    assert _max_difference(compute_update(model, x, y, defense=dp, seed=4).tensors, noisy.tensors) > 0
    fedavg = compute_update(model, x, y, defense=dp, protocol="fedavg", local_steps=5, local_lr=0.1, local_batch_size=4)
    accountant = RDPAccountant()
    for _ in range(3):
        accountant.step(noise_multiplier=0.5, sample_rate=1.0)
    assert fedavg.epsilon == pytest.approx(accountant.get_epsilon(delta=1e-5))
    assert noisy.epsilon < fedavg.epsilon and noisy.delta == 1e-5
    assert (noisy.defense, noisy.summary()["defense_settings"]) == ("dp-sgd", dp.settings())


def test_pruning_and_noise_change_the_update_as_named(batch):
    """Pruning zeroes the stated share of each tensor, smallest magnitudes first; noise has the stated std."""
    x, y = batch
    model = lenet8()
    plain = compute_update(model, x, y).tensors
    pruned = compute_update(model, x, y, defense=Pruning(0.9)).tensors
    for name, value in pruned.items():
        kept = value != 0
        assert float(kept.float().mean()) == pytest.approx(0.1, abs=1.5 / value.numel() + 0.01)
        if kept.any() and (~kept).any():
            assert float(plain[name][~kept].abs().max()) <= float(plain[name][kept].abs().min())
    noisy = compute_update(model, x, y, defense=GaussianNoise(0.01)).tensors
    residual = torch.cat([(noisy[k] - plain[k]).flatten() for k in plain])
    assert float(residual.std()) == pytest.approx(0.01, rel=0.05)


def test_a_batchnorm_model_and_bad_settings_are_refused(batch):
    x, y = batch
    torch.manual_seed(0)
    convnet = build_model("convnet", input_shape=(1, 8, 8))
    with pytest.raises(InputError, match="DP-SGD cannot train this model: it has BatchNorm2d"):
        compute_update(convnet, x, y, defense=DPSGD(1.0))
    # built from Python, each names its argument (the command line's messages name the flags: test_audit)
    for bad, match in ((lambda: DPSGD(0.0), "^bad noise_multiplier 0"), (lambda: DPSGD(1.0, delta=0.5), "^delta 0.5 is no guarantee"),
                       (lambda: compute_update(lenet8(), x, y, defense=DPSGD(1e-200)), "would round to nothing"),
                       (lambda: Pruning(1.0), "^fraction 1 would upload nothing"), (lambda: GaussianNoise(-1), "^bad std -1"),
                       (lambda: GaussianNoise(1e39), r"^std 1e\+39 is beyond float32's range"),  # had been inf
                       (lambda: DPSGD(1.0, max_grad_norm=1e39), r"times max_grad_norm 1e\+39 is noise beyond float32's"),
                       (lambda: parse_defense("dp-sgd"), "needs --noise-multiplier"),
                       (lambda: parse_defense("prune"), "needs --prune-fraction"),
                       (lambda: compute_update(lenet8(), x, y, defense="dp-sgd"), "pass a fedguard.defenses")):  # fmt: skip
        with pytest.raises(InputError, match=match):
            bad()


class _Centring(torch.nn.Module):
    """Subtracts the batch's mean: no parameters, so the per-example gradients of the layers around it still
    average to the batch's."""

    def forward(self, x):
        return x - x.mean(0)


class _BatchMeanCentring(torch.nn.Module):
    """Subtracts the batch's mean, then scales: no buffers for Opacus to refuse, yet each example's output depends
    on the others."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(64))

    def forward(self, x):
        x = x.flatten(1)
        return (x - x.mean(0)) * self.scale


def test_a_layer_that_mixes_examples_is_refused_and_a_short_last_batch_is_its_own_mean(batch):
    """A computation that mixes examples makes clipping each example's gradient bound nothing (it had passed with
    an epsilon): replacing one example moves the others' outputs (a batch mean without parameters, which the
    per-example gradients cannot show, had passed too: an independent review), and per-example gradients that do
    not average to the batch's gradient say so at every step. A last mini-batch shorter than the others is
    averaged over its own size, as plain SGD does (it had been divided by the full size: 34 % off)."""
    from fedguard import defenses

    x, y = batch
    torch.manual_seed(0)
    mixer = torch.nn.Sequential(_BatchMeanCentring(), torch.nn.Linear(64, 10))
    centred = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), _Centring(), torch.nn.Linear(32, 10))
    for model in (mixer, centred):
        with pytest.raises(InputError, match="replacing one example moved the other examples' outputs"):
            compute_update(model, x, y, defense=DPSGD(1.0))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(defenses, "_check_independent", lambda net, inputs: None)
        with pytest.raises(InputError, match="the mean of its per-example gradients is .* off the batch's gradient"):
            compute_update(mixer, x, y, defense=DPSGD(1.0))
    schedule = dict(protocol="fedavg", local_steps=3, local_lr=0.1, local_batch_size=3)
    plain = compute_update(lenet8(), x, y, **schedule)
    private = compute_update(lenet8(), x, y, defense=DPSGD(1e-9, max_grad_norm=100.0), **schedule)
    assert _max_difference(private.tensors, plain.tensors) < 1e-6


def test_emulated_rounds_draw_their_own_noise():
    """feature_fishing reads the difference of two rounds' updates: with the same noise in both it cancelled, and
    noise of std 0.1 had left the example exact (100 dB, as with no defense)."""
    from fedguard.audit import audit

    run = dict(arch="mlp", input_shape=(1, 8, 8), data="digits", batch_size=16, attacks=["feature_fishing"], seed=0)
    (open_outcome,) = audit(None, **run).attacks
    (noisy,) = audit(None, defense=GaussianNoise(0.1), **run).attacks
    assert open_outcome.psnr_max == 100.0 and (noisy.psnr_max or 0) < 30


def test_dp_sgd_without_opacus_says_how_to_install_it(batch, monkeypatch):
    for module in ("opacus.grad_sample", "opacus.accountants"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(InputError, match=r"needs Opacus; install it with pip install 'fedguard\[dp\]'"):
        compute_update(lenet8(), *batch, defense=DPSGD(1.0))


def test_the_audit_attacks_the_defended_update():
    """The MLP's first layer gives every example of a batch of 4 back exactly (fc_inversion, 100 dB); under DP-SGD
    at sigma 1 nothing comes back (level none, under 15 dB), the report gives the round's epsilon, and the
    JSON validates."""
    from fedguard.audit import audit
    from fedguard.reports import load_schema
    from fedguard.reports.audit_json import audit_to_dict
    import jsonschema

    run = dict(arch="mlp", input_shape=(1, 8, 8), data="digits", batch_size=4, attacks=["fc_inversion", "dlg"],
               max_iterations=30, seed=0)  # fmt: skip
    open_report = audit(None, **run)
    assert {o.name: o.psnr_max for o in open_report.attacks}["fc_inversion"] == 100.0
    private = audit(None, defense=DPSGD(1.0), **run)
    assert str(private.leakage.level) == "none" and all(o.psnr_max is None or o.psnr_max < 15 for o in private.attacks)
    doc = audit_to_dict(private)
    jsonschema.Draft202012Validator(load_schema("audit")).validate(doc)
    assert doc["update"]["defense"] == "dp-sgd" and 10 < doc["update"]["epsilon"] < 11
    assert doc["update"]["epsilon"] == float(f"{doc['update']['epsilon']:.6g}")  # six digits, as measured numbers are
    assert doc["update"]["defense_settings"] == {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--noise-multiplier", "1"], "--noise-multiplier applies to --defense dp-sgd only"),
        (["--defense", "prune", "--noise-std", "0.1"], "--noise-std applies to --defense noise only"),
        (["--defense", "dp-sgd"], "--defense dp-sgd needs --noise-multiplier"),
        (["--defense", "dp-sgd", "--noise-multiplier", "1", "--delta", "0.01", "--batch-size", "200"],
         "--delta 0.01 is not below 1 / 200 (one over the batch's examples)"),
        (["--defense", "noise", "--noise-std", "0.1", "--model", "{model}", "--update", "{model}"], "--update is attacked as it is"),
    ],
)
def test_cli_defense_options_are_checked(tmp_path, args, message):
    model = tmp_path / "model.pt"
    torch.save(lenet8().state_dict(), model)
    argv = ["audit", "--arch", "lenet", "--input-shape", "1,8,8", "--data", "digits", "--no-exposure",
            *[a.format(model=model) for a in args]]  # fmt: skip
    assert message in assert_input_error(CliRunner().invoke(main, argv))


class _Attending(torch.nn.Module):
    """Pixels as a sequence of 8 tokens of 8 through torch's MultiheadAttention."""

    def __init__(self):
        super().__init__()
        self.attn, self.head = torch.nn.MultiheadAttention(8, 2, batch_first=True), torch.nn.Linear(64, 10)

    def forward(self, x):
        tokens = x.reshape(len(x), 8, 8)
        return self.head(self.attn(tokens, tokens, tokens)[0].flatten(1))


def test_layers_opacus_cannot_train_are_named_with_their_replacement(batch):
    """torch's MultiheadAttention, LSTM, GRU and the legacy weight_norm train without a defense, but Opacus computes no
    per-example gradients for them: they had failed inside their forward ("missing 2 required positional arguments"),
    blamed on --arch, --input-shape and --data."""
    x, y = batch
    with pytest.raises(InputError, match="its layer attn is a torch MultiheadAttention.*use opacus.layers.DPMultiheadAttention"):
        compute_update(_Attending(), x, y, defense=DPSGD(1.0))
    with pytest.warns(FutureWarning):  # torch's own: the legacy form is deprecated
        legacy = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.utils.weight_norm(torch.nn.Linear(64, 10)))
    with pytest.raises(InputError, match="use torch.nn.utils.parametrizations.weight_norm"):
        compute_update(legacy, x, y, defense=DPSGD(1.0))
    assert compute_update(_Attending(), x, y).tensors  # without the defense it trains


def test_subnormal_settings_are_refused_by_their_own_names():
    """A delta below the smallest normal float had been flushed to 0 in the audit and blamed on the noise; noise or a
    clipping norm below float32's smallest normal number rounds to nothing, and had been reported as a defense."""
    with pytest.raises(InputError, match="delta 1e-320 is below 1e-300"):
        DPSGD(1.0, delta=1e-320)
    with pytest.raises(InputError, match="std 1e-45 is below float32's smallest normal number"):
        GaussianNoise(1e-45)
    with pytest.raises(InputError, match="max_grad_norm 1e-45 is below .* the clipping would round to nothing; clip to a norm such as 1$"):
        DPSGD(1.0, max_grad_norm=1e-45)
    with pytest.raises(InputError, match=r"max_grad_norm 1e-45 is below"):
        DPSGD(1e10, max_grad_norm=1e-45)  # the noise (1e-35) is a normal float32, the clipping norm is not
    # the factor out of range is the one the fix names (a norm of 1 had been told to clip to a norm such as 1)
    with pytest.raises(InputError, match=r"noise_multiplier 1e-40 times max_grad_norm 1 is below .* the noise would "
                                         r"round to nothing; give a noise_multiplier such as 1.0$"):
        DPSGD(1e-40)
    with pytest.raises(InputError, match=r"noise_multiplier 1e\+31 times max_grad_norm 1 is noise beyond float32's "
                                         r"range \(at most 1e\+30\); give a noise_multiplier such as 1.0$"):
        DPSGD(1e31)
    with pytest.raises(InputError, match=r"times max_grad_norm 1e\+39 is noise beyond .*; clip to a max_grad_norm such as 1$"):
        DPSGD(1.0, max_grad_norm=1e39)
    from fedguard.errors import COMMAND_LINE

    token = COMMAND_LINE.set(("fedguard", "audit"))  # the command line's messages name its flags
    try:
        with pytest.raises(InputError, match=r"^--noise-multiplier 1e\+31 times --max-grad-norm 1 is noise beyond"):
            DPSGD(1e31)
        with pytest.raises(InputError, match=r"^--prune-fraction 1 would upload nothing"):
            Pruning(1)
    finally:
        COMMAND_LINE.reset(token)


def test_pruning_zeroes_exactly_its_share_when_values_tie():
    """A threshold at the k-th magnitude had zeroed every value tied with it: 10 equal values, all gone at 10 %."""
    pruned = Pruning(0.1).apply({"w": torch.ones(10)}, torch.Generator())["w"]
    assert int((pruned == 0).sum()) == 1


def test_a_weak_epsilon_is_called_one_beside_the_defense():
    from fedguard.reports.audit_sentences import defense_summary

    settings = {"defense": "dp-sgd", "defense_settings": {"noise_multiplier": 0.1, "max_grad_norm": 1.0, "delta": 1e-5},
                "delta": 1e-5}  # fmt: skip
    assert "weak guarantee" in defense_summary({**settings, "epsilon": 96.0})
    assert "weak guarantee" not in defense_summary({**settings, "epsilon": 4.7})


class _OwnDropout(torch.nn.Module):
    """Dropout drawn from the module's own generator (a reproducibility-minded model)."""

    def __init__(self):
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, h):
        return h * (torch.rand(h.shape, generator=self.generator) > 0.5) * 2 if self.training else h


class _BatchMax(torch.nn.Module):
    def forward(self, h):
        return h / h.abs().max()


def test_the_independence_check_replays_randomness_and_sees_a_batch_maximum(batch):
    """Replacing one example by a larger one moves the others' outputs under a batch maximum (it had been replaced by
    another example, which rarely took the maximum) and under a batch mean at batch 512 (1/512 of the change had
    stayed under the tolerance); dropout from a module's own generator replays and is accepted (it had been refused).
    An independent review's cases."""
    x, y = batch

    def mlp(*middle):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), *middle, torch.nn.Linear(32, 10))

    assert compute_update(mlp(_OwnDropout()), x, y, defense=DPSGD(1.0)).epsilon > 0
    with pytest.raises(InputError, match="replacing one example moved the other examples' outputs"):
        compute_update(mlp(_BatchMax()), x, y, defense=DPSGD(1.0))
    many = load_data("digits", input_shape=(1, 8, 8), limit=512, seed=0)
    with pytest.raises(InputError, match="replacing one example moved the other examples' outputs"):
        compute_update(mlp(_Centring()), *many, defense=DPSGD(1.0))


def test_a_convolution_that_pads_other_than_with_zeros_is_named(batch):
    """Opacus forms a convolution's per-example gradients as if it padded with zeros: lenet5_stride2 (replicate
    padding) had been refused as a layer that mixes examples (its per-example gradients 3.5 % off the batch's)."""
    x, y = batch
    model = build_model("lenet5_stride2", input_shape=(1, 8, 8))
    with pytest.raises(InputError, match="its layer features.0 is a convolution with padding_mode 'replicate'"):
        compute_update(model, x, y, defense=DPSGD(1.0))


def test_delta_may_be_at_most_one_percent():
    """A guarantee that fails with probability above 1 % is none; 1 % itself is taken (with a batch of over 100)."""
    assert DPSGD(1.0, delta=0.01).delta == 0.01
    with pytest.raises(InputError, match="is no guarantee; give a small probability of at most 0.01"):
        DPSGD(1.0, delta=math.nextafter(0.01, 1.0))


def test_parse_defense_passes_each_option_to_its_defense():
    """The options given on the command line are the defense's settings (defaults only for those not given)."""
    assert parse_defense("dp-sgd", noise_multiplier=2.0, max_grad_norm=0.1, delta=1e-6) == DPSGD(2.0, 0.1, 1e-6)
    assert parse_defense("dp-sgd", noise_multiplier=2.0) == DPSGD(2.0, 1.0, 1e-5)
    assert parse_defense("prune", prune_fraction=0.3) == Pruning(0.3)
    assert parse_defense("noise", noise_std=0.2) == GaussianNoise(0.2)
    assert parse_defense("none") is None


def test_dp_sgd_trains_an_unused_head_and_an_unpadded_replicate_convolution(batch):
    """A parameter the forward does not use (an auxiliary head) gets no per-example gradient from Opacus: its
    gradient is zero (plus the noise), as without the defense; padding_mode matters only to a convolution that pads,
    so one with padding 0 trains (only a padded one is refused)."""
    x, y = batch
    net = lenet8()
    net.aux = torch.nn.Linear(48, 3)
    private = compute_update(net, x, y, defense=DPSGD(1e-9, max_grad_norm=100.0))
    plain = compute_update(lenet8(), x, y)
    assert _max_difference({k: private.tensors[k] for k in plain.tensors}, plain.tensors) < 1e-6
    assert float(private.tensors["aux.weight"].abs().max()) < 1e-6 and float(private.tensors["aux.bias"].abs().max()) < 1e-6
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=0, padding_mode="replicate"), torch.nn.Flatten(),
                               torch.nn.Linear(72, 10))  # fmt: skip
    assert compute_update(conv, x, y, defense=DPSGD(1.0)).epsilon > 0


def test_delta_must_be_strictly_below_one_over_the_examples():
    """At delta = 1 / examples one example may be released outright with that probability: no guarantee."""
    with pytest.raises(InputError, match="not below 1 / 100"):
        DPSGD(1.0, max_grad_norm=1.0, delta=0.01).epsilon(1, 100)
    assert DPSGD(1.0, max_grad_norm=1.0, delta=0.0099).epsilon(1, 100) > 0
