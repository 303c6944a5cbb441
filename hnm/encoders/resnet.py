"""ResNet backbones in plain torch, with torchvision's parameter names.

Same module names as torchvision (conv1, bn1, layer1..4, downsample.0/1) so torchvision, timm and the
DSMIL/ItS2CLR SimCLR checkpoints map onto them key for key; torchvision itself is not needed. The
backbone ends at global average pooling: MIL needs the pooled features, never ImageNet logits.
`norm="instance"` builds the parameter-free InstanceNorm2d variant that DSMIL and ItS2CLR pretrain,
so their weights load strictly (they carry no normalisation parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


def norm_factory(norm: str) -> NormFactory:
    if norm == "batch":
        return nn.BatchNorm2d
    if norm == "instance":
        # torchvision's default InstanceNorm2d: no affine parameters, no running statistics.
        return nn.InstanceNorm2d
    raise ValueError(f"unknown norm '{norm}'; use 'batch' or 'instance'")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self, cin: int, width: int, stride: int, downsample: nn.Module | None, norm: NormFactory
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = norm(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(
        self, cin: int, width: int, stride: int, downsample: nn.Module | None, norm: NormFactory
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = norm(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = norm(width)
        self.conv3 = _conv1x1(width, width * self.expansion)
        self.bn3 = norm(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet trunk returning pooled features (B, feature_dim); no classifier."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        make_norm = norm_factory(norm)
        stem = widths[0]
        self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = stem
        stages = []
        for index, (width, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if index == 0 else 2
            stage, cin = self._stage(block, cin, width, blocks, stride, make_norm)
            stages.append(stage)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = cin
        self._init_weights()

    @staticmethod
    def _stage(
        block: type[BasicBlock] | type[Bottleneck],
        cin: int,
        width: int,
        blocks: int,
        stride: int,
        norm: NormFactory,
    ) -> tuple[nn.Sequential, int]:
        cout = width * block.expansion
        downsample = None
        if stride != 1 or cin != cout:
            downsample = nn.Sequential(_conv1x1(cin, cout, stride), norm(cout))
        modules = [block(cin, width, stride, downsample, norm)]
        modules += [block(cout, width, 1, None, norm) for _ in range(blocks - 1)]
        return nn.Sequential(*modules), cout

    def _init_weights(self) -> None:
        # torchvision's initialisation, so a seeded random encoder behaves like theirs.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet18(norm: str = "batch") -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), norm=norm)


def resnet50(norm: str = "batch") -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), norm=norm)


def resnet_mini(norm: str = "batch") -> ResNet:
    """A 128-d demo net (one BasicBlock per stage, widths 16-128): fast enough for CPU demos."""
    return ResNet(BasicBlock, (1, 1, 1, 1), widths=(16, 32, 64, 128), norm=norm)
