"""Tests of helper/grouping.py: the DP against brute force, a worked 6-layer example (two blocks; J(n) and
ends computed by hand), tie-breaking, the even/uniform/random/proportional/anchored splits, the automatic
group count and its cap, and the group-block reduction."""

import itertools
import math

import numpy as np
import pytest
import torch

from fakedata import planted_similarity
from helper.grouping import (anchored_split, block_cka, check_ends, choose_n_groups, contiguous_groups,
                             describe_stability, even_split, group_objective, grouping_objective_curve,
                             grouping_stability, groups_from_ends, knee_n_groups, proportional_split, random_groups,
                             student_split, uniform_groups)

WORKED = [[1, .9, .8, .2, .1, .1], [.9, 1, .85, .25, .1, .1], [.8, .85, 1, .3, .2, .15],
          [.2, .25, .3, 1, .7, .6], [.1, .1, .2, .7, 1, .9], [.1, .1, .15, .6, .9, 1]]


def brute_force(s, n):
    """Every contiguous partition (cut points in lexicographic order); keep the first best."""
    s = np.asarray(s, np.float64)
    num_layers = len(s)
    best, best_ends = -math.inf, None
    for cuts in itertools.combinations(range(1, num_layers), n - 1):
        ends = list(cuts) + [num_layers]
        score, start = 0.0, 0
        for e in ends:
            score += s[start:e, start:e].sum() / (e - start)
            start = e
        if score > best + 1e-9:
            best, best_ends = score, ends
    return best, best_ends


def cka_like(num_layers, rng):
    """A random PSD matrix with unit diagonal and smooth, block-ish structure, like a CKA matrix."""
    walk = np.cumsum(rng.normal(size=(num_layers, 6)) * rng.uniform(0.2, 2.0), axis=0)
    walk += rng.normal(size=(num_layers, 6)) * rng.uniform(0.0, 1.0)
    v = np.abs(walk) + rng.uniform(0, 1)  # non-negative coordinates give non-negative similarity
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    s = v @ v.T
    np.fill_diagonal(s, 1.0)
    return s


def blocks(sizes, within, between, rng=None, noise=0.0):
    num_layers = sum(sizes)
    s = np.full((num_layers, num_layers), float(between))
    start = 0
    for m in sizes:
        s[start:start + m, start:start + m] = within
        start += m
    if rng is not None:
        e = rng.uniform(-noise, noise, size=s.shape)
        s = np.clip(s + (e + e.T) / 2, 0.0, 1.0)
    np.fill_diagonal(s, 1.0)
    return s


def sizes_of(ends):
    return np.diff([0] + list(ends)).tolist()


# ----------------------------------------------------------------------------- the DP

def test_dp_equals_brute_force():
    rng = np.random.default_rng(0)
    for num_layers in range(1, 11):
        for _ in range(4):
            s = cka_like(num_layers, rng)
            curve = grouping_objective_curve(s)
            assert len(curve) == num_layers
            for n in range(1, num_layers + 1):
                best, best_ends = brute_force(s, n)
                ends = contiguous_groups(s, n)
                assert ends == best_ends, (num_layers, n)
                assert group_objective(s, ends) == pytest.approx(best, abs=1e-10)
                assert curve[n - 1] == pytest.approx(best, abs=1e-10)


def test_dp_equals_brute_force_on_tied_and_asymmetric_matrices():
    # exact ties (quantised entries) exercise the lexicographic tie-break; an asymmetric S is
    # handled through its block sums, exactly as the brute force sees it
    rng = np.random.default_rng(1)
    for num_layers in (4, 6, 8):
        for _ in range(3):
            s = rng.integers(0, 3, size=(num_layers, num_layers)) / 2.0
            np.fill_diagonal(s, 1.0)
            for n in range(1, num_layers + 1):
                assert contiguous_groups(s, n) == brute_force(s, n)[1], (s, n)


def test_worked_example():
    expected = {1: (3.0833, [6]), 2: (5.1667, [3, 6]), 3: (5.6000, [3, 4, 6]), 4: (5.8000, [2, 3, 4, 6])}
    curve = grouping_objective_curve(WORKED, 4)
    for n, (j, ends) in expected.items():
        assert contiguous_groups(WORKED, n) == ends
        assert curve[n - 1] == pytest.approx(j, abs=1e-4)
        assert group_objective(WORKED, ends) == pytest.approx(j, abs=1e-4)
    assert grouping_objective_curve(WORKED)[-1] == pytest.approx(6.0)  # J(L) = trace


