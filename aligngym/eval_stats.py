"""The statistics ``aligngym eval`` reports: unbiased pass@k and pass^k, and a t-interval for a mean.

Per task, ``n`` samples of which ``c`` succeeded:

- pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): the chance that at least one
  of k samples drawn without replacement from the n succeeds, ``1 - C(n-c, k) / C(n, k)``;
- pass^k: the chance that all k succeed, ``C(c, k) / C(n, k)``.

Both are unbiased estimates for k <= n, averaged over tasks. The interval of a mean reward is Student's t over
the per-task means (tasks are the independent units; samples of one task are not).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

#: The confidence of every interval reported.
CONFIDENCE = 0.95
#: Degrees of freedom above which ``t_quantile`` uses the normal approximation.
LARGE_DF = 1000


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one task with ``c`` successes in ``n`` samples (``1 <= k <= n``)."""
    _check(n, c, k)
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k)/C(n, k) as a product, exact in floating point for any n (Chen et al.'s numpy form).
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Unbiased pass^k (all of k samples succeed) for one task: ``C(c, k) / C(n, k)``."""
    _check(n, c, k)
    return math.comb(c, k) / math.comb(n, k)


def _check(n: int, c: int, k: int) -> None:
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student's t interval for the mean of ``values``; ``None`` with fewer than two values."""
    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = t_quantile(confidence, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def t_quantile(confidence: float, df: int) -> float:
    """The ``t`` with P(|T| < t) = ``confidence`` for Student's t with ``df`` degrees of freedom."""
    if df > LARGE_DF:  # the exact series takes df/2 terms; here the normal's expansion is within 1e-6
        z = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
        return z + (z**3 + z) / (4 * df)
    lo, hi = 0.0, 1.0
    while _central_mass(hi, df) < confidence:
        hi *= 2
    for _ in range(64):  # bisection to float precision
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _central_mass(mid, df) < confidence else (lo, mid)
    return (lo + hi) / 2


def _central_mass(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer ``df`` (Abramowitz & Stegun 26.7.3 and 26.7.4, exact)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2:  # odd: 2/pi (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for j in range(1, (df - 1) // 2):
            term *= cos2 * (2 * j) / (2 * j + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term = total = 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for j in range(1, df // 2):
        term *= cos2 * (2 * j - 1) / (2 * j)
        total += term
    return math.sin(theta) * total
