"""CIFAR ShuffleNet V2: ``ShuffleV2`` (net_size 1: 116/232/464 -> 1024) and SimKD's ``ShuffleV2_1_5``
(net_size 1.5: 176/352/704 -> 1024), 3/7/3 basic units per stage after a stride-2 down-sampling unit.

Keys, shapes and stage features are those of RepDistiller's ``models/ShuffleNetv2.py``:

    conv1, bn1, layer{1,2,3}.0.{conv1..conv5,bn1..bn5} (down unit),
    layer{1,2,3}.{i>0}.{conv1,bn1,conv2,bn2,conv3,bn3}, conv2, bn2, linear

Layers: the stem, every unit, the final 1x1 conv unit, the pooled vector.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Tap, stage_outputs

__all__ = ["ShuffleNetV2", "ShuffleV2", "ShuffleV2_1_5"]


class ShuffleBlock(nn.Module):
    def __init__(self, groups=2):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        g = self.groups
        return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


class SplitBlock(nn.Module):
    def __init__(self, ratio):
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class BasicBlock(nn.Module):
    """Split channels; 1x1 - 3x3 depthwise - 1x1 on one half; concatenate; shuffle."""

    def __init__(self, in_channels, split_ratio=0.5, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.split = SplitBlock(split_ratio)
        in_channels = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1,
                               groups=in_channels, bias=False)
        self.bn2 = nn.BatchNorm2d(in_channels)
        self.conv3 = nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(in_channels)
        self.shuffle = ShuffleBlock()

    def forward(self, x):
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        pre = self.bn3(self.conv3(out))
        out = self.shuffle(torch.cat([x1, F.relu(pre)], 1))
        if self.is_last:
            # RepDistiller's preact: the concatenation before the ReLU, not shuffled
            return out, torch.cat([x1, pre], 1)
        return out


class DownBlock(nn.Module):
    """Stride-2 unit: two branches (depthwise-pointwise / pointwise-depthwise-pointwise), concatenated."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        mid_channels = out_channels // 2
        # left branch
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        # right branch
        self.conv3 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid_channels)
        self.conv4 = nn.Conv2d(mid_channels, mid_channels, kernel_size=3, stride=2, padding=1,
                               groups=mid_channels, bias=False)
        self.bn4 = nn.BatchNorm2d(mid_channels)
        self.conv5 = nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid_channels)
        self.shuffle = ShuffleBlock()

    def forward(self, x):
        out1 = self.bn1(self.conv1(x))
        out1 = F.relu(self.bn2(self.conv2(out1)))
        out2 = F.relu(self.bn3(self.conv3(x)))
        out2 = self.bn4(self.conv4(out2))
        out2 = F.relu(self.bn5(self.conv5(out2)))
        return self.shuffle(torch.cat([out1, out2], 1))


configs = {
    0.2: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 3, 3)},
    0.3: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 7, 3)},
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


class ShuffleNetV2(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, net_size, num_classes=100):
        super().__init__()
        if net_size not in configs:
            raise ValueError(f"net_size must be one of {sorted(configs)}, got {net_size!r}")
        out_channels = configs[net_size]["out_channels"]
        num_blocks = configs[net_size]["num_blocks"]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.tap_stem = Tap()
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.tap_head = Tap()
        self.tap_pool = Tap()
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels, num_blocks):
        layers = [DownBlock(self.in_channels, out_channels)]
        for i in range(num_blocks):
            layers.append(BasicBlock(out_channels, is_last=(i == num_blocks - 1)))
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def get_classifier(self):
        return self.linear

    def layer_names(self):
        names = ["tap_stem"]
        for stage in ("layer1", "layer2", "layer3"):
            names += [f"{stage}.{i}" for i in range(len(getattr(self, stage)))]
        return names + ["tap_head", "tap_pool"]

    def forward(self, x, is_feat=False, preact=False):
        out = self.tap_stem(F.relu(self.bn1(self.conv1(x))))
        f0 = out
        out, f1_pre = self.layer1(out)
        f1 = out
        out, f2_pre = self.layer2(out)
        f2 = out
        out, f3_pre = self.layer3(out)
        f3 = out
        out = self.tap_head(F.relu(self.bn2(self.conv2(out))))
        out = F.avg_pool2d(out, 4)
        out = self.tap_pool(out.flatten(1))
        f4 = out
        out = self.linear(out)
        return stage_outputs(out, [f0, f1, f2, f3, f4], [f0, f1_pre, f2_pre, f3_pre, f4], is_feat, preact)


def ShuffleV2(**kwargs):
    return ShuffleNetV2(net_size=1, **kwargs)


def ShuffleV2_1_5(**kwargs):
    return ShuffleNetV2(net_size=1.5, **kwargs)
