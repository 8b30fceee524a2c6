"""Contiguous layer groups for the CKA layer-group distiller.

A grouping of L ordered layers into n contiguous non-empty groups is written as its list of
group *end* indices (exclusive), e.g. [3, 6] for layers {0,1,2}, {3,4,5}; the last end is L.

The teacher is grouped by an exact dynamic programme on its layer-by-layer CKA matrix S,
maximising the contiguous kernel k-means objective (kernel change-point detection)

    J = sum_g (1/|g|) * sum_{i,j in g} S_ij,

which equals trace(S) minus the within-group kernel scatter. `uniform_groups` and `random_groups` are
the teacher ablations. The student's layers are cut into as many groups by one of `STUDENT_SPLITS`
(`student_split`): evenly (numpy.array_split sizes, the default), at the teacher's relative depths
(`proportional_split`), or with the stem / embedding anchored to a teacher group that is the stem /
embedding alone (`anchored_split`).

All arithmetic is float64 NumPy; inputs may be NumPy arrays, nested lists or torch tensors.
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import Sequence

import numpy as np

from helper.errors import ConfigError

__all__ = [
    "contiguous_groups", "group_objective", "grouping_objective_curve", "choose_n_groups", "knee_n_groups",
    "even_split", "uniform_groups", "random_groups", "groups_from_ends", "check_ends",
    "STUDENT_SPLITS", "proportional_split", "anchored_split", "student_split", "block_cka",
    "grouping_stability", "describe_stability",
]

_TIE_TOL = 1e-10  # relative tolerance for ties in the DP reconstruction


# ----------------------------------------------------------------------------- validation

def _as_similarity(sim) -> np.ndarray:
    """Square, finite float64 matrix from a NumPy array, list or torch tensor."""
    if hasattr(sim, "detach"):  # torch tensor, without importing torch here
        sim = sim.detach().cpu().double().numpy()
    s = np.asarray(sim, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise ConfigError(f"the layer similarity matrix must be square (L, L) with L >= 1, got shape "
                          f"{s.shape}; pass the teacher's layer-by-layer CKA matrix")
    if not np.all(np.isfinite(s)):
        raise ConfigError("the layer similarity matrix contains NaN or inf; recompute it (check for "
                          "layers with constant outputs or batches smaller than 4)")
    return s


def _as_count(value, name: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from None


def _check_n(n, num_layers: int, what: str = "n") -> int:
    n = _as_count(n, what)
    num_layers = _as_count(num_layers, "the number of layers")
    if num_layers < 1:
        raise ConfigError(f"there must be at least one layer to group, got L={num_layers}")
    if not 1 <= n <= num_layers:
        raise ConfigError(f"cannot split {num_layers} layers into {what}={n} non-empty contiguous groups; "
                          f"choose a group count between 1 and {num_layers} (--cka_groups)")
    return n


def check_ends(ends: Sequence[int], num_layers: int) -> list[int]:
    """Validate a list of group ends for `num_layers` layers (strictly increasing, last == L)."""
    num_layers = _as_count(num_layers, "the number of layers")
    try:
        e = [_as_count(v, "a group end") for v in ends]
    except TypeError:
        raise ConfigError(f"group ends must be a list of integers, got {ends!r}") from None
    if not e or e[-1] != num_layers or e[0] < 1 or any(b <= a for a, b in zip(e, e[1:])):
        raise ConfigError(f"invalid group ends {e} for {num_layers} layers: they must be strictly "
                          f"increasing, start at >= 1 and end at {num_layers} (e.g. [3, {num_layers}])")
    return e


def groups_from_ends(ends: Sequence[int]) -> list[range]:
    """[3, 6] -> [range(0, 3), range(3, 6)]: the layer indices of each group."""
    out, start = [], 0
    for e in ends:
        out.append(range(start, int(e)))
        start = int(e)
    return out


# ----------------------------------------------------------------------------- the DP

def _block_scores(s: np.ndarray) -> np.ndarray:
    """W[a, b] = (1/(b-a)) * sum S[a:b, a:b] for b > a, -inf elsewhere; from 2-D prefix sums."""
    num_layers = s.shape[0]
    p = np.zeros((num_layers + 1, num_layers + 1))
    p[1:, 1:] = s.cumsum(axis=0).cumsum(axis=1)          # p[a, b] = sum S[:a, :b]
    d = np.diag(p)
    block = d[None, :] - p - p.T + d[:, None]             # sum S[a:b, a:b] at [a, b]
    idx = np.arange(num_layers + 1)
    size = idx[None, :] - idx[:, None]
    w = np.full_like(block, -np.inf)
    upper = size > 0
    w[upper] = block[upper] / size[upper]
    return w


class _ContiguousDP:
    """Suffix DP: F[k, i] = best J for layers i..L-1 in k groups, for all k <= n_max at once."""

    def __init__(self, s: np.ndarray, n_max: int) -> None:
        num_layers = s.shape[0]
        self.w = _block_scores(s)
        f = np.full((n_max + 1, num_layers + 1), -np.inf)
        f[0, num_layers] = 0.0
        for k in range(1, n_max + 1):
            # F[k, i] = max_j W[i, j] + F[k-1, j]; infeasible j carry -inf, so j <= L-k+1 is implicit.
            f[k] = np.max(self.w + f[k - 1][None, :], axis=1)
        self.f = f
        self.num_layers = num_layers

    def objective(self, k: int) -> float:
        return float(self.f[k, 0])

    def ends(self, k: int) -> list[int]:
        """Forward reconstruction taking the smallest optimal cut at every step.

        Choosing the smallest j that attains the optimum of the suffix problem, left to right,
        yields the lexicographically smallest optimal list of ends.
        """
        out, i = [], 0
        for kk in range(k, 0, -1):
            target = self.f[kk, i]
            cand = self.w[i] + self.f[kk - 1]
            j = int(np.flatnonzero(cand >= target - _TIE_TOL * max(1.0, abs(target)))[0])
            out.append(j)
            i = j
        assert i == self.num_layers
        return out


def contiguous_groups(sim, n: int) -> list[int]:
    """Exact best split of L layers into n contiguous groups under S (ends, exclusive).

    Maximises J = sum_g (1/|g|) sum_{i,j in g} S_ij (contiguous kernel k-means) by a DP over 2-D
    prefix sums in O(n L^2). Ties go to the lexicographically smallest list of ends, so the
    result is deterministic (all-equal S gives [1, 2, ..., n-1, L]). S need not be symmetric
    (the objective only sees S + S^T) but should have S_ii = 1, as a CKA matrix does.
    """
    s = _as_similarity(sim)
    n = _check_n(n, s.shape[0])
    return _ContiguousDP(s, n).ends(n)


def group_objective(sim, ends: Sequence[int]) -> float:
    """J of a given grouping: sum over groups of (1/|g|) * sum of S over the group's block."""
    s = _as_similarity(sim)
    e = check_ends(ends, s.shape[0])
    return float(sum(s[g.start:g.stop, g.start:g.stop].sum() / len(g) for g in groups_from_ends(e)))


