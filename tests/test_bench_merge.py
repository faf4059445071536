"""bench_schedules --solvers: a run of some solvers keeps the other solvers' rows only when they were judged on the
same teacher and held-out latents (else they could not be compared), and records which run made which rows."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_schedules import merge_solvers  # noqa: E402

PROTO = {"teacher": {"n": 64, "grid_points": 64, "seed": 0}, "heldout": {"n": 512, "seed": 1}, "metric_name": "FD"}


def _entry(solvers, tag, **proto):
    return {**PROTO, **proto, "rows": [{"solver": s, "nfe": 5, "method": "gits", "tag": tag} for s in solvers],
            "variants": [{"solver": s, "nfe": 5, "variant": "v", "tag": tag} for s in solvers]}


def test_same_protocol_keeps_the_other_solvers_and_replaces_the_run_ones():
    old = {**_entry(["euler", "dpmpp_2m"], "old"), "solver_runs": {"euler": {"command": "a"}}}
    out = merge_solvers(old, _entry(["dpmpp_2m"], "new"), ["dpmpp_2m"], {"command": "b"})
    assert sorted((r["solver"], r["tag"]) for r in out["rows"]) == [("dpmpp_2m", "new"), ("euler", "old")]
    assert sorted((v["solver"], v["tag"]) for v in out["variants"]) == [("dpmpp_2m", "new"), ("euler", "old")]
    assert out["solver_runs"] == {"euler": {"command": "a"}, "dpmpp_2m": {"command": "b"}}


def test_another_protocol_drops_the_old_rows():
    old = _entry(["euler", "dpmpp_2m"], "old", heldout={"n": 128, "seed": 1})
    out = merge_solvers(old, _entry(["euler"], "new"), ["euler"], {"command": "b"})
    assert [(r["solver"], r["tag"]) for r in out["rows"]] == [("euler", "new")]
    assert out["solver_runs"] == {"euler": {"command": "b"}}
    assert merge_solvers(None, _entry(["euler"], "new"), ["euler"], {})["rows"][0]["tag"] == "new"
