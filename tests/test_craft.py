"""The crafters build what their papers describe, and the attacks they enable work.

Structure checks read the crafted state_dict; functional checks run a real
client step on sklearn digits and recover data the way the server would.
"""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

from fedguard import metrics
from fedguard.architectures import ARCHITECTURES, build_model
from fedguard.attacks.craft import CRAFTERS, READS_DATA, FrontEndModel, craft, craft_model
from fedguard.attacks.craft._trap_weights import _trap_rows
from fedguard.errors import InputError
from tests.helpers import lenet8
from tests.zoo import _CRAFTED, benign_entries, benign_models, crafted_entries, crafted_models, digits

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
ALL = ("mkor", "class_fishing", "feature_fishing", "imprint", "trap_weights", "loki", "oversized_fc")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return metrics.psnr(a.detach().numpy(), b.detach().numpy())


def batch(shape=MNIST, n=16, start=0):
    x, y = digits(shape)
    return x[start : start + n], y[start : start + n]


def grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss=nn.functional.cross_entropy) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss(model(x), y, reduction="sum").backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_crafter():
    assert set(ALL) <= set(CRAFTERS.names())
    for name, fn in CRAFTERS.items():
        assert fn.__doc__ and "References" in fn.__doc__, name


def test_unknown_crafter_is_an_input_error_listing_valid_names():
    for call in (lambda: craft_model("no_such_attack", "mlp"), lambda: craft("nope", build_model("mlp"), input_shape=MNIST, num_classes=10)):
        with pytest.raises(InputError) as err:
            call()
        assert "mkor" in str(err.value) and "imprint" in str(err.value)


@pytest.mark.parametrize(
    "data, message",
    [
        (torch.full((4, 3, 32, 32), float("nan")), "NaN or infinite"),
        (torch.zeros(0, 3, 32, 32), r"data of shape \(0, 3, 32, 32\) are not inputs of input_shape \(3, 32, 32\)"),
        # channels last, and three grey images per colour one: both had been reshaped silently into scrambled inputs
        (torch.zeros(4, 32, 32, 3), r"have their channels last; pass images as N, C, H, W \(data.permute\(0, 3, 1, 2\)\)"),
        (torch.zeros(12, 32, 32), r"data of shape \(12, 32, 32\) are not inputs of input_shape \(3, 32, 32\); pass a tensor \[N, 3, 32, 32\]"),
    ],
)
def test_public_data_must_be_finite_inputs_of_the_shape(data, message):
    with pytest.raises(InputError, match=message):
        craft_model("imprint", "lenet", data=data)


@pytest.mark.parametrize("name", ["mkor", "imprint", "trap_weights", "oversized_fc"])
def test_a_model_of_one_class_is_refused_as_nothing_can_leak_through_it(name):
    """Its cross-entropy gradient is zero: class fishing refused it, the other crafters had written useless models."""
    with pytest.raises(InputError, match=r"^a model of one class has a zero cross-entropy gradient .* 2 classes or more$"):
        craft(name, build_model("lenet", num_classes=1, input_shape=(1, 8, 8)), input_shape=(1, 8, 8))


def test_a_shape_the_model_cannot_take_names_input_shape_not_data():
    """Without data, the zeros craft() runs the model on are of ``input_shape``: the error had named --data."""
    with pytest.raises(InputError, match=r"^input_shape \(3, 32, 32\) does not fit the model .*pass the input_shape \(C, H, W\)"):
        craft("mkor", build_model("lenet5"), input_shape=(3, 32, 32))


def test_crafting_gives_each_submodule_its_own_train_or_eval_mode_back():
    """A caller's frozen BatchNorm (eval inside a training model) stays frozen: ``module.train(was)`` had set one mode
    on every submodule."""
    model = build_model("convnet", num_classes=10).train()
    frozen = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0].eval()
    modes = [m.training for m in model.modules()]
    craft("mkor", model, input_shape=(3, 32, 32), num_classes=10)
    assert [m.training for m in model.modules()] == modes and not frozen.training