@pytest.mark.parametrize("num_layers", [1, 2, 5, 9])
def test_all_ties_give_smallest_cuts(num_layers):
    for s in (np.ones((num_layers, num_layers)), np.eye(num_layers)):
        for n in range(1, num_layers + 1):
            assert contiguous_groups(s, n) == list(range(1, n)) + [num_layers]


def test_torch_input_and_psd_curve_properties():
    rng = np.random.default_rng(2)
    s = cka_like(9, rng)
    t = torch.tensor(s, dtype=torch.float32)
    assert contiguous_groups(t, 4) == contiguous_groups(s.astype(np.float32).astype(np.float64), 4)
    curve = grouping_objective_curve(s)
    assert np.all(np.diff(curve) >= -1e-12)  # non-decreasing for a PSD S
    assert curve[0] == pytest.approx(s.sum() / len(s))
    assert curve[-1] == pytest.approx(len(s))


# ----------------------------------------------------------------------------- splits

def test_even_split_sizes():
    assert sizes_of(even_split(17, 5)) == [4, 4, 3, 3, 3]
    assert sizes_of(even_split(5, 3)) == [2, 2, 1]
    assert even_split(6, 6) == [1, 2, 3, 4, 5, 6] and even_split(6, 1) == [6]
    for num_layers in range(1, 25):
        for n in range(1, num_layers + 1):
            want = [len(a) for a in np.array_split(np.arange(num_layers), n)]
            assert sizes_of(even_split(num_layers, n)) == want
            assert uniform_groups(num_layers, n) == even_split(num_layers, n)


def test_random_groups_valid_reproducible_and_uniform():
    for num_layers in range(1, 12):
        for n in range(1, num_layers + 1):
            for seed in range(5):
                ends = random_groups(num_layers, n, seed)
                assert check_ends(ends, num_layers) == ends and len(ends) == n
                assert all(isinstance(e, int) for e in ends)
                assert random_groups(num_layers, n, seed) == ends
    assert len({tuple(random_groups(12, 4, seed)) for seed in range(20)}) > 5
    # every one of the C(4, 2) = 6 partitions of 5 layers into 3 groups is equally likely
    rng = np.random.default_rng(3)
    counts = {}
    for _ in range(6000):
        key = tuple(random_groups(5, 3, rng))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 6 and all(800 < c < 1200 for c in counts.values())


def test_groups_from_ends_and_check_ends():
    assert groups_from_ends([3, 6]) == [range(0, 3), range(3, 6)]
    for bad in ([3, 5], [0, 6], [3, 3, 6], [4, 2, 6], [], [2.5, 6]):
        with pytest.raises(ValueError, match="group end|invalid group ends"):
            check_ends(bad, 6)


# ----------------------------------------------------------------------------- student splits

# RESULTS.md's resnet20 teacher (11 layers) grouped [1, 8, 11] -- {stem}, {layer1.0 .. layer3.0},
# {layer3.1, layer3.2, pool} -- with a resnet8 student (5 layers: stem, layer1.0, layer2.0, layer3.0, pool)
RESNET20_GROUPS = [1, 8, 11]


def test_student_splits_of_the_resnet20_resnet8_case():
    assert even_split(5, 3) == [2, 4, 5]                     # {stem, 1.0}, {2.0, 3.0}, {pool}
    # 1 * 5/11 = 0.45 -> 0, raised to 1 (non-empty); 8 * 5/11 = 3.64 -> 4
    assert proportional_split(5, RESNET20_GROUPS, 11) == [1, 4, 5]
    # stem alone in the teacher -> stem alone in the student; 4 layers evenly into 2 groups
    assert anchored_split(5, RESNET20_GROUPS, 11) == ([1, 3, 5], ["stem"])
    assert student_split("even", 5, RESNET20_GROUPS, 11) == ([2, 4, 5], [])
    assert student_split("proportional", 5, RESNET20_GROUPS, 11) == ([1, 4, 5], [])
    assert student_split("anchored", 5, RESNET20_GROUPS, 11) == ([1, 3, 5], ["stem"])
    with pytest.raises(ValueError, match="even, proportional, anchored"):
        student_split("deep", 5, RESNET20_GROUPS, 11)


@pytest.mark.parametrize("num_layers,t_ends,t_layers,want", [
    (5, [5, 10], 10, [3, 5]),                 # 2.5 rounds half up to 3 (banker's rounding would give 2)
    (5, [1, 10], 10, [1, 5]),                 # 0.5 -> 1
    (10, [1, 2, 3, 4, 5], 5, [2, 4, 6, 8, 10]),
    (8, [3, 6], 6, [4, 8]),
    (3, [9, 10, 11], 11, [1, 2, 3]),          # 2.45 -> 2 and 2.73 -> 3 collide: moved left to keep 3 groups
    (17, [2, 9, 16, 17], 17, [2, 9, 16, 17]),  # same depth: the teacher's own cuts
])
def test_proportional_split_by_hand(num_layers, t_ends, t_layers, want):
    assert proportional_split(num_layers, t_ends, t_layers) == want


