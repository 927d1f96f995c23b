"""How long a loop, or an operation, waits after a failure: one policy, injected."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: `base`, times `factor` per failure, at most `cap`, jittered.

    `jitter` is the fraction a delay may be shortened by at random (0 keeps it exact), so that
    many waiters let go of a recovered service over a spread of time, not all at once.
    """

    base: float
    factor: float = 2.0
    cap: float = 900.0
    jitter: float = 0.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the `failures`-th failure in a row, never before Retry-After."""
        exponent = min(max(0, failures - 1), 64)  # beyond this the cap has long been reached
        delay = min(self.cap, self.base * self.factor**exponent)
        if self.jitter:
            delay *= random.uniform(1.0 - self.jitter, 1.0)  # noqa: S311 - jitter, not security
        return float(max(delay, retry_after or 0.0))


#: A loop whose marketplace or shop fails: 30 s, 1 min, 2 min… never longer than its interval.
LOOP_BACKOFF = Backoff(base=30.0, factor=2.0, cap=30.0 * 2**10)
#: An operation the marketplace could not take: 5 s, 10 s… up to 15 min, jittered by half.
OPERATION_BACKOFF = Backoff(base=5.0, factor=2.0, cap=900.0, jitter=0.5)