@pytest.mark.parametrize(
    "name, changes, message",
    [
        ("mkor", {"model": "lenet"}, "model is a str; pass an nn.Module"),
        ("mkor", {"num_classes": 0}, "bad num_classes 0"),
        ("mkor", {"num_classes": "10"}, "bad num_classes '10'"),
        ("mkor", {"num_classes": 2.5}, "bad num_classes 2.5"),
        ("mkor", {"seed": -1}, "bad seed -1"),
        ("mkor", {"input_shape": (1, 28)}, "bad input_shape (1, 28)"),
        ("mkor", {"bogus": 1}, "mkor has no option 'bogus'; its options:"),
        ("mkor", {"bn": "bogus"}, "mkor option bn='bogus' is not 'identity' or 'keep'"),
        ("imprint", {"num_bins": 0}, "imprint option num_bins=0 must be at least 1"),
        ("imprint", {"num_bins": 10**12}, "lower num_bins"),
        ("class_fishing", {"target": []}, "no target class given"),
        ("class_fishing", {"target": 10}, "class_fishing cannot craft this lenet5: target class 10 is outside 0..9; choose a target from 0 to 9"),
        ("class_fishing", {"target": [1, 1]}, "target classes [1, 1] name a class twice"),
        ("class_fishing", {"bias_multiplier": 0.0}, "bias_multiplier 0.0 is not above the target's bias (0): no class is muted"),
        ("trap_weights", {"scale_factor": 1.0}, "scale_factor=1.0 must be strictly between 0 and 1"),  # rows balanced: no trap
        ("oversized_fc", {"width": 10}, "width 10 is not wider than the layer it replaces (120 units): nothing oversized; "
         "use a larger width or factor"),  # and no "; change its options" after the crafter's own fix
        ("oversized_fc", {"model": nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())}, "needs a model with at least one nn.Linear"),
        ("imprint", {"data": "digits"}, "data is a str; pass the server's public inputs as one tensor"),
        ("imprint", {"data": (torch.zeros(4, 1, 28, 28), torch.zeros(4))}, "data is a tuple; pass the server's public"),
        ("mkor", {"data": torch.zeros(4, 1, 28, 28)}, "mkor reads no public data (only feature_fishing, imprint, loki do)"),
        ("class_fishing", {"num_classes": 5}, "num_classes=5 but the model gives 10 logits; pass num_classes=10 or None"),
        ("mkor", {"model": build_model("lenet5").half()}, "model has float16 weights, but fedguard computes in float32"),
        ("loki", {"kernel_size": 4}, "loki option kernel_size=4 must be odd and at most the image's side (28)"),
        ("loki", {"kernel_size": 1001}, "must be odd and at most the image's side"),  # had taken 70 s to fail
        ("mkor", {"noise": 1e308}, "mkor with noise=1e+308 gives"),  # finite options, infinite weights
        ("imprint", {"gain": 1e308}, "NaN or infinite values (beyond float32's 3.4e38); use values nearer 1"),
        ("imprint", {"gain": 1e-320}, "NaN or infinite values (beyond float32's 3.4e38); use values nearer 1"),  # "smaller"
        ("loki", {"data": torch.ones(1, 1, 28, 28)}, "the 1 example(s) of data have no spread in average brightness"),
        ("class_fishing", {"bias_multiplier": 1e308}, "with bias_multiplier=1e+308 the weights go beyond float32's range"),
        ("imprint", {"num_bins": 10**400}, "num_bins=1e+400 (a 401-digit number) is too large"),  # had been OverflowError
        ("class_fishing", {"target": list(range(10))}, "every one of the 10 classes is a target"),  # had crafted nothing
        ("mkor_inconspicuous", {"model": nn.Sequential(nn.Flatten(), nn.Linear(784, 1), nn.ReLU(), nn.Linear(1, 10))},
         "its first linear layer has 1 units and its narrowest hidden layer 1: MKOR needs 2 and 1 per class"),
        ("mkor", {"model": nn.Sequential(nn.Flatten(), nn.utils.parametrizations.weight_norm(nn.Linear(784, 10)))},
         "layer 1 computes its weight from others (weight or spectral norm"),  # had come out unchanged, "crafted"
        ("trap_weights", {"model": nn.Sequential(nn.Flatten(), nn.utils.spectral_norm(nn.Linear(784, 10)))},
         "layer 1 computes its weight from others"),
        ("mkor", {"model": nn.utils.prune.random_unstructured(nn.Linear(784, 10), "weight", 0.5)},
         "or pruning not made permanent"),  # its weight is recomputed from weight_orig on every forward
    ],
)
def test_every_bad_argument_is_one_input_error(name, changes, message):
    arguments = {"model": build_model("lenet5"), "input_shape": MNIST, "num_classes": 10, **changes}
    with pytest.raises(InputError) as err:
        craft(name, **arguments)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_numpy_numbers_are_options_like_python_ones():
    base = build_model("lenet5")
    plain = craft("imprint", base, input_shape=MNIST, num_classes=10, num_bins=16, seed=3)
    numpy = craft("imprint", base, input_shape=MNIST, num_classes=np.int64(10), num_bins=np.int64(16), seed=np.uint32(3))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), numpy.state_dict().values()))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("arch", ["lenet5", "mlp", "convnet"])
