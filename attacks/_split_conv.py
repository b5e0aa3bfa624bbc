"""2-D convolutions whose backward is two separately differentiable operations.

Inverting Gradients and DLG differentiate the client's parameter gradient with
respect to the guessed images: a second derivative through every
convolution. torch forms it with one function for the whole convolution
backward (``_convolution_double_backward``), and that function computes the
weight-shaped term ``conv(ggI, gO)`` (a gradient with respect to the weight)
whenever the input gradient has a cotangent, whether or not the weight's
gradient is wanted: for the server's loss only the images' gradient is.
Measured on a ResNet-18 at 32x32, batch 4, one thread: 18 % of an
evaluation, and the whole evaluation 1.22x faster without it
(``docs/benchmarks.md``).

:class:`SplitConvolutions` is a ``TorchFunctionMode`` that routes
``torch.nn.functional.conv2d`` through :class:`_Conv2d`, whose backward
computes the input gradient as a transposed convolution and the weight
gradient with torch's weight-only convolution backward. Differentiated
again, each of the two computes only the gradients the outer pass needs.
The outer pass (the guess's gradient) never needs the gradient of a leaf
weight, the server's parameters: while :attr:`SplitConvolutions.images_only`
is set, it is not formed either (weights that depend on the guess, as in
the unrolled FedAvg steps, still get theirs). Convolutions with string
padding (``"same"``) keep torch's own backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["SplitConvolutions"]


def _pair(value) -> tuple[int, int]:
    v = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return int(v[0]), int(v[-1])


class _Conv2d(torch.autograd.Function):
    """``F.conv2d`` with a backward built from a transposed convolution and a weight-only backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, mode):
        ctx.save_for_backward(x, weight)
        ctx.conf = (_pair(stride), _pair(padding), _pair(dilation), int(groups))
        ctx.has_bias = bias is not None
        ctx.mode = mode
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        g_x = g_w = g_b = None
        if ctx.needs_input_grad[0]:
            # the output padding that brings the transposed convolution back to x's size
            extra = [
                x.shape[2 + i] - ((g_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[2 + i] - 1) + 1)
                for i in range(2)
            ]
            g_x = F.conv_transpose2d(g_out, weight, None, stride, padding, extra, groups, dilation)
        if ctx.needs_input_grad[1] and not (ctx.mode.images_only and weight.grad_fn is None):
            g_w = torch.ops.aten.convolution_backward(
                g_out, x, weight, None, stride, padding, dilation, False, [0, 0], groups, [False, True, False]
            )[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            g_b = g_out.sum((0, 2, 3))
        return g_x, g_w, g_b, None, None, None, None, None


class SplitConvolutions(TorchFunctionMode):
    """Within ``with``, ``F.conv2d`` (and so ``nn.Conv2d``) on tensors that need gradients uses :class:`_Conv2d`.

    Attributes
    ----------
    images_only : bool
        Set while differentiating with respect to the guess only: leaf
        weights' gradients are then skipped.
    """

    def __init__(self):
        super().__init__()
        self.images_only = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d and torch.is_grad_enabled():
            call = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args), **kwargs)
            x, weight = call["input"], call["weight"]
            padding = call.get("padding", 0)
            if x.dim() == 4 and not isinstance(padding, str) and (x.requires_grad or weight.requires_grad):
                return _Conv2d.apply(
                    x, weight, call.get("bias"), call.get("stride", 1), padding, call.get("dilation", 1), call.get("groups", 1), self
                )
        return func(*args, **kwargs)
