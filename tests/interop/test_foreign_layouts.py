"""Checkpoints as other projects' code writes them load into a model whose embeddings, prototype
scores and class scores equal those computed by hand from the file's tensors.

The fixtures are built from modules with the same structure as the writers' model code (so the
key sets are theirs, buffers and duplicates included), not from a list typed by hand:
- mmselfsup 0.x / 1.x and mmpretrain 1.x ``SwAVNeck``: the BatchNorm is assigned to an attribute
  (``self.bn`` in mmselfsup, ``self.norm`` in mmpretrain) and is also item 1 of
  ``projection_neck`` (Linear, BN, ReLU, Linear), so ``state_dict()`` holds it twice;
- the prototypes: ``head.prototypes`` (mmselfsup 0.x ``SwAVHead``), ``head.loss.prototypes``
  (mmselfsup 1.x: ``SwAVHead.loss`` is a ``SwAVLoss``), ``head.loss_module.prototypes``
  (mmpretrain 1.x); several heads as ``prototypes.prototypes{i}``;
- an mmpretrain ``ImageClassifier`` with a ``LinearClsHead``: ``backbone.*`` and ``head.fc.*``;
- the reference ``eval_linear.py`` ``RegLog`` (wrapped by DistributedDataParallel: ``module.``),
  with ``global_avg`` True / False and ``use_bn`` True / False.
"""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from swav.cli import main
from swav.interop.checkpoints import CheckpointError, load_checkpoint
from swav.interop.heads import HeadError, load_linear_head


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if t.dtype.is_floating_point:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
            else:
                t.fill_(7)  # num_batches_tracked
    return module


class Neck(nn.Module):
    """The structure of SwAVNeck: one BatchNorm under two names."""

    def __init__(self, cin, hidden, out, bn_attribute):
        super().__init__()
        bn = nn.BatchNorm1d(hidden)
        setattr(self, bn_attribute, bn)
        self.projection_neck = nn.Sequential(
            nn.Linear(cin, hidden), bn, nn.ReLU(inplace=True), nn.Linear(hidden, out)
        )


def prototypes(dim, n):
    if isinstance(n, list):
        multi = nn.Module()
        for i, k in enumerate(n):
            multi.add_module(f"prototypes{i}", nn.Linear(dim, k, bias=False))
        return multi
    return nn.Linear(dim, n, bias=False)


def trunk():
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    return net


def mm_swav(variant, n_prototypes=25):
    m = nn.Module()
    m.backbone = trunk()
    m.neck = Neck(512, 64, 16, "norm" if variant == "mmpretrain-1.x" else "bn")
    head = nn.Module()
    holder = head
    if variant != "mmselfsup-0.x":
        holder = nn.Module()
        head.add_module("loss_module" if variant == "mmpretrain-1.x" else "loss", holder)
    holder.prototypes = prototypes(16, n_prototypes)
    m.head = head
    return randomize_(m).eval()


def by_hand(m, x):
    """Embedding and prototype scores from the fixture's tensors and the formulas."""
    with torch.no_grad():
        f = m.backbone(x)
        lin0, bn, _, lin3 = m.neck.projection_neck
        h = f @ lin0.weight.T + lin0.bias
        h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        z = F.normalize(torch.relu(h) @ lin3.weight.T + lin3.bias, dim=1)
        holder = getattr(m.head, "loss_module", getattr(m.head, "loss", m.head))
        heads = (
            [holder.prototypes]
            if isinstance(holder.prototypes, nn.Linear)
            else list(holder.prototypes.children())
        )
        return f, z, [z @ p.weight.T for p in heads]


@pytest.mark.parametrize(
    "variant,n_prototypes",
    [
        ("mmpretrain-1.x", 25),
        ("mmselfsup-1.x", 25),
        ("mmselfsup-0.x", 25),
        ("mmselfsup-0.x", [30, 40]),
        ("mmselfsup-1.x", [30, 40]),
    ],
)
def test_openmmlab_swav_files(tmp_path, variant, n_prototypes):
    m = mm_swav(variant, n_prototypes)
    sd = m.state_dict()
    twin = "norm" if variant == "mmpretrain-1.x" else "bn"
    assert f"neck.{twin}.running_mean" in sd and "neck.projection_neck.1.running_mean" in sd
    path = tmp_path / "swav_mm.pth"
    torch.save({"meta": {"epoch": 200}, "state_dict": sd}, path)
    loaded = load_checkpoint(path)
    assert loaded.layout == "mmselfsup" and loaded.arch == "resnet18"
    expected = n_prototypes if isinstance(n_prototypes, list) else [n_prototypes]
    assert loaded.model.n_prototypes == expected and loaded.model.embedding_dim == 16
    x = torch.randn(3, 3, 32, 32)
    f, z, scores = by_hand(m, x)
    with torch.no_grad():
        out = loaded.model.eval()(x)
        torch.testing.assert_close(loaded.model.forward_backbone(x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.embeddings, z, atol=1e-5, rtol=1e-5)
    for ours, theirs in zip(out.scores, scores, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_neck_bn_that_differs_from_the_projection_is_refused(tmp_path):
    sd = mm_swav("mmpretrain-1.x").state_dict()
    sd["neck.norm.weight"] = sd["neck.norm.weight"] + 1  # not the same module: unknown neck
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="neck.norm.weight is not the projection's"):
        load_checkpoint(tmp_path / "odd.pth")


def test_unknown_head_keys_are_refused_not_dropped(tmp_path):
    sd = mm_swav("mmselfsup-1.x").state_dict()
    sd["head.loss.extra.weight"] = torch.zeros(3)
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="head.loss.extra.weight"):
        load_checkpoint(tmp_path / "odd.pth")


