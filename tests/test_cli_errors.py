"""Bad input through the command line: one line ``dpmsched CMD: error: …`` naming what was wrong, exit 2, no
traceback, and no output file created or changed.  ``--debug`` shows the traceback instead.

Classes of cases (counted in the README's reliability paragraph): bad argument values, bad files (missing,
binary, malformed JSON/YAML), bad checkpoints (config fields), bad schedules, unknown names.
"""
import json

import pytest

from dpmsched.cli import main

GRID_OK = "notebook: ../notebooks/01_theorem.ipynb\ngrid:\n  steps: [3]\n"


def _files(tmp_path):
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (tmp_path / "increasing.json").write_text(json.dumps({"sigmas": [1.0, 2.0, 3.0]}))
    (tmp_path / "nan.json").write_text('{"sigmas": [80.0, NaN, 0.002]}')
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    ck = tmp_path / "ck"
    ck.mkdir()
    cfg = json.loads((__import__("dpmsched.resources", fromlist=["x"]).data_dir() / "toy2d-edm" / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps(dict(cfg, dtype="float99")))
    (ck / "model.safetensors").write_bytes(
        (__import__("dpmsched.resources", fromlist=["x"]).data_dir() / "toy2d-edm" / "model.safetensors").read_bytes())
    ck2 = tmp_path / "ck2"
    ck2.mkdir()
    (ck2 / "config.json").write_text(json.dumps(dict(cfg, event_shape=[0])))
    (ck2 / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes())
    return tmp_path


SAMPLE = ["sample", "--model", "toy2d-ring", "--steps", "3", "--n", "4"]
OPT = ["optimize", "--model", "toy2d-ring", "--method", "karras", "--steps", "3"]
CASES = [
    # (class, argv (OUT = the output file, D = the tmp folder), text the message must contain)
    ("argument", ["sample", "--model", "toy2d-ring", "--steps", "-2", "--out", "OUT.npy"], "--steps"),
    ("argument", [*SAMPLE, "--n", "0", "--out", "OUT.npy"], "--n"),
    ("argument", [*SAMPLE, "--device", "tpu", "--out", "OUT.npy"], "--device"),
    ("argument", [*SAMPLE, "--out", "OUT.txt"], "--out must end in"),
    ("argument", [*SAMPLE, "--opt", "noequals", "--out", "OUT.npy"], "key=value"),
    ("argument", [*SAMPLE, "--opt", "eta=1.0", "--out", "OUT.npy"], "unknown option(s) ['eta'] for solver 'euler'"),
    ("argument", [*OPT, "--opt", "rho=fast", "--out", "OUT.json"], "rho='fast' of method 'karras' must be a float"),
    ("argument", ["elbo-table", "--n-train", "-3", "--out", "OUT.json"], "--n-train"),
    ("argument", [*OPT[:-2], "--steps", "5000", "--out", "OUT.json"], "pass --yes"),
    ("argument", ["sweep", "D/grid.yaml", "--cell-timeout", "-1", "--out", "D/runs"], "--cell-timeout"),
    ("argument", ["finetune", "--model", "toy2d-edm", "--steps", "2", "--device", "cuda:x", "--out", "D/ft"], "--device"),
    ("file", ["sample", "--model", "toy2d-ring", "--schedule", "D/garbage.json", "--out", "OUT.npy"], "garbage.json"),
    ("file", ["sample", "--model", "toy2d-ring", "--schedule", "D/binary.json", "--out", "OUT.npy"], "binary.json"),
    ("file", ["sample", "--model", "toy2d-ring", "--schedule", "D/missing.json", "--out", "OUT.npy"], "missing.json"),
    ("file", ["train", "--config", "D/bad.yaml"], "bad.yaml"),
    ("file", ["train", "--config", "D/binary.yaml"], "binary.yaml"),
    ("file", ["train", "--config", "D/none.yaml"], "none.yaml"),
    ("file", ["sweep", "D/bad.yaml", "--out", "D/runs"], "bad.yaml"),
    ("checkpoint", ["sample", "--model", "D/ck", "--steps", "3", "--out", "OUT.npy"], "'dtype'"),
    ("checkpoint", ["sample", "--model", "D/ck2", "--steps", "3", "--out", "OUT.npy"], "'event_shape'"),
    ("checkpoint", ["optimize", "--model", "D/ck", "--method", "karras", "--steps", "3", "--out", "OUT.json"], "'dtype'"),
    ("schedule", ["sample", "--model", "toy2d-ring", "--schedule", "D/increasing.json", "--out", "OUT.npy"], "strictly decreasing"),
    ("schedule", ["sample", "--model", "toy2d-ring", "--schedule", "D/nan.json", "--out", "OUT.npy"], "finite"),
    ("name", ["sample", "--model", "nope", "--steps", "3", "--out", "OUT.npy"], "unknown model 'nope'"),
    ("name", ["sample", "--model", "toy2d-ring", "--solver", "rk45", "--steps", "3", "--out", "OUT.npy"], "unknown solver 'rk45'"),
    ("name", ["sample", "--model", "toy2d-ring", "--schedule", "karas", "--steps", "3", "--out", "OUT.npy"], "unknown schedule 'karas'"),
    ("name", ["optimize", "--model", "toy2d-ring", "--method", "gits", "--solver", "foo", "--steps", "3", "--out", "OUT.json"], "unknown solver 'foo'"),
    ("name", ["optimize", "--model", "toy2d-ring", "--method", "magic", "--steps", "3", "--out", "OUT.json"], "magic"),
    ("name", ["frobnicate"], "unknown command 'frobnicate'"),
    ("name", ["report", "D/runs-ok", "--keys", "nosuchkey"], "unknown result key(s) ['nosuchkey']"),
]


@pytest.fixture
def runs_ok(tmp_path):
    """A folder with one finished run record of notebook 01 (for the report command)."""
    rec = {"hash": "abc", "notebook": "01_theorem.ipynb", "status": "ok", "parameters": {"steps": 3},
           "results": {"err": 0.1}, "seconds": 1.0}
    d = tmp_path / "runs-ok" / "01_theorem"
    d.mkdir(parents=True)
    (d / "abc.json").write_text(json.dumps(rec))
    (tmp_path / "grid.yaml").write_text(GRID_OK)
    return tmp_path


@pytest.mark.parametrize("kind,argv,text", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_user_errors_are_one_line_and_leave_nothing(tmp_path, runs_ok, capsys, kind, argv, text):
    _files(tmp_path)
    out = tmp_path / "out"
    argv = [a.replace("OUT", str(out)).replace("D/", f"{tmp_path}/") for a in argv]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    try:
        rc = main(argv)
    except SystemExit as e:                                     # argparse: usage line + error line, exit 2
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, (rc, err)
    assert text in err, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) <= 2 and "error:" in lines[-1], lines
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing created (no output, no temporaries)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        main(["sample", "--model", "nope", "--steps", "3", "--out", str(tmp_path / "x.npy"), "--debug"])


def test_readme_counts_these_cases():
    from collections import Counter
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    n = Counter(c[0] for c in CASES)
    assert (f"({n['argument']} bad arguments, {n['file']} bad files,\n{n['checkpoint']} bad checkpoints, "
            f"{n['schedule']} bad schedules, {n['name']} unknown names; {len(CASES)} cases)") in readme
