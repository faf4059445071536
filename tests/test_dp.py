import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpmsched.optimize.dp import shortest_path, shortest_path_multistep, shortest_paths


def brute(C, k, gamma=1.0):
    G = C.shape[0]
    best, arg = np.inf, None
    for mid in itertools.combinations(range(1, G - 1), k - 1):
        p = (0, *mid, G - 1)
        c = sum(gamma**e * C[a, b] for e, (a, b) in enumerate(zip(p[:-1], p[1:])))
        if c < best:
            best, arg = c, p
    return best, arg


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma", [1.0, 1.15, 0.7])
def test_dp_equals_brute_force(seed, gamma):
    rng = np.random.default_rng(seed)
    G = 8
    C = rng.exponential(size=(G, G))
    r = shortest_paths(C, G - 1, discount=gamma)
    for k in range(1, G):
        b, p = brute(C, k, gamma)
        assert r.cost(k) == pytest.approx(b, rel=1e-12)
        path = r.path(k)
        assert path[0] == 0 and path[-1] == G - 1 and len(path) == k + 1 and np.all(np.diff(path) > 0)
        assert sum(gamma**e * C[a, c] for e, (a, c) in enumerate(zip(path[:-1], path[1:]))) == pytest.approx(b)


@settings(max_examples=50, deadline=None)
@given(G=st.integers(3, 12), k=st.integers(1, 11), seed=st.integers(0, 10**6), data=st.data())
def test_dp_not_worse_than_any_random_valid_path(G, k, seed, data):
    k = min(k, G - 1)
    rng = np.random.default_rng(seed)
    C = rng.uniform(0, 10, size=(G, G))
    mid = sorted(data.draw(st.lists(st.integers(1, G - 2), min_size=k - 1, max_size=k - 1, unique=True))) if G > 2 else []
    p = [0, *mid, G - 1]
    _, best = shortest_path(C, k)
    assert best <= sum(C[a, b] for a, b in zip(p[:-1], p[1:])) + 1e-12


def test_known_optimum_equal_spacing():
    # convex cost in the jump length: the optimum spreads edges evenly
    G = 13
    i = np.arange(G)
    C = (i[None, :] - i[:, None]).astype(float) ** 2
    path, cost = shortest_path(C, 4)
    assert list(path) == [0, 3, 6, 9, 12] and cost == 4 * 9


def test_impossible_and_bad_input():
    C = np.ones((4, 4))
    r = shortest_paths(C, 5)
    assert r.cost(3) == 3 and np.isinf(r.cost(4))
    with pytest.raises(ValueError, match="no path"):
        r.path(4)
    with pytest.raises(ValueError, match="NaN at \\[0, 2\\]"):
        C2 = C.copy(); C2[0, 2] = np.nan; shortest_paths(C2, 2)
    with pytest.raises(ValueError, match="square"):
        shortest_paths(np.ones((3, 4)), 2)
    with pytest.raises(ValueError, match="discount"):
        shortest_paths(C, 2, discount=0)
    C3 = C.copy(); C3[0, 3] = np.inf                   # a forbidden edge
    assert shortest_paths(C3, 1).values[1, 0] == np.inf


def brute_multistep(C1, C3, k):
    """First and last edges priced by C1, every middle edge a → c by C3[previous node, a, c]."""
    G = C1.shape[0]
    best, arg = np.inf, None
    for mid in itertools.combinations(range(1, G - 1), k - 1):
        p = (0, *mid, G - 1)
        c = C1[0, G - 1] if k == 1 else (C1[p[0], p[1]] + C1[p[-2], p[-1]]
                                         + sum(C3[p[e - 1], p[e], p[e + 1]] for e in range(1, k - 1)))
        if c < best:
            best, arg = c, p
    return best, arg


@pytest.mark.parametrize("seed", range(4))
def test_multistep_dp_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    G = 8
    C1, C3 = rng.exponential(size=(G, G)), rng.exponential(size=(G, G, G))
    for k in range(1, G):
        b, p = brute_multistep(C1, C3, k)
        path, cost = shortest_path_multistep(C1, C3, k)
        assert cost == pytest.approx(b, rel=1e-12) and tuple(path) == p


def test_multistep_dp_reduces_to_the_pair_dp():
    # a triplet cost that ignores the previous node is the pair DP
    rng = np.random.default_rng(7)
    G = 10
    C = rng.uniform(0, 3, size=(G, G))
    for k in range(1, G):
        path, cost = shortest_path_multistep(C, np.broadcast_to(C[None], (G, G, G)), k)
        assert cost == pytest.approx(shortest_path(C, k)[1], rel=1e-12)


def test_multistep_dp_bad_input():
    with pytest.raises(ValueError, match="edges"):
        shortest_path_multistep(np.ones((4, 4)), np.ones((4, 4, 4)), 4)
    with pytest.raises(ValueError, match="C3"):
        shortest_path_multistep(np.ones((4, 4)), np.ones((4, 4)), 2)
    with pytest.raises(ValueError, match="NaN"):
        shortest_path_multistep(np.full((4, 4), np.nan), np.ones((4, 4, 4)), 2)
