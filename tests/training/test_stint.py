"""training.stint refuses to validate a run on board groups it trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import stint


def _ckpt(folder: Path, groups: list[str] | None, mode: str = "pair") -> Path:
    folder.mkdir(parents=True)
    state = {"step": 1, "config": {"mode": mode},
             "split": {"groups": groups} if groups is not None else {}}
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def _run(*argv: str) -> None:
    stint.main(list(argv))


def test_a_run_on_every_group_is_refused_validation(tmp_path: Path):
    ckpt = _ckpt(tmp_path / "P1", ["00041", "13000", "20085", "44000", "50600", "77000",
                                   "92000"])
    with pytest.raises(SystemExit, match=r"refusing to validate .* on board groups "
                                         r"\['44000', '50600', '77000'\]: the run trained"):
        _run("--ckpt", str(ckpt), "--data", str(tmp_path))


def test_held_out_groups_must_be_unseen(tmp_path: Path):
    ckpt = _ckpt(tmp_path / "P2", ["00041", "50600"])
    with pytest.raises(SystemExit, match=r"on board groups \['50600'\]"):
        _run("--ckpt", str(ckpt), "--data", str(tmp_path), "--val-groups", "44000,50600")
    state = json.loads((ckpt / "state.json").read_text())
    assert stint.held_out_groups(state, ["44000"], "P2") == ["44000"]


def test_a_run_that_does_not_say_its_groups_is_refused(tmp_path: Path):
    ckpt = _ckpt(tmp_path / "old", None)
    with pytest.raises(SystemExit, match="does not say which board groups it trained on"):
        _run("--ckpt", str(ckpt), "--data", str(tmp_path))


def test_the_twin_must_have_held_out_the_groups(tmp_path: Path):
    everything = ["00041", "44000", "50600"]
    p1 = _ckpt(tmp_path / "P1", everything)
    p2 = _ckpt(tmp_path / "P2", everything)  # not a twin: it saw 44000 too
    with pytest.raises(SystemExit, match=r"the twin .* on board groups \['44000'\]"):
        _run("--ckpt", str(p1), "--twin", str(p2), "--val-groups", "44000",
             "--data", str(tmp_path))
    single = _ckpt(tmp_path / "S2", ["00041"], mode="single")
    with pytest.raises(SystemExit, match="--twin is a single run"):
        _run("--ckpt", str(p1), "--twin", str(single), "--val-groups", "44000",
             "--data", str(tmp_path))
