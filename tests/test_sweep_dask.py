"""Sweeps on a Dask cluster (``--executor dask``): the local executor's guarantees, tested on a 2-worker
LocalCluster on 127.0.0.1 — the same records as ``--executor local``; a worker killed mid-run is replaced and
its run redone, never half-written; SIGTERM cancels and leaves nothing half-written, and the re-run skips what
finished; a worker that cannot write in ``--out`` stops the sweep before anything is submitted; without the
extra, one line naming it.

The fault tests run the tiny notebook of test_batch.py (one kernel start per run); the comparison runs
notebook 01 with small parameters.  Everything but the missing-extra test needs ``dask[distributed]``.
"""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_batch
from test_batch import (
    _assert_gone,
    _kill_when,
    _pid_alive,
    _start_sweep,
    assert_no_partial_files,
    records,
    run_dir,
    write_grid,
)

from dpmsched.cli import main
from dpmsched.sweep import params_hash

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"OMP_NUM_THREADS": "1"}
tiny_nb = test_batch.tiny_nb           # the fixture: a notebook of one kernel start per run
needs_dask = pytest.mark.skipif(importlib.util.find_spec("distributed") is None,
                                reason="dask[distributed] is not installed (pip install 'dpmsched[dask]')")


def sweep_cmd(grid: Path, out: Path, executor="dask", *extra) -> list[str]:
    return [sys.executable, "-m", "dpmsched", "sweep", str(grid), "--workers", "2", "--out", str(out),
            "--executor", executor, *extra]


def _wait(cond, what, timeout=150):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[1])


