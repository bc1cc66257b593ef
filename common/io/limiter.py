"""An async rate limiter: `common.ratelimit.TokenBucket` on trio's clock."""

from __future__ import annotations

import trio

from common.ratelimit import BucketStatistics, TokenBucket


class RateLimiter:
    """`await limiter.acquire(n)` before moving n bytes; unlimited when rate is None."""

    def __init__(self, rate: float | None, burst: float | None = None) -> None:
        self.rate = rate
        self._burst = burst
        self._bucket: TokenBucket | None = None

    async def acquire(self, count: int) -> None:
        if self.rate is None:
            return
        now = trio.current_time()
        if self._bucket is None:
            self._bucket = TokenBucket(self.rate, self._burst, now=now)
        delay = self._bucket.reserve(count, now)
        if delay > 0:
            await trio.sleep(delay)

    def statistics(self) -> BucketStatistics | None:
        return self._bucket.statistics() if self._bucket else None
