"""CIFAR VGG with BatchNorm (vgg8, vgg11, vgg13, vgg16, vgg19), in RepDistiller's five-block layout.

Keys, shapes and stage features are those of RepDistiller's ``models/vgg.py``:

    block{0..4}.{3j}.{weight,bias} (conv), block{0..4}.{3j+1}.* (BN), classifier

Each block is conv-BN-ReLU units with the last ReLU left out (applied in forward, so ``preact`` can
return the block output before it). Max-pools between blocks; ``pool3`` only runs for 64x64 inputs (as
in RepDistiller), so CIFAR features are 64@32, 128@16, 256@8, 512@4, 512@4, then the 512-d pooled vector.
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from .layers import Tap, stage_outputs

__all__ = ["VGG", "vgg8", "vgg8_bn", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn",
           "vgg19", "vgg19_bn"]

cfg = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
    "S": [[64], [128], [256], [512], [512]],
}


def _make_block(widths, batch_norm, in_channels):
    layers = []
    for v in widths:
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    return nn.Sequential(*layers[:-1])  # the block's last ReLU is applied in forward


class VGG(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, cfg, batch_norm=False, num_classes=100):
        super().__init__()
        self.block0 = _make_block(cfg[0], batch_norm, 3)
        self.block1 = _make_block(cfg[1], batch_norm, cfg[0][-1])
        self.block2 = _make_block(cfg[2], batch_norm, cfg[1][-1])
        self.block3 = _make_block(cfg[3], batch_norm, cfg[2][-1])
        self.block4 = _make_block(cfg[4], batch_norm, cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        # one Tap per block, after its functional last ReLU; one for the pooled vector
        self.taps = nn.ModuleList([Tap() for _ in range(5)])
        self.tap_pool = Tap()
        self.classifier = nn.Linear(512, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / n))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _blocks(self):
        return [self.block0, self.block1, self.block2, self.block3, self.block4]

    def get_classifier(self):
        return self.classifier

    def get_bn_before_relu(self):
        """Per stage 1-4, the block's last module: the BatchNorm whose output is the stage's pre-activation
        feature (as mdistiller; OFD reads its affine parameters). A VGG built without BatchNorm has none."""
        bns = [block[-1] for block in self._blocks()[1:]]
        if not all(isinstance(bn, nn.BatchNorm2d) for bn in bns):
            raise NotImplementedError("this VGG has no BatchNorm: its stage outputs come from convolutions")
        return bns

    def layer_names(self):
        names = []
        for b, block in enumerate(self._blocks()):
            # the in-block ReLUs end the conv units but the last; the Tap ends the last unit
            names += [f"block{b}.{i}" for i, m in enumerate(block) if isinstance(m, nn.ReLU)]
            names.append(f"taps.{b}")
        return names + ["tap_pool"]

    def forward(self, x, is_feat=False, preact=False):
        h = x.shape[2]
        x = self.taps[0](F.relu(self.block0(x)))
        f0 = x
        x = self.pool0(x)
        x = self.block1(x)
        f1_pre = x
        x = self.taps[1](F.relu(x))
        f1 = x
        x = self.pool1(x)
        x = self.block2(x)
        f2_pre = x
        x = self.taps[2](F.relu(x))
        f2 = x
        x = self.pool2(x)
        x = self.block3(x)
        f3_pre = x
        x = self.taps[3](F.relu(x))
        f3 = x
        if h == 64:
            x = self.pool3(x)
        x = self.block4(x)
        f4_pre = x
        x = self.taps[4](F.relu(x))
        f4 = x
        x = self.tap_pool(self.pool4(x).flatten(1))
        f5 = x
        x = self.classifier(x)
        return stage_outputs(x, [f0, f1, f2, f3, f4, f5], [f0, f1_pre, f2_pre, f3_pre, f4_pre, f5], is_feat, preact)


def vgg8_bn(**kwargs):
    return VGG(cfg["S"], batch_norm=True, **kwargs)


def vgg11_bn(**kwargs):
    return VGG(cfg["A"], batch_norm=True, **kwargs)


def vgg13_bn(**kwargs):
    return VGG(cfg["B"], batch_norm=True, **kwargs)


def vgg16_bn(**kwargs):
    return VGG(cfg["D"], batch_norm=True, **kwargs)


def vgg19_bn(**kwargs):
    return VGG(cfg["E"], batch_norm=True, **kwargs)


# RepDistiller's model_dict maps the plain names to the BN variants
vgg8, vgg11, vgg13, vgg16, vgg19 = vgg8_bn, vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn
