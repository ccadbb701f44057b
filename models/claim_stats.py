"""Statistics for testing claims about BatchNorm on paired, per-seed measures (studies).

A study (`models.study`) reduces each seed's pair of runs to one number and orients it so that
d > 0 is the claim's direction. These functions turn those numbers into a test, a multiplicity
correction across the study's claims, a verdict, and a "how many seeds would settle it".

Conventions (as in `models.stats`):
- Non-finite inputs (None, NaN, inf) are dropped and counted in `n_dropped`; `n` counts the
  values used.
- Spread is the sample std (ddof=1). A value that is undefined (n < 2, zero variance, every
  difference 0) is None and `note` says why; no function raises or warns on such data.
- Everything returned is JSON-able: floats, ints, strings or None (NaN and inf become None).

Tests (`paired_test`):
- "t": the one-sample t-test of the differences against 0 (`scipy.stats.ttest_1samp`); the
  interval is the Student-t interval of the mean, mean ± t((1+c)/2, n-1)·std/√n.
- "wilcoxon": the signed-rank test (`scipy.stats.wilcoxon`, zero_method="wilcox": zero
  differences are dropped before ranking; method="auto": the exact null distribution for
  n <= 50 without ties or zeros, an exact enumeration of all 2^n sign flips (a permutation
  test, deterministic) when there are ties or zeros and n <= 13, the normal approximation with
  the tie correction (scipy's default: no continuity correction) otherwise; `p_method` says
  which). The estimate is the Hodges-Lehmann pseudo-median: the median of the n(n+1)/2 Walsh
  averages (d_i + d_j)/2, i <= j. Its interval is the distribution-free one got by inverting
  the signed-rank test (Hollander & Wolfe, ch. 3): with W_(1) <= ... <= W_(M) the sorted Walsh
  averages and k the largest integer with P(T+ <= k-1) <= (1-c)/2 under the exact null
  distribution of T+ for n (above n = 500, its normal approximation with continuity
  correction), the interval is [W_(k), W_(M+1-k)]. For continuous data without ties its
  coverage is at least c (exactly `ci_coverage`); with ties it is approximate. The Walsh
  averages use every finite difference, zeros included. When even k = 1 is too wide (n <= 5 at
  95%: the interval would be unbounded), the interval is None with a note.
- `effect_size` is Cohen's d_z = mean / std of the differences, for either test.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from models.stats import _num

_EXACT_HL_MAX_N = 500


def _finite(values: Sequence[float | None]) -> tuple[np.ndarray, int]:
    """The finite values as float64, and how many were dropped."""
    kept = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return np.asarray(kept, dtype=np.float64), len(values) - len(kept)


def _quiet(f: Any, *args: Any, **kwargs: Any) -> float | None:
    """f(...).pvalue as a JSON number; None if scipy fails or gives NaN (warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _num(f(*args, **kwargs).pvalue)
        except (ValueError, ZeroDivisionError, FloatingPointError):
            return None


def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(T+ <= s), s = 0..n(n+1)/2, under the exact null distribution of the signed-rank sum."""
    p = np.ones(1, dtype=np.float64)
    for i in range(1, n + 1):
        nxt = np.zeros(p.size + i, dtype=np.float64)
        nxt[:p.size] += p
        nxt[i:] += p
        p = nxt * 0.5
    return np.cumsum(p)


def _hl_k(n: int, confidence: float) -> tuple[int, float | None]:
    """k with [W_(k), W_(M+1-k)] the interval (0 if none exists), and its exact coverage."""
    half = (1.0 - confidence) / 2.0
    if n <= _EXACT_HL_MAX_N:
        cdf = _signed_rank_cdf(n)
        k = int(np.count_nonzero(cdf <= half * (1.0 + 1e-9)))
        return k, (1.0 - 2.0 * float(cdf[k - 1])) if k else None
    m = n * (n + 1) / 2.0
    z = float(sps.norm.ppf(1.0 - half))
    k = math.floor(m / 2.0 + 0.5 - z * math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0))
    return max(k, 0), None


def hodges_lehmann(d: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """{estimate, ci_low, ci_high, ci_coverage, k, n_walsh} of the finite values (see module)."""
    v, _ = _finite(d)
    n = int(v.size)
    out: dict[str, Any] = {"estimate": None, "ci_low": None, "ci_high": None,
                           "ci_coverage": None, "k": None, "n_walsh": n * (n + 1) // 2}
    if n == 0:
        return out
    i, j = np.triu_indices(n)
    walsh = np.sort((v[i] + v[j]) / 2.0)
    out["estimate"] = _num(np.median(walsh))
    k, coverage = _hl_k(n, confidence)
    if k >= 1:
        m = walsh.size
        out.update(ci_low=_num(walsh[k - 1]), ci_high=_num(walsh[m - k]), k=k,
                   ci_coverage=_num(coverage) if coverage is not None else None)
    return out


def _wilcoxon_method(d: np.ndarray) -> str:
    """Which p-value scipy's wilcoxon(method="auto") computes for d (see module docstring)."""
    nonzero = np.abs(d[d != 0])
    ties = np.unique(nonzero).size < nonzero.size
    zeros = bool(np.any(d == 0))
    if d.size > 50:
        return "normal approximation (tie-corrected, no continuity correction)"
    if not (ties or zeros):
        return "exact"
    if d.size <= 13:
        return "exact permutation (all 2^n sign flips; ties or zeros present)"
    return "normal approximation (tie-corrected, no continuity correction)"


def paired_test(diff: Sequence[float], *, confidence: float = 0.95,
                test: Literal["t", "wilcoxon"] = "t") -> dict[str, Any]:
    """Test per-seed paired differences (d > 0: the claim's direction) against 0.

    Returns {n, n_dropped, n_zero, test, confidence, mean, median, std, estimate,
    hodges_lehmann, ci_low, ci_high, ci_method, ci_coverage, effect_size, p_two_sided,
    p_greater, p_method, note}. `estimate` is what a verdict reads: the mean for "t", the
    Hodges-Lehmann pseudo-median for "wilcoxon"; ci_low/ci_high are that estimate's interval.
    """
    if test not in ("t", "wilcoxon"):
        raise ValueError(f"test must be 't' or 'wilcoxon', not {test!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    d, dropped = _finite(diff)
    n = int(d.size)
    notes: list[str] = []
    out: dict[str, Any] = {
        "n": n, "n_dropped": dropped, "n_zero": int(np.count_nonzero(d == 0)), "test": test,
        "confidence": confidence, "mean": None, "median": None, "std": None, "estimate": None,
        "hodges_lehmann": None, "ci_low": None, "ci_high": None, "ci_method": None,
        "ci_coverage": None, "effect_size": None, "p_two_sided": None, "p_greater": None,
        "p_method": None, "note": None}
    if dropped:
        notes.append(f"{dropped} non-finite difference(s) dropped")
    if n == 0:
        out["note"] = "; ".join([*notes, "no finite differences: nothing to test"])
        return out
    hl = hodges_lehmann(list(d), confidence)
    out.update(mean=_num(d.mean()), median=_num(np.median(d)), hodges_lehmann=hl["estimate"])
    if n < 2:
        out["estimate"] = out["mean"] if test == "t" else hl["estimate"]
        out["note"] = "; ".join([*notes, f"{n} paired seed: at least 2 are needed for a test"])
        return out
    std = float(d.std(ddof=1))
    out["std"] = _num(std)
    constant = float(np.ptp(d)) <= 1e-12 * max(1.0, float(np.abs(d).max()))
    if constant:
        std = 0.0
        out["std"] = 0.0
    else:
        out["effect_size"] = _num(d.mean() / std)

    if test == "t":
        half = float(sps.t.ppf((1.0 + confidence) / 2.0, n - 1)) * std / math.sqrt(n)
        mean = float(d.mean())
        out.update(estimate=out["mean"], ci_low=_num(mean - half), ci_high=_num(mean + half),
                   ci_method="Student-t interval of the mean", ci_coverage=confidence)
        if constant:
            notes.append(f"every seed's difference is {float(d[0]):.6g}: zero variance, so "
                         "the t-test and d_z are undefined (the interval has zero width)")
        else:
            out["p_method"] = "one-sample t-test (scipy.stats.ttest_1samp)"
            out["p_two_sided"] = _quiet(sps.ttest_1samp, d, 0.0)
            out["p_greater"] = _quiet(sps.ttest_1samp, d, 0.0, alternative="greater")
    else:
        out.update(estimate=hl["estimate"], ci_low=hl["ci_low"], ci_high=hl["ci_high"],
                   ci_coverage=hl["ci_coverage"],
                   ci_method=("Hodges-Lehmann interval from the sorted Walsh averages, "
                              "inverting the signed-rank test"
                              + (" (exact null distribution)" if n <= _EXACT_HL_MAX_N
                                 else " (normal approximation)")))
        if hl["k"] is None:
            notes.append(f"n = {n} is too few for a {confidence:.0%} distribution-free "
                         "interval of the pseudo-median (it would be unbounded)")
        if constant and float(d[0]) != 0.0:
            notes.append(f"every seed's difference is {float(d[0]):.6g}: zero variance, so "
                         "d_z is undefined")
        if not np.any(d != 0):
            notes.append("every difference is 0: all ties, so the signed-rank test is "
                         "undefined (zero_method='wilcox' drops them all)")
        else:
            out["p_method"] = "Wilcoxon signed-rank, " + _wilcoxon_method(d)
            out["p_two_sided"] = _quiet(sps.wilcoxon, d, zero_method="wilcox")
            out["p_greater"] = _quiet(sps.wilcoxon, d, zero_method="wilcox",
                                      alternative="greater")
    out["note"] = "; ".join(notes) or None
    return out


def censored_paired(a: Sequence[float | None], b: Sequence[float | None], *, limit: float,
                    confidence: float = 0.95) -> dict[str, Any]:
    """Paired "epochs to reach a threshold", a (e.g. BN) vs b, None = never reached in `limit`.

    The claim is a < b (a gets there sooner). A censored value becomes limit + 1, the earliest
    epoch it could have reached the threshold, and the Wilcoxon signed-rank test runs on
    d = b - a; a pair censored on both sides is a tie (d = 0), dropped by zero_method="wilcox".
    Pairs with a NaN/inf value are dropped (n_dropped). An observed value above `limit` is an
    error. Returns paired_test's dict plus n_censored_a, n_censored_b, n_both_censored,
    limit, treatment.
    """
    if not math.isfinite(limit):
        raise ValueError(f"limit must be finite, not {limit}")
    sub = float(limit) + 1.0
    d: list[float] = []
    ca = cb = both = dropped = 0
    for x, y in zip(a, b, strict=True):
        vals: list[float] = []
        for v in (x, y):
            if v is None:
                vals.append(sub)
                continue
            f = float(v)
            if math.isfinite(f) and f > limit:
                raise ValueError(f"an observed epoch {f} is beyond the limit {limit}")
            vals.append(f)
        if not all(math.isfinite(v) for v in vals):
            dropped += 1
            continue
        ca += x is None
        cb += y is None
        both += x is None and y is None
        d.append(vals[1] - vals[0])
    out = paired_test(d, confidence=confidence, test="wilcoxon")
    out["n_dropped"] = dropped
    if dropped:
        extra = f"{dropped} pair(s) with a non-finite value dropped"
        out["note"] = f"{out['note']}; {extra}" if out["note"] else extra
    out.update(n_censored_a=ca, n_censored_b=cb, n_both_censored=both, limit=float(limit),
               treatment=(
                   f"A run that never reached the threshold in {limit:g} epochs counts as "
                   f"reaching it at epoch {sub:g}, later than any observed epoch; the "
                   "signed-rank test runs on d = b - a. That epoch is a lower bound on the "
                   "true one, so the differences involving a censored run are as small in "
                   "magnitude as the data allow (the test's ranks, the mean and the "
                   "Hodges-Lehmann estimate are computed on these substituted values). "
                   f"{both} pair(s) censored on both sides are ties (d = 0), dropped from the "
                   "test by zero_method='wilcox'."))
    return out


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjusted p-values, in the input's order.

    With the m non-None p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of p_(i) is
    max over j <= i of min(1, (m - j + 1)·p_(j)): monotone in p and capped at 1. Rejecting
    where adjusted < alpha controls the family-wise error rate at alpha. None (and NaN)
    entries stay None and do not count in m.
    """
    finite: list[tuple[int, float]] = []
    for i, p in enumerate(p_values):
        if p is None or not math.isfinite(float(p)):
            continue
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p-value {p} at position {i} is not in [0, 1]")
        finite.append((i, float(p)))
    out: list[float | None] = [None] * len(p_values)
    m = len(finite)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(finite, key=lambda ip: ip[1])):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def verdict(result: dict[str, Any], adjusted_p: float | None, *,
            alpha: float = 0.05) -> dict[str, str]:
    """{"verdict": "supported" | "contradicted" | "inconclusive", "reason"} for a paired_test
    (or censored_paired) result and its Holm-adjusted p-value.

    Supported: adjusted_p < alpha and the estimate (mean for "t", Hodges-Lehmann for
    "wilcoxon") > 0; contradicted: adjusted_p < alpha and estimate < 0; else inconclusive.
    """
    est = result.get("estimate")
    label = ("Hodges-Lehmann estimate" if result.get("test") == "wilcoxon"
             else "mean difference")
    conf = result.get("confidence")
    ci = (f"{conf:.0%} CI {_fmt(result.get('ci_low'))} to {_fmt(result.get('ci_high'))}"
          if conf is not None else
          f"CI {_fmt(result.get('ci_low'))} to {_fmt(result.get('ci_high'))}")
    n = result.get("n")
    numbers = f"{label} {_fmt(est)} ({ci}), n = {n}"
    p = _num(adjusted_p)
    if p is None:
        why = f"; {result['note']}" if result.get("note") else ""
        return {"verdict": "inconclusive",
                "reason": f"{numbers}: no adjusted p-value{why}"}
    numbers += f", Holm-adjusted p = {p:.3g}"
    if p >= alpha:
        return {"verdict": "inconclusive", "reason": f"{numbers} >= {alpha:g}"}
    if est is None or est == 0:
        return {"verdict": "inconclusive",
                "reason": f"{numbers} < {alpha:g}, but the estimate has no direction"}
    if est > 0:
        return {"verdict": "supported",
                "reason": f"{numbers} < {alpha:g}, in the claim's direction"}
    return {"verdict": "contradicted",
            "reason": f"{numbers} < {alpha:g}, against the claim's direction"}


def seeds_needed(result: dict[str, Any], *, alpha: float = 0.05, power: float = 0.8,
                 effect: float | None = None) -> dict[str, Any]:
    """How many seeds a two-sided paired t-test at `alpha` needs to detect `effect` (default:
    the observed mean difference) with probability `power`, given the observed std.

    n = ceil(((z_{1-alpha/2} + z_power)·std / |effect|)^2), at least 2: the normal
    approximation, which understates the t-test's need by a seed or two at small n.
    `ci_half_width` is the current Student-t half-width, t((1+c)/2, n-1)·std/√n.
    Returns {n_now, ci_half_width, effect, n_needed, text, note}.
    """
    n = int(result.get("n") or 0)
    std = result.get("std")
    conf = result.get("confidence") or 0.95
    eff = result.get("mean") if effect is None else effect
    out: dict[str, Any] = {"n_now": n, "ci_half_width": None, "effect": _num(eff),
                           "n_needed": None, "text": None, "note": None}
    if n < 2 or std is None:
        out["note"] = f"n = {n}: at least 2 seeds are needed to estimate the spread"
        out["text"] = f"n = {n}: too few seeds to estimate the spread; run at least 2"
        return out
    half = float(sps.t.ppf((1.0 + conf) / 2.0, n - 1)) * float(std) / math.sqrt(n)
    out["ci_half_width"] = _num(half)
    now = f"n = {n} gives a {conf:.0%} CI of ±{half:.3g}"
    if std == 0:
        out["note"] = "the differences do not vary across seeds: zero std, no power calculation"
        out["text"] = f"{now}; the differences do not vary, so more seeds would not help"
        return out
    if out["effect"] is None or out["effect"] == 0:
        out["note"] = "effect is 0 (or undefined): no number of seeds detects it"
        out["text"] = f"{now}; a zero effect cannot be resolved by more seeds"
        return out
    z = float(sps.norm.ppf(1.0 - alpha / 2.0) + sps.norm.ppf(power))
    need = max(2, math.ceil((z * float(std) / abs(float(out["effect"]))) ** 2))
    out["n_needed"] = need
    how = (f"(paired t-test, two-sided alpha {alpha:g}, power {power:g}, "
           "normal approximation)")
    size = f"{abs(float(out['effect'])):.3g}"
    if need <= n:
        out["text"] = f"{now}; {n} seeds already suffice for a {size} effect {how}"
    else:
        out["text"] = f"{now}; ~{need} seeds would resolve a {size} effect {how}"
    return out


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """{n, n_dropped, median, std (ddof=1), iqr (75th - 25th percentile, linear)} of the finite
    values; std is None below 2 values, median and iqr None with none."""
    v, dropped = _finite(values)
    n = int(v.size)
    out: dict[str, Any] = {"n": n, "n_dropped": dropped, "median": None, "std": None,
                           "iqr": None}
    if n:
        q25, q75 = np.percentile(v, [25, 75])
        out.update(median=_num(np.median(v)), iqr=_num(q75 - q25))
    if n >= 2:
        out["std"] = _num(v.std(ddof=1))
    return out
