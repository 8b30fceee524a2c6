"""The strongly augmented second view (``--strong_aug randaugment``): MLKD's RandAugment + Cutout.

MLKD (Jin et al., CVPR 2023) trains on two views of every image. Its code release builds them with
``MultipleApply([weak, strong])`` (``mdistiller/dataset/cifar100.py``; ``imagenet.py`` is the same with
RandomResizedCrop): weak = the usual crop/flip; strong = the same crop/flip drawn independently, then
``RandAugment(2, 10)``, a FixMatch-style implementation that does this:

* 2 ops drawn uniformly *with replacement* (``random.choices``) from the 14 of :data:`OPS`;
* each op's magnitude drawn uniformly in its range (:data:`OPS`); the ``m=10`` argument is stored and
  never read ("deprecated" in its comment): there is no magnitude 10 anywhere;
* then always Cutout: a square of side ``s = u * W / 2`` (u uniform on [0, 1)) centred at ``(cx, cy)``
  drawn by ``np.random.uniform(W)``, which is ``uniform(low=W, high=1)``: uniform on (1, W], not on
  [0, W) (kept here); PIL fills the pixels ``x0 .. int(min(W, x0 + s))`` inclusive (rows alike), where
  ``x0 = int(max(0, cx - s / 2))``, with (125, 123, 114). Grey images (which that code cannot draw on:
  PIL refuses an RGB fill there) get 123, PIL's "L" value of that colour.
* ``Invert`` is defined in that file but not in the list: never applied.

A :class:`Plan` holds every draw of a batch. Two implementations apply it: :func:`apply_pil` (one PIL
image; :class:`PILRandAugment` draws its plan from torch's default RNG, for the torch loader, which seeds
that RNG per sample) and :func:`randaugment_batch` (tensor ops on a uint8 batch on any device, each sample
its own ops and magnitudes, grouped by op; the plan is drawn on the CPU so that grouping needs no device
sync). Given one plan they give the same pixels (tests/test_strong_aug.py: every op, bitwise, Pillow's
16.16 fixed-point rotate/shear included; a Pillow build that fuses the blend's multiply-add could differ
by 1 where a value lands on an integer). Ops run at the dataset's native size and channels, before the
adaptation to the model's shape, as the weak view's crop/flip does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from helper.errors import ConfigError

# (name, low, high): MLKD's augment_list(), in its order
OPS = (("AutoContrast", 0, 1), ("Brightness", 0.05, 0.95), ("Color", 0.05, 0.95), ("Contrast", 0.05, 0.95),
       ("Equalize", 0, 1), ("Identity", 0, 1), ("Posterize", 4, 8), ("Rotate", -30, 30),
       ("Sharpness", 0.05, 0.95), ("ShearX", -0.3, 0.3), ("ShearY", -0.3, 0.3), ("Solarize", 0, 256),
       ("TranslateX", -0.3, 0.3), ("TranslateY", -0.3, 0.3))
N_OPS = 2
FILL_RGB = (125, 123, 114)
FILL_GREY = 123  # (125 * 19595 + 123 * 38470 + 114 * 7471 + 2**15) >> 16, PIL's RGB -> L
_LOW = torch.tensor([lo for _, lo, _ in OPS], dtype=torch.float64)
_HIGH = torch.tensor([hi for _, _, hi in OPS], dtype=torch.float64)


def strong_view_asked(opt, dali_mode=None) -> bool:
    """Whether ``opt.strong_aug`` asks for the second view ('none' or missing: no; 'randaugment': yes)."""
    name = getattr(opt, "strong_aug", None) or "none"
    if name == "none":
        return False
    if name != "randaugment":
        raise ConfigError(f"--strong_aug must be none or randaugment, got {name!r}")
    if dali_mode:
        raise ConfigError("--strong_aug is not available with --dali; use --loader tensor or torch")
    return True


@dataclass
class Plan:
    """The draws of ``n`` samples: ``ops`` (n, 2) indices into OPS, ``mags`` (n, 2) their magnitudes,
    ``cut`` (n, 3) the Cutout square's side and centre (s, cx, cy) in pixels."""

    ops: torch.Tensor
    mags: torch.Tensor
    cut: torch.Tensor

    def __getitem__(self, i) -> "Plan":
        return Plan(self.ops[i], self.mags[i], self.cut[i])


