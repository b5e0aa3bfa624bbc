"""Built-in model architectures for ``--arch``, and loading of user ones.

``--arch`` is either a registered name (``fedguard`` lists them in ``--help``)
or ``package.module:callable``: the module is imported with the current working
directory on ``sys.path`` and the callable is called with ``num_classes=`` (and
``input_shape=``) when it accepts them.

Every built-in takes any ``num_classes`` and any channel count; the flattened
feature size in front of each classifier is found by a dry forward pass, so
28x28 and 32x32 inputs (and most others) work without hand-computed sizes.
Key names follow the reference implementations (torchvision for ResNet-18,
VGG and MobileNetV3) so that their ``state_dict`` files load.

Every failure raises :class:`fedguard.errors.InputError` with a one-line
message that says what to do.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from fedguard.checks import is_count
from fedguard.errors import InputError, did_you_mean, first_line, keyword_names, kind_of, out_of_memory
from fedguard.registry import Registry
from fedguard.torch_state import evaluating

__all__ = [
    "ArchSpec",
    "ARCHITECTURES",
    "build_model",
    "resolve_input_shape",
    "parse_input_shape",
    "check_input_shape",
    "check_num_classes",
    "arch_source",
    "arch_name",
    "builds_any_class_count",
]

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class ArchSpec:
    """A built-in architecture: ``build(num_classes=..., input_shape=(C, H, W))``."""

    name: str
    build: Callable[..., nn.Module]
    input_shape: Shape
    description: str


ARCHITECTURES: Registry[ArchSpec] = Registry("architecture")


# --------------------------------------------------------------------------- shapes


def _fmt(shape: Sequence[int]) -> str:
    return ",".join(str(int(s)) for s in shape)


#: The largest number of classes and size of an input dimension taken: torch's sizes are 64-bit, and a number past them
#: had reached it as an internal error (a typo such as 99999999999999999999 classes); far above any real model's.
MAX_SIZE = 2**31 - 1


def _within_size(sizes: tuple[int, ...], what: str, fix: str) -> None:
    if max(sizes) > MAX_SIZE:
        raise InputError(f"bad {what}: {max(sizes)} is more than fedguard takes (at most 2^31 - 1 = {MAX_SIZE}); {fix}")


def parse_input_shape(text: str) -> Shape:
    """Parse ``"1,28,28"`` or ``"1x28x28"`` (C,H,W) into a tuple of three positive ints."""
    fix = "write C,H,W such as 1,28,28 or 3x32x32"
    if not isinstance(text, str):
        raise InputError(f"bad --input-shape {text!r}; {fix}")
    body = text.strip().strip("()[]").strip()
    parts = [p for p in re.split(r"\s*[,xX×]\s*|\s+", body) if p != ""]
    if len(parts) != 3 or not all(re.fullmatch(r"\d+", p) for p in parts):
        raise InputError(f"bad --input-shape {text!r}; {fix}")
    shape = tuple(int(p) for p in parts)
    if min(shape) < 1:
        raise InputError(f"bad --input-shape {text!r}: every size must be at least 1; {fix}")
    _within_size(shape, f"--input-shape {text!r}", fix)
    return shape  # type: ignore[return-value]


@keyword_names(aliases={"--input-shape": "shape"})
def check_input_shape(shape: Any) -> Shape:
    """Return ``shape`` as a (C, H, W) tuple of positive ints; text is parsed."""
    if isinstance(shape, str):
        return parse_input_shape(shape)
    fix = "give three positive sizes C,H,W such as (1, 28, 28)"
    try:
        items = list(shape)
    except TypeError:
        raise InputError(f"bad --input-shape {shape!r}; {fix}") from None
    if len(items) != 3 or not all(is_count(s) for s in items):
        raise InputError(f"bad --input-shape {shape!r}; {fix}")
    sizes = tuple(int(s) for s in items)
    _within_size(sizes, f"--input-shape {shape!r}", fix)
    return sizes  # type: ignore[return-value]


@keyword_names
def check_num_classes(num_classes: Any) -> int:
    """Return ``num_classes`` as a positive int; otherwise :class:`~fedguard.errors.InputError`."""
    if not is_count(num_classes):
        raise InputError(f"bad --num-classes {num_classes!r}; give a positive integer such as 10")
    _within_size((int(num_classes),), "--num-classes", "give the classes of the model's head, such as 10")
    return int(num_classes)


def classifier_logits(module: nn.Module, x: torch.Tensor, command: str, probe: bool = False) -> torch.Tensor:
    """The logits ``module`` gives for the first 4 of the images ``x`` (eval mode, no gradients), ``[n, classes]``.
    InputError naming the problem when it does not take them or does not return float logits [batch, classes];
    ``command`` (``audit``, ``inspect``, ``craft``) is named in the fix. ``probe``: ``x`` is zeros of the
    ``input_shape`` given, not the user's data, and the error names that instead."""
    sample = x[:4].clone()
    try:
        with evaluating(module), torch.no_grad():
            out = module(sample)
    except RuntimeError as exc:
        if probe:
            raise InputError(f"input_shape {tuple(x.shape[1:])} does not fit the model ({first_line(exc)[:120]}); "
                             f"pass the input_shape (C, H, W) the model takes") from None
        last = x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3)  # images in memory, channels last
        raise InputError(
            f"--data of shape {tuple(x.shape[1:])} does not fit the model ({first_line(exc)[:120]}); "
            + ("its channels come last: pass images as N, C, H, W (x.permute(0, 3, 1, 2))" if last
               else "pass --input-shape or data of the architecture's input shape")
        ) from None
    except Exception as exc:  # a forward that wants more arguments, or raises its own error
        raise InputError(
            f"the model fails on one batch of images ({first_line(exc)[:120]}); "
            f"{command} needs a model whose forward(x) takes images [N, C, H, W] and returns logits"
        ) from None
    if not torch.equal(sample, x[:4]):  # the true batch, the server's data and every rebuilt image would change too
        raise InputError(f"the model's forward changes its input in place; {command} feeds the same images to it again: "
                         f"make the forward leave its input as it is (x = x * 2 - 1 instead of x.mul_(2).sub_(1))")
    fix = f"{command} needs a classifier whose forward returns float logits [batch, classes]"
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the model returns {kind_of(out)}, not a tensor of logits; {fix}")
    if not out.is_floating_point():
        raise InputError(f"the model returns {out.dtype} values, not float logits; {fix}")
    if out.dim() != 2:
        raise InputError(f"the model returns shape {tuple(out.shape)}, not [batch, classes]; {fix}")
    return out


