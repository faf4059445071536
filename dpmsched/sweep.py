"""Parameter sweeps over a notebook: a grid of papermill runs in a process pool, resumable.

A grid file (YAML) names a notebook and its parameters::

    notebook: ../notebooks/01_theorem.ipynb   # relative to the grid file
    fixed:                                    # the same in every run
      n_samples: 64
    grid:                                     # every combination of these lists
      gauss_steps: [4, 6, 8, 12]
      data_std: [0.25, 0.5, 1.0]

``python -m dpmsched sweep GRID.yaml --workers 2`` runs each combination with papermill
(:func:`dpmsched.batch.run_notebook`) in a process pool, or with ``--executor dask`` as tasks on a Dask
cluster (:mod:`dpmsched.executors`); both executors run the same task, :func:`_run_one`, which runs one
notebook and writes its record.  Run ``p`` of notebook ``NN_x`` writes

* ``runs/NN_x/<params_hash(p)>.ipynb`` — the executed notebook;
* ``runs/NN_x/<params_hash(p)>.json`` — its *record* (parameters, results, seconds), written
  atomically and only after the notebook finished: a run is finished exactly when this file exists
  and holds a complete record for the same parameters, and a re-run skips it;
* ``runs/NN_x/<params_hash(p)>.failed.json`` instead when the run failed (with its traceback); a
  failed run does not stop the others and is tried again by the next sweep.

``python -m dpmsched report runs/`` turns the records into a markdown table and a figure per notebook
(:mod:`dpmsched.report`).  The command line is :mod:`dpmsched.cli.sweep`.
Only papermill (in the workers), dask (in the Dask executor) and matplotlib (in the report) are heavy; all
load lazily.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from .batch import DEFAULT_CELL_TIMEOUT, check_parameters, last_line, run_notebook
from .executors import make_executor
from .files import atomic_write_text, clean_stale_temporaries, read_yaml

__all__ = ["load_grid", "params_hash", "expand_grid", "is_finished", "run_sweep", "format_params", "Terminated"]

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
    path = Path(path)
    spec = read_yaml(path, "grid file")
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


def _record(notebook, params: dict, seconds: float, error: str | None, results: dict | None = None) -> dict:
    """A run's record: parameters, status, seconds, and its results (ok) or its traceback (failed)."""
    h = params_hash(params)
    rec = {"notebook": Path(notebook).name, "hash": h, "parameters": params, "status": "failed" if error else "ok",
           "seconds": round(seconds, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "executed": f"{h}.ipynb"}
    if error:
        rec["error"] = _ANSI.sub("", error)
    else:
        rec["results"] = results
    return rec


def _write_record(out_dir: Path, rec: dict) -> dict:
    """``<hash>.json`` (ok; removes an older failure record) or ``<hash>.failed.json``, atomically."""
    h = rec["hash"]
    if rec["status"] == "ok":
        atomic_write_text(out_dir / f"{h}.json", json.dumps(rec, indent=1))
        (out_dir / f"{h}.failed.json").unlink(missing_ok=True)
    else:
        atomic_write_text(out_dir / f"{h}.failed.json", json.dumps(rec, indent=1))
    return rec


def _finished_record(out_dir: Path, params: dict) -> dict | None:
    """The record of ``params`` in ``out_dir`` when that run has finished, else None."""
    path = out_dir / f"{params_hash(params)}.json"
    return json.loads(path.read_text(encoding="utf-8")) if is_finished(path, params) else None


def _run_one(notebook: str, params: dict, out_dir: str, figures: bool, cell_timeout: float | None = None) -> dict:
    """The task of every executor: one papermill run; writes its record (or failure record) atomically and
    returns it.  A run that has already finished is not run again (a Dask task re-run after its worker died
    just after the record was written) and returns its record.
    """
    out_dir, h = Path(out_dir), params_hash(params)
    done = _finished_record(out_dir, params)
    if done is not None:
        return done
    nb_results = out_dir / f".{h}.notebook-results.json"
    run_params = dict(params)
    if figures:
        run_params["figures_dir"] = str((out_dir / f"{h}.figures").resolve())
    try:
        row = run_notebook(notebook, out_dir / f"{h}.ipynb", run_params, results_json=nb_results,
                           cell_timeout=cell_timeout)
    except Exception:
        row = {"seconds": float("nan"), "results": {}, "error": traceback.format_exc()}
    rec = _write_record(out_dir, _record(notebook, params, row["seconds"], row["error"], row["results"]))
    nb_results.unlink(missing_ok=True)
    return rec


def _lost_run(notebook: Path, out_dir: Path, params: dict, error: str) -> dict:
    """The record of a run whose task did not return (its worker died, the pool broke, the scheduler gave up):
    the finished record if the run got as far as writing one, else a failure record, written like any other."""
    return _finished_record(out_dir, params) or _write_record(out_dir, _record(notebook, params, float("nan"), error))


def format_params(params: dict) -> str:
    """``k=v k=v`` of a run's parameters, for logs and reports."""
    return " ".join(f"{k}={v!r}" for k, v in params.items())


def _log_failures(name: str, failed: list[dict], log) -> None:
    """Each failed run's parameters and full traceback."""
    for rec in failed:
        log(f"\n--- FAILED {name} {format_params(rec['parameters'])}\n{rec['error'].strip()}")


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the sweep can stop its workers before it exits."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _progress(total: int, enabled: bool):
    """The tqdm bar over runs (on stderr; a no-op object when not ``enabled``)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc="sweep", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def run_sweep(notebook, runs: list[dict], out="runs", workers: int = 2, figures: bool = False,
              log=print, cell_timeout: float | None = DEFAULT_CELL_TIMEOUT, executor: str = "local",
              scheduler: str | None = None, progress: bool = False) -> dict:
    """Run ``notebook`` once per parameter dict in ``runs``, skipping finished runs.

    ``executor``: ``"local"`` (``workers`` processes on this machine) or ``"dask"`` (a Dask LocalCluster
    of ``workers`` processes on 127.0.0.1, or the cluster whose scheduler is at ``scheduler``; see
    :mod:`dpmsched.executors`).  Both run the same task and give the same records.
    Writes into ``out/<notebook stem>/`` as described in the module docstring.  Returns
    ``{"ran": [record...], "skipped": [hash...], "failed": [record...]}`` (failed ⊂ ran).  On SIGTERM
    or Ctrl-C it stops the workers (their kernels follow) and re-raises ``KeyboardInterrupt``;
    finished runs keep their records, unfinished ones leave none.  A cell running longer than
    ``cell_timeout`` seconds (None: no limit) fails its run, so one hung kernel cannot stall the sweep.
    ``progress``: show a tqdm bar over the runs (finished / failed / running) on stderr.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    hashes = [params_hash(p) for p in runs]
    if len(set(hashes)) != len(hashes):
        raise ValueError("the grid lists the same parameters more than once")
    pool = make_executor(executor, workers, scheduler)     # a missing extra or a wrong scheduler fails here,
    notebook = Path(notebook).resolve()                    # before any output
    out_dir = Path(out).resolve() / notebook.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in clean_stale_temporaries(out_dir):        # half-written files of a sweep that was killed
        log(f"removed {stale.name}, left by an interrupted write")
    todo = [p for p, h in zip(runs, hashes) if not is_finished(out_dir / f"{h}.json", p)]
    skipped = [h for p, h in zip(runs, hashes) if p not in todo]
    log(f"{notebook.name}: {len(runs)} runs, {len(skipped)} already finished, {len(todo)} to run "
        f"{pool.where()} into {out_dir}")
    ran, failed = [], []
    if not todo:
        pool.close()
        return {"ran": ran, "skipped": skipped, "failed": failed}
    old = signal.signal(signal.SIGTERM, _raise_terminated) if threading.current_thread() is threading.main_thread() else None
    bar = _progress(len(todo), progress)

    def say(text):
        with bar.external_write_mode():
            log(text)

    try:
        pool.start(len(todo), say)
        pool.check(out_dir, notebook, say)                 # every worker can write here and see the notebook
        where = hashlib.sha256(str(out_dir).encode("utf-8")).hexdigest()[:8]    # the same run into another --out
        futures = {pool.submit(f"dpmsched-{notebook.stem}-{params_hash(p)}-{where}", _run_one, str(notebook), p,
                               str(out_dir), figures, cell_timeout): p for p in todo}
        for fut in pool.as_completed(futures):
            p = futures[fut]
            try:
                rec = fut.result()
            except Exception:   # the task did not return (its worker died, the pool broke): a failed run
                rec = _lost_run(notebook, out_dir, p, traceback.format_exc())
            ran.append(rec)
            n = len(ran)
            if rec["status"] == "ok":
                say(f"[{n}/{len(todo)}] ok      {rec['seconds']:7.1f} s  {format_params(p)}")
            else:
                failed.append(rec)
                say(f"[{n}/{len(todo)}] FAILED  {rec['seconds']:7.1f} s  {format_params(p)}: {last_line(rec['error'])}")
            bar.set_postfix_str(f"finished {n - len(failed)}, failed {len(failed)}, "
                                f"running {min(pool.slots(), len(todo) - n)}", refresh=False)
            bar.update(1)
    except KeyboardInterrupt:
        _log_failures(notebook.name, failed, say)
        say(f"interrupted: {pool.stop()}; {len(ran)} run(s) finished this time, re-run the sweep to do the rest")
        raise
    finally:
        pool.close()
        bar.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    _log_failures(notebook.name, failed, log)
    log(f"{notebook.name}: {len(ran) - len(failed)} ok, {len(failed)} failed, {len(skipped)} skipped")
    return {"ran": ran, "skipped": skipped, "failed": failed}
