"""Linear CKA between layer representations, written from the definitions.

CKA(K, L) = <K~, L~>_F / (||K~||_F ||L~||_F), with K = X X^T the linear Gram of a batch of
flattened features and K~ its centred version (Kornblith et al., ICML 2019).

* Biased estimator: K~ = H K H, obtained by centring the *features* over the batch
  (Xc = X - mean) and taking Xc Xc^T; no B x B centring matrix is ever built.
* Unbiased estimator: K~ = U(K), the U-centring of Szekely & Rizzo (2014) applied to K with a
  zero diagonal; <U(K), U(L)> / (B (B - 3)) is Song et al.'s (2012) unbiased HSIC_1. Needs B >= 4.
* Minibatch CKA (Nguyen, Raghu & Kornblith, ICLR 2021): sums of HSIC_1 over batches, divided at
  the end (`MinibatchCKA`), for the teacher-layer matrix used by the grouping.

Numerics (every public function follows these rules):

* Computed in float32 (float64 inputs stay float64, for gradcheck and reference tests) inside an
  autocast-disabled region, so fp16/bf16 activations cannot overflow the Gram (max |K| of a
  65536-wide post-ReLU map is ~1e5 > 65504).
* The centred features are divided by their (detached) max |value| before the Gram. CKA is
  invariant to isotropic scale, so value and gradient are unchanged, but the Gram then has a
  known scale and the epsilon below is effectively relative.
* Norms are sqrt(clamp(||K~||^2, min=eps)): the eps sits *inside* the square root, so a batch of
  size 1, constant features (dead ReLU) or all-identical images give CKA 0 with a zero (not NaN)
  gradient. Features are centred as (X - X[0]) - mean, which makes constant columns exactly zero.
* The Gram and cross products are plain matmuls: they use whatever float32 matmul precision the
  caller selected. Keep ``torch.get_float32_matmul_precision()`` at 'highest' (and
  ``torch.backends.cuda.matmul.allow_tf32`` False) for these; TF32 gives ~1e-3 relative error.

Small batches: the biased estimator accepts any B >= 1 (B = 1 gives 0 and B = 2 gives 1 for any
non-constant pair, both with zero gradient: no signal but no crash); the unbiased estimator
raises `ConfigError` (a ValueError) for B < 4, because its normalisation 1/(B(B-3)) is undefined.
"""

from __future__ import annotations

import contextlib
import operator
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from helper.errors import ConfigError

DEFAULT_EPS = 1e-12
MIN_BATCH_UNBIASED = 4

__all__ = [
    "DEFAULT_EPS", "MIN_BATCH_UNBIASED", "gram", "center_gram", "centered_gram", "unit_gram",
    "unit_grams", "linear_cka", "hsic", "cka_matrix", "MinibatchCKA", "cka_from_sums", "bootstrap_cka", "pool_features",
]


# ----------------------------------------------------------------------------- internals

