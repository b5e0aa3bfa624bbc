"""Model zoo for the detector tests: benign models and crafted (malicious) ones.

Not a test module: tests import it (``from tests.zoo import benign_models,
crafted_models``). Everything is built once per process (``functools.lru_cache``)
and shared by every test that asks. Build time on 2 CPU cores: about 10 s
for the benign zoo and 5 s for the crafted one (measured; see
``python -m tests.zoo``).

``benign_models()`` yields ``(label, arch, state_dict)``; ``crafted_models()``
yields ``(label, crafter, arch, state_dict)``. ``arch`` is a
``fedguard.architectures.build_model`` name; ``None`` for the custom benign
modules (LoRA adapters, large MLPs, a small BatchNorm net). Crafted models
built by the front-end crafters (``imprint``, ``loki``, ``trap_weights`` in
block mode) carry ``imprint.*`` keys followed by the base ``arch``'s keys
under ``model.``; ``oversized_fc`` changes shapes and (classifier position)
keys of ``arch``. ``benign_entries()`` / ``crafted_entries()`` give the same
models as :class:`ZooEntry` records that also carry the input shape and the
``nn.Module`` (fp32), for behavioural checks. All of it is shared between
tests: treat every tensor as read-only (``clone()`` before changing one).

Benign zoo (labels ``<group>/<arch>/<variant>``):

* ``init``: every built-in architecture at its default initialisation, seeds 0 and 1;
* ``reinit``: weights re-drawn with xavier_uniform, xavier_normal,
  kaiming_normal, orthogonal and trunc_normal(std 0.02), biases 0: all five on
  lenet, lenet5, convnet and mlp, two each on mobilenet_v3_small, resnet18
  and vgg11;
* ``trained``: lenet5 and mlp trained 3 epochs, convnet (BatchNorm) 2 epochs,
  on the odd-indexed digits (Adam, lr 1e-3, batch 64); ``trained/bn-net`` (a
  small conv-BN net, 40 steps) and ``trained/resnet18`` (2 steps) have
  non-trivial running stats;
* ``pruned``: the trained models magnitude-pruned (global unstructured L1 over
  every Linear/Conv2d weight) at 50 %, 75 %, 90 %, plus mobilenet_v3_small
  init at 90 %;
* ``fp16``: state_dicts cast to half (``fp16``) and half then back to float
  (``fp16rt``) of the trained models and of several inits;
* ``zero-head``: last Linear weight and bias 0 (lenet5, mlp, convnet,
  mobilenet_v3_small, resnet18; and the trained mlp), and a zero-head lenet5
  trained on digits 0-4 only (the unseen classes' rows stay identical);
* ``lora``: PEFT-style LoRA adapters (``base_layer``, ``lora_A.default``
  kaiming-uniform, ``lora_B.default`` zeros) on every Linear of the mlp (r 4 and
  16) and on the trained lenet5's classifier (r 8);
* ``large-mlp``: 784-4096-4096-10 with N(0, 0.02) weights and zero biases, and
  with PyTorch's default initialisation;
* ``two-input-mlp``: 2-1000-250-10 at init (seeds 0, 1), as toy 2-D classifiers are;
* ``embedding-named-encoder``: an ``nn.Embedding(2000, 2048)`` named ``encoder``
  (PyTorch's word_language_model example) at its N(0, 1) init.

Crafted zoo: every crafter of ``fedguard.attacks.craft`` on at least three
architectures, with several option variants (scales, bins, seeds, with and
without the server's auxiliary data = the even-indexed digits), plus ``fp16``
copies of one model per crafter. Labels ``<crafter>/<arch>/<variant>``.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import prune

from fedguard.architectures import ARCHITECTURES, build_model, resolve_input_shape
from fedguard.attacks.craft import CRAFTERS, craft
from fedguard.data import load_data

__all__ = [
    "ZooEntry",
    "benign_models",
    "crafted_models",
    "benign_entries",
    "crafted_entries",
    "digits",
    "trained_model",
    "LoRALinear",
]

Shape = tuple[int, int, int]
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model. ``kind`` is ``"benign"`` or the crafter's name.

    ``module`` is the fp32 ``nn.Module`` the state_dict came from (for fp16
    entries, the module before the cast); ``arch`` is None for custom modules.
    The fp32 state_dict shares storage with ``module`` and with other tests:
    never modify either in place (copy first).
    """

    label: str
    kind: str
    arch: str | None
    state_dict: StateDict
    input_shape: Shape
    num_classes: int
    module: nn.Module