def grouping_objective_curve(sim, n_max: int | None = None) -> np.ndarray:
    """Optimal J(k) for k = 1..n_max (entry k-1) from one DP run; n_max defaults to L.

    J(1) = sum(S) / L (the sum of every entry divided by L, i.e. L times the mean of S), and
    J(L) = trace(S) (= L for a CKA matrix); for a PSD S such as a linear CKA matrix J is
    non-decreasing in k.
    """
    s = _as_similarity(sim)
    n_max = s.shape[0] if n_max is None else _check_n(n_max, s.shape[0], "n_max")
    dp = _ContiguousDP(s, n_max)
    return np.array([dp.objective(k) for k in range(1, n_max + 1)])


def choose_n_groups(sim, n_max: int | None = None, rule: str = "knee", tau: float = 0.9) -> int:
    """Number of teacher groups for ``--cka_groups auto``.

    Both rules use the normalised gain R(n) = (J(n) - J(1)) / (J(L) - J(1)) (J(L) = trace S = L
    for a CKA matrix), computed for every n by one DP, and search n in 1..n_max (default L; cap
    it at min(L_student, L_teacher)).

    * ``rule="knee"`` (default): the n that maximises R(n) - (n-1)/(L-1), i.e. where the
      normalised gain curve lies furthest above the straight line from (1, 0) to (L, 1) (the
      Kneedle knee); ties go to the smaller n, and a curve with no point above the line (no
      structure, e.g. S with all off-diagonal entries equal) gives 1.
    * ``rule="threshold"``: the smallest n with R(n) >= tau.

    Why the knee by default: R(n) counts the scatter left *inside* a true block as unexplained,
    so the threshold's answer depends on how tight the blocks are. On the 6-layer example of
    tests/test_grouping.py (two blocks, layers 0-2 and 3-5) tau=0.9 returns 4, and three blocks of
    within-CKA 0.7 need tau below 0.67 to be found, whereas the knee returns 2 and 3. When
    J(1) == J(L) (every pair as similar as a layer to itself) nothing can be gained by splitting and
    the answer is 1.

    The knee is searched on the whole curve J(1..L) and then restricted to n <= n_max, so a cap
    below the unrestricted knee decides the answer: `knee_n_groups` says when it did.
    """
    s = _as_similarity(sim)
    num_layers = s.shape[0]
    n_max = num_layers if n_max is None else _check_n(n_max, num_layers, "n_max")
    if rule not in ("knee", "threshold"):
        raise ConfigError(f"unknown rule {rule!r} for choosing the group count; use 'knee' or 'threshold'")
    if rule == "threshold" and not 0.0 < float(tau) <= 1.0:
        raise ConfigError(f"tau must be in (0, 1], got {tau!r}")
    if num_layers == 1 or n_max == 1:
        return 1
    dp = _ContiguousDP(s, num_layers)
    j = np.array([dp.objective(k) for k in range(1, num_layers + 1)])
    span = j[-1] - j[0]
    if span <= 1e-12 * max(1.0, abs(j[-1])):
        return 1
    r = (j - j[0]) / span
    cand = r[:n_max]
    if rule == "threshold":
        hit = np.flatnonzero(cand >= float(tau) - 1e-12)
        return int(hit[0]) + 1 if hit.size else n_max
    excess = cand - np.arange(n_max) / (num_layers - 1)
    best = excess.max()
    if best <= 1e-12:
        return 1
    return int(np.flatnonzero(excess >= best - 1e-12)[0]) + 1


