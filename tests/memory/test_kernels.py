"""The Numba kernels against NumPy references written here, on random cases and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from logmem.memory.kernels import combined_score, find_all, find_sorted, mmr_select

W_SIM, W_UTIL, W_REC, HALF_LIFE, MIN_SIM = 1.0, 0.2, 0.05, 30.0, 0.2


def reference_score(cos: np.ndarray, utility: np.ndarray, age_days: np.ndarray, w_sim: float, w_util: float,
                    w_rec: float, half_life_days: float, min_sim: float) -> np.ndarray:
    """DESIGN.md's formula, vectorised in float64; -inf where cos < min_sim or cos is NaN."""
    cos64 = cos.astype(np.float64)
    recency = np.exp2(-np.clip(age_days.astype(np.float64), 0.0, None) / half_life_days)
    score = w_sim * cos64 + w_util * (utility.astype(np.float64) - 0.5) + w_rec * recency
    with np.errstate(invalid="ignore"):
        keep = cos64 >= min_sim
    return np.where(keep, score, -np.inf).astype(np.float32)


def reference_mmr(scores: np.ndarray, xb: np.ndarray, k: int, lam: float) -> list[int]:
    """Greedy MMR by its definition: pairwise similarities, maxima recomputed, first index on ties."""
    sim = xb @ xb.T
    picked: list[int] = []
    while len(picked) < k:
        left = [i for i in range(len(scores)) if i not in picked and np.isfinite(scores[i])]
        if not left:
            break
        penalty = sim[np.ix_(left, picked)].max(axis=1) if picked else np.zeros(len(left))
        value = lam * scores[left].astype(np.float64) - (1.0 - lam) * penalty
        picked.append(left[int(np.argmax(value))])
    return picked


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# --- combined_score ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(20))
def test_combined_score_matches_reference_on_random_inputs(case: int) -> None:
    rng = np.random.default_rng(case)
    n = int(rng.integers(1, 300))
    cos = rng.uniform(-1, 1, n).astype(np.float32)
    util = rng.uniform(0, 1, n).astype(np.float32)
    age = rng.uniform(-5, 400, n).astype(np.float32)
    w = (float(rng.uniform(0, 2)), float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
    half_life, min_sim = float(rng.uniform(1, 90)), float(rng.uniform(-1, 1))

    got = combined_score(cos, util, age, *w, half_life, min_sim)

    want = reference_score(cos, util, age, *w, half_life, min_sim)
    assert got.dtype == np.float32 and got.shape == (n,)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=1e-6, atol=1e-6)


def test_combined_score_exact_values() -> None:
    cos = np.array([0.9, 0.5], dtype=np.float32)
    util = np.array([1.0, 0.5], dtype=np.float32)
    age = np.array([0.0, 30.0], dtype=np.float32)

    got = combined_score(cos, util, age, 1.0, 0.2, 0.05, 30.0, 0.2)

    # 0.9 + 0.2*0.5 + 0.05*1 and 0.5 + 0 + 0.05*0.5 (one half-life old)
    np.testing.assert_allclose(got, [1.05, 0.525], rtol=1e-6)


def test_combined_score_of_empty_arrays_is_empty() -> None:
    empty = np.empty(0, dtype=np.float32)

    got = combined_score(empty, empty, empty, W_SIM, W_UTIL, W_REC, HALF_LIFE, MIN_SIM)

    assert got.shape == (0,) and got.dtype == np.float32


def test_combined_score_drops_under_min_sim_and_nan_keeps_the_boundary() -> None:
    cos = np.array([0.24, np.nan, 0.25, 0.8, -0.3], dtype=np.float32)  # 0.25 is exact in float32
    ones = np.ones(5, dtype=np.float32)

    got = combined_score(cos, ones * 0.5, ones * 0.0, 1.0, 0.0, 0.0, 30.0, 0.25)

    assert np.isneginf(got[[0, 1, 4]]).all()
    np.testing.assert_allclose(got[[2, 3]], [0.25, 0.8], rtol=1e-6)


def test_combined_score_treats_future_timestamps_as_age_zero() -> None:
    cos = np.array([0.5, 0.5], dtype=np.float32)
    util = np.array([0.5, 0.5], dtype=np.float32)
    age = np.array([-10.0, 0.0], dtype=np.float32)

    got = combined_score(cos, util, age, 1.0, 0.0, 1.0, 30.0, 0.0)

    assert got[0] == got[1] == pytest.approx(1.5)


