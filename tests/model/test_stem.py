import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from swav.model.stem import fused_stem_applies, stem_bn_relu_pool


def _modules(channels, dtype, negative=()):
    bn = nn.BatchNorm2d(channels).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=torch.Generator().manual_seed(1)) + 0.1)
        bn.bias.copy_(torch.randn(channels, generator=torch.Generator().manual_seed(2)))
        for c in negative:
            bn.weight[c] *= -1
    return bn, nn.MaxPool2d(3, 2, 1)


def _both(y0, bn, pool):
    """Output, gradients (map, gamma, beta) and the BatchNorm state after one step, for the
    separate modules and for the fused operation."""
    g = torch.randn(pool(y0).shape, dtype=y0.dtype, generator=torch.Generator().manual_seed(3))
    results = []
    for fused in (False, True):
        norm = copy.deepcopy(bn)
        y = y0.clone().requires_grad_()
        out = stem_bn_relu_pool(y, norm) if fused else pool(F.relu(norm(y)))
        grads = torch.autograd.grad(out, (y, norm.weight, norm.bias), g)
        state = (norm.running_mean, norm.running_var, norm.num_batches_tracked)
        results.append((out, *grads, *state))
    return results


@pytest.mark.parametrize(
    "channels_last, negative", list(itertools.product([False, True], [(), (1, 4)]))
)
def test_fused_stem_equals_batchnorm_relu_maxpool(channels_last, negative):
    y = torch.randn(4, 6, 9, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y[:, :, ::3] = 0.5  # ties inside pooling windows
    y[0, :, :4, :4] = -5.0  # windows that ReLU clips entirely
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    bn, pool = _modules(6, torch.float64, negative)
    reference, fused = _both(y, bn, pool)
    for name, a, b in zip(
        ("output", "grad map", "grad gamma", "grad beta", "running mean", "running var", "count"),
        reference,
        fused,
    ):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12, msg=name)


def test_fused_stem_in_float32_with_a_large_mean():
    # E[y^2] - E[y]^2 in float32: a mean of 3 standard deviations stays well within tolerance
    y = torch.randn(8, 16, 32, 32, generator=torch.Generator().manual_seed(5)) + 3.0
    y = y.contiguous(memory_format=torch.channels_last)
    bn, pool = _modules(16, torch.float32)
    reference, fused = _both(y, bn, pool)
    for a, b in zip(reference, fused):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_fused_stem_applies_only_where_it_is_equal():
    y = torch.randn(2, 4, 8, 8)
    bn, pool = _modules(4, torch.float32)
    assert fused_stem_applies(y, bn, pool)
    assert not fused_stem_applies(y.double(), bn.double(), pool)  # fp32 only
    with torch.no_grad():
        assert not fused_stem_applies(y, bn, pool)
    assert not fused_stem_applies(y, bn.eval(), pool)
    bn.train()
    assert not fused_stem_applies(y, bn, nn.MaxPool2d(2, 2))
    assert not fused_stem_applies(y, bn, nn.Identity())
    assert not fused_stem_applies(y, nn.SyncBatchNorm(4), pool)
    with torch.no_grad():
        bn.weight[2] = 0.0  # no single pooled position carries the gradient of gamma there
    assert not fused_stem_applies(y, bn, pool)


def test_resnet_training_step_equal_with_and_without_the_fused_stem(monkeypatch):
    import swav.model.backbones as backbones
    from swav.model import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", hidden_mlp=16, output_dim=8, n_prototypes=5)
    crops = [torch.randn(4, 3, 64, 64) for _ in range(2)] + [torch.randn(4, 3, 32, 32)]
    calls = []
    real = backbones.stem_bn_relu_pool
    monkeypatch.setattr(backbones, "stem_bn_relu_pool", lambda *a: calls.append(1) or real(*a))

    def step():
        m = copy.deepcopy(model)
        m(crops).scores[0].square().sum().backward()
        return [p.grad for p in m.parameters()], [b.clone() for b in m.buffers()]

    fused_grads, fused_buffers = step()
    assert len(calls) == 2  # one stem call per resolution
    monkeypatch.setattr(backbones, "fused_stem_applies", lambda *a: False)
    grads, buffers = step()
    # float32 rounding of BN(y) can turn two nearly equal values of y into a tie (or reorder
    # them), so a pooled gradient may land on the neighbouring pixel: compare whole tensors.
    # Gradients that are nearly zero (norm ~1e-6) are sums of much larger terms that cancel,
    # so their float32 rounding depends on the kernels' summation order (AVX2 vs AMX): the
    # absolute floor is relative to the largest gradient.
    floor = 1e-5 * max(float(b.norm()) for b in grads)
    for a, b in itertools.zip_longest(fused_grads, grads):
        assert (a - b).norm() <= 1e-3 * b.norm() + floor
    for a, b in itertools.zip_longest(fused_buffers, buffers):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