def knee_n_groups(sim, n_max: int) -> tuple[int, int]:
    """(n, unrestricted knee): the knee of ``choose_n_groups`` with and without the cap n <= n_max.

    The two differ exactly when the knee of the whole curve lies beyond n_max; then the cap, not the
    curve, decided n (the answer is the best n <= n_max on the same criterion).
    """
    return choose_n_groups(sim, n_max=n_max), choose_n_groups(sim)


# ----------------------------------------------------------------------------- other splits

def even_split(num_layers: int, n: int) -> list[int]:
    """Ends of numpy.array_split-sized groups: the first L mod n groups get one extra layer.

    even_split(17, 5) -> sizes [4, 4, 3, 3, 3]; even_split(5, 3) -> sizes [2, 2, 1].
    """
    num_layers = _as_count(num_layers, "the number of layers")
    n = _check_n(n, num_layers)
    q, r = divmod(num_layers, n)
    sizes = [q + 1] * r + [q] * (n - r)
    return np.cumsum(sizes).astype(int).tolist()


def uniform_groups(num_layers: int, n: int) -> list[int]:
    """Teacher ablation ``--cka_grouping uniform``: the even split, ignoring CKA."""
    return even_split(num_layers, n)


def random_groups(num_layers: int, n: int, seed: int | np.random.Generator | None = None) -> list[int]:
    """Teacher ablation ``--cka_grouping random``: a uniformly random contiguous partition.

    Draws n-1 distinct cut points from 1..L-1, so each of the C(L-1, n-1) partitions into n
    non-empty groups is equally likely. Pass the run's seed (int) to make it reproducible; an
    np.random.Generator is used as is, None draws fresh entropy.
    """
    num_layers = _as_count(num_layers, "the number of layers")
    n = _check_n(n, num_layers)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cuts = np.sort(rng.choice(num_layers - 1, size=n - 1, replace=False) + 1) if n > 1 else []
    return [int(c) for c in cuts] + [num_layers]