# --------------------------------------------------------------------------- data


@lru_cache(maxsize=None)
def digits(input_shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn digits as float ``[N, C, H, W]`` in [0, 1] and int64 labels, resized to ``input_shape``."""
    x, y = load_data("digits", input_shape=tuple(input_shape))
    return x.float(), y.long()


def _public(input_shape: Shape) -> torch.Tensor:
    """The server's auxiliary data: the even-indexed digits."""
    return digits(input_shape)[0][::2]


def _client(input_shape: Shape) -> tuple[torch.Tensor, torch.Tensor]:
    """The clients' training data: the odd-indexed digits (898 examples)."""
    x, y = digits(input_shape)
    return x[1::2], y[1::2]


# --------------------------------------------------------------------------- helpers


def _build(arch: str, seed: int, num_classes: int = 10, input_shape: Shape | None = None) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(arch, num_classes=num_classes, input_shape=input_shape)


def _sd(module: nn.Module) -> StateDict:
    """The module's state_dict, sharing its storage (zoo tensors are read-only by convention)."""
    return {k: v.detach() for k, v in module.state_dict().items()}


def _half(sd: StateDict) -> StateDict:
    return {k: v.half() if v.is_floating_point() else v.clone() for k, v in sd.items()}


def _round_trip(sd: StateDict) -> StateDict:
    return {k: v.half().float() if v.is_floating_point() else v.clone() for k, v in sd.items()}


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


_INITS: dict[str, Callable[[torch.Tensor], Any]] = {
    "xavier_uniform": nn.init.xavier_uniform_,
    "xavier_normal": nn.init.xavier_normal_,
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "orthogonal": nn.init.orthogonal_,
    "trunc_normal": lambda w: nn.init.trunc_normal_(w, std=0.02, a=-0.04, b=0.04),
}


def _reinit(model: nn.Module, scheme: str, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for m in _weight_layers(model):
            _INITS[scheme](m.weight)
            if m.bias is not None:
                m.bias.zero_()
    return model


def _pruned(model: nn.Module, amount: float) -> nn.Module:
    out = _copy(model)
    params = [(m, "weight") for m in _weight_layers(out)]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    for m, name in params:
        prune.remove(m, name)
    return out


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _standardized(model: nn.Module) -> nn.Module:
    """Weight Standardization (Qiao et al., 2019) exported as the weights the layers use: every unit's row has zero
    mean and unit spread, so its positive and negative weights balance exactly (ratio 1, as no trap row has)."""
    out = _copy(model)
    with torch.no_grad():
        for m in _weight_layers(out):
            w = m.weight.reshape(len(m.weight), -1)
            m.weight.copy_(((w - w.mean(1, keepdim=True)) / (w.std(1, keepdim=True) + 1e-5) / w.shape[1] ** 0.5).reshape(m.weight.shape))
    return out


def _zero_head(model: nn.Module) -> nn.Module:
    out = _copy(model)
    last = [m for m in out.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
    return out


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: float, seed: int, batch: int = 64, lr: float = 1e-3) -> nn.Module:
    """Adam on (x, y); ``epochs`` may be fractional (a number of steps)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, int(round(epochs * math.ceil(len(x) / batch))))
    model.train()
    order = torch.randperm(len(x), generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + batch > len(order):
            order, pos = torch.randperm(len(x), generator=gen), 0
        idx = order[pos : pos + batch]
        pos += batch
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    return model


@lru_cache(maxsize=None)
def trained_model(arch: str, epochs: int = 3, seed: int = 0) -> nn.Module:
    """``arch`` trained ``epochs`` epochs on digits at its default input shape (cached; do not modify)."""
    shape = resolve_input_shape(arch)
    x, y = _client(shape)
    with torch.random.fork_rng(devices=[]), _one_thread():
        torch.manual_seed(seed)
        model = build_model(arch, num_classes=10, input_shape=shape)
        return _train(model, x, y, epochs, seed)


class LoRALinear(nn.Module):
    """A PEFT-style LoRA wrapper: ``base_layer(x) + lora_B(lora_A(x)) * alpha / r``, ``lora_B`` zero-initialised."""

    def __init__(self, base: nn.Linear, r: int, alpha: float = 16.0):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({"default": nn.Linear(base.in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(r, base.out_features, bias=False)})
        nn.init.kaiming_uniform_(self.lora_A["default"].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B["default"].weight)
        self.scaling = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B["default"](self.lora_A["default"](x)) * self.scaling


def _with_lora(model: nn.Module, r: int, seed: int, only_last: bool = False) -> nn.Module:
    out = _copy(model)
    names = [n for n, m in out.named_modules() if isinstance(m, nn.Linear)]
    if only_last:
        names = names[-1:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = out.get_submodule(parent_name) if parent_name else out
            setattr(parent, child, LoRALinear(getattr(parent, child), r))
    return out


def _large_mlp(init: str, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))
        if init == "normal0.02":
            with torch.no_grad():
                for m in _weight_layers(model):
                    m.weight.normal_(0.0, 0.02)
                    m.bias.zero_()
    return model


def _bn_net(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10),
        )  # fmt: skip


# --------------------------------------------------------------------------- benign


_REINIT_ALL = ("lenet", "lenet5", "convnet", "mlp")
_REINIT_SOME = {  # the slow schemes (orthogonal: many QRs; trunc_normal: erfinv) go on the cheaper models
    "mobilenet_v3_small": ("xavier_normal", "kaiming_normal"),
    "resnet18": ("orthogonal", "trunc_normal"),
    "vgg11": ("xavier_uniform", "kaiming_normal"),
}


_TRAINED = {"lenet5": 3, "mlp": 3, "convnet": 2}


@contextmanager
def _one_thread() -> Iterator[None]:
    """Small models train and initialise faster on one thread (and far faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@lru_cache(maxsize=None)
def benign_entries() -> tuple[ZooEntry, ...]:
    """Build (once) and return the benign zoo; see the module docstring."""
    with _one_thread():
        return _benign_entries()


def _benign_entries() -> tuple[ZooEntry, ...]:
    out: list[ZooEntry] = []

    def add(label: str, arch: str | None, module: nn.Module, shape: Shape, sd: StateDict | None = None,
            classes: int = 10) -> None:  # fmt: skip
        out.append(ZooEntry(label, "benign", arch, _sd(module) if sd is None else sd, shape, classes, module))

    inits: dict[tuple[str, int], nn.Module] = {}
    for arch in ARCHITECTURES.names():
        shape = resolve_input_shape(arch)
        for seed in (0, 1):
            inits[arch, seed] = m = _build(arch, seed)
            add(f"init/{arch}/seed{seed}", arch, m, shape)

    for arch in (*_REINIT_ALL, *_REINIT_SOME):
        shape = resolve_input_shape(arch)
        for k, scheme in enumerate(_REINIT_SOME.get(arch, tuple(_INITS))):
            add(f"reinit/{arch}/{scheme}", arch, _reinit(_build(arch, 10 + k), scheme, 10 + k), shape)

    trained = {arch: trained_model(arch, epochs) for arch, epochs in _TRAINED.items()}
    for arch, m in trained.items():
        shape = resolve_input_shape(arch)
        add(f"trained/{arch}/{_TRAINED[arch]}ep", arch, m, shape)
        for amount in (0.5, 0.75, 0.9):
            add(f"pruned/{arch}/trained-{int(amount * 100)}pct", arch, _pruned(m, amount), shape)
        add(f"fp16/{arch}/trained", arch, m, shape, _half(_sd(m)))
        add(f"fp16rt/{arch}/trained", arch, m, shape, _round_trip(_sd(m)))
    add("pruned/mobilenet_v3_small/init-90pct", "mobilenet_v3_small", _pruned(inits["mobilenet_v3_small", 0], 0.9), (3, 32, 32))

    for arch in ("lenet", "mobilenet_v3_small", "resnet18", "vgg11"):
        add(f"fp16/{arch}/init", arch, inits[arch, 0], resolve_input_shape(arch), _half(_sd(inits[arch, 0])))
    add("fp16rt/lenet5/init", "lenet5", inits["lenet5", 0], (1, 28, 28), _round_trip(_sd(inits["lenet5", 0])))

    for arch in ("lenet5", "mlp", "convnet", "mobilenet_v3_small", "resnet18"):
        add(f"zero-head/{arch}/init", arch, _zero_head(inits[arch, 1]), resolve_input_shape(arch))
    add("zero-head/mlp/trained", "mlp", _zero_head(trained["mlp"]), (1, 28, 28))
    for arch in ("mlp", "lenet5", "convnet", "resnet18"):
        add(f"weight-standardized/{arch}/init", arch, _standardized(inits[arch, 0]), resolve_input_shape(arch))

    add("lora/mlp/r4", None, _with_lora(inits["mlp", 0], 4, seed=20), (1, 28, 28))
    add("lora/mlp/r16", None, _with_lora(inits["mlp", 1], 16, seed=21), (1, 28, 28))
    add("lora/lenet5/trained-head-r8", None, _with_lora(trained["lenet5"], 8, seed=22, only_last=True), (1, 28, 28))

    add("large-mlp/784-4096-4096-10/normal0.02", None, _large_mlp("normal0.02", 30), (1, 28, 28))
    add("large-mlp/784-4096-4096-10/default", None, _large_mlp("default", 31), (1, 28, 28))

    x, y = _client((1, 28, 28))
    add("trained/bn-net/40steps", None, _train(_bn_net(40), x, y, epochs=40 / 15, seed=40), (1, 28, 28))
    x3, y3 = _client((3, 32, 32))
    add("trained/resnet18/2steps", "resnet18", _train(_build("resnet18", 41), x3, y3, epochs=2 / 29, seed=41, batch=32), (3, 32, 32))
    # non-IID: a zero-initialised head trained on digits 0-4 only; the unseen classes' rows get identical updates
    few = y < 5
    add("zero-head/lenet5/trained-on-5-classes", "lenet5", _train(_zero_head(inits["lenet5", 0]), x[few], y[few], 2, seed=42),
        (1, 28, 28))  # fmt: skip
    # a two-class softmax head trained from zero: its rows are w and -w exactly (the updates sum to zero over classes)
    odd = (y % 2).long()
    add("zero-head/mlp/trained-2-classes", "mlp", _train(_zero_head(_build("mlp", 43, num_classes=2)), x, odd, 2, seed=43),
        (1, 28, 28), classes=2)  # fmt: skip
    # two inputs per unit (a toy two-moons classifier): one weight 50 times the other in 1 % of rows by chance
    for seed in (0, 1):
        torch.manual_seed(50 + seed)
        add(f"two-input-mlp/init/seed{seed}", None, nn.Sequential(nn.Linear(2, 1000), nn.ReLU(), nn.Linear(1000, 250),
                                                                  nn.ReLU(), nn.Linear(250, 10)), (2,))  # fmt: skip
    # an embedding named as PyTorch's word_language_model names it: N(0, 1) draws of 2048 columns reach z = 230
    torch.manual_seed(52)
    language_model = nn.Module()
    language_model.encoder, language_model.decoder = nn.Embedding(2000, 2048), nn.Linear(2048, 10)
    add("embedding-named-encoder/init", None, language_model, (1,))
    return tuple(out)


def benign_models() -> Iterator[tuple[str, str | None, StateDict]]:
    """Yield ``(label, arch, state_dict)`` for every benign zoo model (built once, cached)."""
    for e in benign_entries():
        yield e.label, e.arch, e.state_dict


# --------------------------------------------------------------------------- crafted


#: (crafter, arch, variant label, options, use the server's auxiliary data)
_CRAFTED: tuple[tuple[str, str, str, dict[str, Any], bool], ...] = (
    # MKOR (Wang et al., WACV 2024)
    ("mkor", "lenet5", "paper", {}, False),
    ("mkor", "lenet5", "shift", {"conv_mode": "shift"}, False),
    ("mkor", "lenet5", "noise1e-3", {"noise": 1e-3}, False),
    ("mkor", "mlp", "paper", {}, False),
    ("mkor", "mlp", "noise1e-2", {"noise": 1e-2}, False),
    ("mkor", "convnet", "paper", {}, False),
    ("mkor", "convnet", "copy-bnkeep", {"conv_mode": "copy", "bn": "keep"}, False),
    ("mkor", "vgg11", "paper", {}, False),
    ("mkor", "lenet", "copy", {"conv_mode": "copy"}, False),
    ("mkor", "mobilenet_v3_small", "paper", {}, False),
    ("mkor", "lenet5_sigmoid", "paper", {}, False),
    ("mkor", "lenet5_stride2", "paper", {}, False),
    # MKOR's inconspicuous form: shuffled, noisy, a small subset of parameters changed
    ("mkor_inconspicuous", "lenet5", "noise0.01", {}, False),
    ("mkor_inconspicuous", "lenet5_sigmoid", "noise0.05", {"noise": 0.05}, False),
    ("mkor_inconspicuous", "lenet5_stride2", "gain4", {"gain": 4.0}, False),
    ("mkor_inconspicuous", "mlp", "noise0.01", {}, False),
    ("mkor_inconspicuous", "convnet", "noise0.01", {}, False),
    ("mkor_inconspicuous", "lenet", "noise0.05", {"noise": 0.05}, False),
    ("mkor_inconspicuous", "vgg11", "noise0.01", {}, False),
    ("mkor_inconspicuous", "lenet5", "noise0.2", {"noise": 0.2}, False),
    ("mkor_inconspicuous", "mlp", "noise0.3", {"noise": 0.3}, False),
    # class fishing (Wen et al., ICML 2022)
    ("class_fishing", "lenet5", "t0-b1000", {}, False),
    ("class_fishing", "mlp", "t3-b1000", {"target": 3}, False),
    ("class_fishing", "mlp", "breaching-const0.5", {"target": 7, "target_row": "constant", "class_multiplier": 0.5, "target_bias": "keep"}, False),
    ("class_fishing", "convnet", "t5-b500-x10", {"target": 5, "bias_multiplier": 500.0, "class_multiplier": 10.0}, False),
    ("class_fishing", "resnet18", "t1-b1000-keepbias", {"target": 1, "target_bias": "keep"}, False),
    ("class_fishing", "vgg11", "t[2,8]-b1e4", {"target": [2, 8], "bias_multiplier": 1e4}, False),
    ("class_fishing", "lenet", "t9-b100", {"target": 9, "bias_multiplier": 100.0}, False),
    # small biases that still mute every other class (below FG201's |bias| >= 5 and FG502's 50): caught by the gap
    ("class_fishing", "mlp", "t0-b2", {"bias_multiplier": 2.0}, False),
    ("class_fishing", "lenet5", "t4-b0-target-20", {"target": 4, "bias_multiplier": 0.0, "target_bias": -20.0}, False),
    # feature fishing (Wen et al., ICML 2022)
    ("feature_fishing", "lenet5", "x300-data", {}, True),
    ("feature_fishing", "mlp", "x300-nodata", {"target": 4}, False),
    ("feature_fishing", "mlp", "x1000-keeprow", {"feat_multiplier": 1000.0, "keep_row": True, "target": 2}, True),
    ("feature_fishing", "convnet", "x100-calibrated", {"feat_multiplier": 100.0, "calibrate": True, "quantile": 0.3}, True),
    ("feature_fishing", "resnet18", "x300", {"target": 6, "max_examples": 32}, True),
    # imprint / Robbing the Fed (Fowl et al., ICLR 2022)
    ("imprint", "lenet5", "avg-k128-data", {}, True),
    ("imprint", "lenet5", "avg-k64-normal", {"num_bins": 64}, False),
    ("imprint", "mlp", "fourier-k256-gain1e-3", {"num_bins": 256, "linfunc": "fourier", "mode": 0, "gain": 1e-3}, False),
    ("imprint", "mlp", "randn-k128-data", {"linfunc": "randn", "seed": 3}, True),
    ("imprint", "convnet", "avg-k200-normalfit", {"num_bins": 200, "fit": "normal"}, True),
    ("imprint", "resnet18", "avg-k128", {}, True),
    ("imprint", "vgg11", "fourier-k64-mode2", {"num_bins": 64, "linfunc": "fourier", "mode": 2}, False),
    # trap weights / curious abandon honesty (Boenisch et al., EuroS&P 2023)
    ("trap_weights", "mlp", "s0.95", {}, False),
    ("trap_weights", "mlp", "s0.9-sigma1", {"scale_factor": 0.9, "sigma": 1.0, "seed": 5}, False),
    ("trap_weights", "lenet5", "s0.95", {}, False),
    ("trap_weights", "lenet5", "s0.99-passconv", {"scale_factor": 0.99, "pass_through_convs": True}, False),
    ("trap_weights", "convnet", "s0.95-passconv", {"pass_through_convs": True}, False),
    ("trap_weights", "lenet", "s0.97", {"scale_factor": 0.97}, False),
    ("trap_weights", "resnet18", "block-k64", {"mode": "block"}, False),
    ("trap_weights", "mlp", "block-k128-s0.95", {"mode": "block", "num_neurons": 128}, False),
    # LOKI (Zhao et al., IEEE S&P 2024)
    ("loki", "lenet5", "m10-c0-data", {}, True),
    ("loki", "lenet5", "m4-c3-scale250", {"num_clients": 4, "client": 3, "conv_scale": 250.0}, False),
    ("loki", "mlp", "m8-c1-k128", {"num_clients": 8, "client": 1, "num_bins": 128}, True),
    ("loki", "lenet", "m3-c2-b32", {"num_clients": 3, "client": 2, "batch_size": 32}, True),
    ("loki", "convnet", "m2-c0-fc500", {"num_clients": 2, "fc_scale": 500.0, "conv_scale": 1000.0}, False),
    # oversized fully connected layer
    ("oversized_fc", "mlp", "first-8x", {}, False),
    ("oversized_fc", "lenet5", "first-8x-std0.02", {"std": 0.02}, False),
    ("oversized_fc", "convnet", "classifier-w4096", {"width": 4096}, False),
    ("oversized_fc", "resnet18", "classifier-8x", {}, False),
    ("oversized_fc", "vgg11", "first-b1024", {"position": "first", "factor": 1, "batch_size": 1024}, False),
    ("oversized_fc", "lenet", "classifier-16x", {"factor": 16}, False),
)

#: crafted labels that also get an fp16 copy
_FP16 = (
    "mkor/lenet5/paper",
    "class_fishing/mlp/t3-b1000",
    "feature_fishing/lenet5/x300-data",
    "imprint/lenet5/avg-k128-data",
    "trap_weights/mlp/s0.95",
    "loki/lenet5/m4-c3-scale250",
    "oversized_fc/mlp/first-8x",
)


@lru_cache(maxsize=None)
def crafted_entries() -> tuple[ZooEntry, ...]:
    """Build (once) and return the crafted zoo; see the module docstring."""
    with _one_thread():
        return _crafted_entries()


def _crafted_entries() -> tuple[ZooEntry, ...]:
    out: list[ZooEntry] = []
    for k, (name, arch, variant, options, use_data) in enumerate(_CRAFTED):
        options = dict(options)
        seed = options.pop("seed", k)
        shape = resolve_input_shape(arch)
        model = craft(
            name,
            _build(arch, 100 + k, input_shape=shape),
            input_shape=shape,
            num_classes=10,
            data=_public(shape) if use_data else None,
            seed=seed,
            **options,
        )
        label = f"{name}/{arch}/{variant}"
        sd = _sd(model)
        model.eval()
        out.append(ZooEntry(label, name, arch, sd, shape, 10, model))
        if label in _FP16:
            out.append(ZooEntry(f"{label}/fp16", name, arch, _half(sd), shape, 10, model))
    return tuple(out)


def crafted_models() -> Iterator[tuple[str, str, str, StateDict]]:
    """Yield ``(label, crafter, arch, state_dict)`` for every crafted zoo model (built once, cached)."""
    for e in crafted_entries():
        yield e.label, e.kind, e.arch, e.state_dict


def _covered() -> dict[str, set[str]]:
    got: dict[str, set[str]] = {}
    for name, arch, *_ in _CRAFTED:
        got.setdefault(name, set()).add(arch)
    return got


assert set(_covered()) == set(CRAFTERS.names()), "every crafter must be in the crafted zoo"


if __name__ == "__main__":  # python -m tests.zoo: build times and sizes
    for what, build in (("benign", benign_entries), ("crafted", crafted_entries)):
        t = time.perf_counter()
        entries = build()
        dt = time.perf_counter() - t
        mb = sum(v.numel() * v.element_size() for e in entries for v in e.state_dict.values()) / 2**20
        print(f"{what}: {len(entries)} models, {mb:.0f} MiB of tensors, built in {dt:.1f} s")