def sweep_to_the_end(cmd: list[str], tries: int = 3) -> subprocess.CompletedProcess:
    """Run a sweep until it exits, re-running it (it resumes) only when a run failed on a cell timeout.

    papermill now and then waits forever on a kernel that has gone idle after notebook 01's widget cell
    (jupyter/nbclient#312; under either executor): ``--cell-timeout`` turns that into a failed run, and the
    documented remedy — the same command again — redoes just that run.
    """
    for _ in range(tries):
        res = subprocess.run(cmd + ["--cell-timeout", "60"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                             timeout=600)
        if res.returncode != 1 or "timed out" not in res.stdout:
            break
    return res


@needs_dask
@pytest.mark.slow
@pytest.mark.notebook
def test_dask_gives_the_records_of_the_local_executor(tmp_path):
    """4 runs of notebook 01 (small parameters): the same parameters and results, bit for bit, either way."""
    grid = write_grid(tmp_path / "g.yaml", ROOT / "notebooks" / "01_theorem.ipynb",
                      {"gauss_steps": [4, 5], "data_std": [0.5, 1.0]},
                      {"steps": 3, "rho": 3.0, "mixture": "grid", "n_samples": 64, "seed": 1})
    got = {}
    for executor in ("local", "dask"):
        res = sweep_to_the_end(sweep_cmd(grid, tmp_path / executor, executor))
        assert res.returncode == 0 and ", 0 failed, " in res.stdout, res.stdout + res.stderr
        files = sorted((tmp_path / executor / "01_theorem").glob("[0-9a-f]*.json"))
        got[executor] = {f.name: json.loads(f.read_text()) for f in files}
    assert "Dask dashboard: http://127.0.0.1:" in res.stdout and "sweep: 100%" in res.stderr, res.stdout + res.stderr
    assert re.search(r"finished \d, failed 0, running 0", res.stderr), res.stderr     # the progress bar's postfix
    assert len(got["dask"]) == 4 and sorted(got["dask"]) == sorted(got["local"])
    for name, rec in got["dask"].items():
        assert rec["status"] == "ok" and rec["parameters"] == got["local"][name]["parameters"]
        assert rec["results"] == got["local"][name]["results"], name
        assert rec["results"]["bound_optimal"] > 0


@needs_dask
@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_run_redone_or_reported_failed(tmp_path, tiny_nb):
    """Runs 3 and 4 wait on a gate on the two workers.  SIGKILL the worker process of run 3: its kernel dies,
    the scheduler runs 3 again on the restarted worker.  Kill that one too: with allowed-failures = 1 the run
    is now reported failed (KilledWorker, in its .failed.json), while 4 goes on.  Nothing is half-written, and
    the re-run does 3 alone."""
    out, pids, gate = tmp_path / "runs", tmp_path / "pids", tmp_path / "gate"
    pids.mkdir()
    fixed = {"gate": str(gate), "pid_dir": str(pids)}
    grid = write_grid(tmp_path / "g.yaml", tiny_nb, {"x": [1, 2, 3, 4]}, fixed)
    failed_file = run_dir(out) / f"{params_hash(fixed | {'x': 3})}.failed.json"
    env = ENV | {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    proc = _start_sweep(sweep_cmd(grid, out), env)
    try:
        _wait(lambda: sorted(records(out)) == [1, 2] and (pids / "3.pid").exists() and (pids / "4.pid").exists(),
              "runs 1 and 2 to finish and 3 and 4 to start")
        workers = []
        for attempt in (1, 2):
            time.sleep(0.5)                                      # run 3 is inside its gate loop
            kernel = int((pids / "3.pid").read_text())
            workers.append(_parent(kernel))
            assert workers[-1] != proc.pid and workers[-1] not in workers[:-1]
            (pids / "3.pid").unlink()
            os.kill(workers[-1], signal.SIGKILL)
            _wait(lambda: not _pid_alive(kernel), "the killed worker's kernel to exit", 30)
            if attempt == 1:
                _wait(lambda: (pids / "3.pid").exists(), "run 3 to start again")
        _wait(failed_file.exists, "run 3 to be reported failed")
        assert "KilledWorker" in json.loads(failed_file.read_text())["error"]
        assert sorted(records(out)) == [1, 2]
        assert_no_partial_files(out)
        gate.touch()
        text = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, text
    assert "4 runs, 0 already finished, 4 to run on a Dask LocalCluster of 2 worker(s)" in text, text
    assert "3 ok, 1 failed, 0 skipped" in text and re.search(r"\] FAILED .* x=3: .*KilledWorker", text), text
    assert sorted(records(out)) == [1, 2, 4]
    assert_no_partial_files(out)

    res = subprocess.run(sweep_cmd(grid, out), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and "4 runs, 3 already finished, 1 to run" in res.stdout, res.stdout + res.stderr
    recs = records(out)
    assert sorted(recs) == [1, 2, 3, 4] and all(r["results"]["square"] == x * x for x, r in recs.items())
    assert not failed_file.exists()
    assert_no_partial_files(out)


@needs_dask
@pytest.mark.slow
def test_sigterm_cancels_leaves_nothing_half_written_and_the_rerun_skips_what_finished(tmp_path, tiny_nb):
    """1 finishes, 2 fails (its traceback recorded, the others go on), 3 and 4 hang on a gate.  SIGTERM the
    sweep: the cluster and the kernels stop, only complete records remain.  Open the gate and re-run: 1 is
    skipped, 2, 3 and 4 run, and 1's record is untouched."""
    out, pids, gate = tmp_path / "runs", tmp_path / "pids", tmp_path / "gate"
    pids.mkdir()
    fixed = {"gate": str(gate), "fail_at": 2, "pid_dir": str(pids)}
    grid = write_grid(tmp_path / "g.yaml", tiny_nb, {"x": [1, 2, 3, 4]}, fixed)
    h = {x: params_hash(fixed | {"x": x}) for x in (1, 2, 3, 4)}
    proc = _start_sweep(sweep_cmd(grid, out), ENV)
    text = _kill_when(proc, signal.SIGTERM, lambda: sorted(records(out)) == [1] and (pids / "3.pid").exists()
                      and (pids / "4.pid").exists() and (run_dir(out) / f"{h[2]}.failed.json").exists(),
                      "run 1 to finish, 2 to fail, 3 and 4 to start")
    assert proc.returncode == 143 and "interrupted: cancelled the runs and stopped the Dask LocalCluster" in text, text
    assert re.search(r"\[\d/4\] FAILED .* x=2", text) and "deliberate failure at x 2" in text, text
    failed = json.loads((run_dir(out) / f"{h[2]}.failed.json").read_text())
    assert "RuntimeError: deliberate failure at x 2" in failed["error"]
    _assert_gone([pids / "3.pid", pids / "4.pid"])
    assert sorted(records(out)) == [1]
    assert_no_partial_files(out)
    mtime = (run_dir(out) / f"{h[1]}.json").stat().st_mtime_ns

    gate.touch()
    res = subprocess.run(sweep_cmd(grid, out), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 runs, 1 already finished, 3 to run" in res.stdout and "3 ok, 0 failed, 1 skipped" in res.stdout
    recs = records(out)
    assert sorted(recs) == [1, 2, 3, 4] and all(r["results"]["square"] == x * x for x, r in recs.items())
    assert (run_dir(out) / f"{h[1]}.json").stat().st_mtime_ns == mtime
    assert not (run_dir(out) / f"{h[2]}.failed.json").exists()
    assert_no_partial_files(out)


@needs_dask
@pytest.mark.slow
def test_a_worker_that_cannot_write_in_out_stops_the_sweep_before_submitting(tmp_path, tiny_nb, monkeypatch, capsys):
    """The start-up probe, against a scheduler given by address: a folder the worker cannot write in is one
    ValueError naming the worker, the folder and the shared-filesystem assumption.  A scheduler that does not
    answer is one line, and no output folder."""
    monkeypatch.setattr("dpmsched.executors.CONNECT_TIMEOUT", 1)
    grid = write_grid(tmp_path / "g.yaml", tiny_nb, {"x": [1]})
    assert main(["sweep", str(grid), "--executor", "dask", "--scheduler", "tcp://127.0.0.1:1",
                 "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dpmsched sweep: error: --scheduler tcp://127.0.0.1:1: no Dask scheduler answered"), err
    assert len(err.splitlines()) == 1 and not (tmp_path / "runs").exists()
    from distributed import LocalCluster

    from dpmsched.executors import DaskPool, probe_folder

    nb = tmp_path / "nb.ipynb"
    nb.write_text("{}")
    assert probe_folder(str(tmp_path), str(nb)) is None and not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "file").write_text("not a folder")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      host="127.0.0.1", dashboard_address=None) as cluster:
        pool = DaskPool(scheduler=cluster.scheduler_address)
        assert pool.where() == f"on the Dask cluster at {cluster.scheduler_address}"
        pool.start(4, log=lambda s: None)
        try:
            assert pool.slots() == 1
            pool.check(tmp_path, nb)                                    # writable: passes
            with pytest.raises(ValueError, match=r"Dask worker tcp://127\.0\.0\.1:\d+ cannot write in .*/file/nb "
                                                 r"\(NotADirectoryError.*a filesystem they share"):
                pool.check(tmp_path / "file" / "nb", nb)
            with pytest.raises(ValueError, match="cannot see the notebook"):
                pool.check(tmp_path, tmp_path / "missing.ipynb")
        finally:
            pool.close()


def test_without_the_extra_dask_is_one_line_naming_it(tmp_path, tiny_nb, monkeypatch, capsys):
    grid = write_grid(tmp_path / "g.yaml", tiny_nb, {"x": [1, 2]})
    monkeypatch.setitem(sys.modules, "distributed", None)          # import distributed -> ImportError
    assert main(["sweep", str(grid), "--executor", "dask", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'dpmsched[dask]'" in err, err
    assert err.startswith("dpmsched sweep: error: --executor dask needs dask.distributed")
    assert not (tmp_path / "runs").exists()                         # nothing written
    with pytest.raises(SystemExit) as e:
        main(["sweep", str(grid), "--scheduler", "tcp://127.0.0.1:8786", "--out", str(tmp_path / "runs")])
    assert e.value.code == 2
    assert "--scheduler needs --executor dask" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
