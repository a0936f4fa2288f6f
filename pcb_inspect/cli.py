"""The ``pcb-inspect`` command: serve, train, evaluate, export, and the line client.

Each subcommand imports its module only when it runs, so ``pcb-inspect predict`` on a line
station does not pay for importing TensorFlow, and works where only the client is installed
(``pip install .``); the server's commands need ``pip install '.[server]'``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["COMMANDS", "Command", "main"]

#: Our own top-level packages: a missing one is a broken install, not a missing extra.
_OWN_PACKAGES = frozenset({"app", "model_defs", "pcb_inspect", "training"})


@dataclass(frozen=True)
class Command:
    """One subcommand: the module that implements it and the functions it calls there.

    Attributes:
        module: Imported when the subcommand runs, never before.
        help: The line ``pcb-inspect --help`` shows.
        build: ``build(parser) -> parser`` adds the arguments; ``None`` when ``run`` parses
            its own arguments (it then takes the argument list, e.g. ``db`` and its actions).
        run: ``run(args)`` (or ``run(argv)`` without ``build``); an int it returns is the
            exit code, anything else means 0.
        server: Needs the server's dependencies (the ``server`` extra).
    """

    module: str
    help: str
    build: str | None = "build_parser"
    run: str = "run"
    server: bool = False

    def functions(self) -> tuple[Callable[..., Any] | None, Callable[..., Any]]:
        """Imports the module; its ``(build, run)`` functions."""
        module = importlib.import_module(self.module)
        build = getattr(module, self.build) if self.build is not None else None
        return build, getattr(module, self.run)


_CLIENT = "pcb_inspect.client_cli"
_RECORDS = "pcb_inspect.records_cli"

#: Every subcommand, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {
    "serve": Command("app.serve", "run the inspection service", server=True),
    "train": Command("training.train", "train the defect model on a DeepPCB-format folder",
                     server=True),
    "evaluate": Command("training.evaluate", "score a model on a DeepPCB-format folder",
                        server=True),
    "export": Command("training.export",
                      "write a run's model as shippable weights and model card", server=True),
    "db": Command("app.records.cli", "the inspection-records database: upgrade, current",
                  build=None, run="main_db", server=True),
    "export-reviews": Command("app.export_reviews",
                              "write the reviewed boards as a DeepPCB-format training folder",
                              server=True),
    "predict": Command(_CLIENT, "inspect image files through a running service",
                       build="build_predict_parser", run="run_predict"),
    "batch": Command(_CLIENT, "upload a folder of boards through the batch endpoint",
                     build="build_batch_parser", run="run_batch"),
    "golden": Command(_CLIENT, "store, list, get or delete golden boards",
                      build="build_golden_parser", run="run_golden"),
    "product": Command(_CLIENT, "store a product's recipe (panel units, zones, rules), get it, "
                                "list revisions",
                       build="build_product_parser", run="run_product"),
    "inspections": Command(_RECORDS, "list, show or export a service's inspection records",
                           build="build_inspections_parser", run="run_inspections"),
    "review": Command(_RECORDS, "review an inspection: an outcome per defect, missed defects",
                      build="build_review_parser", run="run_review"),
    "stats": Command(_RECORDS, "boards, fail rate and false-call rate over a time range",
                     build="build_stats_parser", run="run_stats"),
}


def _load(name: str, command: Command) -> tuple[Callable[..., Any] | None, Callable[..., Any]]:
    """The command's functions, or ``SystemExit(2)`` with one line when the server's
    dependencies are not installed."""
    try:
        return command.functions()
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if not command.server or not missing or missing in _OWN_PACKAGES:
            raise
        print(f"pcb-inspect {name}: needs the server's dependencies ({missing} is not "
              "installed); install them with: pip install 'pcb-inspect[server]'",
              file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pcb-inspect`` console script.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="pcb-inspect", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    build, run = _load(name, COMMANDS[name])
    if build is None:
        return int(run(rest))
    args = build(argparse.ArgumentParser(prog=f"pcb-inspect {name}")).parse_args(rest)
    result = run(args)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
