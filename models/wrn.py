"""Wide ResNets for CIFAR (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2), pre-activation blocks.

Keys, shapes and stage features are those of RepDistiller's ``models/wrn.py``:

    conv1, block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2[,convShortcut]}, bn1, fc

Depth d gives (d - 4) / 6 blocks per stage; widths [16, 16k, 32k, 64k] for widen factor k.
``preact=True`` reproduces RepDistiller: a stage output is passed through the BN that follows it (the
next stage's first ``bn1``, or the final ``bn1``). Unlike RepDistiller, that extra BN call does not
update the running statistics a second time in train mode (same output, no side effect).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .layers import Tap, stage_outputs

__all__ = ["WideResNet", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2"]


def _bn_no_stat_update(bn: nn.BatchNorm2d, x):
    """``bn(x)`` without touching ``bn``'s running statistics."""
    use_batch_stats = bn.training or bn.running_mean is None
    return F.batch_norm(x, None if use_batch_stats else bn.running_mean,
                        None if use_batch_stats else bn.running_var,
                        bn.weight, bn.bias, use_batch_stats, 0.0, bn.eps)


class BasicBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv with an identity or 1x1-conv shortcut (from the activated input)."""

    def __init__(self, in_planes, out_planes, stride, drop_rate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x):
        act = self.relu1(self.bn1(x))      # bn1 returns a new tensor: x itself is never modified
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # RepDistiller: identity shortcut adds the raw input, projection shortcut the activated one
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        return shortcut + out


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, block, stride, drop_rate=0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)
        ])

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, depth, num_classes=100, widen_factor=1, dropRate=0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], BasicBlock, 1, dropRate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], BasicBlock, 2, dropRate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], BasicBlock, 2, dropRate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU(inplace=True)
        self.tap_pool = Tap()
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def get_classifier(self):
        return self.fc

    def get_bn_before_relu(self):
        """Per stage, the BatchNorm that makes its pre-activation feature: the next stage's first ``bn1``,
        then the final ``bn1`` (as mdistiller; OFD reads its affine parameters)."""
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def layer_names(self):
        names = ["conv1"]  # the stem is a bare conv: its output is never modified in place
        for stage in ("block1", "block2", "block3"):
            names += [f"{stage}.layer.{i}" for i in range(len(getattr(self, stage).layer))]
        return names + ["tap_pool"]

    def forward(self, x, is_feat=False, preact=False):
        out = self.conv1(x)
        f0 = out
        out = self.block1(out)
        f1 = out
        out = self.block2(out)
        f2 = out
        out = self.block3(out)
        f3 = out
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)
        out = self.tap_pool(out.flatten(1))
        f4 = out
        out = self.fc(out)
        return stage_outputs(out, [f0, f1, f2, f3, f4], lambda: [
            f0, _bn_no_stat_update(self.block2.layer[0].bn1, f1), _bn_no_stat_update(self.block3.layer[0].bn1, f2),
            _bn_no_stat_update(self.bn1, f3), f4], is_feat, preact)


def wrn_16_1(**kwargs):
    return WideResNet(depth=16, widen_factor=1, **kwargs)


def wrn_16_2(**kwargs):
    return WideResNet(depth=16, widen_factor=2, **kwargs)


def wrn_40_1(**kwargs):
    return WideResNet(depth=40, widen_factor=1, **kwargs)


def wrn_40_2(**kwargs):
    return WideResNet(depth=40, widen_factor=2, **kwargs)