def draw_plan(n: int, height: int, width: int, generator: torch.Generator | None = None) -> Plan:
    """MLKD's draws for ``n`` images of ``height`` x ``width`` from a CPU generator (None: torch's default)."""
    ops = torch.randint(0, len(OPS), (n, N_OPS), generator=generator)
    u = torch.rand(n, N_OPS, generator=generator, dtype=torch.float64)
    mags = _LOW[ops] + (_HIGH[ops] - _LOW[ops]) * u
    c = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    side = c[:, 0] * 0.5 * width
    cx = width + (1.0 - width) * c[:, 1]  # np.random.uniform(W): low=W, high=1
    cy = height + (1.0 - height) * c[:, 2]
    return Plan(ops, mags, torch.stack([side, cx, cy], 1))


def _cutout_box(s: float, cx: float, cy: float, w: int, h: int) -> tuple:
    x0, y0 = int(max(0.0, cx - s / 2.0)), int(max(0.0, cy - s / 2.0))
    return x0, y0, min(w, x0 + s), min(h, y0 + s)


# ------------------------------------------------------------------------------------------ PIL
def pil_op(img, k: int, v: float):
    """Op ``k`` of OPS at magnitude ``v`` on a PIL image (mode L or RGB), as MLKD's code calls PIL."""
    from PIL import Image, ImageEnhance, ImageOps

    name = OPS[k][0]
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return getattr(ImageEnhance, name)(img).enhance(v)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Identity":
        return img
    if name == "Posterize":
        return ImageOps.posterize(img, max(1, int(v)))
    if name == "Rotate":
        return img.rotate(v)
    if name == "Solarize":
        return ImageOps.solarize(img, v)
    w, h = img.size
    affine = {"ShearX": (1, v, 0, 0, 1, 0), "ShearY": (1, 0, 0, v, 1, 0),
              "TranslateX": (1, 0, v * w, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, v * h)}[name]
    return img.transform(img.size, Image.AFFINE, affine)


def apply_pil(img, plan: Plan):
    """One image's plan (``plan`` of a single sample: ops (2,), mags (2,), cut (3,)) on a PIL image."""
    from PIL import ImageDraw

    for k, v in zip(plan.ops.tolist(), plan.mags.tolist()):
        img = pil_op(img, k, v)
    s, cx, cy = plan.cut.tolist()
    if s <= 0:
        return img
    img = img.copy()
    ImageDraw.Draw(img).rectangle(_cutout_box(s, cx, cy, *img.size), FILL_GREY if img.mode == "L" else FILL_RGB)
    return img


class PILRandAugment:
    """torchvision-style transform: RandAugment(2, 10) + Cutout on a PIL image, drawn from torch's default
    RNG (which the torch loader seeds per sample and stream)."""

    def __call__(self, img):
        w, h = img.size
        return apply_pil(img, draw_plan(1, h, w)[0])

    def __repr__(self) -> str:
        return "PILRandAugment(n=2, MLKD ranges, Cutout)"


