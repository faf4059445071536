"""File I/O that loses nothing: atomic writes, safetensors (never pickle), JSON/YAML with clear errors.

* :func:`atomic_write_bytes` / :func:`atomic_write_text` — a reader never sees a half-written file, and an
  existing file keeps its permission bits.
* :func:`tensors_to_bytes` / :func:`tensors_from_file` — safetensors only; a pickle or torch.save file is
  refused (:func:`refuse_pickle`), because unpickling can run arbitrary code.
* :func:`read_json` / :func:`read_yaml` — a missing, binary or malformed file raises one ValueError /
  FileNotFoundError that names the file.
* :func:`clean_stale_temporaries` — removes the ``.NAME.*.tmp`` files a killed writer left behind.

torch and safetensors are imported inside the functions that need them.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "sha256_bytes", "tensors_to_bytes", "tensors_from_file",
           "refuse_pickle", "read_json", "read_yaml", "clean_stale_temporaries", "PICKLE_SUFFIXES"]

#: file suffixes of pickle-based formats (torch.save, pickle, diffusers' legacy .bin)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A reader never sees a half-written file: either the old content or the new one.  A new file gets the
    ordinary permissions (0o666 minus the umask), not mkstemp's private 0o600; an existing file keeps its mode.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        mode = 0o666 & ~mask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def clean_stale_temporaries(folder, older_than_s: float = 0.0) -> list[Path]:
    """Remove the ``.NAME.XXXX.tmp`` files that :func:`atomic_write_bytes` leaves when its process is killed
    mid-write (files older than ``older_than_s`` seconds); returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for p in folder.glob(".*.tmp"):
        try:
            if now - p.stat().st_mtime >= older_than_s:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def tensors_to_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """safetensors bytes of a ``{name: tensor}`` dict (contiguous CPU copies; never pickle)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def refuse_pickle(path) -> None:
    """Raise ValueError when ``path`` is (or looks like) a pickle / torch.save / zip file."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if path.suffix in PICKLE_SUFFIXES or head[:1] == b"\x80" or head == b"PK":
        raise ValueError(f"{path} looks like a pickle/torch.save file; dpmsched never unpickles "
                         "(it can run arbitrary code). Convert it to safetensors + config.json "
                         "with dpmsched.checkpoints.save_model.")


def tensors_from_file(path) -> dict:
    """Load a safetensors file as ``{name: tensor}``; a pickle file or a corrupt file raises ValueError."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    refuse_pickle(path)
    try:
        return load(path.read_bytes())
    except Exception as e:                                     # safetensors raises its own error type
        raise ValueError(f"{path} is not a valid safetensors file: {e}") from None


def _read_parsed(path, what: str, parse, errors, kind: str):
    """``parse(text of path)``; a missing, binary or malformed file raises one error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist" if not path.is_dir() else f"{what} {path} is a folder")
    try:
        return parse(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not a text file (binary content)") from None
    except errors as e:
        raise ValueError(f"{what} {path} is not valid {kind}: {' '.join(str(e).split())}") from None


def read_json(path, what: str = "JSON file"):
    """The parsed JSON of ``path``; a missing, binary or malformed file raises an error naming it."""
    return _read_parsed(path, what, json.loads, json.JSONDecodeError, "JSON")


def read_yaml(path, what: str = "YAML file"):
    """The parsed YAML of ``path`` (safe loader); errors name the file."""
    import yaml

    return _read_parsed(path, what, yaml.safe_load, yaml.YAMLError, "YAML")
