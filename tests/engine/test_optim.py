import math

import numpy as np
import pytest
import torch

from swav.engine.optim import LARS, build_optimizer, lr_schedule
from swav.model import build_model
from swav.objective.swav_loss import SwAVConfig, SwAVLoss


def test_lars_step_matches_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    g = torch.randn(5, 3)
    w0 = w.detach().clone()
    lr, wd, eta, mom = 0.5, 1e-4, 0.001, 0.9
    opt = LARS([w], lr=lr, momentum=mom, weight_decay=wd, eta=eta)
    expected_buf = None
    for _ in range(2):
        w.grad = g.clone()
        wn, gn = w.detach().norm(), g.norm()
        trust = eta * wn / (gn + wd * wn + 1e-8)
        d = trust * (g + wd * w.detach())
        expected_buf = d if expected_buf is None else mom * expected_buf + d
        expected = w.detach() - lr * expected_buf
        opt.step()
        assert torch.allclose(w.detach(), expected, atol=1e-7)
    assert not torch.equal(w.detach(), w0)


def test_lars_zero_weights_use_plain_gradient():
    b = torch.nn.Parameter(torch.zeros(4))
    b.grad = torch.ones(4)
    LARS([b], lr=0.1, momentum=0.0, weight_decay=0.5).step()
    assert torch.allclose(b.detach(), torch.full((4,), -0.1))


def test_exclude_bias_and_norm_groups():
    model = build_model("resnet_tiny", hidden_mlp=8, output_dim=4, n_prototypes=5)
    opt = build_optimizer(model, "lars", 0.1, exclude_bias_norm=True)
    regular, special = opt.param_groups
    assert all(p.ndim > 1 for p in regular["params"])
    assert all(p.ndim <= 1 for p in special["params"])
    assert special["weight_decay"] == 0 and special["lars"] is False
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "adagrad", 0.1)


def test_schedule_warmup_then_cosine():
    s = lr_schedule(4.8, 0.0048, epochs=20, iters_per_epoch=10, warmup_epochs=2, start_warmup=0.3)
    assert len(s) == 200
    assert s[0] == pytest.approx(0.3)
    assert np.all(np.diff(s[:20]) > 0)  # linear warmup
    assert s[20] == pytest.approx(4.8)
    assert np.all(np.diff(s[20:]) <= 1e-12)  # cosine decay
    assert s[-1] == pytest.approx(0.0048, abs=1e-3)
    t = 50
    assert s[20 + t] == pytest.approx(
        0.0048 + 0.5 * (4.8 - 0.0048) * (1 + math.cos(math.pi * t / 180))
    )


def test_prototypes_frozen_for_n_steps_then_move():
    torch.manual_seed(0)
    model = build_model(
        "resnet_tiny", hidden_mlp=16, output_dim=8, n_prototypes=6, small_stem=True
    ).train()
    opt = build_optimizer(model, "sgd", 0.5, momentum=0.9, weight_decay=1e-4)
    protos0 = model.prototypes.weight.detach().clone()
    head0 = model.projection_head[0].weight.detach().clone()
    conv0 = model.backbone.conv1.weight.detach().clone()
    n_frozen = 3
    objective = SwAVLoss(SwAVConfig(freeze_prototypes_niters=n_frozen), model.embedding_dim)
    crops = [torch.randn(8, 3, 16, 16) for _ in range(2)] + [torch.randn(8, 3, 8, 8)]
    for it in range(n_frozen + 1):
        out = model(crops)
        loss = objective(out, model.prototypes, 8, epoch=0).loss
        opt.zero_grad()
        loss.backward()
        frozen = objective.freeze_prototypes(model.prototypes, it)
        assert frozen == (it < n_frozen)
        opt.step()
        if it == 0:
            assert not torch.equal(model.projection_head[0].weight, head0)
            assert not torch.equal(model.backbone.conv1.weight, conv0)
        if it < n_frozen:
            # unchanged up to the re-normalisation's rounding
            assert torch.allclose(model.prototypes.weight.detach(), protos0, atol=1e-6), it
            assert (
                model.prototypes.weight not in opt.state or not opt.state[model.prototypes.weight]
            )
    assert (model.prototypes.weight.detach() - protos0).abs().max() > 1e-4