# ------------------------------------------------------------------------------------------ tensor
def _grey(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L in integers (rounded ITU-R 601-2 luma); a 1-channel batch as is. int32 (n, 1, H, W)."""
    if x.shape[1] == 1:
        return x.int()
    r, g, b = x.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend(degenerate, x, f): ``d + f * (x - d)`` in float32, clipped, truncated."""
    d = degenerate.float()
    f = f.float().view(-1, 1, 1, 1)
    return (d + f * (x.float() - d)).clamp_(0, 255).to(torch.uint8)


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageFilter.SMOOTH: (3x3 sum + 4 * centre) / 13, rounded (never a tie), border pixels kept.
    In integers, so exactly PIL's float result."""
    h, w = x.shape[2:]
    p = x.short()
    s = 5 * p[:, :, 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            if dy != 1 or dx != 1:
                s = s + p[:, :, dy:dy + h - 2, dx:dx + w - 2]
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = torch.div(s + 6, 13, rounding_mode="floor").to(torch.uint8)
    return out


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Per channel: [lo, hi] -> [0, 255] by PIL's lut ``int(i * 255 / (hi - lo) - lo * scale)``."""
    lo = x.amin((2, 3), keepdim=True).double()
    hi = x.amax((2, 3), keepdim=True).double()
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp_(min=1)  # a true division, like Python's
    out = (x.double() * scale - lo * scale).trunc_().clamp_(0, 255).to(torch.uint8)
    return torch.where(hi > lo, out, x)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Per channel, PIL's ImageOps.equalize: ``lut[i] = (step // 2 + #{pixels < i}) // step`` with
    ``step = (#pixels - #pixels at the highest value) // 255``; identity when step is 0."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    top = 255 - (hist.flip(1) > 0).long().argmax(1, keepdim=True)  # highest value present
    step = (h * w - hist.gather(1, top)) // 255
    below = hist.cumsum(1) - hist
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp_(max=255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device))
    return lut.gather(1, flat).to(torch.uint8).view(n, c, h, w)


def _affine(x: torch.Tensor, m: torch.Tensor, fixed: bool) -> torch.Tensor:
    """PIL's Image.transform(AFFINE, m, NEAREST) per sample (``m``: (n, 6) float64), zero outside: output
    pixel (i, j) reads input ``(floor(a(j+.5) + b(i+.5) + c), floor(d(j+.5) + e(i+.5) + f))``. Pillow
    computes this in 16.16 fixed point when the map rotates or shears (``fixed``), reproduced exactly, and
    in float64 for pure translations (equal to the integer shift here but for a last-bit tie)."""
    n, c, h, w = x.shape
    dev = x.device
    xs = torch.arange(w, device=dev).view(1, 1, w)
    ys = torch.arange(h, device=dev).view(1, h, 1)
    a, b, cc, d, e, f = (t.view(n, 1, 1) for t in m.unbind(1))
    if fixed:  # Pillow's affine_fixed: FIX(v) = floor(v * 65536 + 0.5), source = (sum) >> 16
        def fix(v):
            return (v * 65536.0 + 0.5).floor().long()

        xin = (fix(cc + a * 0.5 + b * 0.5) + ys * fix(b) + xs * fix(a)) >> 16
        yin = (fix(f + d * 0.5 + e * 0.5) + ys * fix(e) + xs * fix(d)) >> 16
    else:  # a translation (a = e = 1, b = d = 0): floor(j + .5 + c) = j + floor(c + .5)
        xin = xs + (cc + 0.5).floor().long()
        yin = ys + (f + 0.5).floor().long()
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    src = (yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)).expand(n, h, w)
    out = x.reshape(n, c, h * w).gather(2, src.reshape(n, 1, h * w).expand(n, c, h * w)).view(n, c, h, w)
    return out * inside.unsqueeze(1)


def _affine_matrix(name: str, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    if name == "Rotate":  # PIL's Image.rotate: about the centre (w/2, h/2), counter-clockwise in degrees
        t = -v * (math.pi / 180)
        cos, sin = torch.cos(t), torch.sin(t)
        cx, cy = w / 2.0, h / 2.0
        return torch.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy], 1)
    rows = {"ShearX": (one, v, zero, zero, one, zero), "ShearY": (one, zero, zero, v, one, zero),
            "TranslateX": (one, zero, v * w, zero, one, zero), "TranslateY": (one, zero, zero, zero, one, v * h)}
    return torch.stack(rows[name], 1)


