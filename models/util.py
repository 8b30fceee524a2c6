"""Trainable connectors that distillers own (regressors, embeddings, attention heads).

They are built from the shapes of a probe forward pass and trained with the student. Shapes are
read with ``shape[-3:]`` / ``shape[1:]`` so that both a torch.Size from a probe and a plain tuple work.
"""
from __future__ import annotations

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
