"""What every ``benchmarks/bench_*.py`` shares: one provenance record, atomic JSON + markdown output, and
markdown tables.

The scripts are run as ``python benchmarks/bench_x.py`` from the repository root, so this folder is on
``sys.path`` and ``import _common`` finds this file.

Provenance (:func:`metadata`) is the same dict in every result file::

    {"command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_x.py ...",
     "git_commit": "a146912",            # dpmsched.provenance.git_commit(short=True) (read by notebooks 03/04)
     "date": "2026-11-23T13:38:30+00:00",
     "machine": {"platform", "python", "torch", "cpus", "threads", "device", ...},   # provenance.machine()
     "device": "x86_64 Linux, torch 2.13.0+cpu, 1 thread"}   # machine_text(machine): the one-line form that
                                                             # dpmsched.results prints in the README

Older result files hold ``machine`` as a string (or an older dict); :func:`machine_text` reads every form.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from dpmsched import provenance
from dpmsched.files import atomic_write_text

#: the folder of the scripts and of the committed result files
OUT = Path(__file__).resolve().parent
#: how every command line in a result file starts
PREFIX = "OMP_NUM_THREADS=1 .venv/bin/python"
#: the keys :func:`metadata` writes
META_KEYS = ("command", "git_commit", "date", "machine", "device")


def command(script, argv=None) -> str:
    """The command line that reproduces this run of ``script`` (``__file__`` of the caller) with ``argv``
    (default: ``sys.argv[1:]``)."""
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    return " ".join([PREFIX, f"benchmarks/{Path(script).name}", *map(shlex.quote, args)])


def machine_text(m) -> str:
    """One line for the machine record ``m``: a dict of :func:`dpmsched.provenance.machine` (or the older
    dict of bench_finetune), or the string older result files hold (returned as it is)."""
    if isinstance(m, str):
        return m
    if not m:
        return "?"
    threads = m.get("threads", m.get("torch_threads", "?"))
    text = f"{m.get('platform', '?')}, torch {m.get('torch', '?')}, {threads} thread{'' if threads == 1 else 's'}"
    if m.get("workers", 1) != 1:
        text += f" x {m['workers']} workers"
    device = m.get("device", m.get("cuda"))
    return text + (f", {device}" if device and device != "cpu" else "")


def metadata(cmd: str, threads: int | None = None, **machine_extra) -> dict:
    """The provenance record of a run (see the module docstring): ``cmd`` (from :func:`command`), the
    machine with ``threads`` torch threads (default: torch's current setting) and any ``machine_extra``
    entries (e.g. ``workers=2``)."""
    m = {**provenance.machine(threads), **machine_extra}
    return {"command": cmd, "git_commit": provenance.git_commit(short=True), "date": provenance.timestamp(),
            "machine": m, "device": machine_text(m)}


def provenance_line(meta: dict) -> str:
    """The markdown line under a table's title: command, commit, date, machine (of :func:`metadata` or of an
    older result file)."""
    commit = meta.get("git_commit") or meta.get("commit") or "?"
    return (f"`{meta.get('command', '?')}` — commit {commit}, {meta.get('date', '?')}, "
            f"{machine_text(meta.get('machine'))}.")


def result_stem(base: str, model: str) -> Path:
    """``benchmarks/<base>`` for digits-edm (the committed tables of the digits protocol), else
    ``benchmarks/<base>_<model>``: where a benchmark run on ``model`` writes its .json and .md."""
    return OUT / (base if model == "digits-edm" else f"{base}_{model}")


def md_table(header, rows) -> list[str]:
    """Markdown table lines: the ``header`` cells, the rule, then one line per row of cells."""
    header = list(header)
    return (["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def write_json(path, payload: dict) -> Path:
    """``payload`` as indented JSON at ``path``, atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


def write_md(path, md) -> Path:
    """Markdown ``md`` (a list of lines or a string) at ``path``, atomically."""
    text = md if isinstance(md, str) else "\n".join(md)
    return atomic_write_text(path, text.rstrip("\n") + "\n")


def write_outputs(stem, payload: dict, md) -> tuple[Path, Path]:
    """``stem``.json and ``stem``.md (``stem`` a path without suffix), each written atomically."""
    stem = str(stem)
    return write_json(stem + ".json", payload), write_md(stem + ".md", md)