# ----------------------------------------------------------------------------- student splits

STUDENT_SPLITS = ("even", "proportional", "anchored")


def proportional_split(num_layers: int, teacher_ends: Sequence[int], teacher_layers: int) -> list[int]:
    """Student ends at the teacher's relative depths: cut i at round(e_i * L_s / L_t).

    Rounding is half up (floor(x + 1/2), in exact integer arithmetic). Every group must be non-empty,
    so each cut is then moved, left to right, into [previous cut + 1, L_s - (groups still to come)].
    With the teacher ends [1, 8, 11] of 11 layers and a 5-layer student: 5/11 -> 0 -> 1 (non-empty),
    40/11 = 3.64 -> 4: ends [1, 4, 5].
    """
    t_ends = check_ends(teacher_ends, teacher_layers)
    num_layers = _as_count(num_layers, "the number of layers")
    n = _check_n(len(t_ends), num_layers, "the number of groups")
    ends, prev = [], 0
    for i, e in enumerate(t_ends[:-1]):
        cut = (2 * e * num_layers + teacher_layers) // (2 * teacher_layers)
        cut = min(max(cut, prev + 1), num_layers - (n - 1 - i))
        ends.append(cut)
        prev = cut
    return ends + [num_layers]


def anchored_split(num_layers: int, teacher_ends: Sequence[int], teacher_layers: int) -> tuple[list[int], list[str]]:
    """Student ends with the stem and the embedding anchored; returns (ends, anchored names).

    The stem is layer 0 and the embedding the last layer (the pooled features). If the teacher's
    first group is its stem alone, the student's first group is its stem alone; if the teacher's last
    group is its embedding alone, the student's last group is its embedding alone. The student's other
    layers are split evenly (`even_split`) among the other groups. With no such teacher group the
    result is the even split. Anchoring both ends needs a third group to take the layers between
    them: when n = 2 and both teacher groups are single layers (L_t = 2) only the stem is anchored.
    Teacher [1, 8, 11] of 11 layers, 5-layer student: stem anchored, 4 layers into 2 groups: [1, 3, 5].
    """
    t_ends = check_ends(teacher_ends, teacher_layers)
    num_layers = _as_count(num_layers, "the number of layers")
    n = _check_n(len(t_ends), num_layers, "the number of groups")
    stem = n >= 2 and t_ends[0] == 1
    emb = n >= 2 and t_ends[-2] == teacher_layers - 1 and n - stem >= 2
    first, last = int(stem), num_layers - int(emb)
    middle = even_split(last - first, n - stem - emb)
    ends = ([1] if stem else []) + [first + e for e in middle] + ([num_layers] if emb else [])
    return ends, ["stem"] * stem + ["embedding"] * emb


