"""A line station in a process of its own: records N inspections through a Recorder.

    python tests/app/records/recorder_child.py URL SPOOL_DIR N [SPOOL_FILE]

After each ``record()`` returns it prints ``<inspection_id> <db|spool|lost>`` and flushes, as
a service would answer 200 only after recording. The kill -9 test kills it mid-way and checks
that every printed id is in the database or the spool; the concurrency test runs several.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from app.records import Recorder, RecordStore  # noqa: E402
from tests.app.records.factory import defect, make_record  # noqa: E402


def main(argv: list[str]) -> int:
    url, spool_dir, n = argv[0], Path(argv[1]), int(argv[2])
    spool_file = argv[3] if len(argv) > 3 else None
    store = RecordStore(url)
    recorder = Recorder(store, spool_dir, spool_file=spool_file, db_timeout_s=5.0)
    print("ready", flush=True)
    for i in range(n):
        rec = make_record(serial=f"child-{i}", defects=[defect(1)] if i % 2 else [])
        result = recorder.record(rec)
        print(result.inspection_id, result.stored, flush=True)
    print("done", flush=True)
    recorder.close()
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
