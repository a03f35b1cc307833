"""Winograd F(m, 3) transform matrices, built by Cook-Toom from interpolation points in exact arithmetic.

F(m, r) computes m outputs of a 1-D correlation with an r-tap filter from an input tile of n = m + r - 1:
    y = A^T [ (G g) ⊙ (B^T d) ]
Derivation (why these three matrices): linear convolution s = h * g of a degree m-1 and a degree r-1
polynomial has n coefficients, fixed by its values at n points (n-1 finite points p_i and "infinity", where
the value is the leading coefficient). With evaluation matrices V_k (rows [1, p, ..., p^(k-1)], infinity row
[0, ..., 0, 1]) this reads V_n s = (V_m h) ⊙ (V_r g), so the Toeplitz matrix T(g) of "convolve with g" is
V_n^-1 diag(V_r g) V_m. Correlation is its transpose: y = T(g)^T d = V_m^T diag(V_r g) V_n^-T d, i.e.
A^T = V_m^T, G = V_r, B^T = V_n^-T. Each finite row i of B^T carries the Lagrange factor 1/prod_j(p_i - p_j);
as usual it is moved into row i of G, which keeps B^T's rows the coefficients of monic polynomials (the
"standard" scaling; the learned diagonal scales replace exactly this choice).
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import torch

from trtq.errors import TrtqError

R = 3  # filter taps: only 3x3 convolutions are computed in the Winograd domain
INF = None  # the point at infinity
POINTS: dict[int, tuple] = {
    2: (0, 1, -1, INF),
    4: (0, 1, -1, 2, -2, INF),
    6: (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), INF),
}

Matrix = list[list[Fraction]]


def _vandermonde(points: tuple, cols: int) -> Matrix:
    rows = []
    for p in points:
        if p is INF:
            rows.append([Fraction(int(k == cols - 1)) for k in range(cols)])
        else:
            rows.append([Fraction(p) ** k for k in range(cols)])
    return rows


def _transpose(a: Matrix) -> Matrix:
    return [list(col) for col in zip(*a)]


def _inverse(a: Matrix) -> Matrix:
    """Gauss-Jordan in exact rationals (n <= 8, so speed does not matter)."""
    n = len(a)
    aug = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(a)]
    for c in range(n):
        pivot = next(r for r in range(c, n) if aug[r][c] != 0)
        aug[c], aug[pivot] = aug[pivot], aug[c]
        inv = 1 / aug[c][c]
        aug[c] = [v * inv for v in aug[c]]
        for r in range(n):
            if r != c and aug[r][c] != 0:
                f = aug[r][c]
                aug[r] = [v - f * w for v, w in zip(aug[r], aug[c])]
    return [row[n:] for row in aug]


@lru_cache(maxsize=None)
def cook_toom(m: int) -> tuple[Matrix, Matrix, Matrix]:
    """Exact (A^T [m x n], G [n x R], B^T [n x n]) for F(m, 3) as Fractions."""
    if m not in POINTS:
        raise TrtqError(f"Winograd tile m must be one of {sorted(POINTS)}, got {m!r}")
    points = POINTS[m]
    n = m + R - 1
    at = _transpose(_vandermonde(points, m))
    g = _vandermonde(points, R)
    bt = _transpose(_inverse(_vandermonde(points, n)))
    for i, p in enumerate(points):
        if p is INF:
            continue
        lagrange = Fraction(1)
        for q in points:
            if q is not INF and q != p:
                lagrange *= Fraction(p) - Fraction(q)
        bt[i] = [v * lagrange for v in bt[i]]
        g[i] = [v / lagrange for v in g[i]]
    return at, g, bt


def winograd_matrices(m: int, dtype: torch.dtype = torch.float32, device=None):
    """(A^T, G, B^T) for F(m, 3) as tensors of `dtype` (rounded once from the exact rationals)."""
    def cast(a: Matrix) -> torch.Tensor:
        return torch.tensor([[float(v) for v in row] for row in a], dtype=dtype, device=device)

    return tuple(cast(a) for a in cook_toom(m))


def scaled_matrices(m: int, s_b: torch.Tensor, s_g: torch.Tensor, dtype=None):
    """Transforms with diagonal scales: B^T -> S_B B^T, G -> S_G G, A^T -> A^T S_A with S_A = (S_B S_G)^-1.

    Position (i, j) of the Winograd domain is multiplied by s_b[i] s_b[j] in the input and s_g[i] s_g[j] in
    the weight, and A^T S_A divides the product by exactly that, so the float result is unchanged."""
    dtype = dtype or s_b.dtype
    at, g, bt = winograd_matrices(m, dtype, s_b.device)
    s_b, s_g = s_b.to(dtype), s_g.to(dtype)
    return at / (s_b * s_g)[None, :], s_g[:, None] * g, s_b[:, None] * bt