def student_split(kind: str, num_layers: int, teacher_ends: Sequence[int],
                  teacher_layers: int) -> tuple[list[int], list[str]]:
    """The student's group ends for ``--cka_student_split kind`` and the layers it anchored."""
    if kind == "even":
        return even_split(num_layers, len(teacher_ends)), []
    if kind == "proportional":
        return proportional_split(num_layers, teacher_ends, teacher_layers), []
    if kind == "anchored":
        return anchored_split(num_layers, teacher_ends, teacher_layers)
    raise ConfigError(f"unknown student split {kind!r}; choose one of: {', '.join(STUDENT_SPLITS)}")


def block_cka(c, s_ends: Sequence[int], t_ends: Sequence[int], reduce: str = "mean") -> list[float]:
    """Representative CKA of each matched group: reduce (mean, max, min) of the (student group i x
    teacher group i) block of an (L_s, L_t) CKA matrix ``c``; what the cka_group loss maximises."""
    c = np.asarray(c.detach().cpu().double().numpy() if hasattr(c, "detach") else c, dtype=np.float64)
    if c.ndim != 2:
        raise ConfigError(f"a student x teacher CKA matrix must be 2-D (L_s, L_t), got shape {c.shape}")
    s_ends, t_ends = check_ends(s_ends, c.shape[0]), check_ends(t_ends, c.shape[1])
    if len(s_ends) != len(t_ends):
        raise ConfigError(f"student and teacher have {len(s_ends)} and {len(t_ends)} groups: they must match")
    if reduce not in ("mean", "max", "min"):
        raise ConfigError(f"unknown reduction {reduce!r}; use mean, max or min")
    f = getattr(np, reduce)
    pairs = zip(groups_from_ends(s_ends), groups_from_ends(t_ends))
    return [float(f(c[a.start:a.stop, b.start:b.stop])) for a, b in pairs]


# ----------------------------------------------------------------------------- stability

def grouping_stability(replicate_sims, ends: Sequence[int], choose) -> dict:
    """How stable a grouping is under resampling of the images its similarity matrix was measured on.

    ``choose`` maps a similarity matrix to group ends by the rule that gave ``ends`` (the DP at the
    same n, or the knee then the DP, ...); it is applied to every replicate matrix (helper.cka.bootstrap_cka).
    Returns ``replicates``; ``same_ends`` and ``same_n``, the fractions of replicates whose grouping is
    ``ends`` and whose group count is len(ends); ``cut_frequency``, for every layer boundary e (a cut before
    layer e) that some replicate chose, the fraction that chose it; ``most_common``, up to three groupings
    with their fractions. A grouping whose cuts the replicates rarely agree on is a coin toss between
    near-equal objectives: expect different trials to train against different groups.
    """
    ends = tuple(int(e) for e in ends)
    got = [tuple(int(e) for e in choose(s)) for s in replicate_sims]
    r = len(got)
    if r == 0:
        raise ConfigError("grouping_stability: no replicate matrices given")
    counts = Counter(got)
    cuts = Counter(e for g in got for e in g[:-1])
    common = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    return {"replicates": r, "same_ends": counts.get(ends, 0) / r,
            "same_n": sum(len(g) == len(ends) for g in got) / r,
            "cut_frequency": {str(e): round(c / r, 4) for e, c in sorted(cuts.items())},
            "most_common": [[list(g), round(c / r, 4)] for g, c in common]}


def describe_stability(st: dict, ends: Sequence[int], with_n: bool = False) -> str:
    """`grouping_stability`'s result in words: how often ``ends`` came back (and n, with ``with_n``), and the
    other groupings the replicates gave."""
    def pct(f):
        return f"{100 * f:.3g}%"
    text = (f"ends {list(ends)} in {pct(st['same_ends'])} of {st['replicates']} bootstrap replicates (the "
            f"{st['batches']} batches of grouping images drawn with replacement)")
    if with_n:
        text += f", n={len(ends)} in {pct(st['same_n'])}"
    others = [f"{e} {pct(f)}" for e, f in st["most_common"] if list(e) != list(ends)]
    return text + (f"; otherwise {', '.join(others)}" if others else "")
