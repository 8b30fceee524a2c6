"""The small networks of the seed notebooks.

* ``cnn_mnist_teacher`` / ``cnn_mnist_student`` (seeds/000, MNIST 1x28x28): a ``features`` Sequential,
  ``fc1`` (the hidden embedding, ReLU'd) and ``fc2``; no BatchNorm. Keys are the notebook's, so its
  state_dicts load. Stage features: the first conv unit, then the output of each max-pool, then the
  fc1 hidden vector (512-d teacher, 128-d student), so teacher and student lists have the same length
  and matching spatial sizes (28, 14, 7).
* ``VGGCifar9`` / ``VGGCifar5`` (seeds/004, CIFAR 3x32x32): a ``backbone`` Sequential of named
  conv/bn/relu/pool modules and a ``classifier`` Linear on the global mean; keys are the notebook's,
  so its pretrained CIFAR-10 VGG state_dict loads. Stage features: the output of each pool, then the
  pooled vector (``feats[-2]`` is the final 2x2 conv map: 512 channels teacher, 256 student).

None of these has a pre-activation output distinct from its features: ``preact`` is accepted and ignored.
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import nn

from .layers import Tap, stage_outputs

__all__ = ["MnistCNN", "cnn_mnist_teacher", "cnn_mnist_student", "VGGCifar", "VGGCifar9", "VGGCifar5"]


class MnistCNN(nn.Module):
    """``features`` (Conv-ReLU units and MaxPools) -> flatten -> ReLU(fc1) -> fc2."""
    input_shape = (1, 28, 28)

    def __init__(self, plan, hidden, num_classes=10):
        super().__init__()
        layers, in_ch, side = [], 1, 28
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                side //= 2
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU()]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(in_ch * side * side, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.tap_hidden = Tap()
        # features: the first ReLU (stem) and every MaxPool (end of a stage)
        first_relu = next(i for i, m in enumerate(self.features) if isinstance(m, nn.ReLU))
        self._feat_idx = [first_relu] + [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]

    def get_classifier(self):
        return self.fc2

    def layer_names(self):
        # each conv unit ends with its (out-of-place) ReLU; then the hidden embedding
        relus = [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.ReLU)]
        return relus + ["tap_hidden"]

    def forward(self, x, is_feat=False, preact=False):
        feats = []
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self._feat_idx:
                feats.append(x)
        x = self.tap_hidden(F.relu(self.fc1(x.flatten(1))))
        feats.append(x)
        x = self.fc2(x)
        return stage_outputs(x, feats, feats, is_feat, preact)  # no pre-activation variant


def cnn_mnist_teacher(num_classes=10):
    """seeds/000 TeacherModel: 3 convs (32, 64, 128), hidden 512."""
    return MnistCNN([32, 64, "M", 128, "M"], hidden=512, num_classes=num_classes)


def cnn_mnist_student(num_classes=10):
    """seeds/000 StudentModel: 2 convs (16, 32), hidden 128."""
    return MnistCNN([16, "M", 32, "M"], hidden=128, num_classes=num_classes)


class VGGCifar(nn.Module):
    """``backbone``: conv{k}-bn{k}-relu{k} units, pool{j} after the units listed in ``pool_after``."""
    input_shape = (3, 32, 32)

    def __init__(self, widths, pool_after, num_classes=10):
        super().__init__()
        mods, in_ch, p = [], 3, 0
        for k, v in enumerate(widths):
            mods += [(f"conv{k}", nn.Conv2d(in_ch, v, 3, padding=1, bias=False)),
                     (f"bn{k}", nn.BatchNorm2d(v)),
                     (f"relu{k}", nn.ReLU(True))]
            in_ch = v
            if k in pool_after:
                mods.append((f"pool{p}", nn.MaxPool2d(2)))
                p += 1
        self.backbone = nn.Sequential(OrderedDict(mods))
        self.classifier = nn.Linear(in_ch, num_classes)
        self.tap_pool = Tap()
        self._pool_names = {f"pool{j}" for j in range(p)}

    def get_classifier(self):
        return self.classifier

    def layer_names(self):
        relus = [f"backbone.{n}" for n, m in self.backbone.named_children() if isinstance(m, nn.ReLU)]
        return relus + ["tap_pool"]

    def forward(self, x, is_feat=False, preact=False):
        feats = []
        for name, m in self.backbone.named_children():
            x = m(x)
            if name in self._pool_names:
                feats.append(x)
        x = self.tap_pool(x.mean([2, 3]))
        feats.append(x)
        x = self.classifier(x)
        return stage_outputs(x, feats, feats, is_feat, preact)  # no pre-activation variant


def VGGCifar9(num_classes=10):
    """seeds/004 teacher: 8 convs (64, 128, 256, 256, 512, 512, 512, 512), 4 pools; 9,228,362 params."""
    return VGGCifar([64, 128, 256, 256, 512, 512, 512, 512], pool_after={1, 3, 5, 7}, num_classes=num_classes)


def VGGCifar5(num_classes=10):
    """seeds/004 student: 4 convs (64, 128, 256, 256), a pool after each; 964,170 params."""
    return VGGCifar([64, 128, 256, 256], pool_after={0, 1, 2, 3}, num_classes=num_classes)
