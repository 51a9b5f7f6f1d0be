"""Numba kernels of retrieval: combined scoring and MMR selection. Pure functions over arrays."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, fastmath=False)
def combined_score(cos: np.ndarray, utility: np.ndarray, age_days: np.ndarray, w_sim: float, w_util: float,
                   w_rec: float, half_life_days: float, min_sim: float) -> np.ndarray:
    """score_i = w_sim*cos_i + w_util*(utility_i - 1/2) + w_rec*2^(-age_i/half_life); -inf where cos_i < min_sim."""
    n = cos.shape[0]
    out = np.empty(n, dtype=np.float32)
    for i in range(n):
        if not cos[i] >= min_sim:  # also drops NaN
            out[i] = -np.inf
        else:
            age = max(age_days[i], 0.0)
            out[i] = (w_sim * cos[i] + w_util * (utility[i] - 0.5)
                      + w_rec * 2.0 ** (-age / half_life_days))
    return out


@numba.njit(cache=True, fastmath={"reassoc", "contract", "arcp"})  # lets the dot product vectorize
def _dot(xb: np.ndarray, i: int, j: int) -> np.float32:
    """xb_i . xb_j over the rows of a float32 (n, d) array."""
    s = np.float32(0.0)
    for t in range(xb.shape[1]):
        s += xb[i, t] * xb[j, t]
    return s


@numba.njit(cache=True)
def mmr_select(scores: np.ndarray, xb: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Greedy MMR: repeatedly pick argmax_i lam*score_i - (1-lam)*max_{j picked} xb_i.xb_j, skipping -inf scores.

    Lazy: after one product of every candidate with the first pick, a candidate's max similarity only
    grows as picks accrue, so its value under the picks it has been compared with bounds its true value
    from above; only the candidate at the top of those bounds is brought up to date. Same picks as the
    eager greedy (ties to the lower index), with about n + k products instead of n * k.
    """
    n = scores.shape[0]
    picked = np.empty(min(k, n), dtype=np.int64)
    max_sim = np.full(n, -np.inf, dtype=np.float32)
    seen = np.zeros(n, dtype=np.int64)  # how many picks each candidate has been compared with
    taken = np.zeros(n, dtype=np.bool_)
    m = 0
    while m < picked.shape[0]:
        while True:
            best = -1
            best_val = -np.inf
            for i in range(n):
                if taken[i] or scores[i] == -np.inf:
                    continue
                if lam == 1.0 or m == 0:
                    val = lam * scores[i]
                else:
                    val = lam * scores[i] - (1.0 - lam) * max_sim[i]
                if val > best_val:
                    best_val = val
                    best = i
            if best < 0 or seen[best] == m or lam == 1.0:
                break
            for p in range(seen[best], m):  # bring the top candidate up to date, then look again
                s = _dot(xb, best, picked[p])
                if s > max_sim[best]:
                    max_sim[best] = s
            seen[best] = m
        if best < 0:
            break
        taken[best] = True
        picked[m] = best
        m += 1
        if m == 1 and lam < 1.0:  # every candidate needs one product with the first pick to be bounded
            for i in range(n):
                if not taken[i] and scores[i] != -np.inf:
                    max_sim[i] = _dot(xb, i, best)
                    seen[i] = 1
    return picked[:m]
