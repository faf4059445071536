"""Running notebooks unattended: parameter checks, results files, the demo run.

Notebook conventions (every notebook in ``notebooks/`` follows them):

* the first code cell is tagged ``parameters`` and holds only typed, commented assignments
  (``steps: int = 5  # number of solver steps``), including ``figures_dir: str = ""`` and
  ``results_json: str = ""``; papermill's parser gives up on a line with a second ``=``, so the
  comments contain no ``=``;
* the next cell calls ``check_parameters(globals())``: a papermill parameter of the wrong type or an
  unknown name fails right there with a message naming it (papermill itself only warns);
* the last cell calls ``save_results(results, results_json)`` with a flat dict of the numbers the
  notebook computed, so sweeps and the demo summary can read them.

papermill is imported lazily: ``import dpmsched`` does not need it.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from .files import atomic_write_text
from .resources import HEADLESS_ENV

__all__ = ["check_parameters", "save_results", "run_notebook", "run_all", "summary_table", "last_line", "md_cell",
           "strip_notebook", "student_notebook", "SOLUTION_TAG", "DEFAULT_CELL_TIMEOUT"]

#: seconds one cell may run in the demo and in sweeps before its run fails; a kernel that stops answering
#: (seen once in a sweep on the shared machine) then costs this long instead of stalling everything
DEFAULT_CELL_TIMEOUT = 600.0

_IPY_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def check_parameters(namespace: dict, *, positive=(), nonnegative=()) -> dict:
    """Validate the notebook's parameters against the annotations of its ``parameters`` cell.

    Call it in the cell right after the parameters cell (and papermill's injected cell).  Raises
    ``TypeError`` for a value whose type does not match its annotation (an int is accepted for a
    float; a bool is never an int), ``NameError`` for a name that is not a declared parameter, and
    ``ValueError`` for a parameter named in ``positive`` (must be > 0) or ``nonnegative`` (≥ 0) that is not —
    so ``n_samples = 0`` stops in this cell, by name, not twenty cells later.
    Returns ``{name: value}`` of the declared parameters.
    """
    ann = dict(namespace.get("__annotations__", {}))
    if not ann:
        raise RuntimeError("no annotated parameters found: run the 'parameters' cell first")
    unknown = sorted(k for k in namespace if not k.startswith("_") and k not in ann and k not in _IPY_NAMES)
    if unknown:
        raise NameError(f"unknown parameter(s) {unknown}; this notebook takes {sorted(ann)}")
    out = {}
    for name, typ in ann.items():
        if name not in namespace:
            raise NameError(f"parameter {name!r} is declared but has no value")
        v = namespace[name]
        ok = isinstance(v, typ) and not (typ is int and isinstance(v, bool))
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            ok = True
        if not ok:
            tname = getattr(typ, "__name__", str(typ))
            raise TypeError(f"parameter {name!r} must be {tname}, got {type(v).__name__} {v!r}")
        out[name] = v
    for names, ok, want in ((positive, lambda v: v > 0, "> 0"), (nonnegative, lambda v: v >= 0, ">= 0")):
        for name in names:
            if name not in out:
                raise NameError(f"check_parameters: {name!r} is not a parameter of this notebook")
            if not ok(out[name]):
                raise ValueError(f"parameter {name!r} must be {want}, got {out[name]!r}")
    return out


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:   # numpy / torch scalars
        v = v.item()
    if hasattr(v, "tolist"):
        return _jsonable(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def save_results(results: dict, path: str) -> dict:
    """Write the notebook's ``results`` dict as JSON to ``path`` atomically (no-op if ``path`` is "")."""
    clean = _jsonable(results)
    if path:
        atomic_write_text(path, json.dumps(clean, indent=1, sort_keys=True))
    return clean


def run_notebook(path, out_path, parameters: dict | None = None, results_json=None, cwd=None,
                 progress_bar: bool = False, cell_timeout: float | None = None) -> dict:
    """Execute one notebook with papermill; returns ``{"notebook", "seconds", "results", "error"}``.

    ``results_json`` (a path) is passed to the notebook as its ``results_json`` parameter and read
    back afterwards.  The notebook runs with its own folder as working directory unless ``cwd``.
    ``cell_timeout`` (seconds, None: no limit) stops a cell that runs longer, or a kernel that stops
    answering, with an error instead of waiting forever.
    """
    if cell_timeout is not None and not (isinstance(cell_timeout, (int, float)) and cell_timeout > 0):
        raise ValueError(f"cell_timeout must be a positive number of seconds or None, got {cell_timeout!r}")
    import papermill as pm

    path, out_path = Path(path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    params = dict(parameters or {})
    if results_json is not None:
        params["results_json"] = str(Path(results_json).resolve())
    t0 = time.perf_counter()
    error = None
    previous = os.environ.get(HEADLESS_ENV)
    os.environ[HEADLESS_ENV] = "1"                # the kernel inherits it: no widgets in unattended runs
    try:
        pm.execute_notebook(str(path), str(out_path), parameters=params, cwd=str(cwd or path.parent),
                            progress_bar=progress_bar, kernel_name="python3",
                            execution_timeout=None if cell_timeout is None else math.ceil(cell_timeout))
    except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
        error = f"{type(e).__name__}: {e}"
    finally:
        if previous is None:
            os.environ.pop(HEADLESS_ENV, None)
        else:
            os.environ[HEADLESS_ENV] = previous
    seconds = time.perf_counter() - t0
    results = {}
    if results_json is not None and Path(results_json).exists() and error is None:
        results = json.loads(Path(results_json).read_text())
    return {"notebook": path.name, "seconds": seconds, "results": results, "error": error}


def run_all(notebooks, out_dir="runs", parameters: dict | None = None,
            cell_timeout: float | None = DEFAULT_CELL_TIMEOUT) -> list[dict]:
    """Run each notebook into ``out_dir/<name>.ipynb`` (results in ``<name>.results.json``)."""
    out_dir = Path(out_dir).resolve()
    rows = []
    for nb in notebooks:
        nb = Path(nb)
        print(f"running {nb} ...", flush=True)
        params = {"figures_dir": str(out_dir / "figures")} | dict(parameters or {})
        row = run_notebook(nb, out_dir / nb.name, params, results_json=out_dir / f"{nb.stem}.results.json",
                           cell_timeout=cell_timeout)
        print(f"  {'FAILED' if row['error'] else 'ok'} in {row['seconds']:.1f} s", flush=True)
        rows.append(row)
    return rows


def last_line(error: str) -> str:
    """The last non-empty line of a traceback (the exception itself), at most 300 characters."""
    return ([ln for ln in (error or "").strip().splitlines() if ln.strip()][-1:] or ["?"])[0][:300]


def md_cell(v) -> str:
    """``v`` as a markdown table cell: floats to 4 significant digits, ``|`` escaped, None empty."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")


def summary_table(rows: list[dict]) -> str:
    """A markdown table: notebook, status, seconds, and each notebook's ``headline`` result
    (for a failed notebook: the exception, the traceback's last line)."""
    lines = ["| notebook | status | seconds | headline |", "|---|---|---|---|"]
    for r in rows:
        status = "FAILED" if r["error"] else "ok"
        head = last_line(r["error"]) if r["error"] else (r["results"] or {}).get("headline", "")
        lines.append(f"| {r['notebook']} | {status} | {r['seconds']:.1f} | {md_cell(head)} |")
    total = sum(r["seconds"] for r in rows)
    lines.append(f"| **total** | {sum(not r['error'] for r in rows)}/{len(rows)} ok | {total:.1f} | |")
    return "\n".join(lines)


#: the cell tag of a worked solution; :func:`student_notebook` drops these cells
SOLUTION_TAG = "solution"


def student_notebook(path, out_path) -> int:
    """Write a student copy of the notebook ``path`` to ``out_path``: every cell tagged :data:`SOLUTION_TAG`
    removed, every other cell kept as it is (the stored notebooks carry no outputs), written atomically.
    Returns the number of cells removed.  The copy runs on its own: solution cells only read the notebook's
    state, nothing after them depends on them."""
    import nbformat

    nb = nbformat.read(Path(path), as_version=4)
    keep = [c for c in nb.cells if SOLUTION_TAG not in c.get("metadata", {}).get("tags", [])]
    removed = len(nb.cells) - len(keep)
    nb.cells = keep
    nbformat.validate(nb)
    atomic_write_text(Path(out_path), nbformat.writes(nb) + "\n")
    return removed


def strip_notebook(path, refresh: bool = False) -> bool:
    """Remove outputs and execution counts from a stored notebook, except in ``NBVAL_CHECK_OUTPUT`` cells.

    With ``refresh=True`` the notebook is first executed with its defaults and the outputs of the
    ``NBVAL_CHECK_OUTPUT`` cells (the numbers nbval compares) are stored from that run.
    Returns True when the file changed.
    """
    import tempfile

    import nbformat

    path = Path(path)
    before = path.read_text(encoding="utf-8")
    nb = nbformat.reads(before, as_version=4)
    fresh = None
    if refresh:
        with tempfile.TemporaryDirectory() as tmp:
            row = run_notebook(path, Path(tmp) / path.name)
            if row["error"]:
                raise RuntimeError(f"{path.name} failed while refreshing its outputs:\n{row['error']}")
            fresh = nbformat.read(Path(tmp) / path.name, as_version=4)
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        keep = "NBVAL_CHECK_OUTPUT" in c.source
        if keep and fresh is not None:
            c.outputs = [o for o in fresh.cells[i].outputs if o.get("output_type") != "display_data"]
            for o in c.outputs:
                o.pop("execution_count", None)
        elif not keep:
            c.outputs = []
        # nbval skips a reference cell with outputs but no execution count ("unrun")
        c.execution_count = 1 if keep and c.outputs else None
        c.metadata.pop("execution", None)
        c.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    after = nbformat.writes(nb) + "\n"
    if after != before:
        atomic_write_text(path, after)
    return after != before
