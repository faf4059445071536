"""Batch runs under faults: bad parameters, failing runs, a sweep killed halfway, corrupt checkpoints.

The papermill tests run a tiny notebook written here (same conventions as notebooks/: typed
``parameters`` cell, ``check_parameters``, ``save_results``) so that each run costs one kernel start,
not a tutorial's worth of computation.  Notebook 01's own bad-parameter test is in test_notebooks.py.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpmsched.batch import check_parameters, run_notebook, summary_table
from dpmsched.report import load_records, report_figure, report_table, write_report
from dpmsched.sweep import expand_grid, is_finished, load_grid, params_hash

ROOT = Path(__file__).resolve().parents[1]

PARAMS = '''x: int = 1  # the number to square
gate: str = ""  # when set, runs with x above 2 wait until this file exists
fail_at: int = 0  # the run with this x raises while the gate file is absent
model: str = ""  # a checkpoint folder to load; empty: none
pid_dir: str = ""  # when set, the kernel writes its process id there
figures_dir: str = ""  # unused
results_json: str = ""  # JSON file for the results'''

BODY = '''import os, time
if pid_dir:
    open(os.path.join(pid_dir, f"{x}.pid"), "w").write(str(os.getpid()))
if gate and x > 2:
    while not os.path.exists(gate):
        time.sleep(0.05)
if x == fail_at and not (gate and os.path.exists(gate)):
    raise RuntimeError(f"deliberate failure at x {x}")
if model:
    from dpmsched.checkpoints import load_model
    load_model(model)
_batch.save_results({"x": x, "square": x * x, "headline": f"{x} squared is {x * x}"}, results_json)'''


@pytest.fixture
def tiny_nb(tmp_path) -> Path:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(PARAMS)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("import dpmsched.batch as _batch\n_batch.check_parameters(globals())"),
                nbformat.v4.new_code_cell(BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    return path


def write_grid(path: Path, notebook: Path, grid: dict, fixed: dict | None = None) -> Path:
    path.write_text(json.dumps({"notebook": os.path.relpath(notebook, path.parent), "fixed": fixed or {},
                                "grid": grid}))   # JSON is YAML
    return path


def run_dir(out: Path) -> Path:
    return out / "tiny"


def records(out: Path) -> dict:
    """{x: record} of the successful runs."""
    files = [f for f in run_dir(out).glob("*.json") if not f.name.startswith(".")]   # not the notebooks' own
    return {r["parameters"]["x"]: r for r in (json.loads(f.read_text()) for f in files) if r["status"] == "ok"}


def assert_no_partial_files(out: Path):
    """Every visible record is complete JSON; no temporary file of an atomic write is left."""
    for f in run_dir(out).iterdir():
        assert not f.name.endswith(".tmp"), f"left-over temporary file {f.name}"
        if f.suffix == ".json" and not f.name.startswith("."):
            rec = json.loads(f.read_text())          # raises on a half-written file
            assert rec["hash"] == f.name.split(".")[0] == params_hash(rec["parameters"])
            if rec["status"] == "ok":
                assert is_finished(f, rec["parameters"])


# -- pure functions (no kernel) ------------------------------------------------------------------

def test_check_parameters_types_and_names():
    ns = {"__annotations__": {"n": int, "c": float, "flag": bool, "name": str}, "n": 3, "c": 2, "flag": True,
          "name": "a", "_private": 1, "In": []}
    assert check_parameters(ns) == {"n": 3, "c": 2, "flag": True, "name": "a"}   # int accepted for float
    with pytest.raises(TypeError, match="parameter 'n' must be int, got bool True"):
        check_parameters(ns | {"n": True})
    with pytest.raises(TypeError, match="parameter 'c' must be float, got str '2'"):
        check_parameters(ns | {"c": "2"})
    with pytest.raises(TypeError, match="parameter 'flag' must be bool, got int 1"):
        check_parameters(ns | {"flag": 1})
    with pytest.raises(NameError, match=r"unknown parameter\(s\) \['nn'\]"):
        check_parameters(ns | {"nn": 3})
    assert check_parameters(ns, positive=("n", "c"), nonnegative=("n",))["n"] == 3
    with pytest.raises(ValueError, match="parameter 'n' must be > 0, got 0"):
        check_parameters(ns | {"n": 0}, positive=("n",))
    with pytest.raises(ValueError, match="parameter 'c' must be >= 0, got -1"):
        check_parameters(ns | {"c": -1}, nonnegative=("c",))
    with pytest.raises(NameError, match="'m' is not a parameter"):
        check_parameters(ns, positive=("m",))


@pytest.mark.notebook
@pytest.mark.parametrize("name,value", [("n_samples", 0), ("gauss_steps", 0), ("data_std", -1.0)])
def test_notebook_parameters_out_of_range_stop_in_the_check_cell(tmp_path, name, value):
    """A papermill run of notebook 01 with an impossible count or scale fails in its parameter check, by name."""
    row = run_notebook(ROOT / "notebooks" / "01_theorem.ipynb", tmp_path / "out.ipynb", {name: value}, cell_timeout=300)
    assert row["error"] and f"parameter {name!r} must be > 0" in row["error"]
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    failed = [i for i, c in enumerate(nb["cells"]) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "check_parameters" in "".join(nb["cells"][failed[0]]["source"])   # the check cell


@given(st.dictionaries(st.text(min_size=1, max_size=5),
                       st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4),
                                 st.booleans()), max_size=5))
def test_params_hash_ignores_order_and_sees_types(params):
    h = params_hash(params)
    assert len(h) == 12 and int(h, 16) >= 0
    assert params_hash(dict(reversed(list(params.items())))) == h
    for k, v in params.items():
        if isinstance(v, int) and not isinstance(v, bool):
            assert params_hash(params | {k: float(v)}) != h     # 3 and 3.0 are different runs
        assert params_hash(params | {k: [v]}) != h


def test_expand_grid_is_the_product():
    runs = expand_grid({"a": 0}, {"b": [1, 2, 3], "c": ["x", "y"]})
    assert len(runs) == 6 and runs[0] == {"a": 0, "b": 1, "c": "x"} and runs[1] == {"a": 0, "b": 1, "c": "y"}
    assert {(r["b"], r["c"]) for r in runs} == {(b, c) for b in (1, 2, 3) for c in "xy"}
    with pytest.raises(ValueError, match="'b' must be a non-empty list"):
        expand_grid({}, {"b": []})
    with pytest.raises(ValueError, match=r"\['a'\] are both in 'fixed' and in 'grid'"):
        expand_grid({"a": 0}, {"a": [1]})


def test_load_grid_rejects_bad_parameters_by_name_before_running(tmp_path, tiny_nb):
    g = write_grid(tmp_path / "g.yaml", tiny_nb, {"x": [1, 2]}, {"fail_at": 5})
    nb, runs = load_grid(g)
    assert nb == tiny_nb.resolve() and runs == [{"fail_at": 5, "x": 1}, {"fail_at": 5, "x": 2}]
    with pytest.raises(TypeError, match="parameter 'x' must be int, got float 2.5"):
        load_grid(write_grid(tmp_path / "g.yaml", tiny_nb, {"x": [1, 2.5]}))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['y'\]"):
        load_grid(write_grid(tmp_path / "g.yaml", tiny_nb, {"y": [1]}))
    with pytest.raises(ValueError, match="results_json"):
        load_grid(write_grid(tmp_path / "g.yaml", tiny_nb, {"x": [1]}, {"results_json": "a.json"}))
    with pytest.raises(FileNotFoundError, match="nope.ipynb"):
        load_grid(write_grid(tmp_path / "g.yaml", tmp_path / "nope.ipynb", {"x": [1]}))
    with pytest.raises(FileNotFoundError, match="grid file"):
        load_grid(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("notebook: tiny.ipynb\ngrids: {x: [1]}\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_grid(tmp_path / "bad.yaml")


def test_the_example_grid_has_at_least_12_valid_runs():
    nb, runs = load_grid(ROOT / "sweeps" / "example.yaml")
    assert nb.name == "01_theorem.ipynb" and len(runs) >= 12 and len({params_hash(r) for r in runs}) == len(runs)


def test_is_finished_only_for_complete_matching_records(tmp_path):
    p, params = tmp_path / "r.json", {"x": 1}
    rec = {"hash": params_hash(params), "parameters": params, "status": "ok", "results": {"y": 2}}
    assert not is_finished(p, params)                       # missing
    text = json.dumps(rec)
    p.write_text(text[: len(text) // 2])                    # half-written (a non-atomic writer killed)
    assert not is_finished(p, params)
    p.write_text(text)
    assert is_finished(p, params)
    assert not is_finished(p, {"x": 2})                     # another run's record
    p.write_text(json.dumps(rec | {"status": "failed"}))
    assert not is_finished(p, params)
    p.write_text(json.dumps({k: v for k, v in rec.items() if k != "results"}))
    assert not is_finished(p, params)


def test_demo_summary_table_one_row_per_notebook_and_the_failure_in_one_line():
    rows = [{"notebook": "01_a.ipynb", "seconds": 12.34, "results": {"headline": "err 1e-3 | 2x better"}, "error": None},
            {"notebook": "02_b.ipynb", "seconds": 3.0, "results": {},
             "error": "PapermillExecutionError: \n----\nTraceback\n  File x\nValueError: steps must be >= 1\n"}]
    lines = summary_table(rows).splitlines()
    assert lines[2] == "| 01_a.ipynb | ok | 12.3 | err 1e-3 \\| 2x better |"
    assert lines[3] == "| 02_b.ipynb | FAILED | 3.0 | ValueError: steps must be >= 1 |"
    assert lines[4] == "| **total** | 1/2 ok | 15.3 | |" and len(lines) == 5


def _rec(params, status="ok", **results):
    r = {"notebook": "nb.ipynb", "hash": params_hash(params), "parameters": params, "status": status, "seconds": 1.5}
    return r | ({"results": results} if status == "ok" else {"error": "Traceback...\nRuntimeError: boom"})


def test_report_table_rows_fixed_parameters_and_failures(tmp_path):
    recs = [_rec({"n": n, "c": c, "seed": 0}, err=1.0 / n + c, nested={"v": n * 10}, lst=[1, 2])
            for n in (4, 2) for c in (0.5, 1.0)] + [_rec({"n": 8, "c": 0.5, "seed": 0}, "failed")]
    md = report_table(recs)
    lines = md.splitlines()
    assert lines[0] == "4 finished run(s), 1 failed."
    assert "`seed=0`" in md                                  # same in every run: not a column
    head = next(ln for ln in lines if ln.startswith("| n"))
    assert head == "| n | c | err | seconds |"               # top-level numbers only; lists are left out
    rows = [ln for ln in lines if ln.startswith("| ") and ln != head]
    assert rows[0] == "| 2 | 0.5 | 1 | 1.5 |" and rows[-1] == "| 4 | 1 | 1.25 | 1.5 |"   # sorted by parameters
    assert "**failed** `n=8 c=0.5 seed=0`: RuntimeError: boom" in md
    assert "nested.v" in report_table(recs, ["err", "nested.v"]).splitlines()[4]
    with pytest.raises(ValueError, match="no records"):
        report_table([])

    fig = report_figure(recs, ["err", "nested.v"])
    assert len(fig.axes) == 2 and fig.axes[0].get_xlabel() == "n" and len(fig.axes[0].lines) == 2   # one per c

    for r in recs:   # write_report reads them back from disk; an ok record beats an older failure
        (tmp_path / "nb").mkdir(exist_ok=True)
        (tmp_path / "nb" / f"{r['hash']}{'' if r['status'] == 'ok' else '.failed'}.json").write_text(json.dumps(r))
    (tmp_path / "nb" / f"{recs[0]['hash']}.failed.json").write_text(json.dumps(recs[-1] | {"hash": recs[0]["hash"]}))
    assert len(load_records(tmp_path)["nb.ipynb"]) == 5
    text = write_report(tmp_path)
    assert (tmp_path / "report.md").read_text() == text and (tmp_path / "nb" / "report.png").stat().st_size > 1000
    assert "## nb.ipynb" in text and "4 finished run(s), 1 failed." in text
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "nothing")


# -- papermill runs of the tiny notebook ---------------------------------------------------------

@pytest.mark.slow
def test_papermill_bool_for_int_fails_naming_the_parameter(tmp_path, tiny_nb):
    res = run_notebook(tiny_nb, tmp_path / "out.ipynb", {"x": True}, results_json=tmp_path / "r.json")
    assert res["error"] and "parameter 'x' must be int, got bool True" in res["error"]
    assert res["results"] == {} and not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_a_hung_cell_fails_its_run_after_the_cell_timeout(tmp_path, tiny_nb):
    """x=3 waits for a gate file that never comes: the run ends with a timeout error, not never."""
    t0 = time.monotonic()
    res = run_notebook(tiny_nb, tmp_path / "out.ipynb", {"x": 3, "gate": str(tmp_path / "never")},
                       results_json=tmp_path / "r.json", cell_timeout=2)
    assert res["error"] and "timed out" in res["error"] and res["results"] == {}, res["error"]
    assert time.monotonic() - t0 < 60
    with pytest.raises(ValueError, match="cell_timeout must be a positive number"):
        run_notebook(tiny_nb, tmp_path / "out.ipynb", {}, cell_timeout=0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start_sweep(cmd, env):
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when(proc, sig, ready, what):
    """Send ``sig`` to the sweep once ``ready()``; returns its output."""
    try:
        deadline = time.monotonic() + 150
        while not ready():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)
        time.sleep(0.5)                                          # the hanging run is inside its gate loop
        proc.send_signal(sig)
        return proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()


def _assert_gone(pid_files):
    """The kernels that wrote these pid files exit (their worker was stopped or lost its parent)."""
    kernels = [int(f.read_text()) for f in pid_files]
    deadline = time.monotonic() + 30
    while any(_pid_alive(k) for k in kernels) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_pid_alive(k) for k in kernels), "kernels of the killed runs are still running"


@pytest.mark.slow
def test_sweep_with_a_failure_killed_twice_then_rerun_completes_without_redoing(tmp_path, tiny_nb):
    """x=1 finishes, x=2 fails, x=3 hangs on a gate file.  SIGTERM the sweep; rerun (skips 1) and
    SIGKILL it; open the gate (which also ends the failure of 2, like a transient fault) and rerun:
    only 2 and 3 run, and the records of 1 are untouched.
    """
    out, pids, gate = tmp_path / "runs", tmp_path / "pids", tmp_path / "gate"
    pids.mkdir()
    grid = write_grid(tmp_path / "g.yaml", tiny_nb, {"x": [1, 2, 3]},
                      {"gate": str(gate), "fail_at": 2, "pid_dir": str(pids)})
    h = {x: params_hash({"gate": str(gate), "fail_at": 2, "pid_dir": str(pids), "x": x}) for x in (1, 2, 3)}
    cmd = [sys.executable, "-m", "dpmsched", "sweep", str(grid), "--workers", "2", "--out", str(out)]
    env = os.environ | {"OMP_NUM_THREADS": "1"}

    # 1. SIGTERM while 3 hangs: 1 is finished, 2 failed (reported, did not stop 3)
    proc = _start_sweep(cmd, env)
    text = _kill_when(proc, signal.SIGTERM, lambda: sorted(records(out)) == [1] and (pids / "3.pid").exists()
                      and (run_dir(out) / f"{h[2]}.failed.json").exists(), "runs 1 and 2 to end")
    assert proc.returncode == 143 and "interrupted" in text, text
    assert re.search(r"\[\d/3\] ok .* x=1", text) and re.search(r"\[\d/3\] FAILED .* x=2", text), text
    assert "--- FAILED tiny.ipynb" in text and "deliberate failure at x 2" in text       # with the traceback
    failed = json.loads((run_dir(out) / f"{h[2]}.failed.json").read_text())
    assert failed["parameters"]["x"] == 2 and "RuntimeError: deliberate failure at x 2" in failed["error"]
    assert "Traceback" in failed["error"] or "----" in failed["error"]
    _assert_gone([pids / "3.pid"])
    assert sorted(records(out)) == [1]
    assert_no_partial_files(out)
    mtime = (run_dir(out) / f"{h[1]}.json").stat().st_mtime_ns
    (pids / "3.pid").unlink()

    # 2. rerun: 1 is skipped, 2 is retried (fails again), 3 hangs again; SIGKILL the sweep (no clean-up)
    proc = _start_sweep(cmd, env)
    failed_file = run_dir(out) / f"{h[2]}.failed.json"
    t_failed = failed_file.stat().st_mtime_ns
    text = _kill_when(proc, signal.SIGKILL, lambda: (pids / "3.pid").exists() and failed_file.stat().st_mtime_ns
                      > t_failed, "run 2 to fail again and run 3 to start")
    assert proc.returncode == -signal.SIGKILL
    assert "3 runs, 1 already finished, 2 to run" in text, text
    _assert_gone([pids / "3.pid"])
    assert sorted(records(out)) == [1]
    assert_no_partial_files(out)

    # 3. open the gate: 2 and 3 run, 1 is not redone
    gate.touch()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 runs, 1 already finished, 2 to run" in res.stdout and "2 ok, 0 failed, 1 skipped" in res.stdout
    recs = records(out)
    assert sorted(recs) == [1, 2, 3] and all(r["results"]["square"] == x * x for x, r in recs.items())
    assert (run_dir(out) / f"{h[1]}.json").stat().st_mtime_ns == mtime
    assert not (run_dir(out) / f"{h[2]}.failed.json").exists()          # the success replaced the failure
    assert_no_partial_files(out)
    assert "3 finished run(s), 0 failed." in write_report(out)


@pytest.mark.slow
def test_corrupt_checkpoint_fails_with_the_checkpoint_error(tmp_path, tiny_nb):
    """A notebook given a checkpoint with one flipped byte stops with load_model's checksum error."""
    import shutil

    from dpmsched.checkpoints import WEIGHTS, load_model, save_model
    from dpmsched.denoisers.nets import MLP, EDMDenoiser

    good = save_model(EDMDenoiser(MLP(width=8, depth=1, emb_dim=4), 0.5, (2,), 0.002, 80.0, "tiny"),
                      tmp_path / "good", kind="edm", dataset="test")
    load_model(good)                                            # the intact copy loads
    bad = shutil.copytree(good, tmp_path / "bad")
    raw = bytearray((bad / WEIGHTS).read_bytes())
    raw[-1] ^= 0xFF                                              # one flipped byte in the weights
    (bad / WEIGHTS).write_bytes(bytes(raw))
    res = run_notebook(tiny_nb, tmp_path / "out.ipynb", {"model": str(bad)}, results_json=tmp_path / "r.json")
    assert res["error"] and "ValueError: checksum mismatch" in res["error"], res["error"]
    assert "corrupt or replaced file" in res["error"] and res["results"] == {}


def test_unattended_runs_build_no_widget(tmp_path, monkeypatch):
    """Notebook runs set DPMSCHED_HEADLESS for the kernel (and restore the caller's environment): the widget cell
    of notebook 01 prints its bound instead of building widgets, which nbclient can hang on (nbclient#312)."""
    from dpmsched.resources import HEADLESS_ENV
    from dpmsched.widgets import schedule_explorer

    monkeypatch.setenv(HEADLESS_ENV, "1")
    assert schedule_explorer(steps=4) is None
    monkeypatch.delenv(HEADLESS_ENV)
    assert schedule_explorer(steps=4) is not None                 # interactive: the widget box
    run_notebook(ROOT / "notebooks" / "01_theorem.ipynb", tmp_path / "o.ipynb", {"steps": 3, "n_samples": 16},
                 cell_timeout=300)
    assert HEADLESS_ENV not in os.environ
    assert "(headless run: no widget)" in (tmp_path / "o.ipynb").read_text()
