"""The student edition: the book's notebooks with every exercise's solution replaced by a stub.

``python -m lama.student [NOTEBOOK_DIR] [OUT_DIR]`` (``make student``: ``notebooks`` ->
``_build/student``) reads each ``*.ipynb`` and writes a copy in which

* each exercise (a MyST ``{exercise}`` directive) becomes a plain-markdown "Exercise" box that
  reads well in Jupyter and Colab;
* everything between ``{solution-start}`` and ``{solution-end}`` goes: the prose of the answer
  disappears, and each solution code cell becomes a stub that keeps the function and class
  *signatures* (with docstrings), the imports and the calls to ``lama.exercises`` checks, and
  replaces every body by ``raise NotImplementedError``. Running a stub cell then prints the
  check's friendly "not yet" instead of an answer; a solution cell with nothing to keep becomes
  ``# Your code here``;
* all outputs are cleared (they would show the answers), so the notebook starts fresh.

It works on any notebook that follows the book's exercise markup and touches nothing else.
It reads notebooks as plain JSON (nbformat 4), so it needs nothing beyond the standard library.
Leaves out: executing the result (tests/test_student_edition.py does that in CI).
"""

from __future__ import annotations

import ast
import copy
import json
import re
import sys
from pathlib import Path

__all__ = ["student_notebook", "build", "stub_source", "is_check_cell"]

_START = re.compile(r"```\{solution-start\}.*?\n```[^\n]*\n?", re.S)
_END = re.compile(r"```\{solution-end\}.*?```[^\n]*\n?", re.S)
_EXERCISE = re.compile(r"```\{exercise\}[ \t]*(?P<title>[^\n]*)\n(?P<options>(?::[\w-]+:[^\n]*\n)*)(?P<body>.*?)\n?```",
                       re.S)
CHECK_CALL = re.compile(r"\bcheck_\w+\(")


def is_check_cell(code: str) -> bool:
    """A cell that runs a ``lama.exercises`` check (by convention it imports the check itself)."""
    return "lama.exercises" in code and bool(CHECK_CALL.search(code))

STUB_NOTE = "# Your code here: replace each `raise NotImplementedError` with your implementation."
EMPTY_STUB = "# Your code here\n"
ANSWER_PLACEHOLDER = "*Your answer here.*"


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _exercise_box(match: re.Match) -> str:
    label = re.search(r":label:\s*(\S+)", match["options"])
    tag = f" ({label[1]})" if label else ""
    return f"**Exercise{tag}: {match['title'].strip()}**\n\n{match['body'].strip()}"


def _is_check_call(node: ast.AST) -> bool:
    """``check_x(...)`` or ``lama.exercises.check_x(...)`` as a statement, or asserted."""
    value = node.value if isinstance(node, ast.Expr) else node.test if isinstance(node, ast.Assert) else None
    if not isinstance(value, ast.Call):
        return False
    f = value.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
    return name.startswith("check_")


def _stub_def(node, lines: list[str]) -> list[str]:
    """A def or class reduced to its header(s) and docstring; function bodies raise."""
    first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
    body = node.body
    doc = ast.get_docstring(node, clean=False) is not None
    head_end = body[0].lineno - 1  # the lines before the first statement of the body
    out = lines[first - 1:head_end]
    if doc:
        out += lines[body[0].lineno - 1:body[0].end_lineno]
        body = body[1:]
    inner = " " * (node.col_offset + 4)
    if isinstance(node, ast.ClassDef):
        kept = [n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        for n in kept:
            out += _stub_def(n, lines)
        if not kept and not doc:
            out.append(f"{inner}pass")
    else:
        out.append(f'{inner}raise NotImplementedError("write {node.name}")')
    return out


def stub_source(code: str) -> str:
    """The student's version of one solution code cell (see the module docstring)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:  # IPython magics and the like: keep nothing
        return EMPTY_STUB
    lines = code.splitlines()
    parts, has_def = [], False
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            parts.append("\n".join(lines[node.lineno - 1:node.end_lineno]))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            parts.append("\n".join(_stub_def(node, lines)))
            has_def = True
        elif _is_check_call(node):
            call = node.value if isinstance(node, ast.Expr) else node.test
            parts.append(ast.get_source_segment(code, call))
    if not has_def:
        kept = [p for p in parts if CHECK_CALL.search(p)]
        return EMPTY_STUB if not kept else "\n".join([EMPTY_STUB.rstrip(), *parts]) + "\n"
    return STUB_NOTE + "\n\n" + "\n\n\n".join(parts) + "\n"


def _markdown(text: str, template: dict) -> dict:
    cell = {"cell_type": "markdown", "metadata": copy.deepcopy(template.get("metadata", {})), "source": text}
    if "id" in template:
        cell["id"] = template["id"]
    return cell


def student_notebook(nb: dict) -> tuple[dict, int]:
    """Return (the student edition of a notebook, the number of solutions it hid)."""
    out = copy.deepcopy(nb)
    cells, inside, hidden, code_in_solution = [], False, 0, False
    for cell in nb.get("cells", []):
        cell = copy.deepcopy(cell)
        text = _source(cell)
        if cell["cell_type"] == "markdown":
            keep, rest = [], text
            while rest:
                if inside:
                    end = _END.search(rest)
                    if not end:
                        rest = ""
                        break
                    if not code_in_solution:
                        keep.append(ANSWER_PLACEHOLDER + "\n\n")
                    inside, rest = False, rest[end.end():]
                else:
                    start = _START.search(rest)
                    if not start:
                        keep.append(rest)
                        break
                    keep.append(rest[:start.start()])
                    inside, code_in_solution, hidden, rest = True, False, hidden + 1, rest[start.end():]
            new = _EXERCISE.sub(_exercise_box, "".join(keep)).strip()
            if new:
                cells.append(_markdown(new, cell))
            continue
        if inside and cell["cell_type"] not in ("code", "markdown"):
            continue  # a raw cell inside a solution is part of the answer
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            if inside:
                cell["source"] = stub_source(text)
                code_in_solution = True
        cells.append(cell)
    if inside:
        raise ValueError("a {solution-start} has no matching {solution-end}")
    out["cells"] = cells
    return out, hidden


def build(src_dir: str | Path = "notebooks", out_dir: str | Path = "_build/student") -> list[Path]:
    """Write the student edition of every notebook in ``src_dir`` into ``out_dir``; return the paths."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    paths = sorted(src_dir.glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {src_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        nb, hidden = student_notebook(json.loads(path.read_text(encoding="utf-8")))
        target = out_dir / path.name
        target.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
        print(f"{target}: {hidden} solution{'s' if hidden != 1 else ''} replaced by stubs")
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 2 or any(a in ("-h", "--help") for a in args):
        print("usage: python -m lama.student [NOTEBOOK_DIR=notebooks] [OUT_DIR=_build/student]")
        return 0 if args and args[0] in ("-h", "--help") else 2
    build(*args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
