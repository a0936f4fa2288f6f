"""``pcb-inspect``'s table of commands: each entry names functions that exist, the client's
commands import nothing of the server, and a server command without the server's
dependencies fails in one line that says what to install."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from pcb_inspect import cli

ROOT = Path(__file__).resolve().parents[2]
CLIENT_COMMANDS = sorted(name for name, c in cli.COMMANDS.items() if not c.server)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_names_functions_that_exist(name: str) -> None:
    build, run = cli.COMMANDS[name].functions()
    assert callable(run) and (build is None or callable(build))
    if build is not None:
        parser = build(argparse.ArgumentParser(prog=f"pcb-inspect {name}"))
        assert isinstance(parser, argparse.ArgumentParser)


def test_the_client_commands_import_nothing_of_the_server() -> None:
    # What a line station runs: no TensorFlow, no web framework, none of the server's code.
    modules = sorted({cli.COMMANDS[n].module for n in CLIENT_COMMANDS})
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import pcb_inspect.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'numpy', 'fastapi', 'starlette', 'app', 'training', "
        "'model_defs'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert CLIENT_COMMANDS == ["batch", "golden", "inspections", "predict", "product", "review",
                               "stats"]


def test_a_server_command_without_its_dependencies_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A module as a server command's is where the server extra is not installed: its import
    # of a third-party package fails.
    (tmp_path / "server_only_command.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "serve", cli.Command("server_only_command", "x",
                                                           server=True))
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--port", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == ("pcb-inspect serve: needs the server's dependencies (not_installed_dependency "
                   "is not installed); install them with: pip install 'pcb-inspect[server]'\n")


def test_a_broken_install_of_our_own_code_is_not_blamed_on_the_extra(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "serve", cli.Command("app.no_such_module", "x",
                                                           server=True))
    with pytest.raises(ModuleNotFoundError, match="app.no_such_module"):
        cli.main(["serve"])


@pytest.mark.parametrize(("argv", "code"), [([], 2), (["--help"], 0), (["-h"], 0)])
def test_help_and_no_command(argv: list[str], code: int,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == code
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


def test_an_unknown_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["inspect-all"])
    assert info.value.code == 2
    assert "invalid choice: 'inspect-all'" in capsys.readouterr().err
