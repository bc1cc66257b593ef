"""Token-bucket arithmetic with bursts; the clock is passed in, nothing here sleeps.

`reserve(n, now)` takes `n` tokens, letting the bucket go into debt, and returns how
long the caller must wait before using them. Going into debt (rather than waiting for
`n` tokens to accumulate) lets a caller take a piece larger than the burst and still
average exactly `rate` over time. The bucket starts empty: a transfer that starts
cold is paced from its first byte, and only an idle spell earns a burst.
`try_take(n, now)` takes `n` tokens only if they are there: for a budget that refuses
rather than waits.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BucketStatistics:
    rate: float
    burst: float
    tokens: float
    taken: int


class TokenBucket:
    def __init__(self, rate: float, burst: float | None = None, *, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        # Default burst: a quarter second of traffic, so short transfers are not paced
        # byte by byte but the long-run average stays at `rate`.
        self.burst = float(burst) if burst is not None else self.rate / 4
        self._tokens = 0.0
        self._stamp = now
        self._taken = 0

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def reserve(self, count: int, now: float) -> float:
        """Take `count` tokens; seconds to wait before the bytes may pass."""
        self._refill(now)
        self._tokens -= count
        self._taken += count
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def try_take(self, count: int, now: float) -> bool:
        """Take `count` tokens if the bucket holds them (no debt); False if not."""
        self._refill(now)
        if self._tokens < count:
            return False
        self._tokens -= count
        self._taken += count
        return True

    def statistics(self) -> BucketStatistics:
        return BucketStatistics(self.rate, self.burst, self._tokens, self._taken)
