"""The benchmark table: read measured rows, pivot them, plot them, and write the README's results section.
(notebook 07; the command is :mod:`dpmsched.cli.results`)

A *row* is one measured schedule::

    {"model": "digits-edm", "solver": "euler", "nfe": 5, "steps": 5, "method": "gits",
     "error": 0.114,      # RMSE (data units) of the solver's output vs the accurate solve of the same latents
     "fd": 21.3,          # Fréchet-digits of the samples (digits models only; else absent/None)
     "seconds": 3.2}      # optimizer wall time

Rows come from the stored benchmark (``benchmarks/schedules.json``, written by
``benchmarks/bench_schedules.py``) or from the result files of a sweep of notebook 03; both are read by
:func:`load_rows`.  Everything here only reads and formats: the numbers are measured elsewhere.

``python -m dpmsched results`` regenerates the README section between the markers
``<!-- results:begin -->`` and ``<!-- results:end -->`` and the figure ``benchmarks/headline.png``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .files import atomic_write_text
from .report import load_records

__all__ = ["load_rows", "pivot", "pivot_markdown", "headline_markdown", "headline_figure", "update_readme",
           "BEGIN", "END"]

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
HEADLINE_NFES = (4, 5, 6, 10)
_KEYS = ("model", "solver", "nfe", "method", "error")


def _check_rows(rows: list[dict], source) -> list[dict]:
    if not rows:
        raise ValueError(f"{source}: no benchmark rows found")
    for i, r in enumerate(rows):
        missing = [k for k in _KEYS if k not in r]
        if missing:
            raise ValueError(f"{source}: row {i} lacks {missing}; a row needs {list(_KEYS)}")
    return rows


def _bench_rows(d: dict) -> list[dict]:
    """Rows of ``benchmarks/schedules.json`` (``{"results": {model: {"metric_name", "rows": [{"method",
    "solver", "nfe", "err", "metric", ...}]}}}``) in the common form: ``err`` → ``error``; ``metric`` →
    ``fd`` for the digits models (metric_name "FD-digits"), else kept as ``metric``."""
    rows = []
    for model, res in d["results"].items():
        is_fd = str(res.get("metric_name", "")).startswith("FD")
        for r in res.get("rows", []):
            row = {"model": model, "steps": r.get("steps", r.get("nfe")), **r}
            if "err" in row and "error" not in row:
                row["error"] = row.pop("err")
            if is_fd and "metric" in row:
                row["fd"] = row.pop("metric")
            rows.append(row)
    return rows


def load_rows(source) -> tuple[list[dict], dict]:
    """(rows, info) from the stored benchmark ``benchmarks/schedules.json``, from a JSON file holding
    ``{"rows": [...]}`` in the common form, or from a folder of sweep results (each run's results JSON
    holding ``"rows"``, as notebook 07 writes them).  ``info``: the file's top-level scalars (command,
    commit, machine, date), or for a folder the number of runs read.
    Raises FileNotFoundError for a missing source and ValueError for one without valid rows."""
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"no benchmark results at {p}: run `make bench` (or a sweep of notebook 07: make sweep GRID=sweeps/benchmark.yaml)")
    if p.is_dir():
        ok = [r for recs in load_records(p).values() for r in recs
              if r["status"] == "ok" and (r.get("results") or {}).get("rows")]
        rows = [row for r in ok for row in r["results"]["rows"]]
        return _check_rows(rows, p), {"runs": len(ok), "command": f"sweep results in {p}"}
    d = json.loads(p.read_text())
    info = {k: v for k, v in d.items() if not isinstance(v, (list, dict))}
    info.setdefault("commit", info.get("git_commit", "?"))
    if isinstance(d.get("results"), dict) and "rows" not in d:
        rows = _bench_rows(d)
        info["models"] = {m: {k: v for k, v in res.items() if k != "rows"} for m, res in d["results"].items()}
    else:
        rows = d.get("rows", [])
    return _check_rows(rows, p), info


def pivot(rows: list[dict], value: str = "error", model: str | None = None, solver: str | None = None) -> dict:
    """{method: {nfe: value}} for one model and solver (the first of each found when None)."""
    model = model or rows[0]["model"]
    solver = solver or next(r["solver"] for r in rows if r["model"] == model)
    out: dict = {}
    for r in rows:
        if r["model"] == model and r["solver"] == solver and r.get(value) is not None:
            out.setdefault(r["method"], {})[int(r["nfe"])] = float(r[value])
    return out


def _fmt(v: float | None, ref: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:.3g}" + (f" ({v / ref:.2f}×)" if ref else "")


def pivot_markdown(rows: list[dict], value: str = "error", model: str | None = None, solver: str | None = None,
                   nfes=None, baseline: str = "karras") -> str:
    """A markdown table: one row per method (sorted by the mean ratio to ``baseline``), one column per NFE,
    each cell ``value (value / baseline's value at that NFE)``."""
    tab = pivot(rows, value, model, solver)
    if not tab:
        return f"(no '{value}' values for model {model} and solver {solver})"
    nfes = sorted({n for d in tab.values() for n in d} if nfes is None else nfes)
    base = tab.get(baseline, {})

    def score(m):
        r = [tab[m][n] / base[n] for n in nfes if n in tab[m] and base.get(n)]
        return sum(r) / len(r) if r else math.inf

    lines = ["| method | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---" * (len(nfes) + 1) + "|"]
    for m in sorted(tab, key=score):
        lines.append(f"| {m} | " + " | ".join(_fmt(tab[m].get(n), base.get(n)) for n in nfes) + " |")
    return "\n".join(lines)


def headline_markdown(rows: list[dict], info: dict, nfes=HEADLINE_NFES, solver: str = "euler") -> str:
    """The README section: per shipped model, the truncation-error table and (digits) the Fréchet-digits table."""
    out = [f"Generated by `python -m dpmsched results` from `benchmarks/schedules.json` "
           f"({info.get('machine', info.get('device', '?'))}).  Cells: value "
           "(ratio to EDM's Karras ρ = 7 at the same NFE); methods sorted by the mean ratio.", ""]
    models = list(dict.fromkeys(r["model"] for r in rows))
    has_fd = {m: any(r.get("fd") is not None for r in rows if r["model"] == m) for m in models}
    for model in sorted(models, key=lambda m: not has_fd[m]):          # image models first
        solvers = list(dict.fromkeys(r["solver"] for r in rows if r["model"] == model))
        s = solver if solver in solvers else solvers[0]
        m_run = info.get("models", {}).get(model, info)
        m_run = m_run.get("solver_runs", {}).get(s, m_run)     # the run that made this solver's rows (--solvers)
        out += [f"*{model}: measured by `{m_run.get('command', 'make bench')}` at commit "
                f"{m_run.get('git_commit', m_run.get('commit', '?'))}, {m_run.get('date', '?')}.*", ""]
        out += [f"**{model}, {s}: truncation error** (RMSE to the accurate solve of the same held-out noise)", "",
                pivot_markdown(rows, "error", model, s, nfes), ""]
        if has_fd[model]:
            m_info = info.get("models", {}).get(model, {})
            floor = (f"; the accurate solve of the same {m_info['heldout']['n']} latents scores "
                     f"{m_info['metric_reference']:.3g}, the floor at this sample size"
                     if "metric_reference" in m_info and "n" in m_info.get("heldout", {}) else "")
            out += [f"**{model}, {s}: Fréchet-digits** (lower is better{floor})", "",
                    pivot_markdown(rows, "fd", model, s, nfes), ""]
    out.append("![error vs NFE](benchmarks/headline.png)")
    return "\n".join(out)


def headline_figure(rows: list[dict], path=None, solver: str = "euler"):
    """Error vs NFE per method, one panel per model (log-log); saved to ``path`` when given."""
    import matplotlib
    import matplotlib.pyplot as plt

    if path is not None:
        matplotlib.use("Agg", force=False)
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        solvers = list(dict.fromkeys(r["solver"] for r in rows if r["model"] == model))
        s = solver if solver in solvers else solvers[0]
        for m, d in sorted(pivot(rows, "error", model, s).items()):
            n = sorted(d)
            ax.plot(n, [d[k] for k in n], "o-" if m not in ("karras", "direct") else "s--", label=m, lw=1.2,
                    ms=3.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("truncation error (RMSE)")
        ax.set_title(f"{model} · {s}")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def update_readme(readme, section: str) -> bool:
    """Replace the text between :data:`BEGIN` and :data:`END` in ``readme`` with ``section`` (atomic
    write); returns whether the file changed.  Raises ValueError when the markers are missing."""
    p = Path(readme)
    if not p.is_file():
        raise FileNotFoundError(f"no file {p} to write the results section into")
    text = p.read_text()
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{p} lacks the markers {BEGIN} … {END} around its results section")
    head, rest = text.split(BEGIN, 1)
    new = head + BEGIN + "\n" + section.strip() + "\n" + END + rest.split(END, 1)[1]
    if new != text:
        atomic_write_text(p, new)
    return new != text
