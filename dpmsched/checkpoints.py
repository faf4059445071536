"""Checkpoint I/O: safetensors weights + JSON config, written atomically.  (DESIGN.md §1)

* :func:`atomic_write_bytes` / :func:`atomic_write_text` — a reader never sees a half-written file.
* :func:`save_model` / :func:`load_model` — a checkpoint is a folder with ``model.safetensors`` and
  ``config.json`` (architecture, σ range, σ_data, data set, training record, git commit, sha256 of the
  weights).  Shipped checkpoints live in ``data/<name>/``.

Never unpickles anything (torch is imported inside the functions that need it).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "save_model", "load_model", "read_config", "resolve",
           "tensors_to_bytes", "tensors_from_file", "DATA_DIR"]


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``.

    A reader never sees a half-written file: either the old content or the new one.  The file gets
    the ordinary permissions of a new file (0o666 minus the umask), not mkstemp's private 0o600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
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
    return atomic_write_bytes(path, text.encode("utf-8"))


# -- model checkpoints --------------------------------------------------------------------------
#: folder of the shipped checkpoints (``data/<name>/`` next to the package)
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
WEIGHTS, CONFIG = "model.safetensors", "config.json"
FORMAT = "dpmsched-checkpoint/1"
#: kinds of model a checkpoint can hold
KINDS = ("edm", "ddpm", "classifier")
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin")


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def git_commit(default: str = "unknown", short: bool = False) -> str:
    """The current git commit of the repository holding this package (``default`` outside git);
    ``short``: the abbreviated hash, as the benchmarks record it.  A ``+modified`` suffix says that the
    package or the benchmark scripts differ from that commit (uncommitted changes), so a recorded number
    is never attributed to code that did not produce it."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"],
                             cwd=here, capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip()
        if not commit:
            return default
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(here), str(here.parent / "benchmarks")],
                              cwd=here, capture_output=True, timeout=10)
        return commit + ("+modified" if diff.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return default


def tensors_to_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    """safetensors bytes of a ``{name: tensor}`` dict (contiguous CPU copies; never pickle)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def _refuse_pickle(path: Path):
    with open(path, "rb") as f:
        head = f.read(2)
    if path.suffix in _PICKLE_SUFFIXES or head[:1] == b"\x80" or head == b"PK":
        raise ValueError(f"{path} looks like a pickle/torch.save file; dpmsched never unpickles "
                         "(it can run arbitrary code). Convert it to safetensors + config.json "
                         "with dpmsched.checkpoints.save_model.")


def tensors_from_file(path) -> dict:
    """Load a safetensors file as ``{name: tensor}``; a pickle file or a corrupt file raises ValueError."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    _refuse_pickle(path)
    try:
        return load(path.read_bytes())
    except Exception as e:                                     # safetensors raises its own error type
        raise ValueError(f"{path} is not a valid safetensors file: {e}") from None


def save_model(model, folder, *, kind: str, dataset: str, training: dict | None = None,
               extra: dict | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` atomically; returns the folder.

    ``model``: an :class:`~dpmsched.denoisers.nets.EDMDenoiser` (``kind="edm"``), a
    :class:`~dpmsched.denoisers.vp.VPDenoiser` around an ε-net (``kind="ddpm"``) or a
    :class:`~dpmsched.denoisers.nets.DigitsClassifier` (``kind="classifier"``).  The config records the
    architecture, σ range, σ_data, data set, ``training`` (steps, wall time, …), the git commit and the
    sha256 of the weights file, which :func:`load_model` verifies.
    """
    import json

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    net = model if kind == "classifier" else (model.net if kind == "edm" else model.model)
    data = tensors_to_bytes(net.state_dict())
    cfg = {"format": FORMAT, "kind": kind, "arch": net.config, "dataset": dataset,
           "dtype": str(next(net.parameters()).dtype).replace("torch.", ""),
           "training": dict(training or {}), "git_commit": git_commit(), "sha256": sha256_bytes(data)}
    if kind == "edm":
        cfg.update(sigma_data=model.sigma_data, sigma_min=model.sigma_min, sigma_max=model.sigma_max,
                   event_shape=list(model.event_shape))
    elif kind == "ddpm":
        cfg.update(noise={"type": "discrete-linear", "T": model.noise.T}, prediction=model.prediction,
                   sigma_min=model.sigma_min, sigma_max=model.sigma_max, event_shape=list(model.event_shape))
    cfg.update(extra or {})
    folder = Path(folder)
    atomic_write_bytes(folder / WEIGHTS, data)
    atomic_write_text(folder / CONFIG, json.dumps(cfg, indent=1, sort_keys=True) + "\n")
    return folder


def resolve(name_or_path) -> Path:
    """The checkpoint folder of a shipped name (``data/<name>``) or a path to a folder."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    if p.is_file():
        _refuse_pickle(p)
        if p.name in (WEIGHTS, CONFIG):
            return p.parent
        raise ValueError(f"{p} is a file; pass the checkpoint folder holding {WEIGHTS} and {CONFIG}")
    shipped = DATA_DIR / str(name_or_path)
    if "/" not in str(name_or_path) and shipped.is_dir():
        return shipped
    names = sorted(q.name for q in DATA_DIR.iterdir() if (q / CONFIG).is_file()) if DATA_DIR.is_dir() else []
    raise FileNotFoundError(f"no checkpoint {str(name_or_path)!r}: not a folder and not a shipped model "
                            f"(shipped: {names})")


def read_config(folder) -> dict:
    """The validated ``config.json`` of a checkpoint folder."""
    import json

    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint config {path} does not exist")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{path}: expected a config with format {FORMAT!r}")
    missing = [k for k in ("kind", "arch", "sha256") if k not in cfg]
    if missing or cfg["kind"] not in KINDS:
        raise ValueError(f"{path}: missing keys {missing} or kind {cfg.get('kind')!r} not in {KINDS}")
    return cfg


def load_model(name_or_path, device="cpu"):
    """A ready model from a shipped name (``"digits-edm"``, ``"digits-ddpm"``, ``"toy2d-edm"``,
    ``"digits-classifier"``) or a checkpoint folder.

    Returns an :class:`EDMDenoiser` (kind "edm"), a :class:`VPDenoiser` with ``DiscreteVP.linear(T)``
    around the ε-net (kind "ddpm"; raw ε via ``.eps(x_t, n)``, the table via ``.noise``), or a
    :class:`DigitsClassifier`; in eval mode, on ``device``.  Raises FileNotFoundError for a missing
    folder/file, ValueError for a checksum mismatch, a config that does not match the weights, or a
    pickle file.
    """
    from .denoisers.nets import EDMDenoiser, build_net

    folder = resolve(name_or_path)
    cfg = read_config(folder)
    wpath = folder / WEIGHTS
    if not wpath.is_file():
        raise FileNotFoundError(f"weights file {wpath} does not exist")
    _refuse_pickle(wpath)
    raw = wpath.read_bytes()
    if sha256_bytes(raw) != cfg["sha256"]:
        raise ValueError(f"checksum mismatch for {wpath}: the weights do not match config.json's sha256 "
                         "(corrupt or replaced file)")
    state = tensors_from_file(wpath)
    net = build_net(cfg["arch"])
    expect = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expect != got:
        miss, extra = sorted(set(expect) - set(got)), sorted(set(got) - set(expect))
        bad = sorted(k for k in set(expect) & set(got) if expect[k] != got[k])
        raise ValueError(f"{folder}: config.json's architecture does not match the weights "
                         f"(missing {miss[:5]}, unexpected {extra[:5]}, shape mismatch {bad[:5]})")
    net.load_state_dict(state)
    import torch

    net = net.to(device=device, dtype=getattr(torch, cfg.get("dtype", "float32"))).eval()
    name = folder.name
    if cfg["kind"] == "classifier":
        net.name = name
        return net
    if cfg["kind"] == "edm":
        model = EDMDenoiser(net, cfg["sigma_data"], cfg["event_shape"], cfg["sigma_min"], cfg["sigma_max"], name)
    else:
        from .denoisers.vp import VPDenoiser
        from .noise import DiscreteVP

        model = VPDenoiser(net, DiscreteVP.linear(cfg["noise"]["T"]), prediction=cfg.get("prediction", "epsilon"),
                           event_shape=cfg["event_shape"], name=name)
    model.config = cfg
    return model.to(device).eval()
