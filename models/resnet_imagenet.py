"""ImageNet ResNet18 / 34 / 50 (model_dict names ``ResNet{18,34,50}_imagenet``).

State_dict keys and shapes are exactly torchvision's ``resnet18/34/50`` (7x7 stride-2 stem, max-pool,
``layer{1..4}.{i}.downsample.{0,1}``, head ``fc``; Bottleneck strides in its 3x3 conv, "v1.5"), so
``model.load_state_dict(torchvision.models.resnet50(weights=...).state_dict())`` works strictly.
Unlike torchvision, forward takes ``is_feat`` / ``preact`` (SemCKD/SimKD convention: stem after the
max-pool, the four stage outputs, the pooled vector) and the final ReLU of a block is out of place,
so that the pre-activation of the last block of a stage can be returned.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .layers import Tap, stage_outputs

__all__ = ["ResNetImageNet", "ResNet18_imagenet", "ResNet34_imagenet", "ResNet50_imagenet"]


def _downsample(inplanes, outplanes, stride):
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(
        nn.Conv2d(inplanes, outplanes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(outplanes),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        preact = out + (x if self.downsample is None else self.downsample(x))
        out = F.relu(preact)
        if self.is_last:
            return out, preact
        return out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        preact = out + (x if self.downsample is None else self.downsample(x))
        out = F.relu(preact)
        if self.is_last:
            return out, preact
        return out


class ResNetImageNet(nn.Module):
    input_shape = (3, 224, 224)

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.tap_stem = Tap()
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.tap_pool = Tap()
        self.fc = nn.Linear(512 * block.expansion, num_classes)

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

    def _make_layer(self, block, planes, blocks, stride=1):
        layers = []
        for i in range(blocks):
            layers.append(block(self.inplanes, planes, stride if i == 0 else 1, is_last=(i == blocks - 1)))
            self.inplanes = planes * block.expansion
        return nn.Sequential(*layers)

    def get_classifier(self):
        return self.fc

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
        x = self.tap_stem(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        f0 = x
        x, f1_pre = self.layer1(x)
        f1 = x
        x, f2_pre = self.layer2(x)
        f2 = x
        x, f3_pre = self.layer3(x)
        f3 = x
        x, f4_pre = self.layer4(x)
        f4 = x
        x = self.tap_pool(self.avgpool(x).flatten(1))
        f5 = x
        x = self.fc(x)
        return stage_outputs(x, [f0, f1, f2, f3, f4, f5], [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5], is_feat, preact)


def ResNet18_imagenet(**kwargs):
    return ResNetImageNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def ResNet34_imagenet(**kwargs):
    return ResNetImageNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def ResNet50_imagenet(**kwargs):
    return ResNetImageNet(Bottleneck, [3, 4, 6, 3], **kwargs)
