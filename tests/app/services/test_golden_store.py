"""The golden-board store: atomic writes that survive SIGKILL, replicas sharing one folder,
the byte-bounded cache that still sees another replica's replacement, and damaged files."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from app.core.ids import InvalidProductError, check_product
from app.inference.defects import Defect
from app.services.golden_store import GoldenStore, GoldenStoreError, UnknownProductError

REPO_ROOT = Path(__file__).resolve().parents[3]


def board(version: int, side: int = 96) -> np.ndarray:
    """A board whose every pixel follows from ``version``, written in its first row."""
    pixels = np.random.default_rng(version).integers(0, 256, (side, side), dtype=np.uint8)
    pixels[0, :8] = np.frombuffer(np.int64(version).tobytes(), dtype=np.uint8)
    return pixels


def version_of(pixels: np.ndarray) -> int:
    return int(np.frombuffer(pixels[0, :8].tobytes(), dtype=np.int64)[0])


@pytest.fixture
def store(tmp_path: Path) -> GoldenStore:
    return GoldenStore(tmp_path / "golden", cache_bytes=1 << 20)


# --- product ids -------------------------------------------------------------------------------


@pytest.mark.parametrize("product", ["a", "PCB-1234_rev.B", "x" * 64, "7..", "a-"])
def test_valid_product_ids(product: str) -> None:
    assert check_product(product) == product


# "." and ".." would be stored but could never be named in a URL path again; a leading dot
# hides the file, a leading "-" reads as an option.
@pytest.mark.parametrize("product", ["", "x" * 65, "a/b", "a b", "é", "../x", "a\\b", "a:b",
                                     ".", "..", ".hidden", "-", "-rf"])
def test_invalid_product_ids_name_the_id_and_the_rule(product: str) -> None:
    with pytest.raises(InvalidProductError, match="1 to 64 characters") as info:
        check_product(product)
    assert repr(product) in str(info.value)


def test_dot_ids_stay_files_inside_the_folder(store: GoldenStore) -> None:
    store.put("a..", board(1))
    assert store.path_of("a..").parent == store.root
    assert [b.product for b in store.list_boards()] == ["a.."]
    with pytest.raises(InvalidProductError, match="letter or digit"):
        store.put("..", board(1))


# --- round trips ---------------------------------------------------------------------------------


def test_put_get_png_pixels_delete(store: GoldenStore) -> None:
    pixels = board(1, side=80)
    meta, created = store.put("p1", pixels)
    assert created
    assert (meta.product, meta.width, meta.height) == ("p1", 80, 80)
    assert meta.created.endswith("Z")
    assert store.get("p1") == meta
    got_meta, png = store.png("p1")
    assert got_meta == meta and hashlib.sha256(png).hexdigest() == meta.sha256
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    _, got = store.pixels("p1")
    np.testing.assert_array_equal(got, pixels)
    assert not got.flags.writeable, "cached boards are shared between requests"

    meta2, created2 = store.put("p1", board(2, side=80))
    assert not created2 and meta2.sha256 != meta.sha256
    assert version_of(store.pixels("p1")[1]) == 2

    store.delete("p1")
    for call in (store.get, store.png, store.pixels, store.delete):
        with pytest.raises(UnknownProductError, match="'p1'"):
            call("p1")
    assert store.list_boards() == []


def test_an_empty_store_creates_nothing(tmp_path: Path) -> None:
    store = GoldenStore(tmp_path / "data" / "golden", cache_bytes=0)
    assert store.list_boards() == []
    with pytest.raises(UnknownProductError):
        store.get("p1")
    assert not (tmp_path / "data").exists()


def test_unwritable_folder_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = GoldenStore(blocker / "golden", cache_bytes=0)
    with pytest.raises(GoldenStoreError, match="cannot store the golden board of 'p1'"):
        store.put("p1", board(1))


def test_put_refuses_what_is_not_a_gray_board(store: GoldenStore) -> None:
    with pytest.raises(ValueError, match="uint8"):
        store.put("p1", np.zeros((8, 8, 3), dtype=np.uint8))


# --- replicas sharing the folder -----------------------------------------------------------------


def test_two_stores_on_one_folder_see_each_others_boards(tmp_path: Path) -> None:
    a = GoldenStore(tmp_path / "golden", cache_bytes=1 << 20)
    b = GoldenStore(tmp_path / "golden", cache_bytes=1 << 20)
    a.put("p1", board(1))
    assert version_of(b.pixels("p1")[1]) == 1  # b caches version 1 now
    assert version_of(a.pixels("p1")[1]) == 1
    b.put("p1", board(2))
    # a's cache holds version 1, but the file's sha256 changed: a must read version 2.
    assert version_of(a.pixels("p1")[1]) == 2
    b.put("p2", board(3))
    assert [m.product for m in a.list_boards()] == ["p1", "p2"]
    a.delete("p1")
    with pytest.raises(UnknownProductError):
        b.pixels("p1")


def test_replacement_with_the_same_mtime_is_still_seen(tmp_path: Path) -> None:
    # Coarse mtimes (some network filesystems keep seconds) must not hide a replacement:
    # the cache compares the sha256 of the file's header, not its mtime.
    a = GoldenStore(tmp_path, cache_bytes=1 << 20)
    b = GoldenStore(tmp_path, cache_bytes=1 << 20)
    a.put("p1", board(1))
    stamp = os.stat(a.path_of("p1")).st_mtime_ns
    a.pixels("p1")
    b.put("p1", board(2))
    os.utime(a.path_of("p1"), ns=(stamp, stamp))
    assert version_of(a.pixels("p1")[1]) == 2


# --- the cache -----------------------------------------------------------------------------------


def test_cache_is_bounded_in_bytes_and_lru(tmp_path: Path) -> None:
    one = board(0).nbytes
    store = GoldenStore(tmp_path, cache_bytes=2 * one)
    for i in range(3):
        store.put(f"p{i}", board(i))
    assert store.cached_bytes <= 2 * one
    store.pixels("p1")  # p1 most recent, p2 next; p0 was evicted
    store.pixels("p2")
    assert store.cached_bytes == 2 * one
    cached = store.pixels("p1")[1]
    assert store.pixels("p1")[1] is cached  # a hit: the same array, not a new decode


def test_board_larger_than_the_cache_is_not_cached(tmp_path: Path) -> None:
    store = GoldenStore(tmp_path, cache_bytes=100)
    store.put("p1", board(1))
    assert store.cached_bytes == 0
    assert version_of(store.pixels("p1")[1]) == 1
    assert store.cached_bytes == 0


def test_put_keeps_the_callers_array_writable(store: GoldenStore) -> None:
    pixels = board(1)
    store.put("p1", pixels)
    pixels[5, 5] = 0  # the caller's array is its own; the store cached a copy
    assert version_of(store.pixels("p1")[1]) == 1


# --- damaged and foreign files -------------------------------------------------------------------


def test_damaged_files_are_refused_and_left_out_of_the_list(store: GoldenStore) -> None:
    store.put("good", board(1))
    store.put("flipped", board(2))
    path = store.path_of("flipped")
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    store.path_of("foreign").write_bytes(b"\x89PNG\r\n\x1a\nnot ours")
    store.put("renamed", board(3))
    os.replace(store.path_of("renamed"), store.path_of("other"))

    # A fresh reader (this store's cache still holds the board it wrote, and a cache hit
    # only re-reads the header).
    reader = GoldenStore(store.root, cache_bytes=1 << 20)
    with pytest.raises(GoldenStoreError, match="damaged"):
        reader.pixels("flipped")
    with pytest.raises(GoldenStoreError, match="damaged"):
        store.png("flipped")
    with pytest.raises(GoldenStoreError, match="header"):
        store.get("foreign")
    with pytest.raises(GoldenStoreError, match="not the one its name says"):
        store.get("other")
    assert [b.product for b in store.list_boards()] == ["flipped", "good"]


def test_sweep_removes_only_old_partial_files(store: GoldenStore) -> None:
    store.put("p1", board(1))
    old = store.root / ".tmp-abc.partial"
    young = store.root / ".tmp-def.partial"
    for path in (old, young):
        path.write_bytes(b"half a board")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert store.sweep_partials(max_age_s=3600) == 1
    assert not old.exists() and young.exists()
    assert [b.product for b in store.list_boards()] == ["p1"]


# --- checks: what the single-image model found on a stored board ------------------------------

SINGLE = {"name": "tiny-test-unet", "version": "0.0.1-test", "mode": "single"}


def warning(i: int) -> Defect:
    return Defect.model_validate({
        "id": i, "class": "pin_hole", "confidence": 0.75, "bbox": [i, i, i + 4, i + 5],
        "area_px": 12, "area_mm2": 0.005208, "centroid": [i + 1.5, i + 2.0],
    })


def check_files(store: GoldenStore) -> list[str]:
    return sorted(p.name for p in store.root.glob("*.warnings"))


def test_a_check_belongs_to_exactly_the_board_it_was_computed_for(tmp_path: Path) -> None:
    store = GoldenStore(tmp_path / "golden", cache_bytes=1 << 20)
    first, _ = store.put("p1", board(1))
    assert store.check_of("p1", first.sha256) is None, "stored, not yet checked"
    kept = store.put_check("p1", first.sha256, SINGLE, [warning(1), warning(2)])
    assert kept is not None and kept.count == 2

    # Another replica on the same folder reads it; the header alone gives the count.
    replica = GoldenStore(store.root, cache_bytes=0)
    got = replica.check_of("p1", first.sha256)
    assert got is not None and got.warnings == (warning(1), warning(2))
    assert got.checked_by == SINGLE and got.checked.endswith("Z")
    head = replica.check_of("p1", first.sha256, warnings=False)
    assert head is not None and (head.count, head.warnings) == (2, None)
    assert replica.get_checked("p1") == (first, got)
    assert replica.list_checked() == [(first, got)]

    # A replacement, stored without a check (by a replica without a model, say), reads as not
    # checked, never as the old board's warnings; the old check goes once it is older.
    os.utime(store._check_path("p1", first.sha256), (time.time() - 60, time.time() - 60))
    second, _ = replica.put("p1", board(2))
    assert store.get_checked("p1") == (second, None)
    assert store.list_checked() == [(second, None)]
    assert check_files(store) == []

    # A check that finishes after its board was replaced is not kept.
    assert store.put_check("p1", first.sha256, SINGLE, [warning(1)]) is None
    assert check_files(store) == []
    store.put_check("p1", second.sha256, SINGLE, [])
    empty = store.check_of("p1", second.sha256)
    assert empty is not None and empty.warnings == () and empty.count == 0

    store.delete("p1")
    assert check_files(store) == []
    assert store.put_check("p1", second.sha256, SINGLE, []) is None


def test_storing_the_same_board_again_keeps_its_check(store: GoldenStore) -> None:
    meta, _ = store.put("p1", board(1))
    store.put_check("p1", meta.sha256, SINGLE, [warning(3)])
    again, created = store.put("p1", board(1))
    assert not created and again.sha256 == meta.sha256
    check = store.check_of("p1", meta.sha256)
    assert check is not None and check.warnings == (warning(3),)


def test_a_newer_check_of_another_board_is_left_alone(store: GoldenStore) -> None:
    # Another replica stored a board and its check after ours: a sweep must not take its
    # check for a stale one, even when our board is the one on disk now.
    meta, _ = store.put("p1", board(1))
    theirs = store._check_path("p1", "f" * 64)
    theirs.write_bytes(b"{}\n[]")
    store.put_check("p1", meta.sha256, SINGLE, [])
    assert theirs.exists()
    os.utime(theirs, (time.time() - 60, time.time() - 60))
    store.put("p1", board(2))
    assert not theirs.exists()


def test_checks_of_dotted_products_do_not_mix(store: GoldenStore) -> None:
    # "a.b"'s check files start with "a." as "a"'s do: a sweep of "a" must leave them.
    a, _ = store.put("a", board(1))
    store.put_check("a", a.sha256, SINGLE, [warning(1)])
    b, _ = store.put("a.b", board(2))
    store.put_check("a.b", b.sha256, SINGLE, [warning(2)])
    for path in store.root.glob("*.warnings"):
        os.utime(path, (time.time() - 60, time.time() - 60))
    store.put("a", board(3))
    assert check_files(store) == [f"a.b.{b.sha256}.warnings"]
    check = store.check_of("a.b", b.sha256)
    assert check is not None and check.warnings == (warning(2),)
    store.delete("a")
    assert check_files(store) == [f"a.b.{b.sha256}.warnings"]


@pytest.mark.parametrize("damage", [
    b"not json\n[]",
    b'{"format":"pcb-golden-warnings/1"}\n[]',
    b"",
])
def test_an_unreadable_check_reads_as_not_checked(
    store: GoldenStore, damage: bytes, caplog: pytest.LogCaptureFixture,
) -> None:
    meta, _ = store.put("p1", board(1))
    store.put_check("p1", meta.sha256, SINGLE, [warning(1)])
    path = store._check_path("p1", meta.sha256)
    path.write_bytes(damage)
    assert store.check_of("p1", meta.sha256) is None
    assert store.get_checked("p1") == (meta, None)
    assert "read as not checked" in caplog.text and "unreadable" in caplog.text


def test_a_check_whose_count_disagrees_is_refused(store: GoldenStore) -> None:
    meta, _ = store.put("p1", board(1))
    store.put_check("p1", meta.sha256, SINGLE, [warning(1), warning(2)])
    path = store._check_path("p1", meta.sha256)
    header, body = path.read_bytes().split(b"\n", 1)
    warnings = json.loads(body)
    path.write_bytes(header + b"\n" + json.dumps(warnings[:1]).encode())
    assert store.check_of("p1", meta.sha256) is None
    # The header alone still says how many there were.
    head = store.check_of("p1", meta.sha256, warnings=False)
    assert head is not None and head.count == 2


# --- SIGKILL in the middle of writes -------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import os
    import sys
    import time
    from pathlib import Path

    import numpy as np

    from app.services.golden_store import GoldenStore

    real_fsync = os.fsync
    root, first, side = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    # The write (counted from 1) whose first fsync never returns; 0: none.
    hold_at = int(sys.argv[4])
    started = 0


    def slow_fsync(fd):
        # A slow disk: the temporary file sits fully written but not yet renamed for a
        # while, and the test can kill the writer then. At the held write it stays there
        # until killed, so that kill lands between data and rename however late it comes.
        print("fsync", flush=True)
        if started == hold_at:
            time.sleep(3600)
        time.sleep(0.05)
        real_fsync(fd)


    os.fsync = slow_fsync
    store = GoldenStore(root, cache_bytes=0)
    version = first
    print("ready", flush=True)
    while True:
        for product in ("p0", "p1", "p2"):
            pixels = np.random.default_rng(version).integers(
                0, 256, (side, side), dtype=np.uint8
            )
            pixels[0, :8] = np.frombuffer(np.int64(version).tobytes(), dtype=np.uint8)
            started += 1
            print("start", product, version, flush=True)
            store.put(product, pixels)
            print("done", product, version, flush=True)
            version += 1
    """
)


