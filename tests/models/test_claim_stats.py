"""Claim statistics against scipy and hand-derived answers on fixed inputs."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

import models.claim_stats as cs
from models.claim_stats import (
    censored_paired,
    hodges_lehmann,
    holm,
    paired_test,
    seeds_needed,
    spread,
    verdict,
)
from tests.support.services import unavailable

# any RuntimeWarning (scipy's "precision loss", numpy's "degrees of freedom") fails a test
pytestmark = pytest.mark.filterwarnings("error")

D = [0.12, -0.03, 0.25, 0.08, 0.19, 0.04, -0.07, 0.15, 0.22, 0.05]  # distinct |d|, no zeros


def jsonable(x: object) -> None:
    json.dumps(x, allow_nan=False)


# --- paired_test, t ---------------------------------------------------------------------------

def test_t_matches_scipy() -> None:
    r = paired_test(D, confidence=0.9)
    d = np.asarray(D)
    n = len(D)
    assert r["test"] == "t"
    assert r["n"] == n
    assert r["n_dropped"] == 0
    assert r["note"] is None
    assert r["mean"] == pytest.approx(d.mean())
    assert r["estimate"] == r["mean"]
    assert r["median"] == pytest.approx(np.median(d))
    assert r["std"] == pytest.approx(d.std(ddof=1))
    assert r["p_two_sided"] == pytest.approx(sps.ttest_1samp(d, 0).pvalue, rel=1e-12)
    assert r["p_greater"] == pytest.approx(
        sps.ttest_1samp(d, 0, alternative="greater").pvalue, rel=1e-12)
    half = sps.t.ppf(0.95, n - 1) * d.std(ddof=1) / math.sqrt(n)
    assert r["ci_low"] == pytest.approx(d.mean() - half)
    assert r["ci_high"] == pytest.approx(d.mean() + half)
    # scipy's own interval of the mean agrees
    lo, hi = sps.ttest_1samp(d, 0).confidence_interval(0.9)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert r["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))
    jsonable(r)


def test_t_negative_direction_p_greater_large() -> None:
    r = paired_test([-x for x in D])
    assert r["p_greater"] == pytest.approx(1 - paired_test(D)["p_greater"])
    assert r["p_two_sided"] == pytest.approx(paired_test(D)["p_two_sided"])


def test_non_finite_dropped_and_counted() -> None:
    r = paired_test([*D, float("nan"), None, float("inf")])  # type: ignore[list-item]
    assert r["n"] == len(D)
    assert r["n_dropped"] == 3
    assert r["p_two_sided"] == pytest.approx(paired_test(D)["p_two_sided"])
    assert "3 non-finite" in r["note"]
    jsonable(r)


@pytest.mark.parametrize("test", ["t", "wilcoxon"])
def test_fewer_than_two(test: str) -> None:
    for diff in ([], [0.3], [0.3, float("nan")]):
        r = paired_test(diff, test=test)  # type: ignore[arg-type]
        assert r["p_two_sided"] is None
        assert r["p_greater"] is None
        assert r["std"] is None
        assert r["ci_low"] is None
        assert r["effect_size"] is None
        assert r["note"]
        jsonable(r)
    assert paired_test([0.3], test=test)["estimate"] == 0.3  # type: ignore[arg-type]


def test_t_zero_variance() -> None:
    r = paired_test([0.2, 0.2, 0.2, 0.2])
    assert r["std"] == 0.0
    assert r["effect_size"] is None
    assert r["p_two_sided"] is None
    assert r["p_greater"] is None
    assert "zero variance" in r["note"]
    assert r["ci_low"] == r["ci_high"] == pytest.approx(0.2)
    # float noise in "equal" differences is still zero variance
    r = paired_test([0.1 + 0.2, 0.3, 0.3])
    assert r["p_two_sided"] is None
    assert r["std"] == 0.0
    jsonable(r)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="test must be 't' or 'wilcoxon'"):
        paired_test(D, test="sign")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\)"):
        paired_test(D, confidence=95)


# --- paired_test, wilcoxon --------------------------------------------------------------------

def test_wilcoxon_exact_matches_scipy() -> None:
    r = paired_test(D, test="wilcoxon")
    d = np.asarray(D)
    assert r["p_method"].endswith("exact")
    assert r["p_two_sided"] == pytest.approx(sps.wilcoxon(d, method="exact").pvalue, rel=1e-12)
    assert r["p_greater"] == pytest.approx(
        sps.wilcoxon(d, method="exact", alternative="greater").pvalue, rel=1e-12)
    # by hand: ranks of |d| 0.03..0.25 -> negatives are 0.03 (rank 1), 0.07 (rank 4): T- = 5,
    # T+ = 50; P(T+ >= 50) = P(T+ <= 5) = #{subsets of 1..10 summing to <= 5} / 2^10: sums
    # 0, 1, 2 (one each), 3 ({3}, {1,2}), 4 ({4}, {1,3}), 5 ({5}, {1,4}, {2,3}) -> 10/1024
    assert r["p_greater"] == pytest.approx(10 / 1024)
    assert r["p_two_sided"] == pytest.approx(20 / 1024)
    jsonable(r)


def _perm_p_greater(d: list[float]) -> float:
    """P(T+ >= observed) over all sign flips of the nonzero |d|'s mid-ranks."""
    nz = [x for x in d if x != 0]
    ranks = sps.rankdata(np.abs(nz))
    obs = sum(r for r, x in zip(ranks, nz, strict=True) if x > 0)
    hits = total = 0
    for signs in itertools.product((0, 1), repeat=len(nz)):
        total += 1
        hits += sum(r for r, s in zip(ranks, signs, strict=True) if s) >= obs - 1e-9
    return hits / total


