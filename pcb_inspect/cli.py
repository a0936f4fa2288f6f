"""The ``pcb-inspect`` command: serve, train, evaluate, export, and the line client.

Each subcommand imports its module only when it runs, so ``pcb-inspect predict`` on a line
station does not pay for importing TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, help). The module has ``build_parser(parser)`` and ``run(args)``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("app.serve", "run the inspection service"),
    "train": ("training.train", "train the defect model on a DeepPCB-format folder"),
    "evaluate": ("training.evaluate", "score a model on a DeepPCB-format folder"),
    "export": ("training.export", "write a run's model as shippable weights and model card"),
    "predict": ("pcb_inspect.client_cli", "inspect image files through a running service"),
    "batch": ("pcb_inspect.client_cli", "upload a folder of boards through the batch endpoint"),
    "golden": ("pcb_inspect.client_cli", "store, list, get or delete golden (reference) boards"),
    "product": ("pcb_inspect.client_cli",
                "store a product's recipe (panel units, zones, rules), get it, list revisions"),
    "db": ("app.records.cli", "the inspection-records database: upgrade, current"),
    "export-reviews": ("app.export_reviews",
                       "write the reviewed boards as a DeepPCB-format training folder"),
}


def _load(name: str) -> object:
    module_name, _ = SUBCOMMANDS[name]
    return importlib.import_module(module_name)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pcb-inspect`` console script.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="pcb-inspect", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = _load(name)
    # A module with main_<name>(argv) parses its own arguments (e.g. `db` and its actions).
    own_main = getattr(module, f"main_{name}", None)
    if own_main is not None:
        return int(own_main(argv[1:]))
    sub_parser = argparse.ArgumentParser(prog=f"pcb-inspect {name}")
    build = getattr(module, f"build_{name}_parser", None) or module.build_parser  # type: ignore[attr-defined]
    args = build(sub_parser).parse_args(argv[1:])
    runner = getattr(module, f"run_{name}", None) or module.run  # type: ignore[attr-defined]
    result = runner(args)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
