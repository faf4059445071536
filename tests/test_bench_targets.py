"""bench_schedules.issue_targets: the optimizer issue's three targets, judged per cell from the rows of a run —
(a) nothing below the limit by more than one paired SE, (b) the best bound closes ≥ 90 % and beats every
training-free peer, (c) auto beats every other method and is within 3 % of the limit."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_schedules import issue_targets, limit_starts  # noqa: E402

HAND, LIMIT = 0.20, 0.10


def _cell(errs, solver="euler", nfe=5, se=0.001):
    rows = []
    for m, e in errs.items():
        cl = (HAND - e) / (HAND - LIMIT)
        rows.append({"method": m, "solver": solver, "nfe": nfe, "err": e, "closure": cl,
                     "vs_limit": e - errs["direct"], "vs_limit_se": se, "opt_s": 1.0})
    return rows


BASE = {"karras": 0.30, "hand-tuned": HAND, "huang": 0.25, "bound-prop": 0.105, "bound-step": 0.12, "ots": 0.22,
        "gits": 0.15, "ays": 0.24, "auto": 0.102, "direct": LIMIT}


def _targets(*cells):
    return issue_targets({"toy2d-edm": {"rows": [r for c in cells for r in c]}}, models=("toy2d-edm",))["toy2d-edm"]


def test_every_target_met():
    t = _targets(_cell(BASE))
    assert t["cells"] == 1 and not t["limit_fails"] and not t["auto_fails"]
    (b,) = t["bound"]["euler"]
    assert b["method"] == "bound-prop" and b["met"] and abs(b["closure"] - 0.95) < 1e-12 and b["best_peer_err"] == 0.15


def test_a_method_below_the_limit_by_more_than_one_se_fails_a():
    t = _targets(_cell({**BASE, "gits": 0.098}))                        # 0.002 below, SE 0.001
    assert len(t["limit_fails"]) == 1 and "gits" in t["limit_fails"][0]
    assert not _targets(_cell({**BASE, "gits": 0.098}, se=0.003))["limit_fails"]   # within its SE: a tie


def test_a_bound_that_closes_little_or_loses_to_a_peer_fails_b():
    low = _targets(_cell({**BASE, "bound-prop": 0.13, "bound-step": 0.14}))["bound"]["euler"][0]
    assert low["closure"] < 0.9 and low["le_peers"] and not low["met"]
    peer = _targets(_cell({**BASE, "gits": 0.104}))["bound"]["euler"][0]
    assert not peer["le_peers"] and not peer["met"]


def test_auto_beaten_or_too_far_from_the_limit_fails_c():
    beaten = _targets(_cell({**BASE, "auto": 0.106}), _cell(BASE, nfe=8))["auto_fails"]
    assert len(beaten) == 1 and "NFE 5" in beaten[0] and "bound-prop" in beaten[0]
    far = _targets(_cell({**BASE, "auto": 0.104, "bound-prop": 0.105}))["auto_fails"]
    assert len(far) == 1 and "beaten" not in far[0]                     # 4 % above the limit, beats everyone


def test_limit_starts_names_the_start_and_whether_the_fit_moved_it():
    auto = {"method": "auto", "sigmas": [80.0, 1.0, 0.002]}
    hand = {"method": "hand-tuned", "sigmas": [80.0, 2.0, 0.002]}
    cell = {("auto", 4): auto, ("direct", 4): {"sigmas": [80.0, 1.0, 0.002], "limit": {"init": "schedule:auto"}},
            ("hand-tuned", 5): hand, ("direct", 5): {"sigmas": [80.0, 1.5, 0.002], "limit": {"init": "schedule:hand-tuned"}},
            ("direct", 6): {"sigmas": [80.0, 1.5, 0.002]}}                      # an old row without limit info
    assert limit_starts(cell, [4, 5, 6]) == {4: "auto (kept)", 5: "hand-tuned (moved)"}
    cell[("direct", 4)]["limit"]["refined"] = {"n": 512, "moved": True}
    assert limit_starts(cell, [4])[4] == "auto (kept; the refine on 512 latents moved it)"
    cell[("direct", 4)]["limit"]["refined"]["n_val"] = 1024
    assert limit_starts(cell, [4])[4] == "auto (kept; the refine on 512 latents, validated on 1024, moved it)"


def test_the_refined_limit_is_no_worse_on_its_validation_latents(tmp_path, monkeypatch):
    """fit_limit's refine stage starts from the first fit and keeps it unless a checkpoint does better on the same
    validation latents; both stages land in the limit cache, and a re-run reads them back unchanged."""
    import bench_schedules as B

    from dpmsched import Schedule
    from dpmsched.denoisers import model_range
    from dpmsched.models import load
    from dpmsched.optimize.direct import validation_teacher
    from dpmsched.optimize.teacher import endpoint_error

    monkeypatch.setattr(B, "LIMITS", tmp_path / "limits.json")
    model = load("toy2d-edm")
    cfg = {"n": 16, "grid_points": 16, "direct": {"n": 16, "iters": 3, "polish": 6, "n_val": 16, "val_seed": 3,
                                                  "refine": {"n": 32, "iters": 3, "polish": 6}}}
    others = {"karras": Schedule.karras(4, *model_range(model))}
    s, wall = B.fit_limit(model, "toy", cfg, "euler", 4, others)
    ref = s.meta["refined"]
    V = validation_teacher(model, 16, 3, 16)
    first = endpoint_error(model, Schedule(ref["first_sigmas"]), V.z, V.x[-1], "euler")
    assert endpoint_error(model, s, V.z, V.x[-1], "euler") <= first + 1e-12
    cells = B._read_limits()["cells"]
    assert set(cells) == {"toy|euler|4", "toy|euler|4|refine"} and cells["toy|euler|4|refine"]["settings"]["n"] == 32
    again, _ = B.fit_limit(model, "toy", cfg, "euler", 4, others)
    assert again.meta["cached"] and np.allclose(again.sigmas, s.sigmas, rtol=0, atol=0)


def test_recheck_scores_every_method_of_a_cell_on_fresh_latents():
    """--recheck: every stored schedule of a cell on fresh latents, paired against the limit (0 ± 0 for itself),
    rendered with the methods below the limit by more than one SE in bold; a cell not in the table is an error."""
    import json

    import bench_schedules as B
    import pytest

    res = {"toy2d-edm": json.loads((B.OUT / "schedules.json").read_text())["results"]["toy2d-edm"]}
    B.recheck(res, "toy2d-edm:euler:4", n=64, seed=4)
    per = res["toy2d-edm"]["recheck"]["cells"]["euler:4"]
    table = {r["method"] for r in res["toy2d-edm"]["rows"] if (r["solver"], r["nfe"]) == ("euler", 4)}
    assert set(per) == table and per["direct"]["vs_limit"] == 0 and per["direct"]["se"] == 0
    assert all(v["err"] > 0 and v["se"] >= 0 for v in per.values())
    md = "\n".join(B.recheck_md(res["toy2d-edm"], "toy2d-edm"))
    below = sum(v["vs_limit"] < -v["se"] for v in per.values())
    assert md.count("**") == 2 * below
    assert f"more than one SE in {int(below > 0)} of 1 cells" in md
    with pytest.raises(ValueError, match="no rows"):
        B.recheck(res, "toy2d-edm:euler:7", n=8, seed=4)
