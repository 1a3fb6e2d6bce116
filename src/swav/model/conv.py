"""Convolution for small feature maps on the CPU, computed tap by tap.

Multi-crop puts small crops through the same ResNet as the large ones: a 32 px crop leaves
layer3 at 2 x 2 and layer4 at 1 x 1. On such maps most taps of a padded 3 x 3 kernel read only
padding, and oneDNN's CPU backward pass is very slow there (about 30x its forward on a 1 x 1
map, where the convolution is really one matrix product with the centre tap).

``tap_conv2d`` computes ``y = sum over taps t of shift_t(x) @ W_t`` in channels-last layout,
each tap restricted to the output rows and columns whose input is inside the map, so no product
touches padding. Forward, input gradient and weight gradient are then plain matrix products of
exactly the useful size. ``Conv2d`` is an ``nn.Conv2d`` (same parameters, same state-dict keys)
that takes this path on the CPU when the output map has at most ``TAP_MAX_PIXELS`` pixels, where
it measures faster than oneDNN (``benchmarks/perf.py --only conv``), and ``nn.Conv2d``'s path
otherwise.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

# convolutions whose output map has at most this many pixels (3 x 3) take the tap path on the
# CPU: measured faster there (ResNet maps of 1, 2 and 3 px, and 4 or 6 px at stride 2), while at
# 4 x 4 and above oneDNN is as fast or faster (benchmarks/perf.py --only conv)
TAP_MAX_PIXELS = 9

_PLAIN = [False]
"""Set by ``plain_convolutions``: every ``Conv2d`` takes ``nn.Conv2d``'s path."""


@contextlib.contextmanager
def plain_convolutions() -> Iterator[None]:
    """Within it, ``Conv2d`` computes as ``nn.Conv2d`` whatever the map size: for tracing and
    export (ONNX), where one graph must serve every input size and the tap path's shape-by-shape
    plan cannot be recorded."""
    before = _PLAIN[0]
    _PLAIN[0] = True
    try:
        yield
    finally:
        _PLAIN[0] = before


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _output_size(h: int, w: int, k, stride, pad) -> tuple[int, int]:
    return (h + 2 * pad[0] - k[0]) // stride[0] + 1, (w + 2 * pad[1] - k[1]) // stride[1] + 1