def check_float32(model: nn.Module, what: str, fix: str) -> None:
    """InputError naming ``what`` and ``fix`` when ``model`` has floating-point weights other than float32."""
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.is_floating_point()} - {"float32"})
    if dtypes:
        raise InputError(f"{what} has {' and '.join(dtypes)} weights, but fedguard computes in float32; {fix}")


def _dry_run(module: nn.Module, input_shape: Shape) -> torch.Tensor:
    """Run two all-zero examples through ``module`` in eval mode without gradients (two: a BatchNorm without running
    statistics standardises by the batch's own in eval mode too, and one example has none)."""
    with evaluating(module), torch.no_grad():
        return module(torch.zeros(2, *input_shape))


def _flat_size(arch: str, body: nn.Module, input_shape: Shape) -> int:
    """Number of features ``body`` produces per example, by a dry forward pass."""
    default = _fmt(ARCHITECTURES.get(arch).input_shape) if arch in ARCHITECTURES else "3,32,32"
    try:
        n = _dry_run(body, input_shape).flatten(1).shape[1]
    except (RuntimeError, MemoryError) as exc:
        if out_of_memory(exc):
            raise InputError(
                f"architecture {arch!r} at input shape {_fmt(input_shape)} needs more memory than this machine has "
                f"({first_line(exc)}); use smaller images, e.g. --input-shape {default}"
            ) from None
        n, why = 0, first_line(exc)
    else:
        why = "no features left"
    if n == 0:
        raise InputError(
            f"architecture {arch!r} cannot take input shape {_fmt(input_shape)} ({why}); "
            f"use larger images, e.g. --input-shape {default}"
        )
    return n