def _verify_untorn(root: Path, side: int) -> dict[str, int]:
    """Every stored board decodes, matches its sha256 and is one whole written version."""
    store = GoldenStore(root, cache_bytes=0)
    versions = {}
    for meta in store.list_boards():
        raw = store.path_of(meta.product).read_bytes()
        header, _, png = raw.partition(b"\n")
        assert json.loads(header)["sha256"] == hashlib.sha256(png).hexdigest() == meta.sha256
        _, pixels = store.pixels(meta.product)
        version = version_of(pixels)
        np.testing.assert_array_equal(pixels, board(version, side))
        versions[meta.product] = version
    return versions


@pytest.mark.slow  # starts and kills writer processes over and over: 7 s here
def test_sigkill_mid_write_leaves_every_board_old_or_new(tmp_path: Path) -> None:
    """Kills a writer process (SIGKILL) over and over: at random moments, and exactly
    between writing a temporary file and renaming it; after each kill every board is a
    whole version (the last completed write or the interrupted one), never a mix."""
    root = tmp_path / "golden"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    side = 400
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    rng = random.Random(1234)
    done: dict[str, int] = {}  # the last write of each product the writer saw complete
    mid_write_kills = 0
    for kill_round in range(10):
        # Even rounds: killed at the file fsync of the (round/2 + 3)-th write, where the
        # writer holds (a test slow to react must not let it rename first); odd: at random.
        target = 0 if kill_round % 2 else kill_round // 2 + 3
        proc = subprocess.Popen(
            [sys.executable, str(script), str(root), str(kill_round * 100_000), str(side),
             str(target)],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        lines: list[str] = []
        partials_before = len(list(root.glob(".tmp-*.partial")))
        if kill_round % 2:
            time.sleep(rng.uniform(0.05, 0.8))
        else:
            # At the file fsync of the target write: written, not yet renamed.
            starts = 0
            while True:
                line = proc.stdout.readline().strip()
                lines.append(line)
                starts += line.startswith("start")
                if line == "fsync" and lines[-2].startswith("start") and starts == target:
                    break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        lines += proc.stdout.read().splitlines()
        proc.stdout.close()
        in_flight: dict[str, int] = {}  # begun, not seen to complete: may or may not be there
        for line in lines:
            if line.startswith(("start", "done")):
                event, product, version = line.split()
                if event == "start":
                    in_flight[product] = int(version)
                else:
                    done[product] = int(version)
                    in_flight.pop(product, None)
        if len(list(root.glob(".tmp-*.partial"))) > partials_before:
            mid_write_kills += 1
        found = _verify_untorn(root, side)
        for product in done.keys() | in_flight.keys():
            # Old (the last completed write; None: no board yet) or new (the one the kill
            # interrupted): a completed write is never lost and nothing else ever appears.
            allowed = {done.get(product), in_flight.get(product, done.get(product))}
            assert found.get(product) in allowed, (kill_round, product, allowed, found)
            if product in found:
                done[product] = found[product]
    assert set(done) == {"p0", "p1", "p2"}, "the writer never finished a board"
    assert mid_write_kills >= 5, "the kills never hit a write between its data and its rename"
    # Partial files are invisible to readers (checked above); the sweep removes them.
    GoldenStore(root, cache_bytes=0).sweep_partials(max_age_s=0)
    assert not list(root.glob(".tmp-*.partial"))