# --- mmr_select -------------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(20))
def test_mmr_matches_reference_on_random_inputs(case: int) -> None:
    rng = np.random.default_rng(100 + case)
    n, d = int(rng.integers(1, 60)), int(rng.integers(2, 24))
    xb = unit_rows(rng, n, d)
    scores = rng.uniform(-0.5, 1.5, n).astype(np.float32)
    scores[rng.uniform(size=n) < 0.2] = -np.inf  # some dropped by min_sim
    k, lam = int(rng.integers(0, n + 5)), float(rng.uniform(0, 1))

    got = mmr_select(scores, xb, k, lam)

    assert got.dtype == np.int64
    assert got.tolist() == reference_mmr(scores, xb, k, lam)


def test_mmr_with_lambda_one_is_sorting_by_score() -> None:
    rng = np.random.default_rng(0)
    xb = unit_rows(rng, 40, 8)
    scores = rng.uniform(0, 1, 40).astype(np.float32)

    got = mmr_select(scores, xb, 10, 1.0)

    assert got.tolist() == np.argsort(-scores, kind="stable")[:10].tolist()


def test_mmr_prefers_a_diverse_second_pick_over_a_duplicate() -> None:
    xb = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)  # 0 and 1 say the same thing
    scores = np.array([1.0, 0.99, 0.5], dtype=np.float32)

    assert mmr_select(scores, xb, 3, 0.5).tolist() == [0, 2, 1]
    assert mmr_select(scores, xb, 3, 1.0).tolist() == [0, 1, 2]


def test_mmr_on_empty_input_returns_nothing() -> None:
    got = mmr_select(np.empty(0, dtype=np.float32), np.empty((0, 4), dtype=np.float32), 5, 0.7)

    assert got.shape == (0,) and got.dtype == np.int64


def test_mmr_with_k_zero_returns_nothing() -> None:
    rng = np.random.default_rng(0)

    assert mmr_select(rng.uniform(size=5).astype(np.float32), unit_rows(rng, 5, 3), 0, 0.7).shape == (0,)


def test_mmr_with_k_over_n_returns_every_kept_candidate_once() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=6).astype(np.float32)
    scores[4] = -np.inf

    got = mmr_select(scores, unit_rows(rng, 6, 3), 50, 0.7)

    assert sorted(got.tolist()) == [0, 1, 2, 3, 5]


def test_mmr_returns_nothing_when_every_candidate_was_dropped() -> None:
    rng = np.random.default_rng(0)
    scores = np.full(5, -np.inf, dtype=np.float32)

    assert mmr_select(scores, unit_rows(rng, 5, 3), 3, 0.7).shape == (0,)


def test_mmr_over_zero_vectors_ranks_by_score_and_breaks_ties_by_position() -> None:
    xb = np.zeros((5, 4), dtype=np.float32)  # no similarity, so no diversity penalty
    scores = np.array([0.3, 0.9, 0.3, 0.9, 0.1], dtype=np.float32)

    assert mmr_select(scores, xb, 5, 0.5).tolist() == [1, 3, 0, 2, 4]


def test_mmr_on_combined_score_output_skips_dropped_rows() -> None:
    cos = np.array([0.1, 0.9, 0.6, np.nan], dtype=np.float32)
    flat = np.full(4, 0.5, dtype=np.float32)
    scores = combined_score(cos, flat, flat * 0, 1.0, 0.0, 0.0, 30.0, 0.2)

    got = mmr_select(scores, np.eye(4, dtype=np.float32), 4, 0.7)

    assert got.tolist() == [1, 2]


def test_find_sorted_finds_every_id_and_only_those() -> None:
    """The search that starts where an id would be were the ids evenly spread finds what a plain lookup finds: dense
    ids, gapped ones, a prefix of the array (`n`), ids out of range and absent ones."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        ids = np.unique(rng.choice(int(rng.integers(1, 2_000)), size=int(rng.integers(0, 300)))).astype(np.int64)
        if trial % 4 == 0:
            ids = np.arange(5, 5 + len(ids), dtype=np.int64)  # dense, as SQL's ids of one tenant
        wanted = rng.integers(-5, 2_100, size=50).astype(np.int64)
        place = {int(a): p for p, a in enumerate(ids.tolist())}
        assert find_all(ids, wanted).tolist() == [place.get(int(a), -1) for a in wanted]
        n = len(ids) // 2
        assert [find_sorted(ids, n, a) for a in wanted] == [place[a] if place.get(a, n) < n else -1
                                                            for a in wanted.tolist()]