# --------------------------------------------------------------------------- shared pieces


def conv_bn_act(
    cin: int,
    cout: int,
    kernel: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: Callable[[], nn.Module] | None = nn.ReLU,
    **bn: float,
) -> nn.Sequential:
    """``Sequential(conv, bn[, act])``: torchvision's ``Conv2dNormActivation`` key layout."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, **bn),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def _torchvision_init(model: nn.Module, linear_std: float | None = 0.01) -> nn.Module:
    """torchvision's initialisation: Kaiming (fan_out) convs, unit BN, N(0, std) linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)
    return model


class FeatureNet(nn.Module):
    """``features -> [avgpool] -> flatten -> classifier``; the classifier's input
    size comes from a dry forward pass at ``input_shape``."""

    def __init__(
        self,
        arch: str,
        input_shape: Shape,
        features: nn.Module,
        classifier: Callable[[int], nn.Module],
        avgpool: nn.Module | None = None,
    ):
        super().__init__()
        self.arch_name = arch  # what messages call the model (not saved in its state_dict)
        self.features = features
        self.avgpool = avgpool if avgpool is not None else nn.Identity()
        self.classifier = classifier(_flat_size(arch, nn.Sequential(features, self.avgpool), input_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _mlp_head(*widths: int, act: Callable[[], nn.Module] = nn.ReLU, dropout: float = 0.0) -> Callable[[int], nn.Sequential]:
    """Classifier factory: Linear layers of ``widths`` with ``act`` (and dropout) between."""

    def make(n_in: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        sizes = (n_in, *widths)
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 1:
                layers.append(act())
                if dropout:
                    layers.append(nn.Dropout(dropout))
        return nn.Sequential(*layers)

    return make


def _register(name: str, input_shape: Shape, description: str):
    def add(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        ARCHITECTURES.register(name)(ArchSpec(name, build, input_shape, description))
        return build

    return add


def _small(input_shape: Shape) -> bool:
    return max(input_shape[1:]) <= 64


# --------------------------------------------------------------------------- built-ins


@_register("lenet", (3, 32, 32), "LeNet variant of Deep Leakage from Gradients (Zhu et al., NeurIPS 2019): 4 sigmoid conv5x5 layers")
def lenet(num_classes: int = 10, input_shape: Shape = (3, 32, 32)) -> nn.Module:
    """The LeNet of "Deep Leakage from Gradients" (Zhu, Liu & Han, NeurIPS 2019).

    Four 5x5 convolutions with 12 channels, padding 2, strides 2, 2, 1, 1, each
    followed by a Sigmoid (twice differentiable, as gradient matching needs),
    then one Linear layer. Weights are drawn from U(-0.5, 0.5) as in the
    paper's code.
    """
    layers: list[nn.Module] = []
    cin = input_shape[0]
    for stride in (2, 2, 1, 1):
        layers += [nn.Conv2d(cin, 12, 5, stride, 2), nn.Sigmoid()]
        cin = 12
    model = FeatureNet("lenet", input_shape, nn.Sequential(*layers), _mlp_head(num_classes))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    return model


@_register("lenet5", (1, 28, 28), "classic LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling")
def lenet5(num_classes: int = 10, input_shape: Shape = (1, 28, 28)) -> nn.Module:
    """Classic LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling.

    conv(6, 5x5, padding 2)-ReLU-maxpool-conv(16, 5x5)-ReLU-maxpool-fc120-ReLU-fc84-ReLU-fc.
    """
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip
    return FeatureNet("lenet5", input_shape, features, _mlp_head(120, 84, num_classes))


@_register("lenet5_sigmoid", (1, 28, 28), "LeNet-5 of MKOR's experiments (Wang et al., WACV 2024): sigmoid, average pooling")
def lenet5_sigmoid(num_classes: int = 10, input_shape: Shape = (1, 28, 28)) -> nn.Module:
    """LeNet-5 as in the MKOR authors' code (Wang et al., WACV 2024, "original LeNet").

    conv(6, 5x5, padding 2)-sigmoid-avgpool-conv(16, 5x5)-sigmoid-avgpool-fc120-sigmoid-fc84-sigmoid-fc,
    replicate padding.
    """
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 6, 5, padding=2, padding_mode="replicate"), nn.Sigmoid(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2),
    )  # fmt: skip
    return FeatureNet("lenet5_sigmoid", input_shape, features, _mlp_head(120, 84, num_classes, act=nn.Sigmoid))


@_register("lenet5_stride2", (1, 28, 28), "LeNet-5 with stride-2 convolutions instead of pooling (MKOR's modified LeNet)")
def lenet5_stride2(num_classes: int = 10, input_shape: Shape = (1, 28, 28)) -> nn.Module:
    """LeNet-5 whose down-sampling is done by the convolutions (MKOR's "modified LeNet", Wang et al., WACV 2024).

    conv(6, 5x5, stride 2, padding 2)-ReLU-conv(16, 5x5, stride 2, padding 2)-ReLU-fc120-ReLU-fc84-ReLU-fc,
    replicate padding.
    """
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 6, 5, stride=2, padding=2, padding_mode="replicate"), nn.ReLU(),
        nn.Conv2d(6, 16, 5, stride=2, padding=2, padding_mode="replicate"), nn.ReLU(),
    )  # fmt: skip
    return FeatureNet("lenet5_stride2", input_shape, features, _mlp_head(120, 84, num_classes))


