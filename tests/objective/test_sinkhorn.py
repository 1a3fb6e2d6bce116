import math

import pytest
import torch
import torch.nn.functional as F

from swav import sinkhorn


def plain_sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """The formula of the paper written naively, in float64."""
    q = torch.exp(scores.double() / eps).t()  # K x B
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).t()


def cosine_scores(b: int, k: int, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, d, generator=g), dim=1)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    return z @ c.t()


@pytest.mark.parametrize("method", ["auto", "scaling", "log"])
def test_equals_plain_formula(method):
    s = cosine_scores(64, 30)
    ref = plain_sinkhorn(s, 0.05, 3)
    q = sinkhorn(s, 0.05, 3, method=method)
    assert q.dtype == torch.float32
    assert torch.allclose(q.double(), ref, atol=1e-6, rtol=0)


def test_rows_sum_to_one():
    q = sinkhorn(cosine_scores(128, 40))
    assert torch.allclose(q.sum(dim=1), torch.ones(128), atol=1e-5)


def test_converges_to_equipartition():
    b, k = 200, 20
    s = cosine_scores(b, k, seed=1)
    q = sinkhorn(s, 0.05, 100)
    mass = q.sum(dim=0)
    assert torch.all((mass - b / k).abs() <= 0.01 * b / k), mass


def test_three_iterations_beat_softmax():
    b, k = 256, 32
    s = cosine_scores(b, k, seed=2)
    soft = torch.softmax(s / 0.05, dim=1).sum(dim=0)
    q = sinkhorn(s, 0.05, 3).sum(dim=0)
    target = b / k
    assert (q - target).abs().max() < (soft - target).abs().max()
    assert (q - target).abs().mean() < 0.5 * (soft - target).abs().mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_finite_at_small_epsilon_and_low_precision(dtype):
    s = cosine_scores(64, 50).to(dtype)
    for eps in (0.05, 0.01):
        q = sinkhorn(s, eps, 3)
        assert torch.isfinite(q).all()
        assert torch.allclose(q.sum(dim=1), torch.ones(64), atol=1e-4)


def test_finite_for_large_unnormalised_scores():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(64, 50, generator=g) * 50  # magnitude ~50: exp(s / 0.05) = e^1000
    for eps in (0.05, 0.01):
        q = sinkhorn(s, eps, 3)
        assert torch.isfinite(q).all()
        assert torch.allclose(q.sum(dim=1), torch.ones(64), atol=1e-4)
        # where the plain formula overflows, the log domain still gives the same iterates
        assert torch.allclose(q, sinkhorn(s, eps, 3, method="log"), atol=1e-4)


def test_fp16_naive_would_overflow():
    # documents why fp32 is needed: e^(1/0.05) = e^20 > fp16 max
    assert math.exp(1 / 0.05) > torch.finfo(torch.float16).max


def test_bad_arguments():
    with pytest.raises(ValueError, match="B x K"):
        sinkhorn(torch.zeros(3))
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(torch.zeros(3, 2), epsilon=0)
