"""The cache of decoded golden boards of :class:`app.services.golden_store.GoldenStore`: LRU,
bounded in bytes, each board kept with the sha256 of the PNG it was decoded from so that the
store serves it only while the file on disk still has that sha256.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

import numpy as np


@dataclasses.dataclass
class _Cached:
    sha256: str
    pixels: np.ndarray


class BoardCache:
    """Decoded boards by product, at most ``max_bytes`` of pixels (0: nothing is kept).

    Thread-safe; the arrays it returns are read-only, since concurrent requests share them.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._boards: collections.OrderedDict[str, _Cached] = collections.OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def get(self, product: str, sha256: str) -> np.ndarray | None:
        """The cached board of ``product`` if it was decoded from a PNG with this ``sha256``
        (it becomes the most recently used); ``None`` otherwise.
        """
        with self._lock:
            cached = self._boards.get(product)
            if cached is None or cached.sha256 != sha256:
                return None
            self._boards.move_to_end(product)
            return cached.pixels

    def remember(self, product: str, sha256: str, pixels: np.ndarray) -> np.ndarray:
        """Caches ``pixels`` (which the cache now owns) and returns them read-only."""
        # Shared between concurrent requests: nobody may write into it.
        frozen = pixels
        frozen.flags.writeable = False
        if frozen.nbytes > self.max_bytes:
            self.forget(product)
            return frozen
        with self._lock:
            old = self._boards.pop(product, None)
            if old is not None:
                self._nbytes -= old.pixels.nbytes
            self._boards[product] = _Cached(sha256, frozen)
            self._nbytes += frozen.nbytes
            while self._nbytes > self.max_bytes:
                _, evicted = self._boards.popitem(last=False)
                self._nbytes -= evicted.pixels.nbytes
        return frozen

    def forget(self, product: str) -> None:
        """Drops the cached board of ``product``, if any."""
        with self._lock:
            old = self._boards.pop(product, None)
            if old is not None:
                self._nbytes -= old.pixels.nbytes

    @property
    def nbytes(self) -> int:
        """Bytes of decoded boards held now."""
        return self._nbytes
