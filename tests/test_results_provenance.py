"""The README's results block names the run that made each table: with rows of several solver runs merged into one
model entry (bench_schedules --solvers), the Euler table's line is the Euler run's command, not the last run's."""
import json

from dpmsched.results import headline_markdown, load_rows


def test_each_table_names_the_run_of_its_solver(tmp_path):
    rows = [{"method": m, "solver": s, "nfe": n, "err": e, "metric": 1.0}
            for s in ("euler", "unipc") for n in (4, 5) for m, e in (("karras", 0.2), ("auto", 0.1))]
    runs = {"euler": {"command": "bench --solvers euler", "git_commit": "aaa", "date": "d1"},
            "unipc": {"command": "bench --solvers unipc", "git_commit": "bbb", "date": "d2"}}
    entry = {**runs["unipc"], "metric_name": "ring NLL", "rows": rows, "solver_runs": runs}
    p = tmp_path / "schedules.json"
    p.write_text(json.dumps({"command": "x", "results": {"toy": entry}}))
    md = headline_markdown(*load_rows(p), nfes=(4, 5))
    assert "`bench --solvers euler` at commit aaa, d1" in md and "--solvers unipc" not in md
