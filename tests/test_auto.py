"""``method="auto"``: never worse than any of its candidates on the validation latents (by construction, checked
for several models, solvers and step counts), the polish only moves when validation improves, and the command
prints the held-out comparison against Karras-ρ7."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpmsched.cli import main
from dpmsched.models import load
from dpmsched.optimize import optimize
from dpmsched.optimize.auto import candidates
from dpmsched.optimize.teacher import endpoint_error, teacher

SMALL = {"n": 24, "grid_points": 24, "n_val": 24, "polish": 30}


@settings(max_examples=6, deadline=None)
@given(model=st.sampled_from(["toy2d-ring", "gauss1d"]), solver=st.sampled_from(["euler", "dpmpp_2m", "heun"]),
       steps=st.integers(2, 5), val_seed=st.integers(1, 9), batch=st.sampled_from([0, 8]),
       val_grid=st.sampled_from([0, 12]))
def test_auto_is_never_worse_than_its_candidates_on_validation(model, solver, steps, val_seed, batch, val_grid):
    m = load(model)                                             # batch 8: Adam on mini-batches of the 24 latents
    s = optimize(m, "auto", steps, solver, val_seed=val_seed, batch=batch, val_grid_points=val_grid, **SMALL)
    V = teacher(m, n=SMALL["n_val"], grid_points=val_grid or SMALL["grid_points"], seed=val_seed)  # 12: coarser
    assert s.meta["val_grid_points"] == (val_grid or SMALL["grid_points"])
    v = endpoint_error(m, s, V.z, V.x[-1], solver)
    assert v == pytest.approx(s.meta["val_rmse"], rel=1e-12)
    assert v <= min(s.meta["candidates"].values()) + 1e-15
    assert set(s.meta["candidates"]) == set(candidates(m, steps, solver, n=24, grid_points=24))
    assert s.steps == steps and s.sigma_max == 80.0 and s.name == "auto"
    if not s.meta["polished"]:                                  # no polish checkpoint won: the candidate itself
        assert s.meta["val_rmse"] == s.meta["candidates"][s.meta["choice"]]


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m"])
def test_more_starts_are_never_worse_on_validation(solver):
    """starts=2 polishes the two best candidates; the first is starts=1's run, so the result can only improve."""
    one = optimize("toy2d-ring", "auto", 4, solver, **SMALL)
    two = optimize("toy2d-ring", "auto", 4, solver, starts=2, **SMALL)
    assert two.meta["starts"] == 2 and one.meta["starts"] == 1
    assert two.meta["val_rmse"] <= one.meta["val_rmse"] + 1e-15
    if two.meta["choice"] == one.meta["choice"]:
        assert two.sigmas.tolist() == one.sigmas.tolist()
    with pytest.raises(ValueError, match="starts=0"):
        optimize("toy2d-ring", "auto", 4, solver, starts=0, **SMALL)


def test_auto_refuses_a_negative_batch_and_a_validation_grid_of_two_points():
    with pytest.raises(ValueError, match="batch must be"):
        optimize(load("gauss1d"), "auto", 3, batch=-1, **SMALL)
    with pytest.raises(ValueError, match="val_grid_points must be 0"):
        optimize(load("gauss1d"), "auto", 3, val_grid_points=2, **SMALL)


def test_auto_refuses_validating_on_its_training_latents():
    with pytest.raises(ValueError, match="val_seed must differ"):
        optimize("toy2d-ring", "auto", 3, n=8, grid_points=12, seed=4, val_seed=4)


def test_auto_candidates_include_the_order_matched_and_first_order_bounds_for_multistep():
    names = set(candidates(load("toy2d-ring"), 4, "dpmpp_2m", n=8, grid_points=16))
    assert {"bound-prop", "bound-prop-order1", "gits", "karras-7", "quadratic-t"} <= names
    assert "bound-prop-order1" not in candidates(load("toy2d-ring"), 4, "euler", n=8, grid_points=16)


def test_cli_auto_prints_the_heldout_comparison(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["optimize", "--model", "toy2d-ring", "--method", "auto", "--steps", "4", "--out", str(out),
                 "--opt", "n=24", "--opt", "grid_points=24", "--opt", "n_val=24", "--opt", "polish=20"]) == 0
    err = capsys.readouterr().err
    assert "held-out (256 latents, seed 1), euler with 4 steps: auto RMSE" in err and "Karras-rho7" in err
    assert re.search(r"chosen from [\w.-]+(, polished)?; \d+\.\d s", err), err      # and its wall time
    assert out.is_file()
