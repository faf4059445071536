"""Notebook checks: stored without outputs, typed parameters, papermill runs with non-default parameters."""
import json
from pathlib import Path

import nbformat
import pytest

from dpmsched.batch import run_notebook

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9]*.ipynb"))

#: the smallest (fastest) non-default parameters of each notebook, and a results key that must appear
SMALL = {
    "01_theorem.ipynb": ({"steps": 3, "rho": 3.0, "mixture": "grid", "n_samples": 64, "gauss_steps": 5,
                          "data_std": 1.0, "seed": 1}, "bound_optimal"),
    "06_sa_solver.ipynb": ({"nfe_list": "4,8", "tau_list": "0.0,1.0", "n_samples": 64, "noise_seeds": 1,
                            "predictor_order": 2, "corrector_order": 2, "seed": 1}, "sw_train"),
    "02_dp_baseline.ipynb": ({"model": "digits-ddpm", "ks": "2,4", "candidates": 8, "n_train": 128, "n_test": 128,
                            "sample_k": 4, "n_samples": 64, "cache_dir": "", "seed": 1}, "bits_per_dim"),
    "05_skip_tuning.ipynb": ({"nfe_low": 2, "nfe_high": 3, "rho_points": 2, "n_samples": 32, "n_loss": 32,
                              "loss_sigmas": 2, "opt_trajectories": 8, "per": "level", "seed": 1},
                             "loss_worse_and_samples_better"),
    "03_error_bound.ipynb": ({"steps": 4, "nfes": "4", "n_teacher": 32, "grid_points": 40, "n_heldout": 64,
                              "direct_iters": 5, "direct_polish": 10, "seed": 1}, "held_out_err"),
    "07_benchmark.ipynb": ({"methods": "karras,huang,bound-prop,gits", "n_eval": 64, "steps": 4, "own_steps": 3,
                            "seed": 1}, "rows"),
    "08_mnist_guidance.ipynb": ({"steps": 4, "w_list": "0,2", "per_class": 1, "rho_list": "5,7", "n_err": 4,
                                 "ref_steps": 4, "seed": 1}, "class_accuracy"),
    "04_finetuning.ipynb": ({"steps": 3, "rounds": 1, "iters": 5, "batch": 16, "phase1_n": 8, "phase1_grid": 16,
                             "eval_samples": 100, "other_nfe": 4, "compare_dsm": False, "seed": 1}, "distill_rounds"),
}


def test_every_notebook_has_small_parameters():
    assert {p.name for p in NOTEBOOKS} <= set(SMALL), "add the new notebook to SMALL"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        if "NBVAL_CHECK_OUTPUT" in c.source:
            continue
        assert not c.get("outputs"), f"{path.name}: a cell has stored outputs:\n{c.source[:80]}"
        assert c.get("execution_count") is None, f"{path.name}: a cell has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_parameters_cell_is_typed_and_commented(path):
    import papermill as pm

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert "check_parameters(globals()" in code[1].source
    params = pm.inspect_notebook(str(path))
    assert {"results_json", "figures_dir"} <= set(params)
    for name, p in params.items():
        assert p["inferred_type_name"] in {"int", "float", "str", "bool"}, (name, p)
        assert p["help"].strip(), f"parameter {name} has no comment"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_with_small_parameters(path, tmp_path):
    params, key = SMALL[path.name]
    for _attempt in range(2):
        res = run_notebook(path, tmp_path / path.name, params, results_json=tmp_path / "r.json", cell_timeout=300)
        # a kernel that stops answering (seen twice, only on an overloaded machine: client and kernel both idle)
        # is an infrastructure fault, not a notebook error: the cell timeout turns the hang into an error, and
        # the run is tried once more; any error of the notebook itself fails at once
        if not (res["error"] and ("CellTimeoutError" in res["error"] or "DeadKernelError" in res["error"])):
            break
    assert res["error"] is None, res["error"]
    assert key in res["results"]
    assert json.loads((tmp_path / "r.json").read_text()) == res["results"]


@pytest.mark.slow
def test_papermill_rejects_bad_parameters(tmp_path):
    path = NOTEBOOKS[0]
    res = run_notebook(path, tmp_path / "a.ipynb", {"steps": "5"})
    assert res["error"] and "parameter 'steps' must be int, got str" in res["error"]
    res = run_notebook(path, tmp_path / "b.ipynb", {"stepz": 5})
    assert res["error"] and "unknown parameter(s) ['stepz']" in res["error"]


# --- worked solutions and the student copies (make student) ---------------------------------------------------------

def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_has_a_worked_solution_right_after_the_list(path):
    """The exercise list is followed by cells tagged "solution", one "**Solution k.**" per exercise k."""
    import re

    nb = nbformat.read(path, as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Exercises" in c.source)
    exercises = [int(k) for k in re.findall(r"^(\d+)\. ", nb.cells[i].source.split("## Exercises", 1)[1], flags=re.M)]
    assert exercises == list(range(1, len(exercises) + 1)) and len(exercises) >= 4, exercises
    assert "solution" in _tags(nb.cells[i + 1]), "the cell after the exercises must be a solution"
    sol = [c for c in nb.cells if "solution" in _tags(c)]
    solved = [int(k) for c in sol if c.cell_type == "markdown" for k in re.findall(r"\*\*Solution (\d+)\.\*\*", c.source)]
    assert solved == exercises, (solved, exercises)
    assert any(c.cell_type == "code" and "assert" in c.source for c in sol), "solutions assert what they claim"
    first, last = nb.cells.index(sol[0]), nb.cells.index(sol[-1])
    assert all("solution" in _tags(c) for c in nb.cells[first:last + 1]), "the solution cells form one block"
    assert "solution" not in _tags(nb.cells[-1]), "the results cell comes after the solutions"


def test_student_copies_have_no_solution_and_keep_every_other_cell(tmp_path):
    """`make student` (python -m dpmsched student --out DIR notebooks...): no solution cell is left, every other
    cell is kept unchanged and in order, and the copies are valid notebooks."""
    import subprocess
    import sys

    root = NB_DIR.parent
    assert "-m dpmsched student --out $(STUDENT_DIR) $(NOTEBOOKS)" in (root / "Makefile").read_text()
    out = tmp_path / "student"
    r = subprocess.run([sys.executable, "-m", "dpmsched", "student", "--out", str(out), *map(str, NOTEBOOKS)],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for path in NOTEBOOKS:
        full, student = nbformat.read(path, as_version=4), nbformat.read(out / path.name, as_version=4)
        nbformat.validate(student)
        assert not any("solution" in _tags(c) for c in student.cells)
        kept = [c for c in full.cells if "solution" not in _tags(c)]
        assert [(c.cell_type, c.source, c.metadata) for c in student.cells] == \
               [(c.cell_type, c.source, c.metadata) for c in kept]
        assert len(student.cells) < len(full.cells)


@pytest.mark.slow
def test_a_student_copy_runs(tmp_path):
    """Removing the solutions leaves a notebook that runs (notebook 01, small parameters)."""
    from dpmsched.batch import student_notebook

    path = NB_DIR / "01_theorem.ipynb"
    copy = tmp_path / path.name
    assert student_notebook(path, copy) > 0
    params, key = SMALL[path.name]
    res = run_notebook(copy, tmp_path / "out.ipynb", params, results_json=tmp_path / "r.json", cwd=NB_DIR)
    assert res["error"] is None, res["error"]
    assert key in res["results"]