@_register("convnet", (3, 32, 32), "small ConvNet of Inverting Gradients (Geiping et al., NeurIPS 2020): 3 conv-BN-ReLU blocks")
def convnet(num_classes: int = 10, input_shape: Shape = (3, 32, 32), width: int = 32) -> nn.Module:
    """Small ConvNet in the spirit of "Inverting Gradients" (Geiping et al., NeurIPS 2020).

    Three conv3x3-BatchNorm-ReLU blocks with ``width``, 2x and 4x channels
    (32/64/128), each followed by a 2x2 max-pool, then one Linear layer.
    """
    layers: list[nn.Module] = []
    cin = input_shape[0]
    for cout in (width, 2 * width, 4 * width):
        layers += [*conv_bn_act(cin, cout), nn.MaxPool2d(2)]
        cin = cout
    return FeatureNet("convnet", input_shape, nn.Sequential(*layers), _mlp_head(num_classes))


@_register("mlp", (1, 28, 28), "3-layer MLP, 256 hidden units (the fully connected baseline of DLG-style studies)")
def mlp(num_classes: int = 10, input_shape: Shape = (1, 28, 28), hidden: int = 256) -> nn.Module:
    """Flatten -> Linear(d, hidden) -> ReLU -> Linear(hidden, hidden) -> ReLU -> Linear(hidden, classes).

    The fully connected baseline used across gradient-leakage studies (e.g.
    Geiping et al., NeurIPS 2020; Fowl et al., ICLR 2022 analyse such layers).
    """
    if not is_count(hidden):
        raise InputError(f"bad mlp hidden width {hidden!r}; give a positive integer such as 256")
    return nn.Sequential(nn.Flatten(), *_mlp_head(hidden, hidden, num_classes)(math.prod(input_shape)))


class BasicBlock(nn.Module):
    """ResNet basic block with torchvision's names (conv1, bn1, conv2, bn2, downsample.0/1)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = conv_bn_act(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 (He et al., CVPR 2016) with torchvision's parameter names.

    Inputs up to 64x64 get the CIFAR stem (3x3 ``conv1``, stride 1, no max-pool),
    as in most gradient-inversion papers; larger inputs get the ImageNet stem
    (7x7 stride-2 ``conv1`` and max-pool), so a torchvision ``resnet18``
    ``state_dict`` loads unchanged.
    """

    def __init__(self, num_classes: int = 10, input_shape: Shape = (3, 32, 32)):
        super().__init__()
        small = _small(input_shape)
        k, s, p = (3, 1, 1) if small else (7, 2, 3)
        self.conv1 = nn.Conv2d(input_shape[0], 64, k, s, p, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, width in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width)))
            cin = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        _torchvision_init(self, linear_std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@_register("resnet18", (3, 32, 32), "ResNet-18 (He et al., CVPR 2016), torchvision key names; CIFAR stem up to 64x64")
def resnet18(num_classes: int = 10, input_shape: Shape = (3, 32, 32)) -> nn.Module:
    """ResNet-18 (He et al., CVPR 2016); see :class:`ResNet18`."""
    return ResNet18(num_classes, input_shape)


_VGG_CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}


