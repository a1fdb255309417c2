"""Small reference architectures for edge benchmarks.

Every model is torch.fx traceable (no data-dependent Python control flow), uses one nn.ReLU
module per activation (so conv+bn+relu fusion and per-layer observers see each one) and
flattens with torch.flatten(x, 1), so quantization, pruning and export can rewrite them.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _conv_bn_relu(
    cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class LeNet300(nn.Module):
    """LeNet-300-100: a fully connected 300-100 MLP on the flattened input."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


class LeNet5(nn.Module):
    """LeNet-5: conv 6 and 16 channels 5x5 with ReLU and 2x2 max-pool, then 120-84 MLP.

    Both convs pad by 2 so inputs as small as 4x4 (e.g. 8x8 digits) keep a spatial extent.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=2)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * (height // 4) * (width // 4), 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(self.relu4(self.fc2(self.relu3(self.fc1(x)))))


def _separable_blocks(width: int, count: int, kernel: int = 3) -> nn.Sequential:
    """`count` depthwise kxk + pointwise 1x1 conv-BN-ReLU pairs at a constant width."""
    layers = []
    for _ in range(count):
        layers.append(_conv_bn_relu(width, width, kernel, groups=width))  # depthwise
        layers.append(_conv_bn_relu(width, width, 1))  # pointwise
    return nn.Sequential(*layers)


class DSCNN(nn.Module):
    """Depthwise-separable CNN (DS-CNN, as in keyword spotting): a 64-channel conv stem, four
    depthwise 3x3 + pointwise 1x1 blocks, global average pooling and a linear classifier.
    `blocks` and `kernel` (of the depthwise convs) are the architecture search's depth and
    kernel size; the defaults are the model above."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64,
                 blocks: int = 4, kernel: int = 3) -> None:
        super().__init__()
        in_channels, height, wide = input_shape
        # Stride 2 on larger inputs keeps the 64-channel blocks cheap (MNIST: 28 -> 14).
        stride = 2 if min(height, wide) >= 16 else 1
        self.stem = _conv_bn_relu(in_channels, width, 3, stride=stride)
        self.blocks = _separable_blocks(width, blocks, kernel)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN; a 1x1 conv+BN shortcut where the shape changes; ReLU after the add."""

    def __init__(self, cin: int, cout: int, stride: int, kernel: int = 3) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, kernel, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet8(nn.Module):
    """ResNet-8 (MLPerf Tiny style): 16-channel stem, stages of 16/32/64 channels (the last two
    downsample by 2), global average pooling and a linear classifier. For the architecture
    search: `width` (stem channels; stages width, 2x, 4x), `stages` (2 drops the last) and
    `kernel` (of the 3x3 convs); the defaults are the model above."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 16,
                 stages: int = 3, kernel: int = 3) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(input_shape[0], width, kernel)
        self.stage1 = BasicBlock(width, width, 1, kernel)
        self.stage2 = BasicBlock(width, 2 * width, 2, kernel)
        self.stage3: nn.Module = BasicBlock(2 * width, 4 * width, 2, kernel)
        if stages == 2:
            self.stage3 = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 2 ** (stages - 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class TemporalBlock(nn.Module):
    """Two dilated 3-tap Conv1d+BN with a residual add, ReLU after the add (length kept)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        pad = dilation  # "same" length for kernel 3
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=pad, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=pad, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + x)


class TCN1d(nn.Module):
    """A small temporal CNN for (channels, time) series: a Conv1d stem, residual blocks with
    dilations 1, 2, 4, global average pooling over time and a linear classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(input_shape[0], width, 5, padding=2, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        self.blocks = nn.Sequential(*(TemporalBlock(width, d) for d in (1, 2, 4)))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


# MLPerf Tiny reference architectures (github.com/mlcommons/tiny, training/*), in PyTorch.


class DSCNNKWS(DSCNN):
    """MLPerf Tiny keyword spotting DS-CNN (small): a 10x4 stride-2 conv stem of 64 channels on a
    49x10 MFCC map, four depthwise 3x3 + pointwise 1x1 blocks, average pooling, 12 classes.
    Padding (5, 1) gives the reference's 25x5 feature map ('same' in Keras) on 49x10."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> None:
        nn.Module.__init__(self)  # its own stem; the blocks, pooling and forward of DSCNN
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], width, (10, 4), stride=2, padding=(5, 1), bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.blocks = _separable_blocks(width, 4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)


# MobileNetV1 at width 1.0: (output channels, stride) of the 13 depthwise-separable blocks.
_MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5,
                 (1024, 2), (1024, 1))


class MobileNetV1(nn.Module):
    """MLPerf Tiny visual wake words MobileNetV1 (width multiplier 0.25 at 96x96x3): a 3x3
    stride-2 stem, 13 depthwise 3x3 + pointwise 1x1 blocks with ReLU (as the reference's Keras
    model), global average pooling and a linear classifier (2 classes: person / no person).
    For the architecture search: `blocks` (the first that many of the 13) and `kernel` (of the
    depthwise convs); the defaults are the model above."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, alpha: float = 0.25,
                 blocks: int = 13, kernel: int = 3) -> None:
        super().__init__()
        width = max(8, int(32 * alpha))
        self.stem = _conv_bn_relu(input_shape[0], width, 3, stride=2)
        layers = []
        for channels, stride in _MOBILENET_V1[:blocks]:
            out = max(8, int(channels * alpha))
            layers.append(_conv_bn_relu(width, width, kernel, stride=stride, groups=width))
            layers.append(_conv_bn_relu(width, out, 1))
            width = out
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


class FCAutoencoder(nn.Module):
    """MLPerf Tiny anomaly detection autoencoder: the flattened input (640 = 5 frames x 128 mel
    bins in the reference) through 128-128-128-128-8-128-128-128-128 Linear+BN+ReLU layers back
    to its own size. The output is the reconstruction, not class scores (num_classes is unused);
    the anomaly score is the reconstruction error."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        size = math.prod(input_shape)
        layers: list[nn.Module] = []
        widths = (size, 128, 128, 128, 128, 8, 128, 128, 128, 128)
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Linear(cin, cout), nn.BatchNorm1d(cout), nn.ReLU()]
        layers.append(nn.Linear(128, size))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.flatten(x, 1))
