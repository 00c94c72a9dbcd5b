"""The fixed latency histogram of usage records: log-spaced buckets, four per doubling.

Bucket 0 counts answers of at most 1 ms; bucket ``i`` (1 ≤ i < 79) those in (2^((i-1)/4), 2^(i/4)] ms;
the last one everything above 2^(78/4) ms (about 742 s). Every process uses the same buckets, so
histograms merge by adding counts (in SQL, as sums of the ``lat_NN`` columns). A percentile is the
geometric middle of the bucket it falls in: within ±9 % (2^(1/8)) of the true value between 1 ms and
742 s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from modelyard.db.tables import USAGE_LATENCY_BUCKETS

BUCKETS = USAGE_LATENCY_BUCKETS
PER_DOUBLING = 4
_LAST = BUCKETS - 1


def bucket_of(latency_s: float) -> int:
    """The bucket of a latency in seconds (negative, NaN: bucket 0; beyond the last bound: the last)."""
    ms = latency_s * 1000.0
    if not ms > 1.0:  # also NaN
        return 0
    if ms == math.inf:
        return _LAST
    index = math.ceil(math.log2(ms) * PER_DOUBLING)
    return min(_LAST, index)


def representative_ms(index: int) -> float:
    """The value a percentile falling in bucket ``index`` reports: the geometric middle of its bounds
    (0.5 ms for bucket 0, the lower bound for the open last bucket)."""
    if index <= 0:
        return 0.5
    if index >= _LAST:
        return 2.0 ** ((_LAST - 1) / PER_DOUBLING)
    return 2.0 ** ((index - 0.5) / PER_DOUBLING)


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q``-quantile (0 < q ≤ 1) in milliseconds of a histogram, or None when it is empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if count and seen >= rank:
            return round(representative_ms(index), 3)
    return round(representative_ms(len(counts) - 1), 3)  # unreachable with q ≤ 1
