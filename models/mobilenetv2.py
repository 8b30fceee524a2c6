"""CIFAR MobileNetV2 (RepDistiller's ``mobile_half``: expansion T=6, width 0.5) and SimKD's
``MobileNetV2_1_0`` (width 1.0).

Keys, shapes and stage features are those of RepDistiller's ``models/mobilenetv2.py``:

    conv1.{0,1}, blocks.{s}.{i}.conv.{0,1,3,4,6,7}, conv2.{0,1}, classifier.0

(the classifier is a one-element Sequential, hence ``classifier.0``; ``get_classifier()`` returns that
Linear). Stage features: the stem, then the outputs of blocks 1, 2, 4 and 6, then the pooled vector.
``preact`` is accepted and ignored, as in RepDistiller. Unlike RepDistiller, construction prints nothing.
"""
from __future__ import annotations

from torch import nn

from .layers import Tap, stage_outputs

__all__ = ["MobileNetV2", "mobilenetv2_T_w", "mobile_half", "mobile_half_double"]


def conv_bn(inp, oup, stride):
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def conv_1x1_bn(inp, oup):
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection; residual when shapes allow."""

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    input_shape = (3, 32, 32)

    # t (expansion), c (channels), n (blocks), s (first stride)
    def __init__(self, T, feature_dim, input_size=32, width_mult=1.0, remove_avg=False):
        super().__init__()
        if input_size % 32 != 0:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        self.remove_avg = remove_avg
        self.interverted_residual_setting = [
            [1, 16, 1, 1],
            [T, 24, 2, 1],
            [T, 32, 3, 2],
            [T, 64, 4, 2],
            [T, 96, 3, 1],
            [T, 160, 3, 2],
            [T, 320, 1, 1],
        ]
        input_channel = int(32 * width_mult)
        self.conv1 = conv_bn(3, input_channel, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.interverted_residual_setting:
            output_channel = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*stage))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_1x1_bn(input_channel, self.last_channel)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, feature_dim))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        self.tap_pool = Tap()

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, (2.0 / n) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def get_classifier(self):
        return self.classifier[0]

    def get_bn_before_relu(self):
        """Per stage feature (blocks 1, 2, 4, 6), the last block's projection BatchNorm: its output (plus the
        residual where the block has one) is the feature, as mdistiller (OFD reads its affine parameters)."""
        return [self.blocks[i][-1].conv[-1] for i in (1, 2, 4, 6)]

    def layer_names(self):
        names = ["conv1"]
        for s, stage in enumerate(self.blocks):
            names += [f"blocks.{s}.{i}" for i in range(len(stage))]
        return names + ["conv2", "tap_pool"]

    def forward(self, x, is_feat=False, preact=False):
        out = self.conv1(x)
        f0 = out
        out = self.blocks[0](out)
        out = self.blocks[1](out)
        f1 = out
        out = self.blocks[2](out)
        f2 = out
        out = self.blocks[3](out)
        out = self.blocks[4](out)
        f3 = out
        out = self.blocks[5](out)
        out = self.blocks[6](out)
        f4 = out
        out = self.conv2(out)
        if not self.remove_avg:
            out = self.avgpool(out)
        out = self.tap_pool(out.flatten(1))
        f5 = out
        out = self.classifier(out)
        feats = [f0, f1, f2, f3, f4, f5]
        return stage_outputs(out, feats, feats, is_feat, preact)  # RepDistiller: no separate preact


def mobilenetv2_T_w(T, W, feature_dim=100):
    return MobileNetV2(T=T, feature_dim=feature_dim, width_mult=W)


def mobile_half(num_classes=100):
    return mobilenetv2_T_w(6, 0.5, num_classes)


def mobile_half_double(num_classes=100):
    """SimKD's ``MobileNetV2_1_0``: the same network at width 1.0."""
    return mobilenetv2_T_w(6, 1.0, num_classes)
