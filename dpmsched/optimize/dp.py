"""Shortest paths with exactly N edges on a grid — the DPs behind Watson, GITS, Huang-DP and bound-prop.
(docs/math.md §7.3, §8.2, §3.4(a))

Nodes 0..G−1 are grid points in sampling order (node 0 = the largest σ, node G−1 = the smallest).
An edge a → c (a < c) is one solver step from grid point a to grid point c, with cost ``C[a, c]``;
entries with a ≥ c, and any +inf, are not edges.  A schedule with N steps is a path 0 → G−1 with
exactly N edges, and its cost is

    J(path) = Σ_{e=1}^{N} γ^{e−1} C[a_{e−1}, a_e]          (γ = ``discount``; γ = 1: the plain sum)

— GITS's discount coefficient (γ = 1.15 by default there) makes later edges count more.
The backward recursion  V_k(j) = min_{i>j} C[j, i] + γ·V_{k−1}(i),  V_0(j) = 0 if j = G−1 else +inf,
gives the optimum for *every* budget k ≤ N_max in one pass: O(N_max·G²) time, O(G² + N_max·G) memory.

:func:`shortest_path_multistep` is the same problem when a step's cost also depends on the node before it
(a two-step solver's slope uses the previous point): a forward recursion over the last edge, O(N·G³).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DPResult", "shortest_paths", "shortest_path", "shortest_path_multistep"]


@dataclass(frozen=True)
class DPResult:
    """Optimal paths 0 → G−1 for every number of edges k = 1..max_edges.

    ``values[k, j]``: optimal cost from node j to G−1 with exactly k edges (inf if impossible);
    ``choice[k, j]``: the next node on that path.
    """

    values: np.ndarray      # (max_edges + 1, G)
    choice: np.ndarray      # (max_edges + 1, G), int64, −1 where undefined
    discount: float

    @property
    def max_edges(self) -> int:
        return self.values.shape[0] - 1

    def cost(self, k: int) -> float:
        """Optimal J with exactly k edges from node 0 (inf if there is no such path)."""
        self._check(k)
        return float(self.values[k, 0])

    def path(self, k: int) -> np.ndarray:
        """Node indices (k+1,) of the optimal k-edge path, starting at 0 and ending at G−1."""
        self._check(k)
        if not np.isfinite(self.values[k, 0]):
            raise ValueError(f"no path from node 0 to node {self.values.shape[1] - 1} with exactly {k} edges")
        nodes, j = [0], 0
        for kk in range(k, 0, -1):
            j = int(self.choice[kk, j])
            nodes.append(j)
        return np.array(nodes, dtype=np.int64)

    def _check(self, k: int) -> None:
        if not 1 <= k <= self.max_edges:
            raise ValueError(f"k must be in 1..{self.max_edges}, got {k}")


def _as_costs(C, name: str = "C") -> np.ndarray:
    """A float64 numpy copy of the cost array ``C`` (numpy or torch); NaN raises, naming where."""
    C = np.array(C.detach().cpu().numpy() if hasattr(C, "detach") else C, dtype=np.float64)
    if np.isnan(C).any():
        raise ValueError(f"{name} contains NaN at {list(map(int, np.argwhere(np.isnan(C))[0]))}")
    return C


def shortest_paths(C, max_edges: int, discount: float = 1.0) -> DPResult:
    """Solve the exactly-k-edges shortest path 0 → G−1 for all k ≤ ``max_edges`` (see module doc).

    ``C``: (G, G) array-like of edge costs (numpy or torch; only a < c is used; +inf = no edge).
    NaN costs raise ``ValueError``.  ``discount`` γ > 0.
    """
    C = _as_costs(C)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] < 2:
        raise ValueError(f"C must be a square (G, G) matrix with G >= 2, got shape {C.shape}")
    if not (discount > 0 and np.isfinite(discount)):
        raise ValueError(f"discount must be a finite positive number, got {discount!r}")
    if int(max_edges) < 1:
        raise ValueError(f"max_edges must be >= 1, got {max_edges}")
    G = C.shape[0]
    C = np.where(np.triu(np.ones((G, G), dtype=bool), k=1), C, np.inf)
    K = int(max_edges)
    V = np.full((K + 1, G), np.inf)
    P = np.full((K + 1, G), -1, dtype=np.int64)
    V[0, G - 1] = 0.0
    for k in range(1, K + 1):
        M = C + discount * V[k - 1][None, :]          # M[j, i] = C[j, i] + γ V_{k−1}(i)
        P[k] = np.argmin(M, axis=1)
        V[k] = M[np.arange(G), P[k]]
    P[~np.isfinite(V)] = -1
    return DPResult(V, P, float(discount))


def shortest_path(C, edges: int, discount: float = 1.0) -> tuple[np.ndarray, float]:
    """(node indices, cost) of the optimal path with exactly ``edges`` edges."""
    r = shortest_paths(C, edges, discount)
    return r.path(edges), r.cost(edges)


def shortest_path_multistep(C1, C3, edges: int) -> tuple[np.ndarray, float]:
    """Exactly-``edges`` path 0 → G−1 when a step's cost depends on the previous node too, as for a
    two-step (multistep) solver whose first and last steps are one-step (Euler) steps:

        J = C1[a_0, a_1] + Σ_{e=1}^{N−2} C3[a_{e−1}, a_e, a_{e+1}] + C1[a_{N−1}, a_N]   (N ≥ 2; N = 1: C1[0, G−1]),

    a_0 = 0, a_N = G−1.  ``C1`` (G, G) pair costs (a < c), ``C3`` (G, G, G) triplet costs (p < a < c);
    +inf = not allowed.  Forward recursion over the last edge, W_e(a, c) = min_p W_{e−1}(p, a) + C3[p, a, c]:
    O(N·G³) time, O(G³) memory.  Returns (node indices (N+1,), J).
    """
    C1, C3 = _as_costs(C1, "C1"), _as_costs(C3, "C3")
    G = C1.shape[0]
    if C1.shape != (G, G) or C3.shape != (G, G, G) or G < 2:
        raise ValueError(f"need C1 (G, G) and C3 (G, G, G) with G >= 2, got {C1.shape} and {C3.shape}")
    N = int(edges)
    if not 1 <= N <= G - 1:
        raise ValueError(f"edges must be in 1..{G - 1} for {G} grid points, got {N}")
    up = np.triu(np.ones((G, G), dtype=bool), k=1)
    C1 = np.where(up, C1, np.inf)
    C3 = np.where(up[:, :, None] & up[None, :, :], C3, np.inf)      # only p < a < c
    if N == 1:
        return np.array([0, G - 1]), float(C1[0, G - 1])
    W = np.full((G, G), np.inf)                       # W[a, c]: best cost of a path 0 → … → a → c
    W[0] = C1[0]
    back = []
    for _ in range(N - 2):
        M = W[:, :, None] + C3                        # M[p, a, c]
        arg = np.argmin(M, axis=0)                    # (a, c) → best p
        W = np.take_along_axis(M, arg[None], 0)[0]
        back.append(arg)
    last = W + C1[:, [G - 1]].T                       # last[a, c] = W[a, c] + C1[c, G−1]
    a, c = np.unravel_index(np.argmin(last), last.shape)
    cost = float(last[a, c])
    if not np.isfinite(cost):
        raise ValueError(f"no path from node 0 to node {G - 1} with exactly {N} edges")
    nodes = [G - 1, int(c), int(a)]
    for arg in reversed(back):
        a, c = int(arg[a, c]), int(a)
        nodes.append(a)
    return np.array(nodes[::-1], dtype=np.int64), cost