def test_proportional_split_is_the_rounded_depth_whenever_that_is_a_valid_split():
    rng = np.random.default_rng(5)
    for _ in range(300):
        l_t, l_s = rng.integers(2, 30), rng.integers(2, 30)
        n = int(rng.integers(1, min(l_t, l_s) + 1))
        t = random_groups(int(l_t), n, rng)
        ends = proportional_split(int(l_s), t, int(l_t))
        assert check_ends(ends, l_s) == ends and len(ends) == n
        rounded = [math.floor(e * l_s / l_t + 0.5) for e in t]
        if all(b > a for a, b in zip([0] + rounded, rounded)):
            assert ends == rounded


@pytest.mark.parametrize("num_layers,t_ends,t_layers,want", [
    (5, [1, 10, 11], 11, ([1, 4, 5], ["stem", "embedding"])),
    (5, [3, 10, 11], 11, ([2, 4, 5], ["embedding"])),
    (5, [3, 8, 11], 11, ([2, 4, 5], [])),            # no single-layer end group: the even split
    (6, [1, 5, 6], 6, ([1, 5, 6], ["stem", "embedding"])),
    (7, [1, 3, 7, 8], 8, ([1, 4, 6, 7], ["stem", "embedding"])),  # 5 middle layers into 2 groups: 3, 2
    (4, [1, 2], 2, ([1, 4], ["stem"])),              # both teacher groups single: only the stem is anchored
    (5, [11], 11, ([5], [])),
])
def test_anchored_split_by_hand(num_layers, t_ends, t_layers, want):
    assert anchored_split(num_layers, t_ends, t_layers) == want


def test_anchored_split_is_valid_everywhere():
    rng = np.random.default_rng(6)
    for _ in range(300):
        l_t, l_s = int(rng.integers(1, 25)), int(rng.integers(1, 25))
        n = int(rng.integers(1, min(l_t, l_s) + 1))
        t = random_groups(l_t, n, rng)
        ends, anchored = anchored_split(l_s, t, l_t)
        assert check_ends(ends, l_s) == ends and len(ends) == n
        if "stem" in anchored:
            assert t[0] == 1 and ends[0] == 1
        if "embedding" in anchored:
            assert t[-2] == l_t - 1 and ends[-2] == l_s - 1
        if not anchored:
            assert ends == even_split(l_s, n)


def test_block_cka_reduces_each_matched_block():
    c = np.array([[0.1, 0.2, 0.3, 0.4],
                  [0.5, 0.6, 0.7, 0.8],
                  [0.9, 1.0, -0.1, -0.2]])
    # student groups {0}, {1, 2}; teacher groups {0, 1}, {2, 3}
    assert block_cka(c, [1, 3], [2, 4]) == pytest.approx([0.15, (0.7 + 0.8 - 0.1 - 0.2) / 4])
    assert block_cka(c, [1, 3], [2, 4], "max") == pytest.approx([0.2, 0.8])
    assert block_cka(torch.tensor(c), [1, 3], [2, 4], "min") == pytest.approx([0.1, -0.2])
    with pytest.raises(ValueError, match="groups"):
        block_cka(c, [3], [2, 4])
    with pytest.raises(ValueError, match="invalid group ends"):
        block_cka(c, [1, 2], [2, 4])
    with pytest.raises(ValueError, match="reduction"):
        block_cka(c, [1, 3], [2, 4], "median")


# ----------------------------------------------------------------------------- automatic n

def test_choose_n_groups_finds_block_count():
    rng = np.random.default_rng(4)
    cases = [([4, 4, 4], 0.95, 0.1), ([4, 4, 4], 0.7, 0.1), ([3, 5, 2, 6], 0.85, 0.2),
             ([6, 6], 0.9, 0.3), ([2, 3, 4, 3, 5], 0.9, 0.15), ([5, 2, 7], 0.8, 0.4)]
    for sizes, within, between in cases:
        s = blocks(sizes, within, between, rng, noise=0.05)
        n = choose_n_groups(s)
        assert n == len(sizes), (sizes, within, between, n)
        assert contiguous_groups(s, n) == np.cumsum(sizes).tolist()
        assert choose_n_groups(torch.tensor(s)) == n
    assert choose_n_groups(WORKED) == 2  # the elbow of the worked example