def test_wilcoxon_ties_and_zeros_match_scipy() -> None:
    tied = [0.1, 0.1, -0.1, 0.2, 0.3, 0.3, 0.0, 0.4, -0.05]
    r = paired_test(tied, test="wilcoxon")
    assert "permutation" in r["p_method"]
    assert r["n_zero"] == 1
    assert r["n"] == 9
    assert r["p_two_sided"] == pytest.approx(
        sps.wilcoxon(tied, zero_method="wilcox").pvalue, rel=1e-12)
    assert r["p_greater"] == pytest.approx(
        sps.wilcoxon(tied, zero_method="wilcox", alternative="greater").pvalue, rel=1e-12)
    assert r["p_greater"] == pytest.approx(_perm_p_greater(tied))


def test_wilcoxon_ties_large_n_normal_approximation() -> None:
    rng = np.random.default_rng(3)
    d = list(np.round(rng.normal(0.3, 1.0, 30), 1))  # rounding makes ties
    r = paired_test(d, test="wilcoxon")
    assert r["p_method"].endswith("no continuity correction)")
    assert r["p_two_sided"] == pytest.approx(
        sps.wilcoxon(d, zero_method="wilcox", method="asymptotic").pvalue, rel=1e-12)
    assert r["p_greater"] == pytest.approx(sps.wilcoxon(
        d, zero_method="wilcox", method="asymptotic", alternative="greater").pvalue, rel=1e-12)


def test_wilcoxon_all_zero_is_all_ties() -> None:
    r = paired_test([0.0] * 8, test="wilcoxon")
    assert r["p_two_sided"] is None
    assert r["p_greater"] is None
    assert r["n_zero"] == 8
    assert "all ties" in r["note"]
    assert r["estimate"] == 0.0
    assert r["ci_low"] == r["ci_high"] == 0.0
    jsonable(r)


def test_wilcoxon_constant_nonzero_still_tests() -> None:
    r = paired_test([0.5] * 7, test="wilcoxon")
    assert r["effect_size"] is None
    assert "zero variance" in r["note"]
    assert r["p_greater"] == pytest.approx(1 / 128)  # all 7 signs positive: 1 / 2^7
    assert r["p_two_sided"] == pytest.approx(
        sps.wilcoxon([0.5] * 7, zero_method="wilcox").pvalue)


# --- Hodges-Lehmann ---------------------------------------------------------------------------

