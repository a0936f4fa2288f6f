"""The shape of the shipped code: no function in the packages is over 80 lines.

A function that long does several things; split, each piece gets a name that says what it does
and can be read (and tested) alone. Counted from the ``def`` line to the last line of the body,
docstring, comments and blank lines included: what a reader has to hold in view.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "pcb_inspect", "training")
MAX_LINES = 80


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """``(qualified name, first line, lines)`` of each function in ``source`` over ``limit``."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    assert child.end_lineno is not None
                    lines = child.end_lineno - child.lineno + 1
                    if lines > limit:
                        found.append((name, child.lineno, lines))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def statements(n: int, indent: int) -> str:
    """``n`` lines of statements at ``indent`` spaces."""
    return "\n".join(f"{' ' * indent}x{i} = {i}" for i in range(n))


def test_the_count_spans_the_whole_function_nested_ones_included() -> None:
    source = "\n".join([
        "def short():", statements(79, 4), "",  # lines 1-80: 80 lines, allowed
        "class C:", "    def long(self):", '        """Doc."""', statements(79, 8), "",
        "def outer():", "    def inner():", statements(80, 8),
    ])
    assert long_functions(source) == [("C.long", 83, 81), ("outer", 165, 82),
                                      ("outer.inner", 166, 81)]


#: ``(file name, function)`` still over the limit, each with why it is not split yet. The file
#: name alone, not its folder, so an entry follows its module when it moves. An entry that is
#: no longer over the limit fails the test too: the list only shrinks.
NOT_SPLIT_YET: dict[tuple[str, str], str] = {}


def over_the_limit() -> dict[tuple[str, str], str]:
    """``(file name, function)`` -> where, of every function over the limit in the packages."""
    return {
        (path.name, name): f"{path.relative_to(ROOT)}:{line} {name} ({lines} lines)"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for name, line, lines in long_functions(path.read_text(encoding="utf-8"))
    }


def test_no_function_is_over_80_lines() -> None:
    over = over_the_limit()
    new = [where for key, where in over.items() if key not in NOT_SPLIT_YET]
    assert not new, f"functions over {MAX_LINES} lines (split them): {new}"
    done = sorted(set(NOT_SPLIT_YET) - set(over))
    assert not done, f"no longer over {MAX_LINES} lines: remove them from NOT_SPLIT_YET: {done}"
