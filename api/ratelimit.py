"""Per-key rate limits of one API process (the `limits` library, fixed windows in memory: a
few microseconds per request, so the lookup path can afford it). Over the limit a request gets
429 with Retry-After, the seconds until the key's window resets."""

from __future__ import annotations

import math
import time

from fastapi import HTTPException, status
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from pipelines.config import RateLimitsCfg


class RateLimits:
    """The limits of conf/api.yaml `rate_limits`, counted per key id."""

    def __init__(self, cfg: RateLimitsCfg) -> None:
        self.limiter = FixedWindowRateLimiter(MemoryStorage())
        self.items: dict[str, RateLimitItem] = {
            "lookup": parse(cfg.lookup),
            "collect": parse(cfg.collect),
        }

    def retry_after(self, kind: str, key_id: str) -> int | None:
        """Count one request; None when it may proceed, else the seconds to wait."""
        item = self.items[kind]
        if self.limiter.hit(item, key_id):
            return None
        reset = self.limiter.get_window_stats(item, key_id).reset_time
        return max(1, math.ceil(reset - time.time()))

    def check(self, kind: str, key_id: str) -> None:
        """429 with Retry-After when the key is over its `kind` limit."""
        wait = self.retry_after(kind, key_id)
        if wait is not None:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"this key is over its {kind} limit of {self.items[kind]} per API process "
                f"(api.rate_limits.{kind}); retry after {wait} s",
                headers={"Retry-After": str(wait)},
            )
