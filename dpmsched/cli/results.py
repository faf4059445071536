"""``python -m dpmsched results``: regenerate the README's results section and figure from the benchmark JSON."""
from __future__ import annotations

from pathlib import Path

from ..results import BEGIN, END, headline_figure, headline_markdown, load_rows, update_readme
from .common import ArgumentParser

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """``python -m dpmsched results [--bench benchmarks/schedules.json] [--readme README.md] [--check]``"""
    p = ArgumentParser(prog="python -m dpmsched results", description=main.__doc__)
    p.add_argument("--bench", default="benchmarks/schedules.json", help="benchmark JSON or a folder of sweep results")
    p.add_argument("--readme", default="README.md", help="file whose results section is regenerated")
    p.add_argument("--figure", default="benchmarks/headline.png", help="figure to write (empty: none)")
    p.add_argument("--check", action="store_true", help="only report whether the README is up to date (exit 1 if not)")
    a = p.parse_args(argv)
    rows, info = load_rows(a.bench)
    section = headline_markdown(rows, info)
    if a.check:
        text = Path(a.readme).read_text()
        ok = (BEGIN + "\n" + section.strip() + "\n" + END) in text
        print(f"{a.readme}: results section {'up to date' if ok else 'OUT OF DATE: run python -m dpmsched results'}")
        return 0 if ok else 1
    if a.figure:
        headline_figure(rows, a.figure)
    changed = update_readme(a.readme, section)
    print(f"{a.readme}: results section {'rewritten' if changed else 'unchanged'} from {a.bench} ({len(rows)} rows)")
    return 0
