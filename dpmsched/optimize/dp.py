"""Shortest paths with exactly N edges on a grid — the one DP behind Watson, GITS and Huang-DP.
(ALGORITHMS.md §7.3, §8.2, §3.4(a))

Nodes 0..G−1 are grid points in sampling order (node 0 = the largest σ, node G−1 = the smallest).
An edge a → c (a < c) is one solver step from grid point a to grid point c, with cost ``C[a, c]``;
entries with a ≥ c, and any +inf, are not edges.  A schedule with N steps is a path 0 → G−1 with
exactly N edges, and its cost is

    J(path) = Σ_{e=1}^{N} γ^{e−1} C[a_{e−1}, a_e]          (γ = ``discount``; γ = 1: the plain sum)

— GITS's discount coefficient (γ = 1.15 by default there) makes later edges count more.
The backward recursion  V_k(j) = min_{i>j} C[j, i] + γ·V_{k−1}(i),  V_0(j) = 0 if j = G−1 else +inf,
gives the optimum for *every* budget k ≤ N_max in one pass: O(N_max·G²) time, O(G² + N_max·G) memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DPResult", "shortest_paths", "shortest_path"]


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


def shortest_paths(C, max_edges: int, discount: float = 1.0) -> DPResult:
    """Solve the exactly-k-edges shortest path 0 → G−1 for all k ≤ ``max_edges`` (see module doc).

    ``C``: (G, G) array-like of edge costs (numpy or torch; only a < c is used; +inf = no edge).
    NaN costs raise ``ValueError``.  ``discount`` γ > 0.
    """
    C = np.array(C.detach().cpu() if hasattr(C, "detach") else C, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1] or C.shape[0] < 2:
        raise ValueError(f"C must be a square (G, G) matrix with G >= 2, got shape {C.shape}")
    if np.isnan(C).any():
        i, j = np.argwhere(np.isnan(C))[0]
        raise ValueError(f"C contains NaN at [{i}, {j}]")
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
