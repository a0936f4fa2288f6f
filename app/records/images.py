"""``ImageStore``: the boards' images kept by policy, content-addressed, with retention.

An image is stored once per content, under ``<root>/ab/cdef....<ext>`` where ``abcdef...`` is
the sha256 of the bytes as the station sent them (kept unchanged, so an audit can check the
hash) and the extension comes from the content type (or, failing that, the file's magic
bytes). Writes are atomic (temporary file, fsync, rename), so a reader never sees half an
image. ``PCB_IMAGES_KEEP``: ``none`` keeps nothing, ``failed`` the boards that failed, ``all``
every board.

Retention (:meth:`ImageStore.enforce_retention`, run in the background) deletes the oldest
files first: those older than ``max_age_days``, then more until the total is within
``max_total_mb``. A file's age is its modification time, which storing the same image again
refreshes. Before deleting, it clears ``image_path`` in the records that point at the files,
so a record never names a deleted image (an image kept again in the instant between the two
steps is the one case that can: its record then shows the image missing, nothing worse).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from app.core.files import write_atomic

__all__ = ["KeepPolicy", "RetentionResult", "StoredImage", "ImageStore", "extension_for"]

logger = logging.getLogger("pcb_inspect.records")

KeepPolicy = Literal["none", "failed", "all"]
_POLICIES = ("none", "failed", "all")

_BY_TYPE = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/pjpeg": ".jpg",
    "image/bmp": ".bmp", "image/x-bmp": ".bmp", "image/x-ms-bmp": ".bmp",
    "image/tiff": ".tif", "image/webp": ".webp", "image/gif": ".gif",
}
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"BM", ".bmp"),
    (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
)
_REL_PATH = re.compile(r"[0-9a-f]{2}/[0-9a-f]{62}\.[a-z]{3,4}")


def extension_for(content_type: str | None, data: bytes) -> str:
    """The file extension of an image: from its content type, else its magic bytes, else
    ``.bin``.
    """
    if content_type:
        ext = _BY_TYPE.get(content_type.split(";")[0].strip().lower())
        if ext:
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return ".bin"


class _ClearsImagePaths(Protocol):
    def clear_image_paths(self, paths: list[str]) -> int: ...


@dataclass(frozen=True)
class StoredImage:
    """A kept image: ``path`` relative to the store's root (what records hold)."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class RetentionResult:
    """What one :meth:`ImageStore.enforce_retention` removed and what is left."""

    removed_files: int
    removed_bytes: int
    records_cleared: int
    kept_files: int
    kept_bytes: int


class ImageStore:
    """Kept board images under ``root`` (``<data_dir>/images``).

    Args:
        root: The folder; created if missing.
        policy: ``none``, ``failed`` or ``all`` (``PCB_IMAGES_KEEP``).
        max_age_days: Images older than this are removed; ``None``: no age limit.
        max_total_mb: The folder is kept within this size (MiB), oldest removed first;
            ``None``: no size limit.
    """

    def __init__(self, root: Path, policy: KeepPolicy = "failed", *,
                 max_age_days: float | None = None, max_total_mb: float | None = None) -> None:
        if policy not in _POLICIES:
            raise ValueError(f"keep-images policy must be one of {list(_POLICIES)}, received "
                             f"{policy!r}")
        for name, value in (("max_age_days", max_age_days), ("max_total_mb", max_total_mb)):
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be >= 0 or None, received {value!r}")
        self.root = Path(root)
        self.policy: KeepPolicy = policy
        self.max_age_days = max_age_days
        self.max_total_mb = max_total_mb

    def should_keep(self, verdict: str) -> bool:
        """Whether the policy keeps the image of a board with this verdict."""
        return self.policy == "all" or (self.policy == "failed" and verdict == "fail")

    def keep(self, data: bytes, content_type: str | None, verdict: str) -> StoredImage | None:
        """Stores the image if the policy keeps boards with ``verdict``; else ``None``."""
        return self.put(data, content_type) if self.should_keep(verdict) else None

    def put(self, data: bytes, content_type: str | None = None) -> StoredImage:
        """Stores ``data`` (once per content) and returns where."""
        digest = hashlib.sha256(data).hexdigest()
        rel = f"{digest[:2]}/{digest[2:]}{extension_for(content_type, data)}"
        path = self.root / rel
        if path.exists():
            # Same bytes already kept: make the file young again, so that retention by age
            # counts from the last board that used it.
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)
                return StoredImage(rel, digest, len(data))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (data,))
        return StoredImage(rel, digest, len(data))

    def path_of(self, rel: str) -> Path:
        """The file of a record's ``image_path``; ``ValueError`` for anything that is not a
        path this store makes (so a stored value can never point outside the root).
        """
        if not _REL_PATH.fullmatch(rel):
            raise ValueError(f"not an image-store path: {rel!r}; expected 'ab/<62 hex>.<ext>'")
        return self.root / rel

    def remove(self, rel: str) -> bool:
        """Deletes a kept image (e.g. of a deleted record that no other record uses);
        ``False`` if it was not there.
        """
        try:
            self.path_of(rel).unlink()
            return True
        except FileNotFoundError:
            return False

    def _files(self) -> list[tuple[float, int, str]]:
        """(mtime, size, relative path) of every kept image, oldest first."""
        out: list[tuple[float, int, str]] = []
        if not self.root.is_dir():
            return out
        for sub in self.root.iterdir():
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sub.iterdir():
                rel = f"{sub.name}/{f.name}"
                if not _REL_PATH.fullmatch(rel):
                    self._sweep_partial(f)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = f.stat()
                    out.append((st.st_mtime, st.st_size, rel))
        out.sort()
        return out

    @staticmethod
    def _sweep_partial(f: Path) -> None:
        # A writer killed mid-write leaves its temporary file; one an hour old is not in
        # flight any more. Anything else that is not ours is left alone.
        if f.name.startswith(".tmp-") and f.name.endswith(".partial"):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - f.stat().st_mtime > 3600:
                    f.unlink()

    def enforce_retention(self, store: _ClearsImagePaths,
                          now: float | None = None) -> RetentionResult:
        """Removes images past the age limit, then the oldest until within the size limit;
        clears ``image_path`` in the records of the removed images first.
        """
        now = time.time() if now is None else now
        files = self._files()
        total = sum(size for _, size, _ in files)
        doomed: list[tuple[float, int, str]] = []
        max_age_s = None if self.max_age_days is None else self.max_age_days * 86400
        max_bytes = None if self.max_total_mb is None else self.max_total_mb * 1024 * 1024
        for entry in files:  # oldest first
            mtime, size, _ = entry
            too_old = max_age_s is not None and now - mtime > max_age_s
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big):
                break  # everything younger is kept too
            doomed.append(entry)
            total -= size
        if not doomed:
            return RetentionResult(0, 0, 0, len(files), total)
        cleared = store.clear_image_paths([rel for _, _, rel in doomed])
        removed = removed_bytes = 0
        for _, size, rel in doomed:
            try:
                (self.root / rel).unlink()
                removed += 1
                removed_bytes += size
            except FileNotFoundError:
                pass
        logger.info("image retention: removed %d images (%d bytes), cleared %d records",
                    removed, removed_bytes, cleared)
        return RetentionResult(removed, removed_bytes, cleared, len(files) - len(doomed), total)
