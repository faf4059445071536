"""The package works when installed, not only from a checkout: build the wheel, install it (non-editable) into a
fresh virtual environment, and from another folder run a command on a shipped model and a notebook that reads
the shipped benchmark tables.

The fresh venv has no pip and no site packages of its own; it sees the test environment's dependencies
(torch, numpy, …) through one ``.pth`` line, and the wheel is installed into it with this environment's pip
(``pip --python``).  The check that matters: ``dpmsched`` is imported from the fresh venv, not from the checkout.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, cwd, timeout=300, env=None):
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env=env or dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _tracked_copy(dst: Path) -> Path:
    """The files git tracks (and untracked, not ignored ones) copied to ``dst``: a clean source tree to build."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to build the wheel from")
    tmp = tmp_path_factory.mktemp("wheel")
    src = _tracked_copy(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src], tmp)
    wheel = next((tmp / "dist").glob("dpmsched-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp)
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).stdout.strip())
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")   # torch & co., not dpmsched
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
          wheel], tmp)
    work = tmp / "elsewhere"
    work.mkdir()
    return py, work


def test_installed_package_is_the_wheel_and_finds_its_shipped_files(installed):
    py, work = installed
    code = ("import dpmsched, dpmsched.resources as r, dpmsched.checkpoints as c; "
            "print(dpmsched.__file__); print(r.data_dir()); print(r.benchmarks_dir()); print(c.shipped_models())")
    lines = _run([py, "-c", code], work).stdout.splitlines()
    venv = py.parents[1]
    assert all(Path(p).is_relative_to(venv) for p in lines[:3]), lines       # not the checkout
    assert (Path(lines[2]) / "schedules.json").is_file()
    assert {"digits-edm", "digits-classifier", "toy2d-edm", "digits-ddpm"} <= set(eval(lines[3]))


def test_installed_command_optimizes_for_a_shipped_model(installed):
    py, work = installed
    out = work / "s.json"
    _run([py, "-m", "dpmsched", "optimize", "--model", "digits-edm", "--method", "karras", "--steps", "5",
          "--out", out], work)
    s = json.loads(out.read_text())
    assert s["name"] == "karras" and len(s["sigmas"]) == 6 and s["sigmas"][0] == 80.0
    bad = subprocess.run([py, "-m", "dpmsched", "optimize", "--model", "nope", "--method", "karras", "--steps", "5"],
                         cwd=work, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown model 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_installed_notebook_runs_outside_the_repository(installed):
    """Notebook 07 reads the shipped benchmark table and a shipped model; copied to a folder with no checkout."""
    py, work = installed
    nb = work / "07_benchmark.ipynb"
    shutil.copy(ROOT / "notebooks" / "07_benchmark.ipynb", nb)
    code = ("import papermill as pm; pm.execute_notebook('07_benchmark.ipynb', 'out.ipynb', kernel_name='python3', "
            "parameters={'methods': 'karras,gits,bound-prop', 'n_eval': 64}, progress_bar=False)")
    env = dict(os.environ, OMP_NUM_THREADS="1", JUPYTER_PATH=str(work / "jupyter"),
               PATH=f"{py.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    _run([py, "-c", code], work, timeout=600, env=env)
    text = (work / "out.ipynb").read_text()
    source = text.split("rows from", 1)[1][:400]                 # the kernel read the wheel's copy of the table
    assert str(py.parents[1]) in source and str(ROOT) not in source, source