def uses_tap_path(
    h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> bool:
    """Whether ``Conv2d`` computes an h x w CPU input tap by tap: when the output is small."""
    ho, wo = _output_size(h, w, kernel, stride, padding)
    return ho > 0 and wo > 0 and ho * wo <= TAP_MAX_PIXELS


def _tap_ranges(size: int, out_size: int, k: int, stride: int, pad: int) -> list[tuple]:
    """For each kernel offset along one axis that reads inside the map: (tap, first output,
    end output, first input). Output i reads input i * stride + tap - pad."""
    ranges = []
    for tap in range(k):
        d = tap - pad
        first = max(0, -(d // stride))
        end = min(out_size, (size - 1 - d) // stride + 1)
        if end > first:
            ranges.append((tap, first, end, first * stride + d))
    return ranges


@functools.lru_cache(maxsize=256)
def _plan(h: int, w: int, k: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int]):
    """Output size and, per kernel tap that reads inside the map: (kh, kw, input region, output
    region, whether the output region is the whole output, whether the input region is the whole
    input). Output (i, j) reads input (i * stride + kh - pad, j * stride + kw - pad)."""
    ho, wo = _output_size(h, w, k, stride, pad)
    if ho < 1 or wo < 1:
        raise RuntimeError(
            f"convolution: the padded input ({h + 2 * pad[0]} x {w + 2 * pad[1]}) is smaller "
            f"than the kernel ({k[0]} x {k[1]})"
        )
    taps = []
    for kh, i0, i1, a0 in _tap_ranges(h, ho, k[0], stride[0], pad[0]):
        for kw, j0, j1, b0 in _tap_ranges(w, wo, k[1], stride[1], pad[1]):
            a1 = a0 + (i1 - i0 - 1) * stride[0] + 1
            b1 = b0 + (j1 - j0 - 1) * stride[1] + 1
            src = (slice(None), slice(a0, a1, stride[0]), slice(b0, b1, stride[1]))
            dst = (slice(None), slice(i0, i1), slice(j0, j1))
            whole_out = i1 - i0 == ho and j1 - j0 == wo
            whole_in = i1 - i0 == h and j1 - j0 == w
            taps.append((kh, kw, src, dst, whole_out, whole_in))
    return ho, wo, tuple(taps)  # cached: shared by every call of the same shape


def _add(acc: Tensor | None, region, whole: bool, value: Tensor, shape) -> Tensor:
    """acc[region] += value, where acc starts as ``value`` itself when the region is whole (no
    zero fill) or as zeros otherwise."""
    if acc is None:
        if whole:
            return value.view(shape)
        acc = value.new_zeros(shape)
    acc[region] += value.view(acc[region].shape)
    return acc


class _TapConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride, padding) -> Tensor:
        n, c, h, w = x.shape
        o = weight.shape[0]
        ho, wo, taps = _plan(h, w, tuple(weight.shape[2:]), tuple(stride), tuple(padding))
        xh = x.permute(0, 2, 3, 1)  # NHWC view: free for channels-last input
        wt = weight.permute(2, 3, 1, 0)  # k x k x C x O view
        y = None
        for kh, kw, src, dst, whole_out, _ in sorted(taps, key=lambda t: not t[4]):
            y = _add(y, dst, whole_out, xh[src].reshape(-1, c) @ wt[kh, kw], (n, ho, wo, o))
        if y is None:  # no tap reads the map: the output is all padding
            y = x.new_zeros(n, ho, wo, o)
        ctx.save_for_backward(x, weight)
        ctx.taps = taps
        return y.permute(0, 3, 1, 2)  # NCHW shape, channels-last memory

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        o, _, kh_size, kw_size = weight.shape
        gh = grad.to(x.dtype).permute(0, 2, 3, 1)
        xh = x.permute(0, 2, 3, 1)
        wt = weight.permute(2, 3, 1, 0)
        grad_x = grad_w = None
        if ctx.needs_input_grad[1]:
            # in the weight's own memory layout, so that no copy follows; each tap's O x C
            # block is then a row-major matrix with a leading dimension, written in place
            every_tap = len(ctx.taps) == kh_size * kw_size
            grad_w = (torch.empty_like if every_tap else torch.zeros_like)(weight)
        for kh, kw, src, dst, _, whole_in in sorted(ctx.taps, key=lambda t: not t[5]):
            g = gh[dst].reshape(-1, o)
            if grad_w is not None:
                block = grad_w[:, :, kh, kw]
                if block.stride(1) == 1:
                    torch.mm(g.t(), xh[src].reshape(-1, c), out=block)
                else:
                    block.copy_(g.t() @ xh[src].reshape(-1, c))
            if ctx.needs_input_grad[0]:
                grad_x = _add(grad_x, src, whole_in, g @ wt[kh, kw].t(), (n, h, w, c))
        if ctx.needs_input_grad[0] and grad_x is None:
            grad_x = x.new_zeros(n, h, w, c)
        return (
            None if grad_x is None else grad_x.permute(0, 3, 1, 2),
            grad_w,
            None,
            None,
        )


def tap_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> Tensor:
    """``F.conv2d`` (groups 1, dilation 1, zero padding) as one matrix product per kernel tap
    over the part of the map that tap reads; equal to ``F.conv2d`` up to float rounding.
    Under CPU autocast it computes in the autocast dtype, as ``F.conv2d`` would."""
    stride = (stride, stride) if isinstance(stride, int) else (stride[0], stride[1])
    padding = (padding, padding) if isinstance(padding, int) else (padding[0], padding[1])
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    with torch.autocast(x.device.type, enabled=False):
        y = _TapConv.apply(x, weight, stride, padding)
        if bias is not None:
            y = y + bias.view(1, -1, 1, 1)
    return y


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that computes small CPU feature maps with ``tap_conv2d``.

    Same parameters and state-dict keys as ``nn.Conv2d``; the tap path is taken for CPU inputs
    whose output has at most ``TAP_MAX_PIXELS`` pixels, with groups 1, dilation 1 and zero
    padding.
    """

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if (
            input.device.type == "cpu"
            and not _PLAIN[0]
            and input.dim() == 4
            and self.groups == 1
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and uses_tap_path(
                input.shape[-2],
                input.shape[-1],
                _pair(self.kernel_size),
                _pair(self.stride),
                _pair(self.padding),
            )
        ):
            return tap_conv2d(input, weight, bias, _pair(self.stride), _pair(self.padding))
        return super()._conv_forward(input, weight, bias)
