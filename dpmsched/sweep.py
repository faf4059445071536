"""Parameter sweeps over a notebook, and the report that collects them.  (DESIGN.md §6, issue 7)

A grid file (YAML) names a notebook and its parameters::

    notebook: ../notebooks/01_theorem.ipynb   # relative to the grid file
    fixed:                                    # the same in every run
      n_samples: 64
    grid:                                     # every combination of these lists
      gauss_steps: [4, 6, 8, 12]
      data_std: [0.25, 0.5, 1.0]

``python -m dpmsched sweep GRID.yaml --workers 2`` runs each combination with papermill
(:func:`dpmsched.batch.run_notebook`) in a process pool.  Run ``p`` of notebook ``NN_x`` writes

* ``runs/NN_x/<params_hash(p)>.ipynb`` — the executed notebook;
* ``runs/NN_x/<params_hash(p)>.json`` — its *record* (parameters, results, seconds), written
  atomically and only after the notebook finished: a run is finished exactly when this file exists
  and holds a complete record for the same parameters, and a re-run skips it;
* ``runs/NN_x/<params_hash(p)>.failed.json`` instead when the run failed (with its traceback); a
  failed run does not stop the others and is tried again by the next sweep.

``python -m dpmsched report runs/`` turns the records into a markdown table and a figure per notebook.
Only papermill (in the workers) and matplotlib (in the report) are heavy; both load lazily.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from .batch import DEFAULT_CELL_TIMEOUT, check_parameters, last_line, md_cell, run_notebook
from .checkpoints import atomic_write_text

__all__ = ["load_grid", "params_hash", "expand_grid", "is_finished", "run_sweep", "load_records",
           "report_table", "report_figure", "write_report", "cli_sweep", "cli_report"]

#: parameters the sweep sets itself; a grid may not
RESERVED = ("results_json", "figures_dir")
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def params_hash(params: dict) -> str:
    """12 hex digits of the SHA-256 of ``params`` as canonical JSON (sorted keys): the run's file name.

    The type is part of the value (``3`` and ``3.0`` are different runs: the notebook checks types).
    """
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def expand_grid(fixed: dict, grid: dict) -> list[dict]:
    """Every combination of ``grid``'s value lists (in file order, last key fastest), each merged over ``fixed``."""
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"grid entry {name!r} must be a non-empty list of values, got {values!r}")
    both = sorted(set(fixed) & set(grid))
    if both:
        raise ValueError(f"parameter(s) {both} are both in 'fixed' and in 'grid'")
    names = list(grid)
    return [dict(fixed) | dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _check_against_notebook(notebook: Path, runs: list[dict]) -> None:
    """Check every run's names and types against the notebook's ``parameters`` cell, before running any.

    Uses :func:`dpmsched.batch.check_parameters` (the check the notebook itself does), so a typo in
    a grid file fails at once and by name, not once per run.
    """
    import papermill as pm

    declared = pm.inspect_notebook(str(notebook))
    ann = {}
    for name, p in declared.items():
        if p["inferred_type_name"] not in _TYPES:
            raise ValueError(f"{notebook.name}: parameter {name!r} has no int/float/str/bool annotation")
        ann[name] = _TYPES[p["inferred_type_name"]]
    for params in runs:
        bad = sorted(set(params) & set(RESERVED))
        if bad:
            raise ValueError(f"the sweep sets {bad} itself; remove them from the grid file")
        # unset parameters get a placeholder of their type: only the names and types in the grid are checked
        namespace = {"__annotations__": ann} | {n: t() for n, t in ann.items()} | params
        try:
            check_parameters(namespace)
        except NameError as e:
            raise ValueError(f"{notebook.name}: {e}") from None


def load_grid(path) -> tuple[Path, list[dict]]:
    """Read a grid file; returns ``(notebook path, [parameters of each run])``.

    Raises ``FileNotFoundError`` (grid or notebook missing), ``ValueError`` (malformed file, unknown
    or reserved parameter) or ``TypeError`` (a value of the wrong type for the notebook), each naming
    the culprit.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} not found")
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(spec, dict) or "notebook" not in spec:
        raise ValueError(f"{path}: expected a mapping with keys 'notebook', 'grid' and optionally 'fixed'")
    extra = sorted(set(spec) - {"notebook", "grid", "fixed"})
    if extra:
        raise ValueError(f"{path}: unknown key(s) {extra}; expected 'notebook', 'grid', 'fixed'")
    fixed, grid = spec.get("fixed") or {}, spec.get("grid") or {}
    if not isinstance(fixed, dict) or not isinstance(grid, dict):
        raise ValueError(f"{path}: 'fixed' and 'grid' must be mappings of parameter names")
    notebook = (path.parent / str(spec["notebook"])).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"{path}: notebook {spec['notebook']!r} not found (looked for {notebook})")
    runs = expand_grid(fixed, grid)
    _check_against_notebook(notebook, runs)
    return notebook, runs


def is_finished(record_path, params: dict) -> bool:
    """True when ``record_path`` holds a complete, successful record of a run with ``params``."""
    try:
        rec = json.loads(Path(record_path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (isinstance(rec, dict) and rec.get("status") == "ok" and rec.get("parameters") == params
            and isinstance(rec.get("results"), dict))


def _watch_parent(parent_pid: int) -> None:
    """Pool-worker initializer: exit when the sweep process is gone (killed with no chance to clean up).

    The worker's kernel follows by itself (ipykernel polls its own parent).
    """
    def poll():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=poll, daemon=True).start()


def _run_one(notebook: str, params: dict, out_dir: str, figures: bool, cell_timeout: float | None = None) -> dict:
    """Pool task: one papermill run; writes its record (or failure record) atomically and returns it."""
    out_dir, h = Path(out_dir), params_hash(params)
    nb_results = out_dir / f".{h}.notebook-results.json"
    run_params = dict(params)
    if figures:
        run_params["figures_dir"] = str((out_dir / f"{h}.figures").resolve())
    try:
        row = run_notebook(notebook, out_dir / f"{h}.ipynb", run_params, results_json=nb_results,
                           cell_timeout=cell_timeout)
        error = row["error"]
    except Exception:
        row, error = {"seconds": float("nan"), "results": {}}, traceback.format_exc()
    rec = {"notebook": Path(notebook).name, "hash": h, "parameters": params, "status": "failed" if error else "ok",
           "seconds": round(row["seconds"], 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "executed": f"{h}.ipynb"}
    if error:
        rec["error"] = _ANSI.sub("", error)
        atomic_write_text(out_dir / f"{h}.failed.json", json.dumps(rec, indent=1))
    else:
        rec["results"] = row["results"]
        atomic_write_text(out_dir / f"{h}.json", json.dumps(rec, indent=1))
        (out_dir / f"{h}.failed.json").unlink(missing_ok=True)
    nb_results.unlink(missing_ok=True)
    return rec


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v!r}" for k, v in params.items())


def _log_failures(name: str, failed: list[dict], log) -> None:
    """Each failed run's parameters and full traceback."""
    for rec in failed:
        log(f"\n--- FAILED {name} {_fmt_params(rec['parameters'])}\n{rec['error'].strip()}")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the sweep can stop its workers before it exits."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def run_sweep(notebook, runs: list[dict], out="runs", workers: int = 2, figures: bool = False,
              log=print, cell_timeout: float | None = DEFAULT_CELL_TIMEOUT) -> dict:
    """Run ``notebook`` once per parameter dict in ``runs`` (``workers`` at a time), skipping finished runs.

    Writes into ``out/<notebook stem>/`` as described in the module docstring.  Returns
    ``{"ran": [record...], "skipped": [hash...], "failed": [record...]}`` (failed ⊂ ran).  On SIGTERM
    or Ctrl-C it stops the workers (their kernels follow) and re-raises ``KeyboardInterrupt``;
    finished runs keep their records, unfinished ones leave none.  A cell running longer than
    ``cell_timeout`` seconds (None: no limit) fails its run, so one hung kernel cannot stall the sweep.
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    notebook = Path(notebook).resolve()
    out_dir = Path(out).resolve() / notebook.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    hashes = [params_hash(p) for p in runs]
    if len(set(hashes)) != len(hashes):
        raise ValueError("the grid lists the same parameters more than once")
    todo = [p for p, h in zip(runs, hashes) if not is_finished(out_dir / f"{h}.json", p)]
    skipped = [h for p, h in zip(runs, hashes) if p not in todo]
    log(f"{notebook.name}: {len(runs)} runs, {len(skipped)} already finished, {len(todo)} to run "
        f"with {workers} worker(s) into {out_dir}")
    ran, failed = [], []
    if not todo:
        return {"ran": ran, "skipped": skipped, "failed": failed}
    old = signal.signal(signal.SIGTERM, _raise_terminated) if threading.current_thread() is threading.main_thread() else None
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=get_context("spawn"),
                               initializer=_watch_parent, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(_run_one, str(notebook), p, str(out_dir), figures, cell_timeout): p for p in todo}
        for fut in as_completed(futures):
            p = futures[fut]
            try:
                rec = fut.result()
            except Exception:   # the worker itself died (e.g. killed): report it like a failed run
                rec = {"notebook": notebook.name, "hash": params_hash(p), "parameters": p, "status": "failed",
                       "seconds": float("nan"), "error": traceback.format_exc()}
            ran.append(rec)
            n = len(ran)
            if rec["status"] == "ok":
                log(f"[{n}/{len(todo)}] ok      {rec['seconds']:7.1f} s  {_fmt_params(p)}")
            else:
                failed.append(rec)
                log(f"[{n}/{len(todo)}] FAILED  {rec['seconds']:7.1f} s  {_fmt_params(p)}: {last_line(rec['error'])}")
    except KeyboardInterrupt:
        _log_failures(notebook.name, failed, log)
        log(f"interrupted: stopping {len(getattr(pool, '_processes', None) or {})} worker(s); "
            f"{len(ran)} run(s) finished this time, re-run the sweep to do the rest")
        # ProcessPoolExecutor has no public "kill the workers": without this, shutdown would wait
        # for every running notebook to end
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    _log_failures(notebook.name, failed, log)
    log(f"{notebook.name}: {len(ran) - len(failed)} ok, {len(failed)} failed, {len(skipped)} skipped")
    return {"ran": ran, "skipped": skipped, "failed": failed}


def cli_sweep(argv: list[str]) -> int:
    """``python -m dpmsched sweep GRID.yaml [--out runs] [--workers 2] [--figures]``: run a notebook over a grid."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m dpmsched sweep", description=cli_sweep.__doc__)
    p.add_argument("grid", help="YAML file with 'notebook', 'grid' and optionally 'fixed' (see sweeps/example.yaml)")
    p.add_argument("--out", default="runs", help="output folder (default: runs)")
    p.add_argument("--workers", type=int, default=2, help="notebooks run at a time (default: 2)")
    p.add_argument("--figures", action="store_true", help="save each run's figures to runs/<nb>/<hash>.figures/")
    p.add_argument("--cell-timeout", type=float, default=DEFAULT_CELL_TIMEOUT,
                   help=f"seconds one cell may run before its run fails (default: {DEFAULT_CELL_TIMEOUT:g}; 0: no limit)")
    a = p.parse_args(argv)
    try:
        notebook, runs = load_grid(a.grid)
    except (FileNotFoundError, ValueError, TypeError) as e:   # a bad grid file: say what, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        res = run_sweep(notebook, runs, a.out, a.workers, a.figures, log=lambda s: print(s, flush=True),
                        cell_timeout=a.cell_timeout or None)
    except _Terminated:
        return 143
    except KeyboardInterrupt:
        return 130
    return 1 if res["failed"] else 0


