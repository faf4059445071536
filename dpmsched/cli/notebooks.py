"""``python -m dpmsched demo`` (run the notebook series), ``strip`` (store notebooks without outputs) and
``student`` (copies without the worked solutions, for a class)."""
from __future__ import annotations

from pathlib import Path

from ..batch import SOLUTION_TAG, run_all, strip_notebook, student_notebook, summary_table
from ..files import atomic_write_text
from .common import ArgumentParser

__all__ = ["demo", "strip", "student"]


def strip(argv: list[str]) -> int:
    """``python -m dpmsched strip [--refresh] NOTEBOOK...``: store notebooks without outputs."""
    p = ArgumentParser(prog="python -m dpmsched strip", description=strip.__doc__)
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--refresh", action="store_true",
                   help="re-execute and store the outputs of NBVAL_CHECK_OUTPUT cells")
    a = p.parse_args(argv)
    for nb in a.notebooks:
        print(f"{nb}: {'stripped' if strip_notebook(nb, a.refresh) else 'unchanged'}")
    return 0


def _notebook_args(prog: str, doc: str, out: str, argv: list[str]):
    """The shared arguments of ``demo`` and ``student``: notebooks (default notebooks/[0-9]*.ipynb) and --out."""
    p = ArgumentParser(prog=f"python -m dpmsched {prog}", description=doc)
    p.add_argument("notebooks", nargs="*", help="default: notebooks/[0-9]*.ipynb")
    p.add_argument("--out", default=out, help=f"output folder (default: {out})")
    a = p.parse_args(argv)
    return [Path(n) for n in a.notebooks] or sorted(Path("notebooks").glob("[0-9]*.ipynb")), Path(a.out)


def demo(argv: list[str]) -> int:
    """``python -m dpmsched demo [--out runs] [notebooks...]``: run the notebook series (CPU defaults)."""
    nbs, out = _notebook_args("demo", demo.__doc__, "runs", argv)
    if not nbs:
        print("no notebooks found")
        return 1
    rows = run_all(nbs, out)
    table = summary_table(rows)
    atomic_write_text(out / "summary.md", table + "\n")
    print("\n" + table)
    print(f"\nexecuted notebooks: {out.resolve()}/\nfigures:            {out.resolve()}/figures/")
    for r in rows:
        if r["error"]:
            print(f"\n{r['notebook']} failed:\n{r['error']}")
    return 1 if any(r["error"] for r in rows) else 0


def student(argv: list[str]) -> int:
    """``python -m dpmsched student [--out runs/student] [notebooks...]``: copies of the notebooks without the
    cells tagged "solution" (the worked solutions), to hand out to a class."""
    nbs, out = _notebook_args("student", student.__doc__, "runs/student", argv)
    if not nbs:
        raise FileNotFoundError("no notebooks given and none found in notebooks/")
    for nb in nbs:
        if not nb.is_file():
            raise FileNotFoundError(f"no such notebook: {nb}")
    out.mkdir(parents=True, exist_ok=True)
    for nb in nbs:
        n = student_notebook(nb, out / nb.name)
        print(f"{out / nb.name}: {n} {SOLUTION_TAG} cell{'' if n == 1 else 's'} removed")
    return 0
