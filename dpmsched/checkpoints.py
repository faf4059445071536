"""Checkpoint I/O: safetensors weights + JSON config, written atomically.

* :func:`save_model` / :func:`load_model` — a checkpoint is a folder with ``model.safetensors`` and
  ``config.json`` (architecture, σ range, σ_data, data set, training record, git commit, sha256 of the
  weights).  Shipped checkpoints live in :func:`dpmsched.resources.data_dir` (``data/<name>/`` in a checkout).

Never unpickles anything (file handling in :mod:`dpmsched.files`; torch is imported inside the functions).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .denoisers.nets import EDMDenoiser, build_net
from .denoisers.vp import VPDenoiser
from .files import (
    atomic_write_bytes,
    atomic_write_text,
    read_json,
    refuse_pickle,
    sha256_bytes,
    tensors_from_file,
    tensors_to_bytes,
)
from .noise import DiscreteVP
from .provenance import git_commit
from .resources import data_dir

__all__ = ["save_model", "load_model", "read_config", "resolve", "shipped_models", "WEIGHTS", "CONFIG", "KINDS"]


# -- model checkpoints --------------------------------------------------------------------------
WEIGHTS, CONFIG = "model.safetensors", "config.json"
FORMAT = "dpmsched-checkpoint/1"
#: kinds of model a checkpoint can hold
KINDS = ("edm", "ddpm", "classifier")


def save_model(model, folder, *, kind: str, dataset: str, training: dict | None = None,
               extra: dict | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` atomically; returns the folder.

    ``model``: an :class:`~dpmsched.denoisers.nets.EDMDenoiser` (``kind="edm"``), a
    :class:`~dpmsched.denoisers.vp.VPDenoiser` around an ε-net (``kind="ddpm"``) or a
    :class:`~dpmsched.denoisers.nets.DigitsClassifier` (``kind="classifier"``).  The config records the
    architecture, σ range, σ_data, data set, ``training`` (steps, wall time, …), the git commit and the
    sha256 of the weights file, which :func:`load_model` verifies.
    """
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
        refuse_pickle(p)
        if p.name in (WEIGHTS, CONFIG):
            return p.parent
        raise ValueError(f"{p} is a file; pass the checkpoint folder holding {WEIGHTS} and {CONFIG}")
    shipped = data_dir() / str(name_or_path)
    if "/" not in str(name_or_path) and shipped.is_dir():
        return shipped
    raise FileNotFoundError(f"no checkpoint {str(name_or_path)!r}: not a folder and not a shipped model "
                            f"(shipped: {shipped_models()})")


def shipped_models() -> list[str]:
    """Names of the checkpoints shipped with the package (folders of :func:`dpmsched.resources.data_dir`)."""
    d = data_dir()
    return sorted(q.name for q in d.iterdir() if (q / CONFIG).is_file()) if d.is_dir() else []


def read_config(folder) -> dict:
    """The validated ``config.json`` of a checkpoint folder."""
    path = Path(folder) / CONFIG
    cfg = read_json(path, "checkpoint config")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise ValueError(f"{path}: expected a config with format {FORMAT!r}")
    missing = [k for k in ("kind", "arch", "sha256") if k not in cfg]
    if missing or cfg["kind"] not in KINDS:
        raise ValueError(f"{path}: missing keys {missing} or kind {cfg.get('kind')!r} not in {KINDS}")
    _check_fields(path, cfg)
    return cfg


#: weight dtypes a checkpoint may declare
DTYPES = ("float32", "float64", "float16", "bfloat16")


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _check_fields(path, cfg: dict) -> None:
    """Every field :func:`load_model` uses has the right type, checked here so that a bad config fails with
    its file and field named instead of deep inside torch or at the first call."""
    def bad(field, want):
        raise ValueError(f"{path}: field {field!r} must be {want}, got {cfg.get(field)!r}")

    if not isinstance(cfg["arch"], dict) or not isinstance(cfg["arch"].get("type"), str):
        bad("arch", 'a mapping with a "type" (e.g. {"type": "unet", ...})')
    if cfg.get("dtype", "float32") not in DTYPES:
        bad("dtype", f"one of {DTYPES}")
    if cfg["kind"] == "classifier":
        return
    shape = cfg.get("event_shape")
    if not (isinstance(shape, list) and shape and all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                      for n in shape)):
        bad("event_shape", "a non-empty list of positive integers, e.g. [1, 8, 8]")
    if cfg["kind"] == "edm":
        for field in ("sigma_data", "sigma_min", "sigma_max"):
            if not _positive(cfg.get(field)):
                bad(field, "a finite positive number")
        if cfg["sigma_min"] >= cfg["sigma_max"]:
            bad("sigma_min", f"below sigma_max ({cfg['sigma_max']})")
    else:
        T = (cfg.get("noise") or {}).get("T") if isinstance(cfg.get("noise"), dict) else None
        if not (isinstance(T, int) and not isinstance(T, bool) and T >= 2):
            bad("noise", 'a mapping {"type": "discrete-linear", "T": an integer >= 2}')


def load_model(name_or_path, device="cpu"):
    """A ready model from a shipped name (``"digits-edm"``, ``"digits-ddpm"``, ``"toy2d-edm"``,
    ``"digits-classifier"``) or a checkpoint folder.

    Returns an :class:`EDMDenoiser` (kind "edm"), a :class:`VPDenoiser` with ``DiscreteVP.linear(T)``
    around the ε-net (kind "ddpm"; raw ε via ``.eps(x_t, n)``, the table via ``.noise``), or a
    :class:`DigitsClassifier`; in eval mode, on ``device``.  Raises FileNotFoundError for a missing
    folder/file, ValueError for a checksum mismatch, a config that does not match the weights, or a
    pickle file.
    """
    folder = resolve(name_or_path)
    cfg = read_config(folder)
    wpath = folder / WEIGHTS
    if not wpath.is_file():
        raise FileNotFoundError(f"weights file {wpath} does not exist")
    refuse_pickle(wpath)
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
        model = VPDenoiser(net, DiscreteVP.linear(cfg["noise"]["T"]), prediction=cfg.get("prediction", "epsilon"),
                           event_shape=cfg["event_shape"], name=name)
    model.config = cfg
    return model.to(device).eval()
