"""Trainable connectors that distillers own (regressors, embeddings, attention heads).

They are built from the shapes of a probe forward pass and trained with the student. Shapes are
read with ``shape[-3:]`` / ``shape[1:]`` so that both a torch.Size from a probe and a plain tuple work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helper.errors import ConfigError


# ---- FitNet (hint) and its seed variants ---------------------------------------------------------

def convreg_plan(s_hw: tuple, t_hw: tuple):
    """How :class:`ConvReg` maps a student map of size ``s_hw`` onto a teacher map of size ``t_hw``.

    RepDistiller's rule, decided on the height: ``"down"`` (3x3 conv, stride 2) if s_H = 2 t_H,
    ``"up"`` (4x4 transposed conv, stride 2) if 2 s_H = t_H, ``"valid"`` (conv with kernel
    1 + s - t) if s_H >= t_H. The width must come out right under the same rule, else ``None``.
    """
    (s_h, s_w), (t_h, t_w) = s_hw, t_hw
    if s_h == 2 * t_h:
        plan, out_w = "down", (s_w - 1) // 2 + 1
    elif 2 * s_h == t_h:
        plan, out_w = "up", 2 * s_w
    elif s_h >= t_h:
        plan, out_w = "valid", (t_w if s_w >= t_w else None)
    else:
        return None
    return plan if out_w == t_w else None


class ConvReg(nn.Module):
    """FitNet's convolutional regressor (RepDistiller's ``ConvReg``): conv, BN, optional ReLU.

    ``s_shape``/``t_shape``: (..., C, H, W) of the student and teacher maps. A size pair that none of
    :func:`convreg_plan`'s rules covers raises :class:`ConfigError` (RepDistiller raises
    ``NotImplemented(...)`` there, which is itself a TypeError).
    """

    def __init__(self, s_shape, t_shape, use_relu: bool = True):
        super().__init__()
        s_c, s_h, s_w = (int(v) for v in s_shape[-3:])
        t_c, t_h, t_w = (int(v) for v in t_shape[-3:])
        plan = convreg_plan((s_h, s_w), (t_h, t_w))
        if plan == "down":
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif plan == "up":
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif plan == "valid":
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ConfigError(f"ConvReg cannot map a {s_h}x{s_w} student map to a {t_h}x{t_w} teacher map "
                              "(needs s_H = 2 t_H, 2 s_H = t_H or s_H >= t_H, the width following the same rule)")
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU(inplace=True) if use_relu else nn.Identity()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class ConvBNReg(nn.Module):
    """seeds/004's hint regressor: 3x3 conv (padding 1, no bias) then BatchNorm, no ReLU; keeps H x W."""

    def __init__(self, s_channels: int, t_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(s_channels, t_channels, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(t_channels)

    def forward(self, x):
        return self.bn(self.conv(x))


class LinearBNReg(nn.Module):
    """seeds/000's regressor for vector features: Linear then BatchNorm1d (input flattened)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.bn = nn.BatchNorm1d(dim_out)

    def forward(self, x):
        return self.bn(self.linear(x.flatten(1)))


# ---- CC ----------------------------------------------------------------------------------------------

class LinearEmbed(nn.Module):
    """Flatten, then one Linear layer (RepDistiller's ``LinearEmbed``; CC's 128-d embeddings)."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return self.linear(x.flatten(1))


# ---- AB (Heo et al. 2019, "Knowledge Transfer via Distillation of Activation Boundaries") ----------

class Connector(nn.Module):
    """AB's per-layer connectors: identity where channels and height already match, else
    :class:`ConvReg` without ReLU (conv + BN), as RepDistiller's ``Connector``."""

    def __init__(self, s_shapes, t_shapes):
        super().__init__()
        if len(s_shapes) != len(t_shapes):
            raise ConfigError(f"AB pairs student and teacher stages one to one: {len(s_shapes)} student "
                              f"vs {len(t_shapes)} teacher stages")
        self.connectors = nn.ModuleList([
            nn.Identity() if tuple(s[-3:-1]) == tuple(t[-3:-1]) else ConvReg(s, t, use_relu=False)
            for s, t in zip(s_shapes, t_shapes)])

    def forward(self, feats):
        return [c(f) for c, f in zip(self.connectors, feats)]


# ---- FT (Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor Transfer") --

def _conv_lrelu(c_in, c_out, bn: bool, transpose: bool = False) -> list:
    conv = (nn.ConvTranspose2d if transpose else nn.Conv2d)(c_in, c_out, kernel_size=3, stride=1, padding=1)
    return [conv] + ([nn.BatchNorm2d(c_out)] if bn else []) + [nn.LeakyReLU(0.1, inplace=True)]


class Paraphraser(nn.Module):
    """Teacher-side autoencoder: 3 conv (C -> C -> rC -> rC), then 3 transposed conv back to C, each
    followed by LeakyReLU(0.1); no BN. ``encode`` gives the teacher factor, ``forward`` (factor, reconstruction)."""

    def __init__(self, t_channels: int, rate: float = 0.5, use_bn: bool = False):
        super().__init__()
        c, f = int(t_channels), int(t_channels * rate)
        self.encoder = nn.Sequential(*_conv_lrelu(c, c, use_bn), *_conv_lrelu(c, f, use_bn),
                                     *_conv_lrelu(f, f, use_bn))
        self.decoder = nn.Sequential(*_conv_lrelu(f, f, use_bn, True), *_conv_lrelu(f, c, use_bn, True),
                                     *_conv_lrelu(c, c, use_bn, True))

    def encode(self, x):
        return self.encoder(x)

    def forward(self, x):
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """Student-side encoder to the teacher factor's width (r * C_t): 3 conv, each + BN + LeakyReLU(0.1)."""

    def __init__(self, s_channels: int, t_channels: int, rate: float = 0.5, use_bn: bool = True):
        super().__init__()
        c, f = int(s_channels), int(t_channels * rate)
        self.encoder = nn.Sequential(*_conv_lrelu(c, c, use_bn), *_conv_lrelu(c, f, use_bn),
                                     *_conv_lrelu(f, f, use_bn))

    def forward(self, x):
        return self.encoder(x)


# ---- CRD (Tian et al. 2020, "Contrastive Representation Distillation") ---------------------------

class Embed(nn.Module):
    """Flatten, Linear(dim_in, dim_out), L2-normalise each row (the norm taken in float32)."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return F.normalize(self.linear(x.flatten(1)).float(), dim=1)


# ---- SemCKD (Chen et al. 2021, "Cross-Layer Distillation with Semantic Calibration") ---------------

def pool_to_smaller(a, b):
    """Average-pool whichever of two maps is larger (decided on the height, as RepDistiller/SemCKD/SimKD)
    to the other's spatial size; equal heights leave both unchanged."""
    if a.shape[2] > b.shape[2]:
        a = F.adaptive_avg_pool2d(a, tuple(b.shape[2:]))
    elif a.shape[2] < b.shape[2]:
        b = F.adaptive_avg_pool2d(b, tuple(a.shape[2:]))
    return a, b


class GramEmbed(nn.Module):
    """SemCKD's query/key MLP on the rows of a BxB Gram matrix: Linear(B, 2*(B//4)), ReLU,
    Linear(2*(B//4), B//4), L2-normalise."""

    def __init__(self, batch_size: int):
        super().__init__()
        out = int(batch_size) // 4
        self.linear1 = nn.Linear(batch_size, 2 * out)
        self.linear2 = nn.Linear(2 * out, out)

    def forward(self, gram):
        return F.normalize(self.linear2(F.relu(self.linear1(gram))), dim=1)


class AAEmbed(nn.Module):
    """SemCKD's regressor for one (student layer, teacher layer) pair: 1x1 conv s -> 2t, BN, ReLU,
    3x3 conv 2t -> 2t, BN, ReLU, 1x1 conv 2t -> t (convolutions without bias)."""

    def __init__(self, s_channels: int, t_channels: int):
        super().__init__()
        mid = 2 * int(t_channels)
        self.regressor = nn.Sequential(
            nn.Conv2d(s_channels, mid, kernel_size=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, t_channels, kernel_size=1, bias=False))

    def forward(self, x):
        return self.regressor(x)


class SelfA(nn.Module):
    """SemCKD's semantic calibration: which teacher layer each student layer should mimic, per sample.

    Student layer i has a query MLP and teacher layer j a key MLP, both reading that layer's BxB Gram
    matrix ``G = F F^T`` (F: the batch's maps flattened per sample), so the MLP width is the batch size;
    ``att[b, i, j] = softmax_j(q_i[b] . k_j[b] / soft)``. Each pair (i, j) has its own :class:`AAEmbed`,
    applied to the student map after spatial alignment (:func:`pool_to_smaller`).
    """

    def __init__(self, batch_size: int, s_channels, t_channels):
        super().__init__()
        self.batch_size = int(batch_size)
        self.query = nn.ModuleList([GramEmbed(batch_size) for _ in s_channels])
        self.key = nn.ModuleList([GramEmbed(batch_size) for _ in t_channels])
        self.regressors = nn.ModuleList([
            nn.ModuleList([AAEmbed(int(cs), int(ct)) for ct in t_channels]) for cs in s_channels])

    @staticmethod
    def gram(f):
        f = f.reshape(f.shape[0], -1).float()
        return f @ f.t()

    def attention(self, feats_s, feats_t, soft: float = 1.0):
        q = torch.stack([m(self.gram(f)) for m, f in zip(self.query, feats_s)], 1)   # B, s_len, d
        k = torch.stack([m(self.gram(f)) for m, f in zip(self.key, feats_t)], 2)     # B, d, t_len
        return torch.softmax(torch.bmm(q, k) / soft, dim=-1)                           # B, s_len, t_len

    def forward(self, feats_s, feats_t, soft: float = 1.0):
        """(projected student maps [i][j], aligned teacher maps [i][j], attention (B, s_len, t_len))."""
        proj, targets = [], []
        for i, fs in enumerate(feats_s):
            row_p, row_t = [], []
            for j, ft in enumerate(feats_t):
                src, tgt = pool_to_smaller(fs, ft)
                row_p.append(self.regressors[i][j](src))
                row_t.append(tgt)
            proj.append(row_p)
            targets.append(row_t)
        return proj, targets, self.attention(feats_s, feats_t, soft)


# ---- SRRL (Yang et al. 2021, "Knowledge Distillation via Softmax Regression Representation Learning") -

class SRRLTransfer(nn.Module):
    """Student pooled vector -> teacher width: 1x1 conv (no bias) on it as a 1x1 map, BN, ReLU; (B, C_t) out."""

    def __init__(self, s_channels: int, t_channels: int):
        super().__init__()
        self.transfer = nn.Sequential(nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False),
                                      nn.BatchNorm2d(t_channels), nn.ReLU(inplace=True))

    def forward(self, f):
        return self.transfer(f.reshape(f.shape[0], -1, 1, 1)).flatten(1)


# ---- SimKD (Chen et al. 2022, "Knowledge Distillation with the Reused Teacher Classifier") ---------

class SimKDProjector(nn.Module):
    """1x1 conv s -> t/f, BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv -> t, BN, ReLU (convolutions without bias)."""

    def __init__(self, s_channels: int, t_channels: int, factor: int = 2):
        super().__init__()
        mid = int(t_channels) // int(factor)
        self.transfer = nn.Sequential(
            nn.Conv2d(s_channels, mid, kernel_size=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, t_channels, kernel_size=1, bias=False), nn.BatchNorm2d(t_channels),
            nn.ReLU(inplace=True))

    def forward(self, x):
        return self.transfer(x)
