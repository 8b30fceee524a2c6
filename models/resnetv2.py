"""CIFAR ResNet18 / ResNet34 / ResNet50: four stages, 3x3 stride-1 stem, no max-pool, head ``linear``.

Keys, shapes and stage features of ResNet50 are those of RepDistiller's ``models/resnetv2.py``
(``ResNet50`` in its model_dict), so its CIFAR-100 ``ResNet50_vanilla`` teacher loads as it is:

    conv1, bn1, layer{1..4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3][,shortcut.0,shortcut.1]}, linear

ResNet18 / ResNet34 are the BasicBlock members of the same family, with the same key naming.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .layers import Tap, stage_outputs

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "ResNet18", "ResNet34", "ResNet50"]


def _shortcut(in_planes, out_planes, stride):
    """Empty Sequential (identity, no keys) or 1x1 conv + BN projection, as RepDistiller names it."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        preact = out + self.shortcut(x)
        out = F.relu(preact)
        if self.is_last:
            return out, preact
        return out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes, planes, stride=1, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        preact = out + self.shortcut(x)
        out = F.relu(preact)
        if self.is_last:
            return out, preact
        return out


class ResNet(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, block, num_blocks, num_classes=100, zero_init_residual=False):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.tap_stem = Tap()
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.tap_pool = Tap()
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # last BN of each residual branch starts at zero
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes, num_blocks, stride):
        layers = []
        for i in range(num_blocks):
            layers.append(block(self.in_planes, planes, stride if i == 0 else 1, is_last=(i == num_blocks - 1)))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def get_classifier(self):
        return self.linear

    def get_bn_before_relu(self):
        """Per stage, the BatchNorm whose output plus the shortcut is the stage's pre-activation feature: the
        last block's ``bn3`` (Bottleneck) or ``bn2`` (BasicBlock), as mdistiller (OFD reads its affine
        parameters)."""
        return [stage[-1].bn3 if isinstance(stage[-1], Bottleneck) else stage[-1].bn2
                for stage in (self.layer1, self.layer2, self.layer3, self.layer4)]

    def layer_names(self):
        names = ["tap_stem"]
        for stage in ("layer1", "layer2", "layer3", "layer4"):
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
        out, f4_pre = self.layer4(out)
        f4 = out
        out = self.tap_pool(self.avgpool(out).flatten(1))
        f5 = out
        out = self.linear(out)
        return stage_outputs(out, [f0, f1, f2, f3, f4, f5], [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5], is_feat, preact)


def ResNet18(**kwargs):
    return ResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def ResNet34(**kwargs):
    return ResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def ResNet50(**kwargs):
    return ResNet(Bottleneck, [3, 4, 6, 3], **kwargs)