def no_autocast(device: torch.device):
    """Autocast off for this device type: the CKA products must run in float32 or wider."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # device types without autocast support have nothing to disable
        return contextlib.nullcontext()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (reference tests, gradcheck); everything else runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _flatten(x: torch.Tensor, name: str = "features") -> torch.Tensor:
    """(B, ...) -> (B, D) in the compute dtype; a 1-D tensor is B examples of one feature."""
    if not torch.is_tensor(x):
        raise ConfigError(f"{name} must be a torch.Tensor of shape (B, ...), got {type(x).__name__}")
    if x.dim() == 0:
        raise ConfigError(f"{name} is a scalar; pass a tensor of shape (B, ...) with the batch first")
    x = x.reshape(x.shape[0], -1)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ConfigError(f"{name} of shape {tuple(x.shape)} is empty; CKA needs B >= 1 examples "
                          "with at least one feature each")
    return x.to(_compute_dtype(x))


def _check_batch(b: int, unbiased: bool) -> None:
    if unbiased and b < MIN_BATCH_UNBIASED:
        raise ConfigError(
            f"the unbiased CKA estimator needs a batch of at least {MIN_BATCH_UNBIASED} examples, "
            f"got {b}; use a larger batch (or drop_last=True), or the biased estimator")


def _centred_features(x: torch.Tensor, scale: bool) -> torch.Tensor:
    """Batch-centred (B, D) features; optionally divided by their detached max |value|.

    Subtracting row 0 first is free (translation invariance) and makes constant columns exactly
    zero, so degenerate layers hit the epsilon guard deterministically instead of giving CKA of
    rounding noise. The scale is detached: f(x / c) == f(x) for any fixed c, so the autograd
    gradient is still the exact gradient of CKA.
    """
    x = x - x[:1]
    x = x - x.mean(dim=0, keepdim=True)
    if scale:
        m = x.detach().abs().amax()
        x = x / torch.where(m > 0, m, torch.ones_like(m))
    return x


def _zero_diag(k: torch.Tensor) -> torch.Tensor:
    """K with its diagonal set to 0, out of place (keeps autograd simple), no identity matrix."""
    return torch.diagonal_scatter(k, torch.zeros_like(torch.diagonal(k)))


def _u_centre(k: torch.Tensor) -> torch.Tensor:
    """U-centring (Szekely & Rizzo 2014) of a symmetric Gram, B >= 4; O(B^2), no centring matrix.

    U_ij = K_ij - r_i/(B-2) - r_j/(B-2) + sum(K)/((B-1)(B-2)) for i != j (K with zero diagonal,
    r = row sums), U_ii = 0. Then <U(K), U(L)> / (B(B-3)) is the unbiased HSIC_1.
    """
    b = k.shape[0]
    k = _zero_diag(k)
    m = k.sum(dim=0) / (b - 2)
    m = m - m.sum() / (2 * (b - 1))
    return _zero_diag(k - m[:, None] - m[None, :])


def _unit(g: torch.Tensor, eps: float) -> torch.Tensor:
    """g / ||g|| with the eps inside the sqrt: a zero g stays zero with a zero gradient."""
    return g / torch.sqrt(torch.clamp((g * g).sum(), min=eps))


# ----------------------------------------------------------------------------- Grams

def gram(x: torch.Tensor) -> torch.Tensor:
    """Uncentred linear Gram X X^T (B x B) of flattened features, in float32 (float64 kept)."""
    x = _flatten(x)
    with no_autocast(x.device):
        return x @ x.T


def center_gram(k: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Centre a given B x B Gram: H K H (biased) or the U-centring (unbiased, B >= 4).

    For linear kernels prefer `centered_gram`, which centres the features instead (cheaper and
    more accurate for post-ReLU features with large means); this one is for arbitrary kernels.
    """
    if k.dim() != 2 or k.shape[0] != k.shape[1]:
        raise ConfigError(f"a Gram matrix must be square (B, B), got shape {tuple(k.shape)}")
    _check_batch(k.shape[0], unbiased)
    k = k.to(_compute_dtype(k))
    with no_autocast(k.device):
        if unbiased:
            return _u_centre(k)
        return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def centered_gram(x: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Centred linear Gram of features x (B, ...): Xc Xc^T (= H X X^T H), or U(X X^T) if unbiased.

    True scale (no pre-scaling), so HSIC values can be read off it. Never builds H.
    """
    x = _flatten(x)
    _check_batch(x.shape[0], unbiased)
    with no_autocast(x.device):
        # Centring the features first is exact for both estimators (U-centring is translation
        # invariant too) and avoids the cancellation of centring a Gram with a large mean.
        xc = _centred_features(x, scale=False)
        k = xc @ xc.T
        return _u_centre(k) if unbiased else k


def unit_gram(x: torch.Tensor, unbiased: bool = False, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Centred Gram of x (B, ...), flattened to (B*B,) and scaled to unit Frobenius norm.

    The dot product of two unit grams of the same batch is their CKA, so a layer's Gram is computed
    once and reused against every other layer. A degenerate layer (B = 1, constant features) gives
    the zero vector (CKA 0 against anything, zero gradient).
    """
    x = _flatten(x)
    _check_batch(x.shape[0], unbiased)
    with no_autocast(x.device):
        xc = _centred_features(x, scale=True)
        k = xc @ xc.T
        if unbiased:
            k = _u_centre(k)
        return _unit(k.reshape(-1), eps)


def unit_grams(feats: Sequence[torch.Tensor], unbiased: bool = False,
               eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Stack `unit_gram` of each layer: (L, B*B). All layers must hold the same B examples."""
    feats = list(feats)
    if not feats:
        raise ConfigError("no layers given: pass a non-empty list of (B, ...) feature tensors")
    b = {int(f.shape[0]) if torch.is_tensor(f) and f.dim() > 0 else -1 for f in feats}
    if len(b) != 1:
        raise ConfigError(f"all layers must have the same batch size, got {sorted(b)}; "
                          "pass the features of one batch")
    return torch.stack([unit_gram(f, unbiased=unbiased, eps=eps) for f in feats])


# ----------------------------------------------------------------------------- CKA, HSIC

def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if not (torch.is_tensor(x) and torch.is_tensor(y)):
        raise ConfigError("x and y must be torch tensors of shape (B, ...)")
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"x and y must hold the same examples in the same order: batch sizes "
                          f"{tuple(x.shape[:1])} and {tuple(y.shape[:1])} differ")


def linear_cka(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False,
               eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Linear CKA of x (B, ...) and y (B, ...), each flattened per example; a differentiable 0-d tensor.

    Biased: in [0, 1], with an offset for unrelated high-dimensional features: about D/(B+D) for
    independent isotropic D-dimensional features on both sides (ratio of Wishart expectations).
    Unbiased (debiased CKA, B >= 4): in [-1, 1], ~0 for unrelated features; still a ratio, so
    not an unbiased estimate of population CKA.
    """
    _check_pair(x, y)
    gx = unit_gram(x, unbiased=unbiased, eps=eps)
    gy = unit_gram(y, unbiased=unbiased, eps=eps)
    dtype = torch.promote_types(gx.dtype, gy.dtype)
    with no_autocast(gx.device):
        return torch.dot(gx.to(dtype), gy.to(dtype))


def hsic(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Linear-kernel HSIC of x and y: tr(KHLH)/(B-1)^2 (biased) or Song's HSIC_1 (unbiased, B >= 4)."""
    _check_pair(x, y)
    kx = centered_gram(x, unbiased=unbiased)
    ky = centered_gram(y, unbiased=unbiased)
    b = kx.shape[0]
    dtype = torch.promote_types(kx.dtype, ky.dtype)
    with no_autocast(kx.device):
        s = (kx.to(dtype) * ky.to(dtype)).sum()
        return s / (b * (b - 3)) if unbiased else s / max(b - 1, 1) ** 2


def cka_matrix(feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor] | None = None,
               unbiased: bool = False, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """(L_a, L_b) matrix of linear CKA between every layer of feats_a and every layer of feats_b.

    Each layer's unit Gram is computed once; the matrix is one matmul (cost O(B^2 sum D) for the
    Grams + O(L_a L_b B^2)). feats_b=None gives the symmetric L_a x L_a matrix. Gradients flow to
    whichever inputs require them, so the caller may compute feats_b under no_grad.
    """
    ga = unit_grams(feats_a, unbiased=unbiased, eps=eps)
    gb = ga if feats_b is None else unit_grams(feats_b, unbiased=unbiased, eps=eps)
    if ga.shape[1] != gb.shape[1]:
        raise ConfigError("feats_a and feats_b must come from the same batch: batch sizes "
                          f"{int(round(ga.shape[1] ** 0.5))} and {int(round(gb.shape[1] ** 0.5))} differ")
    dtype = torch.promote_types(ga.dtype, gb.dtype)
    with no_autocast(ga.device):
        return ga.to(dtype) @ gb.to(dtype).T


# ----------------------------------------------------------------------------- minibatch CKA

class MinibatchCKA:
    """Unbiased minibatch CKA of Nguyen et al. (2021) for an L_a x L_b layer matrix.

        CKA_ij = sum_t HSIC_1(K_i^t, L_j^t) / sqrt(sum_t HSIC_1(K_i^t, K_i^t) * sum_t HSIC_1(L_j^t, L_j^t))

    Numerators and denominators are accumulated over batches t and divided once in `compute()`;
    this is not the mean of per-batch CKAs (which is biased towards small-batch noise). Each batch
    costs one U-centred Gram per layer and one (L_a, B^2) x (B^2, L_b) matmul.

    Features are deliberately *not* rescaled per batch (that would reweight batches); they are
    centred and upcast to float32 (Grams) and float64 (U-centring, products, sums), so fp16/bf16
    inputs cannot overflow. Every batch needs B >= 4. The sums are plain tensors (`cross`,
    `self_a`, `self_b`), so DDP can all_reduce them before `compute()`. A layer that was constant
    in every batch has zero self-HSIC; its row/column of the result is 0 (not NaN).

    Use: ``acc = MinibatchCKA(); for x in loader: acc.update(teacher_feats(x)); S = acc.compute()``
    (with feats_b omitted the matrix is L x L and symmetric).

    ``keep_batches=True`` also keeps each batch's terms (float64, on the CPU): ``batch_terms()`` returns
    them, and a resample of the batches gives a bootstrap replicate of the matrix
    (`bootstrap_cka`), from which cka_group reports how stable its grouping is.
    """

    def __init__(self, keep_batches: bool = False) -> None:
        self.keep_batches = keep_batches
        self.reset()

    def reset(self) -> None:
        self.cross: torch.Tensor | None = None
        self.self_a: torch.Tensor | None = None
        self.self_b: torch.Tensor | None = None
        self.num_batches = 0
        self.num_examples = 0
        self._square: bool | None = None
        self._batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    @staticmethod
    def _grams(feats: Sequence[torch.Tensor]) -> torch.Tensor:
        feats = list(feats)
        if not feats:
            raise ConfigError("no layers given: pass a non-empty list of (B, ...) feature tensors")
        out = []
        for f in feats:
            x = _flatten(f)
            _check_batch(x.shape[0], unbiased=True)
            with no_autocast(x.device):
                xc = _centred_features(x, scale=False)
                k = (xc @ xc.T).double()
                out.append(_u_centre(k).reshape(-1))
        if len({g.numel() for g in out}) != 1:
            raise ConfigError("all layers of one update must hold the same batch of examples")
        return torch.stack(out)

    @torch.no_grad()
    def update(self, feats_a: Sequence[torch.Tensor],
               feats_b: Sequence[torch.Tensor] | None = None) -> None:
        """Add one batch: lists of (B, ...) features of the same B examples (B >= 4)."""
        square = feats_b is None
        if self._square is not None and square != self._square:
            raise ConfigError("MinibatchCKA: call update() the same way each time (with or without "
                              "feats_b); call reset() to start a new matrix")
        ga = self._grams(feats_a)
        gb = ga if square else self._grams(feats_b)
        if ga.shape[1] != gb.shape[1]:
            raise ConfigError("feats_a and feats_b must hold the same batch of examples")
        b = int(round(ga.shape[1] ** 0.5))
        norm = 1.0 / (b * (b - 3))
        cross = (ga @ gb.T) * norm
        sa = (ga * ga).sum(dim=1) * norm
        sb = sa if square else (gb * gb).sum(dim=1) * norm
        if self.cross is None:
            self.cross, self.self_a, self.self_b = cross, sa, sb
            self._square = square
        else:
            if cross.shape != self.cross.shape:
                raise ConfigError(f"MinibatchCKA: this batch has {tuple(cross.shape)} layers, earlier "
                                  f"ones {tuple(self.cross.shape)}; every batch must give the same layers")
            self.cross = self.cross + cross.to(self.cross.device)
            self.self_a = self.self_a + sa.to(self.self_a.device)
            self.self_b = self.self_b + sb.to(self.self_b.device)
        if self.keep_batches:
            self._batches.append((cross.cpu(), sa.cpu(), sb.cpu()))
        self.num_batches += 1
        self.num_examples += b

    def compute(self) -> torch.Tensor:
        """The accumulated (L_a, L_b) CKA matrix, float64, on the device of the first batch."""
        if self.cross is None:
            raise ConfigError("MinibatchCKA.compute() called before any update(); feed it batches first")
        return cka_from_sums(self.cross, self.self_a, self.self_b)

    def batch_terms(self) -> dict:
        """Each batch's HSIC_1 terms as float64 NumPy arrays: ``cross`` (T, L_a, L_b), ``self_a`` (T, L_a),
        ``self_b`` (T, L_b); their sums over T are what `compute()` divides. Needs ``keep_batches=True``."""
        if not self.keep_batches:
            raise ConfigError("MinibatchCKA(keep_batches=True) keeps the per-batch terms; this one did not")
        if not self._batches:
            raise ConfigError("MinibatchCKA.batch_terms() called before any update(); feed it batches first")
        return {k: torch.stack([b[i] for b in self._batches]).numpy()
                for i, k in enumerate(("cross", "self_a", "self_b"))}


def cka_from_sums(cross, self_a, self_b):
    """CKA_ij = cross_ij / sqrt(self_a_i * self_b_j) (0 where a self term is 0: a constant layer); torch
    tensors or NumPy arrays, the sums of HSIC_1 terms that `MinibatchCKA` accumulates."""
    if isinstance(cross, torch.Tensor):
        prod = self_a[:, None] * self_b[None, :]
        ok = prod > 0
        return torch.where(ok, cross / torch.sqrt(torch.where(ok, prod, torch.ones_like(prod))),
                           torch.zeros_like(prod))
    prod = np.asarray(self_a)[..., :, None] * np.asarray(self_b)[..., None, :]
    ok = prod > 0
    return np.where(ok, np.asarray(cross) / np.sqrt(np.where(ok, prod, 1.0)), 0.0)


def bootstrap_cka(terms: dict, replicates: int, seed: int = 0) -> np.ndarray:
    """(R, L_a, L_b) bootstrap replicates of a minibatch CKA matrix from its per-batch terms
    (`MinibatchCKA.batch_terms()`): replicate r draws the T batches with replacement and divides the
    resampled sums as `compute()` does. The batch is the resampling unit (the images of one batch share
    their centring), so the spread reflects which images were measured, at the batch's granularity."""
    cross = np.asarray(terms["cross"], dtype=np.float64)
    t = cross.shape[0]
    if replicates < 1:
        raise ConfigError(f"bootstrap_cka: replicates must be >= 1, got {replicates}")
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, t, size=t), minlength=t) for _ in range(replicates)])
    counts = counts.astype(np.float64)
    return cka_from_sums(np.einsum("rt,tij->rij", counts, cross), counts @ np.asarray(terms["self_a"]),
                         counts @ np.asarray(terms["self_b"]))


# ----------------------------------------------------------------------------- preprocessing

def pool_features(f: torch.Tensor, size: int | None) -> torch.Tensor:
    """Adaptive-average-pool a (B, C, H, W) map to at most (B, C, size, size), then the caller flattens it.

    Puts layers of different resolutions on a common grid and bounds D = C*size^2, which shrinks
    the biased estimator's offset and the Gram cost. Other shapes, size=None and maps already
    within size x size are returned unchanged. Use the same size for grouping and for the loss.
    """
    if size is None:
        return f
    try:
        s = operator.index(size)
    except TypeError:
        s = 0
    if isinstance(size, bool) or s < 1:
        raise ConfigError(f"pool size must be a positive integer or None, got {size!r}")
    size = s
    if f.dim() != 4:
        return f
    h, w = f.shape[-2:]
    if h <= size and w <= size:
        return f
    return F.adaptive_avg_pool2d(f, (min(h, size), min(w, size)))
