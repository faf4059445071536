"""Argument helpers shared by the commands: ``--opt key=value``, schedules by name or file, output files."""
from __future__ import annotations

import argparse
import inspect
import io
import json
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write_bytes, tensors_to_bytes
from ..schedules import BASELINES, Schedule
from ..schedules import get as get_baseline

__all__ = ["ArgumentParser", "parse_opt", "parse_opts", "schedule_for", "save_samples", "SAMPLE_SUFFIXES", "positive_int",
           "nonnegative_int", "positive_float", "nonnegative_float", "device", "add_guidance_arguments",
           "apply_guidance", "class_list"]

SAMPLE_SUFFIXES = (".safetensors", ".npz", ".npy")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``dpmsched CMD: error: MESSAGE (--help for the usage)``, exit 2."""

    def error(self, message):
        self.exit(2, f"dpmsched {self.prog.split()[-1]}: error: {message}  (--help for the usage)\n")


def parse_opt(text: str):
    """``"key=value"`` → (key, value) with the value parsed as JSON when it is JSON (``3``, ``true``,
    ``[1, 2]``), else kept as a string."""
    if "=" not in text:
        raise ValueError(f"--opt expects key=value, got {text!r}")
    k, v = text.split("=", 1)
    if not k:
        raise ValueError(f"--opt expects key=value with a non-empty key, got {text!r}")
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def parse_opts(texts) -> dict:
    """A dict from repeated ``--opt key=value``; a key given twice raises ValueError."""
    out = {}
    for text in texts:
        k, v = parse_opt(text)
        if k in out:
            raise ValueError(f"--opt {k} given twice")
        out[k] = v
    return out


def _typed(kind, name):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        ok = v >= 1 if name == "an integer >= 1" else v > 0 if name == "a number > 0" else v >= 0
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}")
        return v
    parse.__name__ = name
    return parse


#: argparse types for counts and sizes (argparse prints "argument --n: expected an integer >= 1, got '-3'")
positive_int = _typed(int, "an integer >= 1")
nonnegative_int = _typed(int, "an integer >= 0")
positive_float = _typed(float, "a number > 0")
nonnegative_float = _typed(float, "a number >= 0")


def device(text: str) -> str:
    """argparse type of ``--device``: ``cpu``, ``cuda``, ``cuda:K`` or ``auto`` (CUDA must be available)."""
    if text not in ("cpu", "auto") and not (text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit())):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:K or auto, got {text!r}")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device is available here (torch.cuda.is_available() "
                                         "is False); use cpu")
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return text


def class_list(text: str) -> list[int]:
    """argparse type of ``--labels``: one class ``3`` or a comma list ``0,1,2`` of integers >= 0."""
    try:
        out = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class or a comma list of classes such as 0,1,2, got {text!r}") \
            from None
    if any(v < 0 for v in out):
        raise argparse.ArgumentTypeError(f"classes are integers >= 0, got {text!r}")
    return out


def add_guidance_arguments(p: argparse.ArgumentParser) -> None:
    """``--labels`` and ``--guidance`` (classifier-free guidance of a class-conditional model)."""
    p.add_argument("--labels", type=class_list, default=None, metavar="K[,K...]",
                   help="class-conditional model: the class of every sample, or a comma list that sample i of each "
                        "batch takes in turn (i mod K); alone it samples the conditional model (w = 1)")
    p.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="classifier-free guidance weight w: D_w = D(x, ∅) + w (D(x, y) − D(x, ∅)); needs --labels "
                        "(w = 0: unconditional, 1: conditional; other w cost two network passes per evaluation)")


def apply_guidance(model, a: argparse.Namespace):
    """``model`` guided by ``--labels``/``--guidance`` (:func:`dpmsched.denoisers.guidance.guided`), or as is."""
    from ..denoisers.guidance import guided

    if a.labels is None:
        if a.guidance is not None:
            raise ValueError("--guidance needs --labels (the classes to guide towards)")
        return model
    return guided(model, a.labels, 1.0 if a.guidance is None else a.guidance, cycle=True)


def schedule_for(model, schedule: str, steps: int | None) -> Schedule:
    """A Schedule from a JSON file, or the baseline ``schedule`` over the model's σ range."""
    if schedule.endswith(".json") or Path(schedule).is_file():
        if not Path(schedule).is_file():
            raise FileNotFoundError(f"no such schedule file: {schedule}")
        s = Schedule.from_json(schedule)
        if steps is not None and steps != s.steps:
            raise ValueError(f"--steps {steps} contradicts the {s.steps}-step schedule in {schedule}")
        return s
    if steps is None:
        raise ValueError(f"--steps is needed with the baseline schedule {schedule!r}")
    key = schedule.replace("_", "-").lower()
    kw = {}
    if key in BASELINES and "sigma_min" in inspect.signature(BASELINES[key]).parameters:
        kw = {"sigma_min": float(model.sigma_min), "sigma_max": float(model.sigma_max)}
    return get_baseline(schedule, steps, **kw)


def save_samples(path: str, samples: torch.Tensor, meta: dict) -> None:
    """Write samples atomically as ``.safetensors`` (meta as JSON metadata), ``.npz`` (samples, sigmas, meta)
    or ``.npy`` (samples only)."""
    arr = samples.detach().cpu()
    if path.endswith(".safetensors"):
        data = tensors_to_bytes({"samples": arr}, metadata={"meta": json.dumps(meta)})
    elif path.endswith((".npz", ".npy")):
        buf = io.BytesIO()
        if path.endswith(".npz"):
            np.savez(buf, samples=arr.numpy(), sigmas=np.asarray(meta["sigmas"]), meta=json.dumps(meta))
        else:
            np.save(buf, arr.numpy())
        data = buf.getvalue()
    else:
        raise ValueError(f"--out must end in {', '.join(SAMPLE_SUFFIXES)}, got {path!r}")
    atomic_write_bytes(path, data)
