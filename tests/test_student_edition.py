"""The student edition (lama/student.py, `make student`): solutions become stubs, nothing else changes,
and the stubs run — each check says "not yet" without a crash — while the book's solutions pass.

What runs, and why (CI time): every notebook with checked exercises has its *exercise cells* executed
in a fresh kernel (the set-up cell, the notebook's import-only cells, then each stubbed exercise cell):
this proves every stub and every check prints "not yet" gracefully, at the cost of a kernel start per
notebook. Notebooks whose recorded runtime (book/runtimes.json) is under FULL_RUN_SECONDS are also run
top to bottom as a student would, which additionally proves that stubbing a solution breaks nothing
later in the chapter. That the solutions pass is shown by the book's own notebooks: each check cell's
stored output is the pass message (asserted here), and nbval re-executes every notebook in `make test`
and compares that output.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from book_tools import ROOT, notebooks, setup_cell_source
from lama.student import EMPTY_STUB, STUB_NOTE, build, is_check_cell, student_notebook, stub_source

FULL_RUN_SECONDS = 30


def src(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def check_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code" and is_check_cell(src(c))]


def with_checks() -> list[Path]:
    return [p for p in notebooks() if check_cells(load(p))]


def runtime(path: Path) -> float:
    data = load(ROOT / "book" / "runtimes.json")["notebooks"]
    return data.get(path.stem, {}).get("seconds", float("inf"))


def run(nb: dict) -> dict:
    import nbformat
    from nbclient import NotebookClient

    node = nbformat.reads(json.dumps(nb), as_version=4)
    NotebookClient(node, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    return node


def text_of(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        assert o["output_type"] != "error", f"the cell raised {o.get('ename')}: {o.get('evalue')}\n{src(cell)}"
        out.append(src({"source": o.get("text", "")}))
    return "".join(out)


@pytest.fixture(scope="module")
def edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    build(ROOT / "notebooks", out)
    return out


# --- the transformation, on a synthetic notebook -------------------------------------------

def md(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def code(text, outputs=()):
    return {"cell_type": "code", "metadata": {}, "execution_count": 3, "outputs": list(outputs), "source": text}


SOLUTION = '''import torch
from lama.exercises import check_softmax


def my_softmax(x: torch.Tensor, tau=1.0):
    """Softmax along the last axis."""
    e = torch.exp(x / tau - (x / tau).max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


class Helper:
    """A helper."""

    def go(self, y):
        return y * 2


secret = my_softmax(torch.zeros(3))
assert check_softmax(my_softmax)
print("the answer is", secret)
'''


def test_stub_keeps_signatures_imports_and_checks_only():
    stub = stub_source(SOLUTION)
    assert stub.startswith(STUB_NOTE)
    for kept in ("import torch", "from lama.exercises import check_softmax", "def my_softmax(x: torch.Tensor, tau=1.0):",
                 '"""Softmax along the last axis."""', 'raise NotImplementedError("write my_softmax")', "class Helper:",
                 "def go(self, y):", 'raise NotImplementedError("write go")', "check_softmax(my_softmax)"):
        assert kept in stub, kept
    for hidden in ("torch.exp", "e.sum", "y * 2", "secret", "the answer", "assert"):
        assert hidden not in stub, hidden
    compile(stub, "<stub>", "exec")
    assert stub_source("x = 1\nprint(x)\n") == EMPTY_STUB
    assert stub_source("%timeit f()\n") == EMPTY_STUB  # not Python: nothing kept


def test_student_notebook_hides_every_kind_of_solution():
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        code("setup", [{"output_type": "stream", "name": "stdout", "text": "hello"}]),
        md("Text before.\n\n```{exercise} Softmax\n:label: ex-01-softmax\nWrite `my_softmax`.\n```"),
        md("```{solution-start} ex-01-softmax\n:class: dropdown\n```"),
        md("Some explanation of the answer."),
        code(SOLUTION, [{"output_type": "stream", "name": "stdout", "text": "✓ softmax"}]),
        md("Why it works: SECRET PROSE.\n\n```{solution-end}\n```\n\n## Next section"),
        md("```{exercise} Think\n:label: ex-01-think\nArgue.\n```\n```{solution-start} ex-01-think\n:class: dropdown\n```\n"
           "Because SECRET ARGUMENT.\n```{solution-end}\n```"),
        md("```{exercise} Raw\n:label: ex-01-raw\nQ.\n```\n```{solution-start} ex-01-raw\n```"),
        {"cell_type": "raw", "metadata": {}, "source": "SECRET RAW"},
        md("```{solution-end}\n```"),
        code("after = 1"),
    ]}
    student, hidden = student_notebook(nb)
    assert hidden == 3
    texts = [src(c) for c in student["cells"]]
    joined = "\n".join(texts)
    assert "SECRET" not in joined and "explanation of the answer" not in joined and "{solution" not in joined
    assert "**Exercise (ex-01-softmax): Softmax**\n\nWrite `my_softmax`." in joined and "Text before." in joined
    assert "## Next section" in joined and "*Your answer here.*" in joined and "{exercise}" not in joined
    assert texts[-1] == "after = 1"
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in student["cells"] if c["cell_type"] == "code")
    assert nb["cells"][4]["outputs"], "the input notebook is left unchanged"
    with pytest.raises(ValueError, match="solution-end"):
        student_notebook({"cells": [md("```{solution-start} x\n```"), code("1")]})


def test_make_student_writes_the_edition(tmp_path):
    """`python -m lama.student SRC OUT` (what `make student` runs) writes one notebook per notebook."""
    src_dir = tmp_path / "nbs"
    src_dir.mkdir()
    first = notebooks()[0]
    (src_dir / first.name).write_bytes(first.read_bytes())
    out = subprocess.run([sys.executable, "-m", "lama.student", str(src_dir), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / first.name).exists() and "replaced by stubs" in out.stdout
    assert "student:" in (ROOT / "Makefile").read_text()


# --- the real notebooks --------------------------------------------------------------------

def test_every_notebook_gets_a_student_edition(edition):
    for path in notebooks():
        teacher, student = load(path), load(edition / path.name)
        n_ex = sum(src(c).count("```{exercise}") for c in teacher["cells"] if c["cell_type"] == "markdown")
        n_box = sum(src(c).count("**Exercise") for c in student["cells"] if c["cell_type"] == "markdown")
        assert n_box == n_ex, path.name
        assert all("{solution-" not in src(c) for c in student["cells"]), path.name
        assert all(not c.get("outputs") for c in student["cells"] if c["cell_type"] == "code"), path.name
        assert src(next(c for c in student["cells"] if c["cell_type"] == "code")) == setup_cell_source()
        assert len(check_cells(student)) == len(check_cells(teacher)), f"{path.name}: a check call was lost"


def test_checked_exercises_exist():
    assert len(with_checks()) >= 6, [p.name for p in with_checks()]


@pytest.mark.parametrize("path", with_checks(), ids=lambda p: p.stem)
def test_book_solutions_pass_their_checks(path):
    """The stored output of every check in the book is the pass message (nbval re-runs and compares it)."""
    for cell in check_cells(load(path)):
        out = text_of(cell)
        verdicts = [line for line in out.splitlines() if line[:2] in ("✓ ", "… ", "✗ ")]
        assert verdicts and all(v.startswith("✓ ") for v in verdicts), f"{path.name}: {src(cell)}\n{out}"


def assert_not_yet(cells, name):
    for cell in cells:
        out = text_of(cell)
        verdicts = [line for line in out.splitlines() if line[:2] in ("✓ ", "… ", "✗ ")]
        assert verdicts and all(v.startswith("… ") and "not yet" in v for v in verdicts), f"{name}: {src(cell)}\n{out}"
        assert "Traceback" not in out


@pytest.mark.parametrize("path", with_checks(), ids=lambda p: p.stem)
def test_student_exercise_cells_say_not_yet(path, edition):
    student = load(edition / path.name)
    code_cells = [c for c in student["cells"] if c["cell_type"] == "code"]
    imports = [c for c in code_cells[1:] if _imports_only(src(c))]
    student["cells"] = [code_cells[0], *imports, *check_cells(student)]
    done = run(student)
    assert_not_yet(check_cells(done), path.name)


@pytest.mark.parametrize("path", [p for p in with_checks() if runtime(p) < FULL_RUN_SECONDS], ids=lambda p: p.stem)
def test_student_notebook_runs_top_to_bottom(path, edition):
    done = run(load(edition / path.name))
    for cell in done.cells:
        if cell.cell_type == "code":
            text_of(cell)  # no cell raised
    assert_not_yet(check_cells(done), path.name)


def _imports_only(code: str) -> bool:
    import ast

    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body)
