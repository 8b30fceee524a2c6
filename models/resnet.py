"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4), post-activation BasicBlock.

State_dict keys, shapes and stage features are those of RepDistiller's ``models/resnet.py``, so its
public CIFAR-100 teacher checkpoints load as they are:

    conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}, fc

Depth d gives (d - 2) / 6 blocks per stage; ``num_filters`` = [stem, stage1, stage2, stage3] widths.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .layers import Tap, stage_outputs

__all__ = ["ResNet", "BasicBlock", "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
           "resnet110", "resnet8x4", "resnet32x4"]


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn, plus shortcut, then ReLU. The last block of a stage also returns the sum
    before the final ReLU (``preact``)."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        preact = out + shortcut
        out = F.relu(preact)            # out of place: preact stays intact
        if self.is_last:
            return out, preact
        return out


class ResNet(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, depth, num_filters, block_name="basicblock", num_classes=100):
        super().__init__()
        if block_name.lower() != "basicblock":
            raise ValueError(f"block_name must be 'basicblock', got {block_name!r}")
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 (8, 14, 20, ...), got {depth}")
        n = (depth - 2) // 6
        block = BasicBlock
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.tap_stem = Tap()
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        self.avgpool = nn.AvgPool2d(8)
        self.tap_pool = Tap()
        self.fc = nn.Linear(num_filters[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, is_last=(blocks == 1))]
        self.inplanes = planes * block.expansion
        for i in range(1, blocks):
            layers.append(block(self.inplanes, planes, is_last=(i == blocks - 1)))
        return nn.Sequential(*layers)

    def get_classifier(self):
        return self.fc

    def get_bn_before_relu(self):
        """Per stage, the BatchNorm whose output plus the shortcut is the stage's pre-activation feature
        (the last block's ``bn2``, as RepDistiller/mdistiller; OFD reads its affine parameters)."""
        return [stage[-1].bn2 for stage in (self.layer1, self.layer2, self.layer3)]

    def layer_names(self):
        names = ["tap_stem"]
        for stage in ("layer1", "layer2", "layer3"):
            names += [f"{stage}.{i}" for i in range(len(getattr(self, stage)))]
        return names + ["tap_pool"]

    def forward(self, x, is_feat=False, preact=False):
        x = self.tap_stem(self.relu(self.bn1(self.conv1(x))))
        f0 = x
        x, f1_pre = self.layer1(x)
        f1 = x
        x, f2_pre = self.layer2(x)
        f2 = x
        x, f3_pre = self.layer3(x)
        f3 = x
        x = self.avgpool(x)
        x = self.tap_pool(x.flatten(1))
        f4 = x
        x = self.fc(x)
        return stage_outputs(x, [f0, f1, f2, f3, f4], [f0, f1_pre, f2_pre, f3_pre, f4], is_feat, preact)


def resnet8(**kwargs):
    return ResNet(8, [16, 16, 32, 64], "basicblock", **kwargs)


def resnet14(**kwargs):
    return ResNet(14, [16, 16, 32, 64], "basicblock", **kwargs)


def resnet20(**kwargs):
    return ResNet(20, [16, 16, 32, 64], "basicblock", **kwargs)


def resnet32(**kwargs):
    return ResNet(32, [16, 16, 32, 64], "basicblock", **kwargs)


def resnet44(**kwargs):
    return ResNet(44, [16, 16, 32, 64], "basicblock", **kwargs)


def resnet56(**kwargs):
    return ResNet(56, [16, 16, 32, 64], "basicblock", **kwargs)


def resnet110(**kwargs):
    return ResNet(110, [16, 16, 32, 64], "basicblock", **kwargs)


def resnet8x4(**kwargs):
    return ResNet(8, [32, 64, 128, 256], "basicblock", **kwargs)


def resnet32x4(**kwargs):
    return ResNet(32, [32, 64, 128, 256], "basicblock", **kwargs)
