"""The sweep report: run records → a markdown table and a figure per notebook.

Reads the records :mod:`dpmsched.sweep` writes (``runs/<nb>/<hash>.json``, ``.failed.json``).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from .batch import last_line, md_cell
from .files import atomic_write_text
from .plots import save
from .sweep import format_params

__all__ = ["load_records", "report_table", "report_figure", "write_report"]



def _flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts → ``{"a.b": scalar}``; lists are left out (they do not fit a table cell)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, key + ".")
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def load_records(folder) -> dict[str, list[dict]]:
    """All run records (``*.json`` and ``*.failed.json`` with a ``hash``) under ``folder``, by notebook name.

    A failure record is dropped when the same run has a successful record (it was re-run).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"runs folder {folder} not found")
    recs: dict[str, dict[str, dict]] = {}
    for f in sorted(folder.rglob("*.json")):
        if f.name.startswith("."):
            continue
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not (isinstance(rec, dict) and {"hash", "parameters", "status", "notebook"} <= set(rec)):
            continue
        runs = recs.setdefault(rec["notebook"], {})
        if rec["hash"] not in runs or rec["status"] == "ok":
            runs[rec["hash"]] = rec
    return {nb: list(r.values()) for nb, r in sorted(recs.items())}


def _varying(records: list[dict]) -> tuple[list[str], dict]:
    """(names of the parameters that differ between runs, {name: value} of those that do not)."""
    names = list(dict.fromkeys(k for r in records for k in r["parameters"]))
    vary = [n for n in names if len({json.dumps(r["parameters"].get(n)) for r in records}) > 1]
    fixed = {n: records[0]["parameters"].get(n) for n in names if n not in vary}
    return vary, fixed


def _default_keys(records: list[dict]) -> list[str]:
    """The top-level numeric results (what a table and a line plot can show)."""
    keys = dict.fromkeys(k for r in records if r["status"] == "ok" for k, v in r["results"].items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool))
    return sorted(keys)


def _sort_key(rec, vary):
    return [(str(type(rec["parameters"].get(n))), rec["parameters"].get(n)) for n in vary]


def report_table(records: list[dict], keys: list[str] | None = None) -> str:
    """Markdown for one notebook's records: the fixed parameters, one row per successful run (its
    varying parameters, ``keys`` of its results — default: the top-level numbers — and seconds), then
    each failed run with its parameters and the last line of its error.
    """
    if not records:
        raise ValueError("no records to report")
    vary, fixed = _varying(records)
    keys = list(keys) if keys else _default_keys(records)
    known = sorted({k for r in records if r["status"] == "ok" for k in _flatten(r["results"])})
    unknown = [k for k in keys if k not in known]
    if unknown and known:
        raise ValueError(f"unknown result key(s) {unknown}; the runs have {known}")
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: _sort_key(r, vary))
    bad = [r for r in records if r["status"] != "ok"]
    lines = [f"{len(ok)} finished run(s), {len(bad)} failed.", ""]
    if fixed:
        lines += ["Same in every run: " + ", ".join(f"`{k}={v!r}`" for k, v in fixed.items()), ""]
    head = vary + keys + ["seconds"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ok:
        flat = _flatten(r["results"])
        cells = [r["parameters"].get(n) for n in vary] + [flat.get(k) for k in keys] + [r["seconds"]]
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    for r in bad:
        lines += ["", f"**failed** `{format_params(r['parameters'])}`: {md_cell(last_line(r.get('error', '')))} "
                      f"(full traceback: `{r['hash']}.failed.json`)"]
    return "\n".join(lines)


def report_figure(records: list[dict], keys: list[str] | None = None, max_panels: int = 6):
    """One panel per result key (at most ``max_panels``): the value against the numeric varying
    parameter with the most distinct values, one line per combination of the other varying
    parameters (log y when all values are positive over more than a factor 50).  Returns the figure.
    """
    import matplotlib

    matplotlib.use("Agg")   # the report runs headless
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok"]
    if not ok:
        raise ValueError("no finished runs to plot")
    vary, _ = _varying(ok)
    keys = (list(keys) if keys else _default_keys(ok))[:max_panels]
    numeric = [n for n in vary if all(isinstance(r["parameters"].get(n), (int, float))
                                      and not isinstance(r["parameters"].get(n), bool) for r in ok)]
    xname = max(numeric, key=lambda n: len({r["parameters"][n] for r in ok})) if numeric else None
    others = [n for n in vary if n != xname]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(4.2 * max(len(keys), 1), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        groups: dict[str, list] = {}
        for i, r in enumerate(sorted(ok, key=lambda r: _sort_key(r, vary))):
            v = _flatten(r["results"]).get(key)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                continue
            label = ", ".join(f"{n}={r['parameters'].get(n)}" for n in others) or "runs"
            groups.setdefault(label, []).append((r["parameters"][xname] if xname else i, v))
        vals = [v for pts in groups.values() for _, v in pts]
        for label, pts in groups.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=4, label=label)
        if vals and min(vals) > 0 and max(vals) / min(vals) > 50:
            ax.set_yscale("log")
        ax.set_xlabel(xname or "run")
        ax.set_title(key, fontsize=10)
    if len(groups) > 1:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_report(folder, keys: list[str] | None = None, out=None) -> str:
    """Write ``out`` (default ``folder/report.md``) with a section per notebook — table and figure
    (``folder/<stem>/report.png``); returns the markdown.
    """
    import matplotlib.pyplot as plt

    folder = Path(folder)
    by_nb = load_records(folder)
    if not by_nb:
        raise FileNotFoundError(f"no run records (*.json written by 'python -m dpmsched sweep') under {folder}")
    out = Path(out) if out else folder / "report.md"
    parts = [f"# Sweep report\n\nMade by `python -m dpmsched report {folder}` from the run records under "
             f"`{folder}/` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})."]
    for nb, records in by_nb.items():
        stem = Path(nb).stem
        parts.append(f"## {nb}\n\n" + report_table(records, keys))
        if any(r["status"] == "ok" for r in records):
            fig = report_figure(records, keys)
            png = save(fig, "report", str(folder / stem))
            plt.close(fig)
            parts.append(f"![{stem}]({os.path.relpath(png, out.parent)})")
    text = "\n\n".join(parts) + "\n"
    atomic_write_text(out, text)
    return text