def _vgg(name: str, num_classes: int, input_shape: Shape) -> nn.Module:
    """VGG (Simonyan & Zisserman, ICLR 2015) without BatchNorm, torchvision key names.

    Up to 64x64 the max-pools round up (so 28x28 survives five halvings) and the
    classifier is 512-512-classes after a 1x1 average pool; larger inputs get
    torchvision's 7x7 pool and 4096-wide classifier (with dropout).
    """
    small = _small(input_shape)
    layers: list[nn.Module] = []
    cin = input_shape[0]
    for v in _VGG_CFGS[name]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=small))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    if small:
        head, pool = _mlp_head(512, 512, num_classes), nn.AdaptiveAvgPool2d(1)
    else:
        head, pool = _mlp_head(4096, 4096, num_classes, dropout=0.5), nn.AdaptiveAvgPool2d(7)
    return _torchvision_init(FeatureNet(name, input_shape, nn.Sequential(*layers), head, pool))


@_register("vgg11", (3, 32, 32), "VGG-11 (Simonyan & Zisserman, ICLR 2015), torchvision key names; small classifier up to 64x64")
def vgg11(num_classes: int = 10, input_shape: Shape = (3, 32, 32)) -> nn.Module:
    """VGG-11, configuration A of Simonyan & Zisserman (ICLR 2015); see :func:`_vgg`."""
    return _vgg("vgg11", num_classes, input_shape)


@_register("vgg16", (3, 32, 32), "VGG-16 (Simonyan & Zisserman, ICLR 2015), torchvision key names; small classifier up to 64x64")
def vgg16(num_classes: int = 10, input_shape: Shape = (3, 32, 32)) -> nn.Module:
    """VGG-16, configuration D of Simonyan & Zisserman (ICLR 2015); see :func:`_vgg`."""
    return _vgg("vgg16", num_classes, input_shape)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018) with torchvision's ``fc1``/``fc2`` names."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = nn.ReLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: ``block`` = [expand 1x1], depthwise kxk, [SE], project 1x1."""

    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, use_se: bool, act: type, stride: int):
        super().__init__()
        bn = {"eps": 0.001, "momentum": 0.01}
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_bn_act(cin, expanded, 1, act=act, **bn))
        layers.append(conv_bn_act(expanded, expanded, kernel, stride, groups=expanded, act=act, **bn))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4)))
        layers.append(conv_bn_act(expanded, cout, 1, act=None, **bn))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


# (input, kernel, expanded, output, squeeze-excite, activation, stride) of MobileNetV3-Small, Table 2.
_MOBILENET_V3_SMALL = (
    (16, 3, 16, 16, True, nn.ReLU, 2),
    (16, 3, 72, 24, False, nn.ReLU, 2),
    (24, 3, 88, 24, False, nn.ReLU, 1),
    (24, 5, 96, 40, True, nn.Hardswish, 2),
    (40, 5, 240, 40, True, nn.Hardswish, 1),
    (40, 5, 240, 40, True, nn.Hardswish, 1),
    (40, 5, 120, 48, True, nn.Hardswish, 1),
    (48, 5, 144, 48, True, nn.Hardswish, 1),
    (48, 5, 288, 96, True, nn.Hardswish, 2),
    (96, 5, 576, 96, True, nn.Hardswish, 1),
    (96, 5, 576, 96, True, nn.Hardswish, 1),
)


