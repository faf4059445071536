"""The repository stands alone: no file sends a reader to a document that is not in it, and every
"docs/math.md §x.y" citation names a section that docs/math.md has."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = re.compile(r"ALGORITHMS\.md|DESIGN\.md|\.\./shared|/work/shared")
CITE = re.compile(r"docs/math\.md((?:,? ?§ ?\d+(?:\.\d+)?(?:[–-]\d+(?:\.\d+)?)?(?:\([a-c]\))?(?:, )?)+)")


def _texts():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        p = ROOT / f
        if p.suffix in (".py", ".ipynb", ".md", ".yaml", ".yml", ".toml", "") and p.is_file() and f != "tests/test_docs.py":
            try:
                yield f, p.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue


def _sections() -> set[str]:
    heads = re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", (ROOT / "docs" / "math.md").read_text(), flags=re.M)
    return set(heads)


def test_no_reference_to_a_file_outside_the_repository():
    bad = [f"{f}:{t[:m.start()].count(chr(10)) + 1}: {m.group(0)}" for f, t in _texts() for m in OUTSIDE.finditer(t)]
    assert not bad, bad


def test_every_cited_section_exists():
    have = _sections()
    assert {"0.1", "3.4", "3.8", "7.3", "8.4", "9.4"} <= have
    missing = []
    for f, t in _texts():
        for m in CITE.finditer(t):
            for num in re.findall(r"§ ?(\d+(?:\.\d+)?)", m.group(1)):
                if num not in have:
                    missing.append(f"{f}: §{num}")
    assert not missing, sorted(set(missing))
