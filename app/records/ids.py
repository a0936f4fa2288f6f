"""Time-ordered unique ids (ULID layout) for inspections and reviews.

An id is a prefix and 26 Crockford base-32 characters: 48 bits of Unix milliseconds followed by
80 random bits. Ids therefore sort (as strings) in the order they were made, which the keyset
pagination of :meth:`app.records.store.RecordStore.query` relies on as its tie-breaker, and two
replicas can mint ids without coordinating (80 random bits per millisecond).
"""

from __future__ import annotations

import re
import secrets
import threading
import time

__all__ = ["INSPECTION_PREFIX", "REVIEW_PREFIX", "id_pattern", "new_id"]

INSPECTION_PREFIX = "insp_"
REVIEW_PREFIX = "rev_"

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def _encode(value: int, chars: int) -> str:
    out = []
    for _ in range(chars):
        value, digit = divmod(value, 32)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_id(prefix: str = INSPECTION_PREFIX) -> str:
    """A new id, greater than every id this process made before (monotonic ULID).

    Within one millisecond the random part is incremented instead of redrawn, so ids made by
    one process in a burst keep their order even though they share a timestamp.
    """
    global _last_ms, _last_random
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            rnd = _last_random + 1
            if rnd >> _RANDOM_BITS:
                # 2**80 ids in one millisecond cannot happen; borrow the next millisecond anyway.
                ms, rnd = ms + 1, secrets.randbits(_RANDOM_BITS - 1)
        else:
            # One bit short of 80 leaves room to increment without overflowing in practice.
            rnd = secrets.randbits(_RANDOM_BITS - 1)
        _last_ms, _last_random = ms, rnd
    return prefix + _encode(ms, 10) + _encode(rnd, 16)


def id_pattern(prefix: str) -> re.Pattern[str]:
    """The pattern an id with ``prefix`` matches."""
    return re.compile(re.escape(prefix) + "[0-9A-HJKMNP-TV-Z]{26}")