@_register("mobilenet_v3_small", (3, 32, 32), "MobileNetV3-Small (Howard et al., ICCV 2019), torchvision key names")
def mobilenet_v3_small(num_classes: int = 10, input_shape: Shape = (3, 32, 32)) -> nn.Module:
    """MobileNetV3-Small (Howard et al., "Searching for MobileNetV3", ICCV 2019).

    Module structure and key names follow torchvision's ``mobilenet_v3_small``:
    ``features.0`` stem (conv/bn/Hardswish), eleven ``InvertedResidual`` blocks
    (``features.N.block``), a 1x1 conv to 576 channels, then
    ``classifier.0`` (576->1024), Hardswish, Dropout, ``classifier.3``.
    """
    bn = {"eps": 0.001, "momentum": 0.01}
    layers: list[nn.Module] = [conv_bn_act(input_shape[0], 16, 3, 2, act=nn.Hardswish, **bn)]
    layers += [InvertedResidual(*cfg) for cfg in _MOBILENET_V3_SMALL]
    layers.append(conv_bn_act(96, 576, 1, act=nn.Hardswish, **bn))
    head = _mlp_head(1024, num_classes, act=nn.Hardswish, dropout=0.2)
    return _torchvision_init(FeatureNet("mobilenet_v3_small", input_shape, nn.Sequential(*layers), head, nn.AdaptiveAvgPool2d(1)))


# --------------------------------------------------------------------------- user architectures


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


class _CwdOnPath:
    """Put the current working directory first on ``sys.path`` for a while."""

    def __enter__(self) -> None:
        self.cwd = os.getcwd()
        self.added = self.cwd not in sys.path and "" not in sys.path
        if self.added:
            sys.path.insert(0, self.cwd)

    def __exit__(self, *exc: object) -> None:
        if self.added and self.cwd in sys.path:
            sys.path.remove(self.cwd)


def _resolve_callable(arch: str) -> tuple[Any, Any]:
    """Import ``package.module:callable``; return (module, attribute)."""
    module_name, _, attr = arch.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        file = Path(module_name)
        raise InputError(
            f"--arch takes a module name, not a file: for {file} write {file.stem}:{attr or 'callable'}, run from "
            f"{file.parent if str(file.parent) != '.' else 'its folder'} or add that folder to PYTHONPATH"
        )
    if not module_name or not attr or not all(part.isidentifier() for part in module_name.split(".") + attr.split(".")):
        raise InputError(f"bad --arch {arch!r}; write a built-in name ({', '.join(ARCHITECTURES.names())}) or package.module:callable")
    with _CwdOnPath():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise InputError(
                    f"cannot import module {module_name!r} for --arch {arch}: {first_line(exc)}; "
                    f"run fedguard from the folder that contains it or install its package"
                ) from None
            raise InputError(f"importing module {module_name!r} for --arch {arch} failed: {first_line(exc)}; install what it needs") from None
        except (Exception, SystemExit) as exc:  # SystemExit: a module that calls sys.exit() when imported
            raise InputError(f"importing module {module_name!r} for --arch {arch} failed: {first_line(exc)}; fix the module") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(
                n for n, v in vars(module).items()
                if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__
            )[:10]
            hint = f" (callables there: {', '.join(public)})" if public else ""
            if module_name.split(".")[0] in sys.stdlib_module_names:  # found before a file of that name in the folder
                raise InputError(f"module {module_name!r} is Python's own, imported instead of a file of that name, and has "
                                 f"no {attr!r}; rename your module (e.g. my_{module_name.split('.')[0]}.py)")  # fmt: skip
            raise InputError(f"module {module_name!r} has no attribute {attr!r}{hint}; fix the name after ':' in --arch")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        raise InputError(f"--arch {arch} is a model instance, not a callable that builds one; point it at a class or function")
    if not callable(obj):
        raise InputError(f"--arch {arch} is {kind_of(obj)}, not a callable; point it at a class or function that returns an nn.Module")
    return module, obj


