"""Gating changes no answer on DeepPCB's held-out groups: the pair model's mAP and F, gated and
ungated, agree within 0.001 under both protocols.

Needs the DeepPCB training split in ``../shared/datasets/deeppcb`` (not part of the project);
where it is absent, the test skips and says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from training.evaluate import build_parser, evaluate

DATA = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "deeppcb"
PAIR_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "pcb_pair_unet.keras"

pytestmark = [
    pytest.mark.data,
    # Slow: the full-size pair model over the held-out boards, twice.
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"DeepPCB data not present at {DATA}"),
]


# Two passes of the full-size pair model over the 200 held-out boards take minutes on two
# cores and pass the default 300 s when other work shares them. Fewer boards would no
# longer be the held-out groups the claim is about.
@pytest.mark.timeout(900)
def test_gated_and_full_pair_evaluations_agree() -> None:
    reports = {
        gating: evaluate(build_parser().parse_args([
            "--data", str(DATA), "--weights", str(PAIR_WEIGHTS), "--gating", gating,
            "--batch-size", "1",
        ]))
        for gating in ("off", "on")
    }
    off, on = reports["off"], reports["on"]
    assert on["boards"] == off["boards"] > 0
    assert off["tiles"]["skipped"] == 0 and on["gating"] == "on"
    for key in ("map", "f_score"):
        assert on[key] == pytest.approx(off[key], abs=1e-3), key
    for key in ("ap", "hmean"):
        assert on["official"][key] == pytest.approx(off["official"][key], abs=1e-3), key
