"""Where the shipped files are: trained checkpoints (``data/``) and committed benchmark tables (``benchmarks/``).

In a checkout they are the repository's ``data/`` and ``benchmarks/`` folders; in an installed wheel
(``pip install .``) the same files ship inside the package as ``dpmsched/shipped/data`` and
``dpmsched/shipped/benchmarks`` (see ``[tool.setuptools]`` in pyproject.toml), found with
:mod:`importlib.resources`.  So a notebook or a command run from any folder finds them.

Also the one environment variable the package reads: :data:`HEADLESS_ENV`.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["data_dir", "benchmarks_dir", "benchmark_file", "HEADLESS_ENV"]

#: set (to anything non-empty) by unattended notebook runs (``batch.run_notebook``, ``make test-nb``): no widget is
#: built there (:mod:`dpmsched.widgets`)
HEADLESS_ENV = "DPMSCHED_HEADLESS"

_CHECKOUT = Path(__file__).resolve().parents[1]


def _shipped(name: str) -> Path:
    installed = Path(str(resources.files("dpmsched").joinpath("shipped", name)))
    if installed.is_dir():
        return installed
    return _CHECKOUT / name


def data_dir() -> Path:
    """The folder of the shipped checkpoints (``<name>/model.safetensors`` + ``config.json``, ``configs/``)."""
    return _shipped("data")


def benchmarks_dir() -> Path:
    """The folder of the committed benchmark tables (``schedules.json``, ``elbo-cache/``, …)."""
    return _shipped("benchmarks")


def benchmark_file(name: str) -> Path:
    """``benchmarks_dir() / name``; FileNotFoundError naming it when that table is not shipped."""
    p = benchmarks_dir() / name
    if not p.exists():
        raise FileNotFoundError(f"benchmark table {name!r} not found in {benchmarks_dir()} "
                                "(run `make bench` in a checkout to produce it)")
    return p