def test_mmpretrain_linear_classifier_is_kept(tmp_path):
    m = nn.Module()
    m.backbone = trunk()
    m.head = nn.Module()
    m.head.fc = nn.Linear(512, 7)
    randomize_(m).eval()
    torch.save({"meta": {}, "state_dict": m.state_dict()}, tmp_path / "cls.pth")
    loaded = load_checkpoint(tmp_path / "cls.pth")
    assert loaded.classifier is not None and loaded.classifier.out_features == 7
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = m.backbone(x) @ m.head.fc.weight.T + m.head.fc.bias
        torch.testing.assert_close(
            loaded.classifier.classify(loaded.model, x), expected, atol=1e-5, rtol=1e-5
        )


def test_ignore_leaves_out_exactly_the_named_parts(tmp_path):
    torch.save(
        {"meta": {}, "state_dict": mm_swav("mmselfsup-0.x").state_dict()}, tmp_path / "m.pth"
    )
    no_protos = load_checkpoint(tmp_path / "m.pth", ignore=["prototypes"]).model
    assert no_protos.prototypes is None and no_protos.projection_head is not None
    no_head = load_checkpoint(tmp_path / "m.pth", ignore=["head"]).model
    assert no_head.prototypes is None and no_head.projection_head is None
    with pytest.raises(CheckpointError, match="prototypes without their input"):
        load_checkpoint(tmp_path / "m.pth", ignore=["projection_head"])


class RegLog(nn.Module):
    """The structure of the reference eval_linear.py classifier (its keys: bn.*, linear.*)."""

    def __init__(self, width, classes, global_avg, use_bn):
        super().__init__()
        self.bn = None
        if not global_avg and use_bn:
            self.bn = nn.BatchNorm2d(width)
        self.linear = nn.Linear(width if global_avg else 4 * width, classes)


def reglog_by_hand(net, head, x, global_avg):
    with torch.no_grad():
        fmap = nn.Sequential(*list(net.children())[:-2])(x)  # up to layer4
        if global_avg:
            v = fmap.mean((2, 3))
        else:
            v = F.avg_pool2d(fmap, 6, stride=1)
            if head.bn is not None:
                bn = head.bn
                v = (v - bn.running_mean[:, None, None]) / torch.sqrt(
                    bn.running_var[:, None, None] + bn.eps
                ) * bn.weight[:, None, None] + bn.bias[:, None, None]
            v = v.flatten(1)
        return v @ head.linear.weight.T + head.linear.bias


@pytest.mark.parametrize(
    "global_avg,use_bn", [(True, False), (False, True), (False, False)], ids=str
)
def test_reference_eval_linear_heads(tmp_path, global_avg, use_bn):
    net = randomize_(torchvision.models.resnet18(), seed=1).eval()
    head = randomize_(RegLog(512, 10, global_avg, use_bn), seed=2).eval()
    sd = {"module." + k: v for k, v in head.state_dict().items()}
    torch.save({"epoch": 100, "state_dict": sd, "best_acc": 75.3}, tmp_path / "eval_linear.pth")
    backbone = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save({"module." + k: v for k, v in backbone.items()}, tmp_path / "pretrain.pth")
    model = load_checkpoint(tmp_path / "pretrain.pth").model.eval()
    loaded = load_linear_head(tmp_path / "eval_linear.pth")
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = loaded.classify(model, x)
    torch.testing.assert_close(
        logits, reglog_by_hand(net, head, x, global_avg), atol=1e-4, rtol=1e-4
    )
    assert loaded.pooling == ("global" if global_avg else "cells")
    if not global_avg:
        with pytest.raises(HeadError, match="7 x 7 map of a 224-px image"):
            loaded.classify(model, torch.randn(1, 3, 160, 160))


def test_head_of_another_width_is_refused_in_one_line(tmp_path, capsys):
    from PIL import Image

    net = torchvision.models.resnet18()
    backbone = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save({"module." + k: v for k, v in backbone.items()}, tmp_path / "pretrain.pth")
    torch.save(
        {"module.linear.weight": torch.zeros(5, 2048 * 3), "module.linear.bias": torch.zeros(5)},
        tmp_path / "head.pth",
    )
    Image.new("RGB", (40, 40)).save(tmp_path / "x.png")
    argv = ["predict", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "pretrain.pth")]
    assert main([*argv, "--head", str(tmp_path / "head.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("swav predict: error: the classifier takes 6144 features")
    assert len(err.splitlines()) == 1
