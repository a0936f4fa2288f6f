"""The image store: policy, content addressing, and retention by age and by size."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from app.records import ImageStore, RecordStore
from app.records.images import extension_for
from tests.app.records.factory import make_record

PNG = b"\x89PNG\r\n\x1a\n" + b"board-pixels"
DAY = 86400.0


def test_policy() -> None:
    for policy, kept in (("none", set()), ("failed", {"fail"}), ("all", {"pass", "fail"})):
        s = ImageStore(Path("/nonexistent"), policy)  # type: ignore[arg-type]
        assert {v for v in ("pass", "fail") if s.should_keep(v)} == kept
    with pytest.raises(ValueError, match="'some'"):
        ImageStore(Path("x"), "some")  # type: ignore[arg-type]


def test_keep_follows_the_policy(tmp_path: Path) -> None:
    s = ImageStore(tmp_path, "failed")
    assert s.keep(PNG, "image/png", "pass") is None
    kept = s.keep(PNG, "image/png", "fail")
    assert kept is not None and (tmp_path / kept.path).read_bytes() == PNG
    assert ImageStore(tmp_path / "n", "none").keep(PNG, "image/png", "fail") is None


def test_content_addressed_original_bytes(tmp_path: Path) -> None:
    s = ImageStore(tmp_path / "images", "all")
    stored = s.put(PNG, "image/png")
    digest = hashlib.sha256(PNG).hexdigest()
    assert stored.sha256 == digest and stored.size == len(PNG)
    assert stored.path == f"{digest[:2]}/{digest[2:]}.png"
    assert s.path_of(stored.path).read_bytes() == PNG
    assert s.put(PNG, "image/png") == stored  # stored once
    assert [p.name for p in (tmp_path / "images").rglob("*") if p.is_file()] == [
        f"{digest[2:]}.png"]
    with pytest.raises(ValueError, match="'../../etc/passwd'"):
        s.path_of("../../etc/passwd")
    assert s.remove(stored.path) is True and s.remove(stored.path) is False


@pytest.mark.parametrize("content_type, data, ext", [
    ("image/jpeg", b"", ".jpg"), ("image/png; charset=binary", b"", ".png"),
    ("image/tiff", b"", ".tif"), (None, b"\xff\xd8\xff\xe0", ".jpg"),
    ("application/octet-stream", b"BM....", ".bmp"), (None, b"RIFF\0\0\0\0WEBPVP8", ".webp"),
    (None, b"???", ".bin"),
])
def test_extension(content_type: str | None, data: bytes, ext: str) -> None:
    assert extension_for(content_type, data) == ext


def _age(store: ImageStore, rel: str, days: float, now: float) -> None:
    t = now - days * DAY
    os.utime(store.path_of(rel), (t, t))


def test_retention_by_age_clears_the_records(store: RecordStore, tmp_path: Path) -> None:
    images = ImageStore(tmp_path / "images", "all", max_age_days=7)
    now = time.time()
    old = images.put(PNG + b"old")
    young = images.put(PNG + b"young")
    _age(images, old.path, 10, now)
    _age(images, young.path, 2, now)
    # Two boards share the old image (same bytes), one has the young one.
    recs = [make_record(image_path=old.path), make_record(image_path=old.path),
            make_record(image_path=young.path)]
    store.add_many(recs)
    result = images.enforce_retention(store, now=now)
    assert (result.removed_files, result.records_cleared, result.kept_files) == (1, 2, 1)
    assert not images.path_of(old.path).exists() and images.path_of(young.path).exists()
    assert [store.get(r.id).image_path for r in recs] == [None, None, young.path]
    assert images.enforce_retention(store, now=now).removed_files == 0


def test_retention_by_size_removes_oldest_first(store: RecordStore, tmp_path: Path) -> None:
    images = ImageStore(tmp_path / "images", "all", max_total_mb=1.0)
    now = time.time()
    kept = []
    for i in range(4):  # 4 x 400 KiB = 1.6 MiB: the two oldest must go
        im = images.put(bytes([i]) * 400 * 1024)
        _age(images, im.path, 4 - i, now)
        kept.append(im)
    recs = [make_record(image_path=im.path) for im in kept]
    store.add_many(recs)
    result = images.enforce_retention(store, now=now)
    assert (result.removed_files, result.removed_bytes) == (2, 2 * 400 * 1024)
    assert result.kept_bytes == 2 * 400 * 1024 <= 1024 * 1024
    assert [images.path_of(im.path).exists() for im in kept] == [False, False, True, True]
    assert [store.get(r.id).image_path is None for r in recs] == [True, True, False, False]


def test_storing_an_image_again_makes_it_young(store: RecordStore, tmp_path: Path) -> None:
    images = ImageStore(tmp_path / "images", "all", max_age_days=1)
    im = images.put(PNG)
    _age(images, im.path, 5, time.time())
    images.put(PNG)  # a new board with the same bytes
    assert images.enforce_retention(store).removed_files == 0


def test_stale_partial_writes_are_swept(store: RecordStore, tmp_path: Path) -> None:
    images = ImageStore(tmp_path / "images", "all", max_age_days=30)
    im = images.put(PNG)
    folder = images.path_of(im.path).parent
    stale, fresh, foreign = (folder / ".tmp-a.partial", folder / ".tmp-b.partial",
                             folder / "notes.txt")
    for f in (stale, fresh, foreign):
        f.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    images.enforce_retention(store)
    assert not stale.exists() and fresh.exists() and foreign.exists()
