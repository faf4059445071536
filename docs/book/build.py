"""Build the course book: ``python docs/book/build.py [--out runs/book] [--notebooks 01,03]`` (``make book``).

Assembles the sources in ``OUT/src`` — conf.py and index.md of this folder, README.md, docs/*.md, the notebooks and
the figure the README shows, in the repository's layout so that their links keep working — copies a local MathJax
(the ``jupyter-server-mathjax`` wheel) into ``_static/mathjax``, and runs Sphinx, which executes every notebook
(MyST-NB) into ``OUT/html``: a static site that works offline (open ``OUT/html/index.html``).  ``--notebooks``
builds a subset (by number), e.g. for a quick look.  Needs the ``[book]`` extra (``pip install -e .[book]``).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def assemble(src: Path, numbers: list[str] | None = None) -> list[Path]:
    """Lay out the book's sources in ``src`` (emptied first); returns the notebooks it holds."""
    if src.exists():
        shutil.rmtree(src)
    (src / "docs").mkdir(parents=True)
    (src / "notebooks").mkdir()
    (src / "benchmarks").mkdir()
    shutil.copy(HERE / "conf.py", src / "conf.py")
    index = (HERE / "index.md").read_text()
    shutil.copy(ROOT / "README.md", src / "README.md")
    for md in ("math.md", "teaching.md"):
        shutil.copy(ROOT / "docs" / md, src / "docs" / md)
    shutil.copy(ROOT / "benchmarks" / "headline.png", src / "benchmarks" / "headline.png")
    notebooks = sorted(ROOT.glob("notebooks/[0-9]*.ipynb"))
    if numbers:
        notebooks = [p for p in notebooks if p.name[:2] in numbers]
        index = "\n".join(line for line in index.splitlines()
                          if not line.startswith("notebooks/") or line.split("/")[1][:2] in numbers) + "\n"
    for nb in notebooks:
        shutil.copy(nb, src / "notebooks" / nb.name)
    (src / "index.md").write_text(index)
    import jupyter_server_mathjax

    shutil.copytree(Path(jupyter_server_mathjax.__file__).parent / "static", src / "_static" / "mathjax")
    return notebooks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "runs" / "book"), help="output folder (default: runs/book)")
    p.add_argument("--notebooks", default="", help="comma-separated notebook numbers (default: all)")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    numbers = [n.strip().zfill(2) for n in a.notebooks.split(",") if n.strip()] or None
    nbs = assemble(out / "src", numbers)
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-j", "1", "-d", str(out / "doctrees"),
           str(out / "src"), str(html)]
    print(f"building {len(nbs)} notebooks + README, docs/teaching.md, docs/math.md into {html}", flush=True)
    r = subprocess.run(cmd)
    if r.returncode == 0:
        print(f"done: open {html / 'index.html'}")
    return r.returncode


if __name__ == "__main__":
    raise SystemExit(main())