def tensor_op(x: torch.Tensor, k: int, v: torch.Tensor) -> torch.Tensor:
    """Op ``k`` of OPS on a uint8 batch (n, C, H, W) with per-sample magnitudes ``v`` (n,) float64."""
    name = OPS[k][0]
    n, c, h, w = x.shape
    if name == "AutoContrast":
        return _autocontrast(x)
    if name == "Brightness":
        return _blend(torch.zeros_like(x), x, v)
    if name == "Color":
        return _blend(_grey(x).expand_as(x), x, v)
    if name == "Contrast":
        mean = (_grey(x).double().mean((1, 2, 3)) + 0.5).floor()
        return _blend(mean.view(n, 1, 1, 1).expand_as(x), x, v)
    if name == "Sharpness":
        return _blend(_smooth(x), x, v)
    if name == "Equalize":
        return _equalize(x)
    if name == "Identity":
        return x
    if name == "Posterize":
        bits = v.floor().clamp(min=1).long()
        mask = (torch.full_like(bits, 255).bitwise_left_shift(8 - bits) & 255).to(torch.uint8)
        return x & mask.view(n, 1, 1, 1)
    if name == "Solarize":  # i < v for integer i  <=>  i < ceil(v)
        return torch.where(x.int() < v.ceil().int().view(n, 1, 1, 1), x, 255 - x)
    return _affine(x, _affine_matrix(name, v, h, w), fixed=name in ("Rotate", "ShearX", "ShearY"))


def cutout(x: torch.Tensor, cut: torch.Tensor, fill) -> torch.Tensor:
    """Fill each sample's Cutout square (``cut`` (n, 3) float64: side, cx, cy), PIL's rectangle rule."""
    n, c, h, w = x.shape
    s, cx, cy = cut.unbind(1)
    x0, y0 = (cx - s / 2).clamp(min=0).floor(), (cy - s / 2).clamp(min=0).floor()
    x1, y1 = (x0 + s).clamp(max=w).floor(), (y0 + s).clamp(max=h).floor()
    on = (s > 0).view(n, 1)
    cols, rows = torch.arange(w, device=x.device), torch.arange(h, device=x.device)
    in_x = (cols >= x0.long().view(n, 1)) & (cols <= x1.long().view(n, 1)) & on
    in_y = (rows >= y0.long().view(n, 1)) & (rows <= y1.long().view(n, 1))
    box = (in_y.view(n, 1, h, 1) & in_x.view(n, 1, 1, w))
    value = torch.tensor(fill, dtype=torch.uint8).to(x.device, non_blocking=True).view(1, -1, 1, 1)
    return torch.where(box, value, x)


def randaugment_batch(x: torch.Tensor, plan: Plan, fill) -> torch.Tensor:
    """``plan`` (on the CPU) on a uint8 batch (n, C, H, W) on any device: each op runs once per round on
    the samples that drew it; ``fill`` is the Cutout colour (C values)."""
    dev = x.device
    mags, cut = plan.mags.to(dev, non_blocking=True), plan.cut.to(dev, non_blocking=True)
    for j in range(plan.ops.shape[1]):
        col = plan.ops[:, j]
        counts = torch.bincount(col, minlength=len(OPS)).tolist()
        order = torch.argsort(col, stable=True).to(dev, non_blocking=True)
        out, start = torch.empty_like(x), 0
        for k, cnt in enumerate(counts):
            if cnt:
                idx = order[start:start + cnt]
                out.index_copy_(0, idx, tensor_op(x.index_select(0, idx), k, mags.index_select(0, idx)[:, j]))
                start += cnt
        x = out
    return cutout(x, cut, fill)


class StrongBatchTransform:
    """uint8 batch -> the normalised strong view: ``base``'s crop/flip (drawn from the strong stream's
    generator), RandAugment + Cutout per sample, then ``base``'s adaptation and normalisation."""

    def __init__(self, base, channels: int):
        self.base = base
        self.fill = FILL_RGB if channels == 3 else (FILL_GREY,) * channels

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.base.augment(x, generator)
        plan = draw_plan(x.shape[0], x.shape[2], x.shape[3], generator)
        return self.base.finish(randaugment_batch(x, plan, self.fill))
