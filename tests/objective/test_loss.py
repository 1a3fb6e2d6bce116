import math

import pytest
import torch

from swav.objective import swapped_prediction_loss


def test_hand_computed_two_crops():
    # B = 1, K = 2, tau = 1 so the numbers are easy to follow.
    s0 = torch.tensor([[0.0, math.log(3.0)]])  # softmax -> (1/4, 3/4)
    s1 = torch.tensor([[math.log(2.0), 0.0]])  # softmax -> (2/3, 1/3)
    q0 = torch.tensor([[0.5, 0.5]])
    q1 = torch.tensor([[1.0, 0.0]])
    # crop 0's codes predicted from crop 1: -(0.5 log 2/3 + 0.5 log 1/3)
    l0 = -(0.5 * math.log(2 / 3) + 0.5 * math.log(1 / 3))
    # crop 1's codes predicted from crop 0: -log 1/4
    l1 = -math.log(1 / 4)
    loss = swapped_prediction_loss([s0, s1], [q0, q1], [0, 1], temperature=1.0)
    assert loss.item() == pytest.approx((l0 + l1) / 2, abs=1e-6)


def test_matches_reference_loop_with_multicrop_and_temperature():
    g = torch.Generator().manual_seed(0)
    b, k, v = 4, 5, 4
    scores = [torch.randn(b, k, generator=g) for _ in range(v)]
    codes = [torch.softmax(torch.randn(b, k, generator=g), 1) for _ in range(2)]
    tau = 0.1
    expected = 0.0
    for q, i in zip(codes, [0, 1]):
        sub = 0.0
        for j in range(v):
            if j == i:
                continue
            p = torch.softmax(scores[j].double() / tau, 1)
            sub += -(q.double() * p.log()).sum(1).mean()
        expected += sub / (v - 1)
    expected /= 2
    got = swapped_prediction_loss(scores, codes, [0, 1], tau)
    assert got.item() == pytest.approx(float(expected), rel=1e-5)


def test_loss_is_fp32_for_bf16_inputs():
    s = [torch.randn(3, 4).bfloat16() for _ in range(2)]
    q = [torch.full((3, 4), 0.25)]
    assert swapped_prediction_loss(s, q, [0]).dtype == torch.float32


def test_uniform_scores_give_log_k():
    k = 7
    s = [torch.zeros(2, k) for _ in range(3)]
    q = [torch.full((2, k), 1 / k)]
    assert swapped_prediction_loss(s, q, [0]).item() == pytest.approx(math.log(k), rel=1e-6)
