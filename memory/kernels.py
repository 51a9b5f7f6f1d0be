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


@numba.njit(cache=True, fastmath=False)
def mmr_select(scores: np.ndarray, xb: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Greedy MMR: repeatedly pick argmax_i lam*score_i - (1-lam)*max_{j picked} xb_i.xb_j, skipping -inf scores."""
    n = scores.shape[0]
    d = xb.shape[1]
    picked = np.empty(min(k, n), dtype=np.int64)
    max_sim = np.full(n, -np.inf, dtype=np.float32)
    taken = np.zeros(n, dtype=np.bool_)
    m = 0
    while m < picked.shape[0]:
        best = -1
        best_val = -np.inf
        for i in range(n):
            if taken[i] or scores[i] == -np.inf:
                continue
            penalty = max_sim[i] if m > 0 else 0.0
            val = lam * scores[i] - (1.0 - lam) * penalty
            if val > best_val:
                best_val = val
                best = i
        if best < 0:
            break
        taken[best] = True
        picked[m] = best
        m += 1
        for i in range(n):
            if not taken[i]:
                s = 0.0
                for j in range(d):
                    s += xb[i, j] * xb[best, j]
                if s > max_sim[i]:
                    max_sim[i] = s
    return picked[:m]