def test_choose_n_groups_threshold_rule_and_edge_cases():
    j = grouping_objective_curve(WORKED)
    r = (j - j[0]) / (6 - j[0])  # R(n) = (J(n) - J(1)) / (L - J(1))
    for tau in (0.5, 0.7, 0.8, 0.9, 0.95, 1.0):
        want = int(np.flatnonzero(r >= tau - 1e-12)[0]) + 1
        assert choose_n_groups(WORKED, rule="threshold", tau=tau) == want
    assert choose_n_groups(WORKED, rule="threshold", tau=0.9) == 4
    assert choose_n_groups(WORKED, rule="threshold", tau=0.7) == 2
    # n_max caps the answer, and knee_n_groups says when the cap decided it
    s = blocks([2, 2, 2, 2, 2], 0.95, 0.1)
    assert choose_n_groups(s) == 5 and choose_n_groups(s, n_max=3) == 3
    assert knee_n_groups(s, 3) == (3, 5) and knee_n_groups(s, 5) == (5, 5) and knee_n_groups(s, 8) == (5, 5)
    assert choose_n_groups(s, n_max=3, rule="threshold", tau=1.0) == 3
    # nothing to gain by splitting (J(1) == L), or no structure at all: one group
    assert choose_n_groups(np.ones((7, 7))) == 1
    assert choose_n_groups(np.ones((7, 7)), rule="threshold") == 1
    assert choose_n_groups(blocks([7], 0.6, 0.6)) == 1
    assert choose_n_groups(np.ones((1, 1))) == 1


# ----------------------------------------------------------------------------- validation

def test_invalid_inputs_raise_clear_errors():
    s = np.eye(5)
    for n in (0, 6, -1):
        with pytest.raises(ValueError, match="between 1 and 5"):
            contiguous_groups(s, n)
        with pytest.raises(ValueError, match="between 1 and 5"):
            even_split(5, n)
        with pytest.raises(ValueError, match="between 1 and 5"):
            random_groups(5, n, 0)
    for n in (2.5, True, "3"):
        with pytest.raises(ValueError, match="integer"):
            contiguous_groups(s, n)
    with pytest.raises(ValueError, match="square"):
        contiguous_groups(np.ones((3, 4)), 2)
    with pytest.raises(ValueError, match="square"):
        contiguous_groups(np.ones(3), 1)
    bad = np.eye(4)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        contiguous_groups(bad, 2)
    with pytest.raises(ValueError, match="between 1 and 5"):
        choose_n_groups(s, n_max=9)
    with pytest.raises(ValueError, match="rule"):
        choose_n_groups(s, rule="elbow")
    with pytest.raises(ValueError, match="tau"):
        choose_n_groups(s, rule="threshold", tau=1.5)


def planted_blocks(sizes):
    return planted_similarity(sizes, within=0.9)


def test_grouping_stability_counts_the_replicates_that_give_the_grouping():
    a, b = planted_blocks([3, 3]), planted_blocks([1, 5])      # the DP at n = 2 cuts them [3, 6] and [1, 6]
    assert contiguous_groups(a, 2) == [3, 6] and contiguous_groups(b, 2) == [1, 6]
    st = grouping_stability([a, a, b, a], [3, 6], lambda s: contiguous_groups(s, 2))
    assert st["replicates"] == 4 and st["same_ends"] == 0.75 and st["same_n"] == 1.0
    assert st["cut_frequency"] == {"1": 0.25, "3": 0.75}
    assert st["most_common"] == [[[3, 6], 0.75], [[1, 6], 0.25]]
    # with the knee choosing n, a replicate with another block count changes n too
    c = planted_blocks([2, 2, 2])
    knee = lambda s: contiguous_groups(s, choose_n_groups(s))  # noqa: E731
    st = grouping_stability([a, c, c, c, c], [2, 4, 6], knee)
    assert (st["same_ends"], st["same_n"]) == (0.8, 0.8) and st["cut_frequency"] == {"2": 0.8, "3": 0.2, "4": 0.8}
    assert st["most_common"][0] == [[2, 4, 6], 0.8]
    with pytest.raises(ValueError, match="no replicate"):
        grouping_stability([], [3, 6], knee)


def test_describe_stability_keeps_small_fractions_visible():
    st = {"replicates": 200, "batches": 16, "same_ends": 0.995, "same_n": 1.0,
          "most_common": [[[4, 8, 11], 0.995], [[5, 8, 11], 0.005]]}
    assert describe_stability(st, [4, 8, 11], with_n=True) == (
        "ends [4, 8, 11] in 99.5% of 200 bootstrap replicates (the 16 batches of grouping images drawn with "
        "replacement), n=3 in 100%; otherwise [5, 8, 11] 0.5%")
