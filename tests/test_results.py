"""The benchmark table reader and the README results section (dpmsched.results)."""
import json

import pytest

from dpmsched import results as R
from dpmsched.cli.results import main as cli_results


def _rows():
    rows = []
    for nfe, k, g in [(4, 0.4, 0.2), (5, 0.3, 0.12), (10, 0.1, 0.05)]:
        rows += [{"model": "m", "solver": "euler", "nfe": nfe, "steps": nfe, "method": "karras", "error": k, "fd": 10 * k},
                 {"model": "m", "solver": "euler", "nfe": nfe, "steps": nfe, "method": "gits", "error": g, "fd": None}]
    rows.append({"model": "m", "solver": "dpmpp_2m", "nfe": 5, "steps": 5, "method": "karras", "error": 9.0})
    return rows


def test_pivot_selects_model_and_solver():
    tab = R.pivot(_rows(), "error", "m", "euler")
    assert tab == {"karras": {4: 0.4, 5: 0.3, 10: 0.1}, "gits": {4: 0.2, 5: 0.12, 10: 0.05}}
    assert R.pivot(_rows(), "error", "m", "dpmpp_2m") == {"karras": {5: 9.0}}
    assert R.pivot(_rows(), "fd", "m", "euler") == {"karras": {4: 4.0, 5: 3.0, 10: 1.0}}


def test_pivot_markdown_ratios_and_order():
    md = R.pivot_markdown(_rows(), "error", "m", "euler", nfes=(4, 5, 6, 10))
    lines = md.splitlines()
    assert lines[0] == "| method | NFE 4 | NFE 5 | NFE 6 | NFE 10 |"
    assert lines[2].startswith("| gits | 0.2 (0.50×) | 0.12 (0.40×) | — | 0.05 (0.50×)")   # best mean ratio first
    assert lines[3].startswith("| karras | 0.4 (1.00×)")


def test_load_rows_file_and_sweep_folder(tmp_path):
    f = tmp_path / "b.json"
    f.write_text(json.dumps({"command": "python x.py", "commit": "abc", "rows": _rows()}))
    rows, info = R.load_rows(f)
    assert len(rows) == 7 and info == {"command": "python x.py", "commit": "abc"}
    d = tmp_path / "runs"
    d.mkdir()
    rec = {"notebook": "07_benchmark.ipynb", "parameters": {"steps": 4}}       # as dpmsched.sweep writes them
    (d / "aa.json").write_text(json.dumps({**rec, "hash": "aa", "status": "ok", "results": {"rows": _rows()[:2]}}))
    (d / "bb.failed.json").write_text(json.dumps({**rec, "hash": "bb", "status": "failed", "error": "boom"}))
    rows, info = R.load_rows(d)
    assert len(rows) == 2 and info["runs"] == 1


def test_load_rows_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="make bench"):
        R.load_rows(tmp_path / "missing.json")
    f = tmp_path / "b.json"
    f.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="no benchmark rows"):
        R.load_rows(f)
    f.write_text(json.dumps({"rows": [{"model": "m", "nfe": 5}]}))
    with pytest.raises(ValueError, match=r"row 0 lacks \['solver', 'method', 'error'\]"):
        R.load_rows(f)


def test_update_readme_between_markers(tmp_path):
    p = tmp_path / "README.md"
    p.write_text(f"# x\n\n## Results\n{R.BEGIN}\nold\n{R.END}\n\n## After\ntext\n")
    assert R.update_readme(p, "new table") is True
    assert p.read_text() == f"# x\n\n## Results\n{R.BEGIN}\nnew table\n{R.END}\n\n## After\ntext\n"
    assert R.update_readme(p, "new table") is False
    p.write_text("# no markers\n")
    with pytest.raises(ValueError, match="lacks the markers"):
        R.update_readme(p, "t")
    assert p.read_text() == "# no markers\n"                  # nothing lost


def test_cli_writes_section_figure_and_checks(tmp_path):
    f = tmp_path / "b.json"
    f.write_text(json.dumps({"command": "python benchmarks/bench_schedules.py", "rows": _rows()}))
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{R.BEGIN}\n{R.END}\nb\n")
    fig = tmp_path / "h.png"
    argv = ["--bench", str(f), "--readme", str(readme), "--figure", str(fig)]
    assert cli_results(argv + ["--check"]) == 1
    assert cli_results(argv) == 0
    text = readme.read_text()
    assert "python benchmarks/bench_schedules.py" in text and "| gits | 0.2 (0.50×)" in text
    assert "Fréchet-digits" in text and fig.stat().st_size > 1000
    assert cli_results(argv + ["--check"]) == 0


def test_readme_results_section_is_generated_from_the_stored_benchmark():
    """The README's numbers are the stored benchmark's: rerun `python -m dpmsched results` after `make bench`."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bench = root / "benchmarks" / "schedules.json"
    if not bench.exists():
        pytest.skip("no stored benchmark yet")
    assert cli_results(["--bench", str(bench), "--readme", str(root / "README.md"), "--check"]) == 0