def test_crafted_model_is_a_new_module_and_runs_on_digits(name, arch):
    torch.manual_seed(0)
    base = build_model(arch)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    shape = CIFAR if arch == "convnet" else MNIST
    out = craft(name, base, input_shape=shape, num_classes=10, data=digits(shape)[0][:64] if name in READS_DATA else None, seed=1)
    assert out is not base
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items()), "the input model must stay untouched"
    x, _ = batch(shape, 8)
    with torch.no_grad():
        logits = out(x)
    assert logits.shape == (8, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_model_and_another_seed_another_model(name):
    data = digits(MNIST)[0][:64] if name in READS_DATA else None
    a = craft_model(name, "lenet5", data=data, seed=3).state_dict()
    b = craft_model(name, "lenet5", data=data, seed=3).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = craft_model(name, "lenet5", data=data, seed=4).state_dict()
    assert any(a[k].shape != c[k].shape or not torch.equal(a[k], c[k]) for k in a)


def test_craft_model_takes_the_class_count_a_callable_gives(tmp_path, monkeypatch):
    """A module:callable without a num_classes argument is crafted at its own count (the default of 10 classes had
    been refused for one that gives 5)."""
    (tmp_path / "fg_five.py").write_text("from torch import nn\ninput_shape = (1, 28, 28)\n"
                                         "def five():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 5))\n")  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        crafted = craft_model("class_fishing", "fg_five:five")
        assert crafted(torch.zeros(2, *MNIST)).shape == (2, 5)
    finally:
        sys.modules.pop("fg_five", None)


@pytest.mark.parametrize("raised", [AssertionError("batch too large"), KeyError("feature"), SystemExit(0)])
def test_the_models_own_code_raising_while_crafted_is_one_input_error(raised):
    """feature_fishing runs the model on the public data: an AssertionError (or a sys.exit()) in its forward had
    escaped as a traceback with exit 1 (or ended the command with exit 0 and no file)."""

    class Picky(nn.Sequential):
        def forward(self, x):
            if len(x) > 2:
                raise raised
            return super().forward(x)

    model = Picky(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.raises(InputError, match=f"feature_fishing cannot craft this Picky: {type(raised).__name__}"):
        craft("feature_fishing", model, input_shape=MNIST, num_classes=10, data=digits(MNIST)[0][:64])


@pytest.mark.parametrize("name", ALL)
def test_crafting_keeps_the_callers_torch_state_and_reads_uint8_data_as_pixels(name):
    """Under a caller's float64 default dtype every crafter had failed ('Input type (double) and bias type (float)');
    uint8 public data had been read as 0-255. The caller's generator and default dtype are as they were."""
    data = digits(MNIST)[0][:64] if name in READS_DATA else None
    model = build_model("lenet5", num_classes=10)
    expected = craft(name, model, input_shape=MNIST, num_classes=10, data=data, seed=3).state_dict()
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    torch.set_default_dtype(torch.float64)
    try:
        crafted = craft(name, model, input_shape=MNIST, num_classes=10, data=data, seed=3).state_dict()
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(expected[k], crafted[k]) for k in expected)
    if data is None:
        return
    pixels = (data * 255).round().to(torch.uint8)
    from_pixels = craft(name, model, input_shape=MNIST, num_classes=10, data=pixels, seed=3).state_dict()
    assert all(torch.allclose(expected[k], from_pixels[k], atol=0.05, rtol=0.05) for k in expected), name


# --------------------------------------------------------------------------- MKOR


def test_a_crafter_that_changes_nothing_is_an_input_error():
    """A recurrent classifier has no layer mkor_inconspicuous plants in: it had written the model itself, exit 0."""

    class Rows(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.head = nn.GRU(8, 16, batch_first=True), nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.gru(x[:, 0])[0][:, -1])

    with pytest.raises(InputError, match="^mkor_inconspicuous found nothing to plant in this Rows with its default options"):
        craft("mkor_inconspicuous", Rows(), input_shape=(1, 8, 8))


def test_mkor_parameters_follow_the_paper():
    model = craft_model("mkor", "lenet5")
    fc1, fc2, fc3 = linears(model)
    assert torch.equal(fc1.weight, torch.full_like(fc1.weight, 1 / fc1.in_features))
    assert torch.equal(fc1.bias, torch.zeros_like(fc1.bias))
    assert torch.equal(fc2.weight, torch.eye(84, 120)) and torch.equal(fc3.weight, torch.eye(10, 84))
    assert not fc2.bias.any() and not fc3.bias.any()
    conv1, conv2 = (m for m in model.modules() if isinstance(m, nn.Conv2d))
    # shift ("4_dir") filters in front of each down-sampling: centre, right, lower, lower-right
    taps = [(2, 2), (2, 3), (3, 2), (3, 3)]
    for conv, active in ((conv1, 1), (conv2, 4)):
        for t, (i, j) in enumerate(taps):
            for ch in range(active):
                w = conv.weight[ch + active * t]
                assert w.abs().sum() == 1 and w[ch, i, j] == 1
        assert not conv.bias.any()
    # a first convolution without down-sampling (VGG-16) gets copy and min filters
    first = next(m for m in craft_model("mkor", "vgg16").modules() if isinstance(m, nn.Conv2d))
    centre = torch.zeros(3, 3)
    centre[1, 1] = 1
    assert torch.equal(first.weight[0, 0], centre) and torch.equal(first.weight[3, 0], -centre)
    assert first.bias[3:6].eq(1).all() and not first.bias[:3].any()


def test_mkor_handles_batchnorm_and_other_modes():
    model = craft_model("mkor", "convnet")
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    # min filter of a bias-free conv: its bias 1 moves onto the BatchNorm
    assert craft_model("mkor", "resnet18").bn1.bias[3:6].eq(1).all()
    shifted = craft_model("mkor", "lenet5", conv_mode="shift")
    conv1 = next(m for m in shifted.modules() if isinstance(m, nn.Conv2d))
    assert [tuple((conv1.weight[k, 0] == 1).nonzero()[0].tolist()) for k in range(4)] == [(2, 2), (2, 3), (3, 2), (3, 3)]
    noisy = craft_model("mkor", "mlp", noise=1e-3)
    w = linears(noisy)[0].weight
    assert not torch.equal(w, torch.full_like(w, 1 / 784)) and (w - 1 / 784).abs().max() < 1e-3 / 28 * 6


def test_mkor_row_over_bias_gradient_is_the_class_mean():
    # MKOR's code trains with NLL on the raw outputs: class c's rows then carry class c alone.
    model = craft_model("mkor", "mlp")
    x, y = batch(MNIST, 40)
    g = grads(model, x, y, loss=nn.functional.nll_loss)
    for c in y.unique().tolist():
        rec = g["1.weight"][c] / g["1.bias"][c]
        assert psnr(rec, x[y == c].flatten(1).mean(0)) > 60


# --------------------------------------------------------------------------- fishing


def test_class_fishing_parameters():
    base = build_model("lenet5")
    model = craft("class_fishing", base, input_shape=MNIST, num_classes=10, target=3)
    last, orig = linears(model)[-1], linears(base)[-1]
    assert torch.equal(last.weight[3], orig.weight[3])
    assert not last.weight[[i for i in range(10) if i != 3]].any()
    assert last.bias[3] == 0 and (last.bias[[i for i in range(10) if i != 3]] == 1000).all()
    breaching = craft("class_fishing", base, input_shape=MNIST, num_classes=10, target=[1, 2], target_row="constant", class_multiplier=0.5, target_bias="keep")
    last = linears(breaching)[-1]
    assert (last.weight[[1, 2]] == 0.5).all() and torch.equal(last.bias[[1, 2]], orig.bias[[1, 2]])


def test_class_fishing_update_is_the_target_class_alone():
    model = craft_model("class_fishing", "lenet5", target=3)
    x, y = batch(MNIST, 48)
    assert 0 < int((y == 3).sum()) < len(y)
    full = grads(model, x, y)
    alone = grads(model, x[y == 3], y[y == 3])
    head = [n for n, _ in model.named_parameters()][-2:]
    for name, g in full.items():
        if name not in head:
            assert torch.allclose(g, alone[name], atol=1e-6, rtol=1e-5), name
    assert full["features.0.weight"].abs().sum() > 0


def test_feature_fishing_parameters():
    data = digits(MNIST)[0][::2]
    model = craft_model("feature_fishing", "lenet5", data=data, target=2)
    last = linears(model)[-1]
    nz = last.weight.nonzero().tolist()
    assert len(nz) == 1 and nz[0][0] == 2 and last.weight[2, nz[0][1]] == 300
    assert (last.bias[[i for i in range(10) if i != 2]] == 1000).all() and last.bias[2] < 0
    kept = craft_model("feature_fishing", "lenet5", keep_row=True, feature=5, feature_val=0.1)
    row = linears(kept)[-1].weight[0]
    assert row[5] == 300 and (row != 0).sum() > 1 and row.abs()[torch.arange(84) != 5].max() < 300 / 100
    assert math.isclose(float(linears(kept)[-1].bias[0].detach()), -30.0, rel_tol=1e-6)


def test_feature_fishing_splits_the_class_on_one_feature():
    x, y = digits(MNIST)
    x0 = x[y == 0][:40]
    # an untrained lenet5's features spread little (~0.03), so a larger multiplier sharpens the split
    model = craft_model("feature_fishing", "lenet5", data=x0, target=0, calibrate=True, feat_multiplier=2e4)
    last = linears(model)[-1]
    f = int(last.weight[0].abs().argmax())
    feats = []
    handle = last.register_forward_hook(lambda m, a, o: feats.append(a[0][:, f].detach()))
    norms = []
    for i in range(len(x0)):
        g = grads(model, x0[i : i + 1], torch.zeros(1, dtype=torch.long))
        norms.append(torch.cat([v.flatten() for k, v in g.items() if not k.startswith("classifier.4")]).norm())
    handle.remove()
    phi = torch.cat(feats)
    boundary = float((1000 + math.log(9) - last.bias[0].detach()) / 2e4)
    above, below = phi > boundary + 1e-3, phi < boundary - 1e-3
    assert above.sum() >= 5 and below.sum() >= 5, "the calibrated threshold should split the class"
    norms = torch.stack(norms)
    assert norms[above].max() < 1e-3 * norms[below].min()


# --------------------------------------------------------------------------- imprint


def test_imprint_fourier_mode_beyond_the_inputs_modes_is_refused():
    """A DCT mode past the input's size aliases a lower one, scaled by the mode (mode=100000 on LeNet: weights of 130
    against 1.33), which had been written as if it were the paper's layer."""
    with pytest.raises(InputError, match=r"imprint mode=784 is beyond the 784 DCT modes of a 1x28x28 input; give a mode from 0 to 783"):
        craft_model("imprint", "lenet5", linfunc="fourier", mode=784)
    assert craft_model("imprint", "lenet5", linfunc="fourier", mode=783) is not None


def test_imprint_block_layout_rows_and_biases():
    base = build_model("lenet5")
    data = digits(MNIST)[0][::2]
    model = craft("imprint", base, input_shape=MNIST, num_classes=10, data=data, num_bins=128)
    assert isinstance(model, FrontEndModel)
    sd = model.state_dict()
    keys = list(sd)
    assert keys[:4] == ["imprint.0.weight", "imprint.0.bias", "imprint.2.weight", "imprint.2.bias"]
    assert keys[4:] == ["model." + k for k in base.state_dict()]
    w, b = sd["imprint.0.weight"], sd["imprint.0.bias"]
    assert w.shape == (128, 784) and torch.equal(w, w[:1].expand_as(w))
    assert torch.allclose(w[0], torch.full((784,), 1 / 784))
    assert (b[1:] < b[:-1]).all(), "biases are a strictly monotone ladder"
    m = data.flatten(1).mean(1)
    assert torch.allclose(-b[64], torch.quantile(m, 0.5), atol=1e-5)  # the ladder is the data's quantiles
    assert torch.equal(sd["imprint.2.weight"], torch.ones(784, 128))
    fourier = craft_model("imprint", "mlp", linfunc="fourier", mode=3, gain=1e-3, num_bins=64).state_dict()
    w = fourier["imprint.0.weight"]
    assert torch.equal(w, w[:1].expand_as(w)) and torch.allclose(fourier["imprint.2.weight"], torch.full((784, 64), 1e3))


def test_imprint_gradient_returns_the_input():
    data = digits(MNIST)[0]
    model = craft_model("imprint", "lenet5", data=data[::2], num_bins=256)
    # one example: every active bin gives it back exactly
    x, y = batch(MNIST, 1, start=1)
    g = grads(model, x, y)
    gw, gb = g["imprint.0.weight"], g["imprint.0.bias"]
    active = gb.abs() > 0
    assert active.any()
    for i in active.nonzero()[:, 0].tolist():
        assert psnr(gw[i] / gb[i], x.flatten()) > 60
    # a batch: differences of neighbouring bins isolate single examples
    x, y = batch(MNIST, 16, start=100)
    g = grads(model, x, y)
    dw = g["imprint.0.weight"][:-1] - g["imprint.0.weight"][1:]
    db = g["imprint.0.bias"][:-1] - g["imprint.0.bias"][1:]
    recs = [dw[i] / db[i] for i in range(len(db)) if db[i].abs() > 1e-9]
    recovered = {j for r in recs for j in range(len(x)) if psnr(r, x[j].flatten()) > 50}
    assert len(recovered) >= 10


# --------------------------------------------------------------------------- trap weights


def _check_trap_rows(w: torch.Tensor, scale: float) -> None:
    d = w.shape[1]
    for row in w:
        neg, pos = row[row < 0], row[row > 0]
        assert len(neg) == len(pos) == d // 2
        assert torch.allclose(pos.sort().values, scale * neg.abs().sort().values, rtol=1e-6)
    assert not torch.equal(w[0] < 0, w[1] < 0), "positions are shuffled per row"


def test_trap_weights_rows_pair_negatives_with_scaled_positives():
    model = craft_model("trap_weights", "mlp", seed=2)
    lin = linears(model)[0]
    _check_trap_rows(lin.weight, 0.95)
    assert not lin.bias.any()
    lenet = craft_model("trap_weights", "lenet", scale_factor=0.9)  # after the convolutions: 768 inputs
    _check_trap_rows(linears(lenet)[0].weight, 0.9)
    odd = _trap_rows(4, 7, 0.5, 0.95, torch.Generator().manual_seed(0))
    _check_trap_rows(odd, 0.95)
    assert ((odd == 0).sum(1) == 1).all()
    block = craft_model("trap_weights", "resnet18", mode="block", num_neurons=32).state_dict()
    assert list(block)[:4] == ["imprint.0.weight", "imprint.0.bias", "imprint.2.weight", "imprint.2.bias"]
    _check_trap_rows(block["imprint.0.weight"], 0.95)
    passing = craft_model("trap_weights", "lenet5", pass_through_convs=True)
    conv1 = next(m for m in passing.modules() if isinstance(m, nn.Conv2d))
    assert conv1.weight[0, 0, 2, 2] == 1 and conv1.weight.abs().sum() == 1


def test_trap_neuron_active_for_one_example_leaks_it():
    model = craft_model("trap_weights", "mlp", seed=0)
    x, y = batch(MNIST, 8, start=300)
    lin = linears(model)[0]
    with torch.no_grad():
        fires = (x.flatten(1) @ lin.weight.T + lin.bias) > 0
    g = grads(model, x, y)
    single = (fires.sum(0) == 1).nonzero()[:, 0].tolist()
    assert len(single) >= 3
    hits = 0
    for i in single:
        j = int(fires[:, i].nonzero()[0])
        if g["1.bias"][i].abs() > 1e-12:
            assert psnr(g["1.weight"][i] / g["1.bias"][i], x[j].flatten()) > 60
            hits += 1
    assert hits >= 3


# --------------------------------------------------------------------------- LOKI


def test_loki_parameters():
    base = build_model("lenet5")
    model = craft("loki", base, input_shape=MNIST, num_classes=10, num_clients=4, client=2)
    sd = model.state_dict()
    assert list(sd)[:6] == ["imprint.0.weight", "imprint.0.bias", "imprint.3.weight", "imprint.3.bias", "imprint.5.weight", "imprint.5.bias"]
    assert list(sd)[6:] == ["model." + k for k in base.state_dict()]
    conv = sd["imprint.0.weight"]
    assert conv.shape == (4, 1, 3, 3) and conv.nonzero().tolist() == [[2, 0, 1, 1]] and conv[2, 0, 1, 1] == 500
    assert not sd["imprint.0.bias"].any()
    fc1 = sd["imprint.3.weight"]
    assert fc1.shape == (256, 4 * 784)
    assert torch.equal(fc1, fc1[:, :1].expand_as(fc1)), "each FC1 row is one constant"
    assert (fc1 > 0).all()
    # bias_i = -bin_i / width_i and row_i = 1 / (500 * C*H*W * width_i): the bins themselves ladder up
    bins = -sd["imprint.3.bias"] / (fc1[:, 0] * 500 * 784)
    assert (bins[1:] > bins[:-1]).all()
    assert torch.equal(sd["imprint.5.weight"], torch.full((784, 256), 1000.0))


def test_loki_gradient_returns_the_input_in_the_client_slot():
    data = digits(MNIST)[0]
    model = craft_model("loki", "lenet5", data=data[::2], num_clients=3, client=1)
    x, y = batch(MNIST, 1, start=7)
    g = grads(model, x, y)
    gw, gb = g["imprint.3.weight"], g["imprint.3.bias"]
    rows = (gb.abs() > 0).nonzero()[:, 0].tolist()
    assert len(rows) == 1, "one Hardtanh window per example"
    rec = gw[rows[0]] / gb[rows[0]]
    assert not rec[:784].any() and not rec[2 * 784 :].any()
    assert psnr(rec[784 : 2 * 784] / 500, x.flatten()) > 60


# --------------------------------------------------------------------------- oversized FC


def test_oversized_fc_shapes():
    mlp = craft_model("oversized_fc", "mlp").state_dict()
    assert mlp["1.weight"].shape == (8 * 784, 784) and mlp["3.weight"].shape == (256, 8 * 784)
    assert 0.8 < float(mlp["1.weight"].std() * 28) < 1.2  # N(0, 1/d_in)
    r18 = craft_model("oversized_fc", "resnet18", width=2048, std=0.02).state_dict()
    assert r18["fc.0.weight"].shape == (2048, 512) and r18["fc.2.weight"].shape == (10, 2048) and "fc.weight" not in r18
    wide = craft_model("oversized_fc", "lenet5", batch_size=4096).state_dict()
    assert wide["classifier.0.weight"].shape[0] == 4 * 4096


# --------------------------------------------------------------------------- zoo


def test_crafted_zoo_covers_every_crafter_on_three_archs_and_runs():
    per: dict[str, set[str]] = {}
    for name, arch, *_ in _CRAFTED:
        per.setdefault(name, set()).add(arch)
    assert set(per) == set(CRAFTERS.names())
    assert all(len(archs) >= 3 for archs in per.values()), per
    entries = crafted_entries()
    assert len({e.label for e in entries}) == len(entries)
    assert any(e.label.endswith("/fp16") and e.state_dict[next(iter(e.state_dict))].dtype == torch.float16 for e in entries)
    for e in entries[::5]:
        with torch.no_grad():
            assert e.module(torch.rand(2, *e.input_shape)).shape == (2, 10)


def test_benign_zoo_has_what_it_promises():
    entries = benign_entries()
    labels = [e.label for e in entries]
    assert len(set(labels)) == len(labels)
    groups = {label.split("/")[0] for label in labels}
    assert {"init", "reinit", "trained", "pruned", "fp16", "fp16rt", "zero-head", "lora", "large-mlp"} <= groups
    for arch in ARCHITECTURES.names():
        assert f"init/{arch}/seed0" in labels and f"init/{arch}/seed1" in labels
    by = {e.label: e for e in entries}
    w = by["pruned/mlp/trained-90pct"].state_dict
    weights = torch.cat([w[k].flatten() for k in w if k.endswith("weight")])
    assert 0.89 < float((weights == 0).float().mean()) < 0.91
    assert all(v.dtype == torch.float16 for v in by["fp16/lenet5/trained"].state_dict.values())
    head = by["zero-head/lenet5/init"].state_dict
    assert not head["classifier.4.weight"].any() and not head["classifier.4.bias"].any()
    assert not by["lora/mlp/r4"].state_dict["1.lora_B.default.weight"].any()
    assert by["large-mlp/784-4096-4096-10/normal0.02"].state_dict["3.weight"].shape == (4096, 4096)
    bn = by["trained/bn-net/40steps"].state_dict
    assert bn["1.running_mean"].abs().sum() > 0 and not torch.allclose(bn["1.running_var"], torch.ones(16))
    x, y = digits(MNIST)
    with torch.no_grad():
        accuracy = (by["trained/mlp/3ep"].module(x).argmax(1) == y).float().mean()
    assert accuracy > 0.8
    assert [t[0] for t in benign_models()] == labels
    assert {t[1] for t in crafted_models()} == set(CRAFTERS.names())


@pytest.mark.parametrize("name", ["class_fishing", "feature_fishing"])
def test_a_head_without_bias_is_named_once(name):
    """The crafter's name had come twice: 'feature_fishing cannot craft this Sequential: feature_fishing needs ...'."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10, bias=False))
    with pytest.raises(InputError, match=rf"^{name} cannot craft this Sequential: it needs a last linear layer with a bias;"):
        craft(name, model, input_shape=(1, 8, 8), data=torch.rand(16, 1, 8, 8) if name == "feature_fishing" else None)


@pytest.mark.parametrize("groups", [4, 16])
def test_mkor_inconspicuous_taps_a_grouped_convolution_in_each_channels_group(groups, tmp_path, monkeypatch):
    """Shuffled pass-through channels land in any group of the next convolution: each tap goes to a free filter of
    its channel's group. The grouped convolution had been left as it was (2 of 16 first filters changed), and
    inspect called the half-made model clean."""
    from fedguard.inspect import inspect_model

    (tmp_path / "grouped_net.py").write_text(
        "import torch.nn as nn\n"
        "input_shape = (1, 8, 8)\n"
        "def net(num_classes=10):\n"
        f"    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups={groups}),\n"
        "                         nn.ReLU(), nn.Flatten(), nn.Linear(1024, num_classes))\n"
    )
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    net = build_model("grouped_net:net", num_classes=10, input_shape=(1, 8, 8))
    crafted = craft("mkor_inconspicuous", net, input_shape=(1, 8, 8), num_classes=10, seed=0)
    assert not torch.equal(crafted[2].weight, net[2].weight)
    torch.save(crafted.state_dict(), tmp_path / "crafted.pt")
    report = inspect_model(tmp_path / "crafted.pt", arch="grouped_net:net", data="digits")
    assert report.verdict == "malicious", [f.rule_id for f in report.findings]


@pytest.mark.parametrize("name, options, message, taken", [
    ("imprint", {"mode": 5}, "imprint option mode applies to linfunc=fourier only (the DCT mode); add --set linfunc=fourier, "
                             "or drop --set mode=5", {"linfunc": "fourier"}),
    ("trap_weights", {"num_neurons": 7}, "trap_weights option num_neurons sizes the block mode=block inserts; add --set "
                                         "mode=block, or drop --set num_neurons=7", {"mode": "block"}),
    ("trap_weights", {"mode": "block", "pass_through_convs": False}, "pass_through_convs applies to mode=first_fc only",
     {"mode": "first_fc"}),
    ("oversized_fc", {"width": 2000, "batch_size": 8}, "oversized_fc option batch_size sizes the layer only when width is "
                                                       "not given; drop --set width, or drop --set batch_size=8", {"width": None}),
    ("oversized_fc", {"width": 2000, "factor": 3}, "option factor sizes the layer only when width is not given",
     {"width": None}),
    ("feature_fishing", {"feature_val": 0.3, "quantile": 0.9}, "feature_fishing option quantile places the boundary only "
                                                               "when feature_val is not given", {"feature_val": None}),
])  # fmt: skip
def test_an_option_the_crafter_would_not_read_is_refused(name, options, message, taken):
    """Each of these had crafted the default's file byte for byte (a red team believed it tested a variant); beside the
    option that makes it count (``taken``), it is taken."""
    from fedguard.attacks.craft import check_options

    with pytest.raises(InputError, match=re.escape(message)):
        check_options(name, options)
    check_options(name, {**options, **taken})


@pytest.mark.parametrize("name, options", [
    ("feature_fishing", {"quantile": 0.9}), ("feature_fishing", {"max_examples": 10}), ("imprint", {"fit": "quantile"}),
])  # fmt: skip
def test_an_option_read_off_the_public_data_is_refused_without_data_and_read_with_it(name, options):
    """Without data these had crafted the default's file byte for byte; with data the option changes the file."""
    from fedguard.attacks.craft import check_options

    with pytest.raises(InputError, match=r"; add data \(the server.s public inputs\), or drop"):  # the API names its argument
        craft(name, lenet8(), input_shape=(1, 8, 8), num_classes=10, seed=0, **options)
    check_options(name, options)  # where the caller does not say whether data comes (the command line checks early)
    public = digits((1, 8, 8))[0][:64]
    given = craft(name, lenet8(), input_shape=(1, 8, 8), num_classes=10, data=public, seed=0, **options).state_dict()
    default = craft(name, lenet8(), input_shape=(1, 8, 8), num_classes=10, data=public, seed=0).state_dict()
    changed = any(not torch.equal(given[k], default[k]) for k in given)
    assert changed is (name != "imprint")  # imprint's fit=quantile is its default: taken with data, the same file


def test_trap_weights_refuses_to_pass_convolutions_through_a_model_without_any():
    with pytest.raises(InputError, match=r"there are none; drop option pass_through_convs=True"):  # the API: not --set
        craft("trap_weights", build_model("mlp", 10, (1, 8, 8)), input_shape=(1, 8, 8), num_classes=10, seed=0,
              pass_through_convs=True)
    with pytest.raises(InputError, match="cannot craft this mlp:"):  # a built-in is named as --arch names it
        craft("trap_weights", build_model("mlp", 10, (1, 8, 8)), input_shape=(1, 8, 8), num_classes=10, seed=0,
              pass_through_convs=True)


def test_a_list_option_of_the_wrong_type_names_its_items_in_the_plural():
    from fedguard.attacks.craft import check_options

    with pytest.raises(InputError, match=re.escape("target=1.5 is not an integer or a list of integers; its default")):
        check_options("class_fishing", {"target": 1.5})
