"""Where a sweep's runs execute: a local process pool (``--executor local``) or a Dask cluster (``dask``).

:func:`dpmsched.sweep.run_sweep` owns everything a run means — which runs are still to do, the one task
that runs a notebook and writes its record, the progress bar, the log, Ctrl-C — and hands the task to one
of these executors, which only start workers, submit, give back futures as they complete, and stop:

* :class:`LocalPool` — ``--workers`` spawned processes on this machine (``concurrent.futures``); each
  worker exits when the sweep process is gone, and on Ctrl-C / SIGTERM the sweep terminates them (their
  kernels follow: ipykernel polls its parent).
* :class:`DaskPool` — each run is a task on a ``dask.distributed`` cluster: a ``LocalCluster`` of
  ``--workers`` processes × 1 thread bound to 127.0.0.1, or the user's scheduler (``--scheduler
  tcp://HOST:PORT``, e.g. from ``dask-jobqueue`` on Slurm).  Workers write the records themselves, so
  the output folder must be on a filesystem the workers share with this machine; :meth:`DaskPool.check`
  asks every worker to write and remove a file there (and to find the notebook and papermill) before
  anything is submitted.  A worker that dies mid-run is replaced and its task re-run by the scheduler
  (``distributed.scheduler.allowed-failures`` times, then the run is reported failed).  On Ctrl-C /
  SIGTERM the futures are cancelled and a cluster of our own is closed, which ends its workers and
  their kernels; on the user's cluster a notebook that already runs cannot be stopped (Dask cannot
  interrupt a running task): it runs to its end and writes a complete record, which the next sweep skips.

dask is optional (``pip install 'dpmsched[dask]'``) and imported only by :class:`DaskPool`.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["EXECUTORS", "make_executor", "LocalPool", "DaskPool", "probe_folder", "DASK_EXTRA"]

#: what to install for ``--executor dask``
DASK_EXTRA = "pip install 'dpmsched[dask]'"
#: seconds to wait for the user's scheduler to answer
CONNECT_TIMEOUT = 20


def _watch_parent(parent_pid: int) -> None:
    """Pool-worker initializer: exit when the sweep process is gone (killed with no chance to clean up).

    The worker's kernel follows by itself (ipykernel polls its own parent).
    """
    def poll():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=poll, daemon=True).start()


class LocalPool:
    """``workers`` spawned processes on this machine."""

    def __init__(self, workers: int = 2):
        self.workers, self.pool = workers, None

    def where(self) -> str:
        return f"with {self.workers} worker(s)"

    def start(self, n_tasks: int, log) -> None:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        self.workers = min(self.workers, n_tasks)
        self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"),
                                        initializer=_watch_parent, initargs=(os.getpid(),))

    def check(self, folder: Path, notebook: Path, log=print) -> None:
        """Nothing to check: the workers are processes of this machine."""

    def slots(self) -> int:
        return self.workers

    def submit(self, key: str, fn, *args):
        return self.pool.submit(fn, *args)

    def as_completed(self, futures):
        from concurrent.futures import as_completed

        return as_completed(futures)

    def stop(self) -> str:
        """Kill the workers now (their kernels follow); returns what was stopped, for the log."""
        procs = list((getattr(self.pool, "_processes", None) or {}).values())
        # ProcessPoolExecutor has no public "kill the workers": without this, shutdown would wait
        # for every running notebook to end
        for proc in procs:
            proc.terminate()
        return f"stopping {len(procs)} worker(s)"

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def probe_folder(folder: str, notebook: str) -> str | None:
    """Dask-worker task: write, read back and remove a file in ``folder``, and find ``notebook`` and papermill.

    Returns None when all is well, else what went wrong (one line).  The file is named like an atomic
    write's temporary, so a probe killed halfway leaves nothing the next sweep does not remove.
    """
    if not Path(notebook).is_file():
        return f"cannot see the notebook {notebook}"
    if importlib.util.find_spec("papermill") is None:
        return "papermill is not installed in the worker's environment"
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dpmsched-probe.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(socket.gethostname())
            ok = Path(tmp).read_text() == socket.gethostname()
        finally:
            os.unlink(tmp)
    except OSError as e:
        return f"cannot write in {folder} ({type(e).__name__}: {e.strerror or e})"
    return None if ok else f"wrote a file in {folder} and read back something else"


class DaskPool:
    """Each run a task on a ``dask.distributed`` cluster: a LocalCluster on 127.0.0.1, or ``scheduler``."""

    def __init__(self, workers: int = 2, scheduler: str | None = None):
        try:
            import distributed  # noqa: F401  (only to fail early, before any output is written)
        except ImportError:
            raise ImportError(f"--executor dask needs dask.distributed: {DASK_EXTRA}") from None
        self.workers, self.scheduler = workers, scheduler
        self.cluster = self.client = None
        self.futures = []
        if scheduler:       # connect now: a wrong address fails before any output folder is made
            from distributed import Client

            try:
                self.client = Client(scheduler, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as e:
                raise ValueError(f"--scheduler {scheduler}: no Dask scheduler answered ({type(e).__name__}: {e})") from None

    def where(self) -> str:
        if self.scheduler:
            return f"on the Dask cluster at {self.scheduler}"
        return f"on a Dask LocalCluster of {self.workers} worker(s) on 127.0.0.1"

    def start(self, n_tasks: int, log) -> None:
        from distributed import Client, LocalCluster

        if not self.scheduler:
            # processes: one papermill run per worker process, as in the local pool; nothing listens
            # beyond this machine
            self.cluster = LocalCluster(n_workers=min(self.workers, n_tasks), threads_per_worker=1, processes=True,
                                        host="127.0.0.1", dashboard_address="127.0.0.1:0")
            self.client = Client(self.cluster)
        link = self.dashboard()
        if link:
            note = "" if importlib.util.find_spec("bokeh") else "  (its pages need bokeh: pip install bokeh)"
            log(f"Dask dashboard: {link}{note}")

    def dashboard(self) -> str | None:
        try:
            return self.client.dashboard_link
        except (KeyError, AttributeError):    # a scheduler without a dashboard
            return None

    def check(self, folder: Path, notebook: Path, log=print) -> None:
        """Every worker must write in ``folder`` and see ``notebook`` (a shared filesystem): ValueError if not.

        On the user's cluster it first waits for one worker (Slurm worker jobs may still be queued)."""
        if not self.client.nthreads():
            log(f"waiting for the first worker to join the Dask cluster at {self.scheduler} ...")
            self.client.wait_for_workers(1)
        try:
            answers = self.client.run(probe_folder, str(folder), str(notebook))
        except Exception as e:   # e.g. the workers cannot import dpmsched
            raise ValueError(f"the Dask workers cannot run dpmsched's start-up check ({type(e).__name__}: {e}); "
                             "install dpmsched and papermill in the workers' environment") from None
        bad = {w: msg for w, msg in answers.items() if msg}
        if bad:
            w, msg = next(iter(sorted(bad.items())))
            raise ValueError(f"--out {folder.parent}: Dask worker {w} {msg}; the workers write the records "
                             f"themselves, so --out must be on a filesystem they share with this machine "
                             f"(README 'Batch runs'){f' ({len(bad) - 1} other worker(s) too)' if len(bad) > 1 else ''}")

    def slots(self) -> int:
        try:
            return sum(self.client.nthreads().values())
        except Exception:     # the scheduler is going away: only the progress bar uses this
            return 0

    def submit(self, key: str, fn, *args):
        # a fixed key per run and output folder: submitting a run the cluster already holds (another sweep
        # of the same grid into the same folder on the same scheduler) joins that task instead of a second copy
        fut = self.client.submit(fn, *args, key=key, pure=False)
        self.futures.append(fut)
        return fut

    def as_completed(self, futures):
        from distributed import as_completed

        return as_completed(list(futures))

    def stop(self) -> str:
        """Cancel every future; a LocalCluster of our own is closed, which ends its workers and kernels."""
        if self.client is not None and self.futures:
            self.client.cancel(self.futures, force=True)
        if self.cluster is not None:
            self.close()
            return "cancelled the runs and stopped the Dask LocalCluster"
        return "cancelled the runs (a notebook already running on a worker runs to its end and writes its record)"

    def close(self) -> None:
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception:       # closing twice, or a scheduler already gone
                    pass
        self.client = self.cluster = None


#: ``--executor`` name → class
EXECUTORS = {"local": LocalPool, "dask": DaskPool}


def make_executor(name: str, workers: int = 2, scheduler: str | None = None):
    """The executor ``name`` (``local`` or ``dask``); ValueError for another name or a scheduler without dask."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; expected one of {sorted(EXECUTORS)}")
    if scheduler and name != "dask":
        raise ValueError("--scheduler needs --executor dask")
    return DaskPool(workers, scheduler) if name == "dask" else LocalPool(workers)