def test_hodges_lehmann_by_hand() -> None:
    # Walsh averages of (-1, 2, 4): -1, 0.5, 1.5, 2, 3, 4 -> median (1.5 + 2) / 2
    h = hodges_lehmann([-1.0, 2.0, 4.0])
    assert h["estimate"] == 1.75
    assert h["n_walsh"] == 6
    assert h["ci_low"] is None
    assert h["ci_high"] is None
    # n = 6: P(T+ <= 0) = 1/64 <= 0.025 < P(T+ <= 1) = 2/64, so k = 1: [min, max]
    h = hodges_lehmann([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert h["estimate"] == 3.5
    assert h["k"] == 1
    assert (h["ci_low"], h["ci_high"]) == (1.0, 6.0)
    assert h["ci_coverage"] == pytest.approx(1 - 2 / 64)
    # n = 8: P(T+ <= 3) = 5/256 <= 0.025 < P(T+ <= 4) = 7/256 (the table's critical value 3)
    d = [-2.0, 1.0, 3.0, 4.0, 6.0, 7.0, 9.0, 12.0]
    h = hodges_lehmann(d)
    walsh = sorted((d[i] + d[j]) / 2 for i in range(8) for j in range(i, 8))
    assert h["k"] == 4
    assert (h["ci_low"], h["ci_high"]) == (walsh[3], walsh[36 - 4])
    assert h["estimate"] == pytest.approx(np.median(walsh))
    assert h["ci_coverage"] == pytest.approx(1 - 2 * 5 / 256)


def test_hodges_lehmann_interval_inverts_scipy_exact_test() -> None:
    """The interval is the set of shifts mu the exact signed-rank test of d - mu keeps."""
    rng = np.random.default_rng(0)
    d = np.round(rng.normal(0.5, 1.0, 12), 3)
    r = paired_test(list(d), test="wilcoxon")
    lo, hi, eps = r["ci_low"], r["ci_high"], 1e-6
    alpha = 0.05
    for mu in (lo + eps, hi - eps, r["estimate"]):
        assert sps.wilcoxon(d - mu, method="exact").pvalue > alpha
    for mu in (lo - eps, hi + eps):
        assert sps.wilcoxon(d - mu, method="exact").pvalue <= alpha
    assert r["ci_coverage"] >= 0.95


def test_signed_rank_null_distribution_matches_scipy() -> None:
    for n in (1, 5, 12):
        cdf = cs._signed_rank_cdf(n)
        assert cdf[-1] == pytest.approx(1.0)
        assert cdf.size == n * (n + 1) // 2 + 1
    # for d below T+ = 8 (n = 10, no ties): scipy's exact P(T+ <= 8) is the same number
    d = [-1.0, -2.0, 3.0, -4.0, 5.0, -6.0, -7.0, -8.0, -9.0, -10.0]
    p_less = sps.wilcoxon(d, method="exact", alternative="less").pvalue
    assert cs._signed_rank_cdf(10)[8] == pytest.approx(p_less, rel=1e-12)


def test_hodges_lehmann_large_n_normal_k_close_to_exact() -> None:
    for n in (50, 200, 500):
        k_exact, _ = cs._hl_k(n, 0.95)
        m = n * (n + 1) / 2
        k_norm = math.floor(m / 2 + 0.5 - 1.959964 * math.sqrt(n * (n + 1) * (2 * n + 1) / 24))
        assert abs(k_exact - k_norm) <= 1
    rng = np.random.default_rng(1)
    r = paired_test(list(rng.normal(0.1, 1.0, 600)), test="wilcoxon")
    assert r["ci_low"] < r["estimate"] < r["ci_high"]
    assert "normal" in r["ci_method"]
    jsonable(r)


# --- censored_paired --------------------------------------------------------------------------

def test_censored_by_hand_and_against_scipy() -> None:
    limit = 10
    a = [3, 4, None, 2, 5, 6, None]     # BN: epochs to reach the threshold
    b = [6, None, None, 9, 4, 10, 8]    # plain
    r = censored_paired(a, b, limit=limit)
    # substituted: None -> 11; d = b - a = 3, 7, 0, 7, -1, 4, -3
    # nonzero |d| 3, 7, 7, 1, 4, 3 -> mid-ranks 2.5, 5.5, 5.5, 1, 4, 2.5
    # T+ = 2.5 + 5.5 + 5.5 + 4 = 17.5, T- = 1 + 2.5 = 3.5 (sum 21 = 6*7/2)
    assert (r["n_censored_a"], r["n_censored_b"], r["n_both_censored"]) == (2, 2, 1)
    assert r["n"] == 7
    assert r["n_zero"] == 1
    assert r["n_dropped"] == 0
    sa = [11 if x is None else x for x in a]
    sb = [11 if x is None else x for x in b]
    d = [y - x for x, y in zip(sa, sb, strict=True)]
    assert d == [3, 7, 0, 7, -1, 4, -3]
    assert sps.wilcoxon(sb, sa, zero_method="wilcox").statistic == 3.5
    assert r["p_two_sided"] == pytest.approx(
        sps.wilcoxon(sb, sa, zero_method="wilcox").pvalue, rel=1e-12)
    assert r["p_greater"] == pytest.approx(
        sps.wilcoxon(sb, sa, zero_method="wilcox", alternative="greater").pvalue, rel=1e-12)
    # by hand: sign flips of ranks (1, 2.5, 2.5, 4, 5.5, 5.5) with T+ >= 17.5, i.e. T- <= 3.5:
    # T- from {}, {1}, {2.5}, {2.5'}, {1, 2.5}, {1, 2.5'} -> 6 of 64
    assert r["p_greater"] == pytest.approx(_perm_p_greater([float(x) for x in d]))
    assert r["p_greater"] == pytest.approx(6 / 64)
    assert "11" in r["treatment"]
    assert "zero_method='wilcox'" in r["treatment"]
    assert r["test"] == "wilcoxon"
    assert r["estimate"] == r["hodges_lehmann"]
    jsonable(r)


def test_censored_degenerate_and_errors() -> None:
    r = censored_paired([None, None, None], [None, None, None], limit=5)
    assert r["n_both_censored"] == 3
    assert r["p_two_sided"] is None
    assert "all ties" in r["note"]
    r = censored_paired([1, float("nan"), 2], [3, 4, 5], limit=5)
    assert r["n_dropped"] == 1
    assert r["n"] == 2
    assert "non-finite" in r["note"]
    with pytest.raises(ValueError, match="beyond the limit"):
        censored_paired([12], [3], limit=10)
    with pytest.raises(ValueError, match="shorter"):  # unpaired runs
        censored_paired([1, 2], [3], limit=10)


# --- holm -------------------------------------------------------------------------------------

def holm_reference(p: list[float]) -> list[float]:
    """Textbook: adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)), j 1-based."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj = [0.0] * m
    for pos, i in enumerate(order):
        adj[i] = max(min(1.0, (m - j) * p[order[j]]) for j in range(pos + 1))
    return adj


def holm_rejects(p: list[float], alpha: float) -> set[int]:
    """The step-down procedure itself: reject p_(1), p_(2), ... while p_(k) <= alpha/(m-k+1)."""
    m = len(p)
    out: set[int] = set()
    for k, i in enumerate(sorted(range(m), key=lambda i: p[i])):
        if p[i] > alpha / (m - k):
            break
        out.add(i)
    return out


def test_holm_textbook() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04: x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.2]) == pytest.approx([0.5, 0.4])
    assert holm([0.6, 0.4]) == pytest.approx([0.8, 0.8])
    assert holm([0.9, 0.8, 0.7]) == [1.0, 1.0, 1.0]  # capped
    assert holm([0.02, 0.02, 0.02]) == pytest.approx([0.06, 0.06, 0.06])  # ties
    assert holm([]) == []
    assert holm([0.03]) == [0.03]


def test_holm_none_entries_pass_through() -> None:
    out = holm([None, 0.01, float("nan"), 0.04, None])
    assert out[0] is None
    assert out[2] is None
    assert out[4] is None
    assert out[1] == pytest.approx(0.02)
    assert out[3] == pytest.approx(0.04)
    assert holm([None, None]) == [None, None]
    with pytest.raises(ValueError, match=r"p-value 1.5 at position 1 is not in \[0, 1\]"):
        holm([0.5, 1.5])


def test_holm_against_reference_and_procedure() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        m = int(rng.integers(1, 9))
        p = list(np.round(rng.uniform(0, 0.2, m) ** 2, 6))
        adj = holm(p)
        assert adj == pytest.approx(holm_reference(p))
        for alpha in (0.001, 0.01, 0.0137, 0.05):
            assert {i for i, q in enumerate(adj) if q is not None and q <= alpha} \
                == holm_rejects(p, alpha)
        order = np.argsort(p, kind="stable")
        ordered = [adj[i] for i in order]
        assert ordered == sorted(ordered)


def test_holm_against_statsmodels() -> None:
    try:
        from statsmodels.stats import multitest
    except ImportError:
        unavailable("statsmodels is not installed (pip install -e '.[dev]')")
    p = [0.01, 0.04, 0.03, 0.005, 0.2, 0.0001]
    assert holm(p) == pytest.approx(list(multitest.multipletests(p, method="holm")[1]))


# --- verdict ----------------------------------------------------------------------------------

def test_verdict_three_outcomes() -> None:
    up = paired_test(D)
    v = verdict(up, 0.012)
    assert v["verdict"] == "supported"
    for s in (f"{up['mean']:.4g}", f"{up['ci_low']:.4g}", "0.012", "n = 10", "95% CI"):
        assert s in v["reason"]
    down = paired_test([-x for x in D])
    assert verdict(down, 0.012)["verdict"] == "contradicted"
    assert verdict(up, 0.2)["verdict"] == "inconclusive"
    assert verdict(up, 0.05)["verdict"] == "inconclusive"  # not < alpha
    assert verdict(up, 0.06, alpha=0.1)["verdict"] == "supported"
    assert verdict(up, None)["verdict"] == "inconclusive"
    flat = paired_test([0.2, 0.2, 0.2])
    v = verdict(flat, None)
    assert v["verdict"] == "inconclusive"
    assert "zero variance" in v["reason"]
    jsonable(v)


def test_verdict_reads_hodges_lehmann_for_wilcoxon() -> None:
    # mean > 0 (one large win) but the pseudo-median < 0: the Wilcoxon verdict follows HL
    d = [-0.1, -0.2, -0.15, -0.12, -0.3, -0.05, 5.0]
    r = paired_test(d, test="wilcoxon")
    assert r["mean"] > 0 > r["estimate"]
    v = verdict(r, 0.01)
    assert v["verdict"] == "contradicted"
    assert "Hodges-Lehmann" in v["reason"]
    assert verdict({"estimate": 0.0, "n": 3, "test": "t"}, 0.001)["verdict"] == "inconclusive"


# --- seeds_needed -----------------------------------------------------------------------------

def test_seeds_needed_arithmetic() -> None:
    res = {"n": 20, "mean": 0.03, "std": 0.1, "confidence": 0.95}
    s = seeds_needed(res)
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)  # 2.8016
    assert s["n_needed"] == math.ceil((z * 0.1 / 0.03) ** 2) == 88
    half = sps.t.ppf(0.975, 19) * 0.1 / math.sqrt(20)
    assert s["ci_half_width"] == pytest.approx(half)  # 0.0468
    assert s["n_now"] == 20
    assert s["effect"] == 0.03
    assert s["text"].startswith("n = 20 gives a 95% CI of ±0.0468; ~88 seeds would resolve a "
                                "0.03 effect")
    assert "normal approximation" in s["text"]
    # an explicit effect, negative: its size counts
    s = seeds_needed(res, effect=-0.06, power=0.9, alpha=0.01)
    z = sps.norm.ppf(0.995) + sps.norm.ppf(0.9)
    assert s["n_needed"] == math.ceil((z * 0.1 / 0.06) ** 2)
    # already enough
    s = seeds_needed(res, effect=0.5)
    assert s["n_needed"] == 2
    assert "already suffice" in s["text"]
    # from a real result
    r = paired_test(D)
    s = seeds_needed(r)
    assert s["ci_half_width"] == pytest.approx((r["ci_high"] - r["ci_low"]) / 2)
    jsonable(s)


def test_seeds_needed_degenerate() -> None:
    s = seeds_needed(paired_test([0.2, 0.2, 0.2]))
    assert s["n_needed"] is None
    assert s["note"]
    assert s["ci_half_width"] == 0.0
    s = seeds_needed({"n": 10, "mean": 0.0, "std": 0.1, "confidence": 0.95})
    assert s["n_needed"] is None
    assert "zero effect" in s["text"]
    s = seeds_needed(paired_test([0.2]))
    assert s["n_needed"] is None
    assert s["ci_half_width"] is None
    assert s["note"]
    jsonable(s)


# --- spread -----------------------------------------------------------------------------------

def test_spread() -> None:
    v = [0.81, 0.75, 0.9, 0.62, 0.88, 0.7]
    s = spread([*v, None, float("nan")])
    assert s["n"] == 6
    assert s["n_dropped"] == 2
    assert s["std"] == pytest.approx(np.std(v, ddof=1))
    assert s["iqr"] == pytest.approx(np.percentile(v, 75) - np.percentile(v, 25))
    assert s["iqr"] == pytest.approx(sps.iqr(v))
    assert spread([1.0, 2.0, 3.0, 4.0])["iqr"] == pytest.approx(1.5)  # 3.25 - 1.75
    one = spread([0.5])
    assert one["std"] is None
    assert one["iqr"] == 0.0
    none = spread([])
    assert none == {"n": 0, "n_dropped": 0, "median": None, "std": None, "iqr": None}
    jsonable(s)