def _signature_default(fn: Callable[..., Any], name: str) -> Any:
    """The default of ``fn``'s parameter ``name``, or None (no such parameter, no default, no signature)."""
    try:
        param = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _custom_default_shape(arch: str) -> Shape | None:
    """The callable's ``input_shape`` attribute, else its ``input_shape`` argument's default, else its module's
    ``input_shape`` attribute, if there is one."""
    module, fn = _resolve_callable(arch)
    for shape in (getattr(fn, "input_shape", None), _signature_default(fn, "input_shape"), getattr(module, "input_shape", None)):
        if shape is not None:
            try:
                return check_input_shape(shape)
            except InputError:
                raise InputError(f"{arch} declares input_shape={shape!r}, which is not C,H,W; fix it or pass --input-shape") from None
    return None


def _build_custom(arch: str, num_classes: int | None, input_shape: Shape | None, kwargs: dict[str, Any]) -> nn.Module:
    module, fn = _resolve_callable(arch)
    call_kwargs = dict(kwargs)
    takes_classes = _accepts(fn, "num_classes")
    if takes_classes:
        call_kwargs["num_classes"] = num_classes or 10
    shape = input_shape if input_shape is not None else _custom_default_shape(arch)
    if shape is not None and _accepts(fn, "input_shape"):  # the module's own input_shape, as the README says
        call_kwargs["input_shape"] = shape
    shown = ", ".join(f"{k}={v!r}" for k, v in call_kwargs.items())
    with _CwdOnPath():
        try:
            model = fn(**call_kwargs)
        except (Exception, SystemExit) as exc:  # SystemExit: sys.exit() in the callable would end fedguard silently
            raise InputError(f"calling {arch}({shown}) failed: {first_line(exc)}; fix the callable or its arguments") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"{arch}({shown}) returned {kind_of(model)}, not a torch.nn.Module; make it return the model")
    check_float32(model, f"the model from {arch}", "make the callable return model.float()")
    if shape is None:
        if num_classes is not None and not takes_classes:  # the count the head gives shows only in a forward pass
            raise InputError(f"--num-classes {num_classes} cannot be checked: {arch} takes no num_classes argument and "
                             "declares no input_shape to run it on; pass --input-shape C,H,W, or drop --num-classes")
        if any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in model.modules()):
            raise InputError(f"the model from {arch} has lazy layers, which take their shapes from a first input; pass --input-shape C,H,W")
        return model
    try:
        out = _dry_run(model, shape)  # also gives lazy layers their shapes
    except RuntimeError as exc:  # what torch raises for a shape a layer cannot take
        raise InputError(
            f"the model from {arch} cannot take input shape {_fmt(shape)}: {first_line(exc)}; "
            f"pass the --input-shape C,H,W it expects"
        ) from None
    except Exception as exc:  # the model's own code: no input shape would help
        raise InputError(
            f"the model from {arch} raised {first_line(exc)} on two all-zero inputs of shape {_fmt(shape)}; "
            "fix its forward"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"{kind_of(out)}"
        raise InputError(f"the model from {arch} returns {got}, not logits of shape [N, classes]; make its forward return the logits")
    if num_classes is not None and not takes_classes and out.shape[1] != num_classes:  # it could not be built for them
        raise InputError(f"the model from {arch} gives {out.shape[1]} classes, not {num_classes}, and takes no num_classes "
                         f"argument; use the class count it gives, or make the callable take num_classes")  # fmt: skip
    return model


# --------------------------------------------------------------------------- public entry points


def arch_name(arch: Any) -> Any:
    """``arch`` as fedguard names an architecture: a class or function defined at the top level of a module that is
    loaded as ``module:name`` (``__main__:Net`` for one in the running script), the name the reports print and
    :func:`build_model` imports back; anything else as it is, for the checks where it is used."""
    if isinstance(arch, nn.Module):
        raise InputError(f"arch is a model instance ({type(arch).__name__}); pass its class or 'package.module:callable', "
                         "which builds fresh ones")  # fmt: skip
    if isinstance(arch, str) or not callable(arch):
        return arch
    module, qualname = getattr(arch, "__module__", None), getattr(arch, "__qualname__", None)
    found: Any = sys.modules.get(module) if isinstance(module, str) else None
    for part in qualname.split(".") if isinstance(qualname, str) and "<" not in qualname else ["<"]:
        found = getattr(found, part, None)
    if found is not arch:
        raise InputError(f"arch {qualname or arch!r} is not found by its name in its module (a lambda, a functools.partial, "
                         "or defined inside a function); define it at the top level of a module, or pass "
                         "'package.module:callable'")  # fmt: skip
    return f"{module}:{qualname}"


def _spec(arch: str) -> ArchSpec | None:
    if not isinstance(arch, str) or not arch.strip():
        raise InputError(f"bad --arch {arch!r}; use one of {', '.join(ARCHITECTURES.names())} or package.module:callable")
    arch = arch.strip()
    if arch in ARCHITECTURES:
        return ARCHITECTURES.get(arch)
    if ":" in arch:
        return None
    raise InputError(f"unknown architecture {arch!r}{did_you_mean(arch, ARCHITECTURES.names())}; "
                     f"use one of {', '.join(ARCHITECTURES.names())} or package.module:callable")


def arch_source(arch: str) -> Path | None:
    """The file a ``module:callable`` architecture is defined in; None for a built-in (InputError for a bad ``arch``)."""
    if _spec(arch) is not None:
        return None
    module, _ = _resolve_callable(arch.strip())
    source = getattr(module, "__file__", None)
    return Path(source) if source else None


def builds_any_class_count(arch: str) -> bool:
    """Whether ``arch`` is built for the class count asked for: every built-in, a callable that takes ``num_classes``."""
    return _spec(arch) is not None or _accepts(_resolve_callable(arch.strip())[1], "num_classes")


@keyword_names
def resolve_input_shape(arch: str, input_shape: Any = None) -> Shape:
    """The (C, H, W) to use with ``arch``: ``input_shape`` when given, else its default.

    A ``module:callable`` architecture's default is an ``input_shape``
    attribute on the callable, its ``input_shape`` argument's default, or an
    ``input_shape`` attribute on its module; without one an InputError asks
    for ``--input-shape``.
    """
    arch = arch_name(arch)
    spec = _spec(arch)
    if input_shape is not None:
        return check_input_shape(input_shape)
    if spec is not None:
        return spec.input_shape
    shape = _custom_default_shape(arch.strip())
    if shape is None:
        raise InputError(f"--arch {arch} has no default input shape; pass --input-shape C,H,W (e.g. 3,32,32)")
    return shape


@keyword_names
def build_model(arch: str, num_classes: int | None = None, input_shape: Any = None, **kwargs: Any) -> nn.Module:
    """Build ``arch`` (a registered name or ``package.module:callable``) for ``num_classes``.

    ``num_classes`` None builds the architecture's default, 10 classes (or what a callable without a
    ``num_classes`` argument gives); a count such a callable does not give is an InputError where its output can be
    seen (an input shape to run it on).

    ``input_shape`` (C, H, W) defaults to the architecture's own; extra keyword
    arguments (e.g. ``hidden=`` for ``mlp``) go to the builder. Any problem
    raises :class:`InputError`.
    """
    arch = arch_name(arch)
    spec = _spec(arch)
    num_classes = check_num_classes(num_classes) if num_classes is not None else None
    shape = check_input_shape(input_shape) if input_shape is not None else None
    if spec is None:
        return _build_custom(arch.strip(), num_classes, shape, kwargs)
    shape = shape or spec.input_shape
    num_classes = num_classes or 10
    try:
        model = spec.build(num_classes=num_classes, input_shape=shape, **kwargs)
    except TypeError as exc:
        if kwargs:
            raise InputError(f"architecture {spec.name!r} does not take {', '.join(kwargs)} ({first_line(exc)}); drop the option") from None
        raise
    except (RuntimeError, MemoryError) as exc:  # e.g. a typo'd size that asks for more memory than there is
        options = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        raise InputError(
            f"building {spec.name} for {num_classes} classes and input shape {_fmt(shape)}{options} failed "
            f"({first_line(exc)}); check --num-classes, --input-shape{''.join(', ' + k for k in kwargs)}"
        ) from None
    model.arch_name = spec.name  # what messages call it (a torchvision class or a bare Sequential had been named)
    return model