# ----------------------------------------------------------------------------------------- report

def _flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts → ``{"a.b": scalar}``; lists are left out (they do not fit a table cell)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, key + ".")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def load_records(folder) -> dict[str, list[dict]]:
    """All run records (``*.json`` and ``*.failed.json`` with a ``hash``) under ``folder``, by notebook name.

    A failure record is dropped when the same run has a successful record (it was re-run).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"runs folder {folder} not found")
    recs: dict[str, dict[str, dict]] = {}
    for f in sorted(folder.rglob("*.json")):
        if f.name.startswith("."):
            continue
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not (isinstance(rec, dict) and {"hash", "parameters", "status", "notebook"} <= set(rec)):
            continue
        runs = recs.setdefault(rec["notebook"], {})
        if rec["hash"] not in runs or rec["status"] == "ok":
            runs[rec["hash"]] = rec
    return {nb: list(r.values()) for nb, r in sorted(recs.items())}


def _varying(records: list[dict]) -> tuple[list[str], dict]:
    """(names of the parameters that differ between runs, {name: value} of those that do not)."""
    names = list(dict.fromkeys(k for r in records for k in r["parameters"]))
    vary = [n for n in names if len({json.dumps(r["parameters"].get(n)) for r in records}) > 1]
    fixed = {n: records[0]["parameters"].get(n) for n in names if n not in vary}
    return vary, fixed


def _default_keys(records: list[dict]) -> list[str]:
    """The top-level numeric results (what a table and a line plot can show)."""
    keys = dict.fromkeys(k for r in records if r["status"] == "ok" for k, v in r["results"].items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool))
    return sorted(keys)


def _sort_key(rec, vary):
    return [(str(type(rec["parameters"].get(n))), rec["parameters"].get(n)) for n in vary]


def report_table(records: list[dict], keys: list[str] | None = None) -> str:
    """Markdown for one notebook's records: the fixed parameters, one row per successful run (its
    varying parameters, ``keys`` of its results — default: the top-level numbers — and seconds), then
    each failed run with its parameters and the last line of its error.
    """
    if not records:
        raise ValueError("no records to report")
    vary, fixed = _varying(records)
    keys = list(keys) if keys else _default_keys(records)
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: _sort_key(r, vary))
    bad = [r for r in records if r["status"] != "ok"]
    lines = [f"{len(ok)} finished run(s), {len(bad)} failed.", ""]
    if fixed:
        lines += ["Same in every run: " + ", ".join(f"`{k}={v!r}`" for k, v in fixed.items()), ""]
    head = vary + keys + ["seconds"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ok:
        flat = _flatten(r["results"])
        cells = [r["parameters"].get(n) for n in vary] + [flat.get(k) for k in keys] + [r["seconds"]]
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    for r in bad:
        lines += ["", f"**failed** `{_fmt_params(r['parameters'])}`: {md_cell(last_line(r.get('error', '')))} "
                      f"(full traceback: `{r['hash']}.failed.json`)"]
    return "\n".join(lines)


def report_figure(records: list[dict], keys: list[str] | None = None, max_panels: int = 6):
    """One panel per result key (at most ``max_panels``): the value against the numeric varying
    parameter with the most distinct values, one line per combination of the other varying
    parameters (log y when all values are positive over more than a factor 50).  Returns the figure.
    """
    import matplotlib

    matplotlib.use("Agg")   # the report runs headless
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        raise ValueError("no finished runs to plot")
    vary, _ = _varying(ok)
    keys = (list(keys) if keys else _default_keys(ok))[:max_panels]
    numeric = [n for n in vary if all(isinstance(r["parameters"].get(n), (int, float))
                                      and not isinstance(r["parameters"].get(n), bool) for r in ok)]
    xname = max(numeric, key=lambda n: len({r["parameters"][n] for r in ok})) if numeric else None
    others = [n for n in vary if n != xname]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.2 * max(len(keys), 1), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        groups: dict[str, list] = {}
        for i, r in enumerate(sorted(ok, key=lambda r: _sort_key(r, vary))):
            v = _flatten(r["results"]).get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                continue
            label = ", ".join(f"{n}={r['parameters'].get(n)}" for n in others) or "runs"
            groups.setdefault(label, []).append((r["parameters"][xname] if xname else i, v))
        vals = [v for pts in groups.values() for _, v in pts]
        for label, pts in groups.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=4, label=label)
        if vals and min(vals) > 0 and max(vals) / min(vals) > 50:
            ax.set_yscale("log")
        ax.set_xlabel(xname or "run")
        ax.set_title(key, fontsize=10)
    if len(groups) > 1:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_report(folder, keys: list[str] | None = None, out=None) -> str:
    """Write ``out`` (default ``folder/report.md``) with a section per notebook — table and figure
    (``folder/<stem>/report.png``); returns the markdown.
    """
    import matplotlib.pyplot as plt

    from .plots import save

    folder = Path(folder)
    by_nb = load_records(folder)
    if not by_nb:
        raise FileNotFoundError(f"no run records (*.json written by 'python -m dpmsched sweep') under {folder}")
    out = Path(out) if out else folder / "report.md"
    parts = [f"# Sweep report\n\nMade by `python -m dpmsched report {folder}` from the run records under "
             f"`{folder}/` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})."]
    for nb, records in by_nb.items():
        stem = Path(nb).stem
        parts.append(f"## {nb}\n\n" + report_table(records, keys))
        if any(r["status"] == "ok" for r in records):
            fig = report_figure(records, keys)
            png = save(fig, "report", str(folder / stem))
            plt.close(fig)
            parts.append(f"![{stem}]({os.path.relpath(png, out.parent)})")
    text = "\n\n".join(parts) + "\n"
    atomic_write_text(out, text)
    return text


def cli_report(argv: list[str]) -> int:
    """``python -m dpmsched report RUNS_DIR [--keys a,b.c] [--out FILE]``: table + figure per notebook."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m dpmsched report", description=cli_report.__doc__)
    p.add_argument("folder", nargs="?", default="runs", help="folder the sweeps wrote into (default: runs)")
    p.add_argument("--keys", default="", help="comma-separated result keys (nested: a.b); default: top-level numbers")
    p.add_argument("--out", default=None, help="markdown file (default: FOLDER/report.md)")
    a = p.parse_args(argv)
    keys = [k.strip() for k in a.keys.split(",") if k.strip()] or None
    text = write_report(a.folder, keys, a.out)
    print(text)
    print(f"written: {a.out or Path(a.folder) / 'report.md'}", file=sys.stderr)
    return 0
