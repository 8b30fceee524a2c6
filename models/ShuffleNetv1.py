"""CIFAR ShuffleNet V1 (``ShuffleV1``: out planes 240/480/960, blocks 4/8/4, groups 3).

Keys, shapes and stage features are those of RepDistiller's ``models/ShuffleNetv1.py``:

    conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3}, linear

1x1 stride-1 stem; the first unit of each stage has stride 2 and concatenates an avg-pooled shortcut.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Tap, stage_outputs

__all__ = ["ShuffleNet", "ShuffleV1"]


class ShuffleBlock(nn.Module):
    """Channel shuffle: [N, g*c, H, W] -> [N, c*g, H, W] (no parameters)."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        g = self.groups
        return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    def __init__(self, in_planes, out_planes, stride, groups, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.stride = stride
        mid_planes = int(out_planes / 4)
        g = 1 if in_planes == 24 else groups   # the stem has too few channels to group
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.shuffle1(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        out = F.relu(preact)
        if self.is_last:
            return out, preact
        return out


class ShuffleNet(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, cfg, num_classes=100):
        super().__init__()
        out_planes = cfg["out_planes"]
        num_blocks = cfg["num_blocks"]
        groups = cfg["groups"]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.tap_stem = Tap()
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.tap_pool = Tap()
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes, num_blocks, groups):
        layers = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            cat_planes = self.in_planes if i == 0 else 0   # the stride-2 unit concatenates its input
            layers.append(Bottleneck(self.in_planes, out_planes - cat_planes, stride=stride, groups=groups,
                                     is_last=(i == num_blocks - 1)))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def get_classifier(self):
        return self.linear

    def layer_names(self):
        names = ["tap_stem"]
        for stage in ("layer1", "layer2", "layer3"):
            names += [f"{stage}.{i}" for i in range(len(getattr(self, stage)))]
        return names + ["tap_pool"]

    def forward(self, x, is_feat=False, preact=False):
        out = self.tap_stem(F.relu(self.bn1(self.conv1(x))))
        f0 = out
        out, f1_pre = self.layer1(out)
        f1 = out
        out, f2_pre = self.layer2(out)
        f2 = out
        out, f3_pre = self.layer3(out)
        f3 = out
        out = F.avg_pool2d(out, 4)
        out = self.tap_pool(out.flatten(1))
        f4 = out
        out = self.linear(out)
        return stage_outputs(out, [f0, f1, f2, f3, f4], [f0, f1_pre, f2_pre, f3_pre, f4], is_feat, preact)


def ShuffleV1(**kwargs):
    cfg = {"out_planes": [240, 480, 960], "num_blocks": [4, 8, 4], "groups": 3}
    return ShuffleNet(cfg, **kwargs)
