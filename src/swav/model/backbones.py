"""Convolutional trunks by name.

The ResNets here use torchvision's parameter names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``,
``downsample.0/1``) so that released SwAV files and torchvision state dicts load without renaming.
Unlike ``torchvision.models.wide_resnet50_2``, the wide variants of the SwAV paper
(RN50-w2/w4/w5) multiply *every* width, the stem included, so their features are 2048 x w.
A small-image stem (3x3 conv, stride 1, no max-pool) suits 32-64 px data such as CIFAR.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from swav.errors import UsageError
from swav.model.conv import Conv2d
from swav.model.stem import fused_stem_applies, stem_bn_relu_pool


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place: saves a fresh activation (BN's backward needs its input only)
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), as in torchvision and the SwAV release."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet trunk returning global-average-pooled features (no classifier).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        widen: width multiplier of the SwAV paper's wide ResNets (1, 2, 4, 5).
        small_stem: 3x3 stride-1 first conv and no max-pool, for 32-64 px images.
        zero_init_residual: start every residual branch at zero (last BN gamma = 0).
        base_width: channels of the stem and the first stage (64 for the standard ResNets).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        widen: int = 1,
        small_stem: bool = False,
        zero_init_residual: bool = False,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        width = base_width * widen
        self.inplanes = width
        if small_stem:
            self.conv1 = Conv2d(3, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width * 8 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: Tensor) -> Tensor:
        """conv1, bn1, ReLU and max-pool; in CPU fp32 training the last three as one operation
        (``swav.model.stem``: same values and gradients, no full-size intermediates)."""
        y = self.conv1(x)
        if fused_stem_applies(y, self.bn1, self.maxpool):
            return stem_bn_relu_pool(y, self.bn1)
        return self.maxpool(self.relu(self.bn1(y)))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Feature maps of the stem and of the four stages (for per-stage probes)."""
        x = self.stem(x)
        outs = [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            outs.append(x)
        return outs

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


RESNET_SPECS: dict[str, tuple[type, tuple[int, int, int, int], int, int]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), 1, 64),
    "resnet34": (BasicBlock, (3, 4, 6, 3), 1, 64),
    "resnet50": (Bottleneck, (3, 4, 6, 3), 1, 64),
    "resnet101": (Bottleneck, (3, 4, 23, 3), 1, 64),
    "resnet152": (Bottleneck, (3, 8, 36, 3), 1, 64),
    "resnet50w2": (Bottleneck, (3, 4, 6, 3), 2, 64),
    "resnet50w4": (Bottleneck, (3, 4, 6, 3), 4, 64),
    "resnet50w5": (Bottleneck, (3, 4, 6, 3), 5, 64),
    # narrow trunks for small data on a CPU (same key names as resnet18)
    "resnet18_half": (BasicBlock, (2, 2, 2, 2), 1, 32),
    "resnet_tiny": (BasicBlock, (1, 1, 1, 1), 1, 32),
}

BACKBONES: tuple[str, ...] = tuple(RESNET_SPECS)


def _timm_backbone(name: str) -> nn.Module:
    try:
        import timm
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise UsageError(
            f"backbone 'timm:{name}' needs timm: pip install 'swav[timm]' (or pip install timm)"
        ) from e
    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:4]}*")[:5] if name else []
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UsageError(f"timm has no model {name!r}{hint}; see timm.list_models()")
    model = timm.create_model(name, pretrained=False, num_classes=0)
    return model


def build_backbone(
    name: str, small_stem: bool = False, zero_init_residual: bool = False
) -> nn.Module:
    """A trunk by name: one of ``BACKBONES``, or ``timm:<model>`` for any timm model.

    The returned module maps images to pooled features and has ``num_features``.
    """
    if name.startswith("timm:"):
        return _timm_backbone(name[len("timm:") :])
    if name not in RESNET_SPECS:
        raise UsageError(
            f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} or 'timm:<name>'"
        )
    block, layers, widen, base = RESNET_SPECS[name]
    return ResNet(block, layers, widen, small_stem, zero_init_residual, base)
