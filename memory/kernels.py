"""Numba kernels of retrieval: combined scoring and MMR selection. Pure functions over arrays."""

from __future__ import annotations

import numba
import numpy as np

DAY = 86_400.0  # seconds in a day: ages are in days


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


@numba.njit(cache=True)
def find_sorted(ids: np.ndarray, n: int, a: int) -> int:
    """The place of `a` among the first `n` of `ids` (sorted, distinct), or -1. The search starts where `a` would be
    were the ids evenly spread (SQL's ids nearly are), then widens by doubling steps and halves the last one: a few
    reads of a large cold array where a binary search makes ~log2(n), each a cache miss."""
    if n == 0 or a < ids[0] or a > ids[n - 1]:
        return -1
    span = ids[n - 1] - ids[0]
    at = 0 if span == 0 else min(n - 1, int((a - ids[0]) * (n - 1) / span))
    if ids[at] == a:
        return at
    step = 1
    if ids[at] < a:  # a lies in (at, n): widen until ids[hi] >= a
        lo = at
        hi = min(at + 1, n - 1)
        while ids[hi] < a:
            lo = hi
            step *= 2
            hi = min(hi + step, n - 1)
    else:  # a lies in [0, at): widen until ids[lo] <= a
        hi = at
        lo = max(at - 1, 0)
        while ids[lo] > a:
            hi = lo
            step *= 2
            lo = max(lo - step, 0)
    while lo < hi:  # the first place in [lo, hi] whose id is >= a
        mid = (lo + hi) // 2
        if ids[mid] < a:
            lo = mid + 1
        else:
            hi = mid
    return lo if ids[lo] == a else -1


@numba.njit(cache=True)
def find_all(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """`find_sorted` of each of `wanted` among all of `ids`."""
    out = np.empty(wanted.shape[0], dtype=np.int64)
    for j in range(wanted.shape[0]):
        out[j] = find_sorted(ids, ids.shape[0], wanted[j])
    return out


@numba.njit(cache=True)
def pick_held(n: int, ids: np.ndarray, there: np.ndarray, kept: np.ndarray, utility: np.ndarray, seen: np.ndarray,
              answers: np.ndarray, cos: np.ndarray, keys: np.ndarray, table: np.ndarray, consolidated: bool,
              now: float, params: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """`combined_score` and `mmr_select` over an index's answers (`answers`: ids, -1: none; `cos`: their cosines;
    their vectors: the rows of `table` whose `keys`, sorted, are theirs) among a tenant's experiences held as arrays
    in id order (the first `n` of each; `ids` sorted; `there`: still the tenant's; `kept`: not consolidated, which
    only `consolidated` lets through; `utility`; `seen`: last seen, epoch s), in one call. `params`: w_sim, w_util,
    w_rec, half_life_days, min_sim, mmr_lambda. Returns the picks' places in the arrays, cosines, ages in days and
    scores, in pick order, and how many answers are not held at all (an index newer than the arrays: the caller
    reads them and asks again; or, never from an index, an answer without a vector in `table`)."""
    rows = np.empty(answers.shape[0], dtype=np.int64)
    src = np.empty(answers.shape[0], dtype=np.int64)
    c = np.empty(answers.shape[0], dtype=np.float32)
    m = 0
    missing = 0
    for j in range(answers.shape[0]):
        a = answers[j]
        if a < 0:
            continue
        at = find_sorted(ids, n, a)
        v = find_sorted(keys, keys.shape[0], a)
        if at < 0 or v < 0:
            missing += 1
        elif there[at] and (consolidated or kept[at]):
            rows[m] = at
            src[m] = v
            c[m] = cos[j]
            m += 1
    c = c[:m]
    u = np.empty(m, dtype=np.float32)
    age = np.empty(m, dtype=np.float32)
    xb = np.empty((m, table.shape[1]), dtype=np.float32)
    for i in range(m):
        r = rows[i]
        u[i] = utility[r]
        age[i] = (now - seen[r]) / DAY
        xb[i] = table[src[i]]
    scores = combined_score(c, u, age, params[0], params[1], params[2], params[3], params[4])
    picked = mmr_select(scores, xb, k, params[5])
    return rows[picked], c[picked], age[picked], scores[picked], missing
