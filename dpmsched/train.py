"""Training loops for the shipped models: EDM, discrete DDPM, and the digits classifier.
(docs/math.md §0.1, §7)

* ``kind: edm`` — EDM training (Karras et al. 2022): ln σ ~ N(P_mean, P_std²), loss
  ``λ(σ) ‖D(x0 + σε; σ) − x0‖²`` with ``λ(σ) = (σ² + σ_d²)/(σ σ_d)²`` (the weight that makes the
  effective target of F unit-variance).
* ``kind: ddpm`` — discrete DDPM (Ho et al. 2020), T = 1000 linear β: n ~ U{0..T−1},
  ``x_n = √ᾱ_n x0 + √(1−ᾱ_n) ε``, loss ``‖ε̂(x_n, n) − ε‖²``.
* ``kind: classifier`` — cross-entropy on the train split (digits or MNIST); test accuracy recorded.
* Class-conditional EDM (``arch.num_classes > 0``, MNIST): each training label is replaced by the null label ∅
  with probability ``label_dropout`` (Ho & Salimans 2021), so that one network gives the conditional, the
  unconditional and the guided denoiser (:mod:`dpmsched.denoisers.guidance`).

All randomness (batches, σ, n, ε, dropout) flows from one ``torch.Generator`` seeded by ``seed``
(dropout uses the global RNG, seeded from it).  Every ``ckpt_every`` steps the full training state —
raw weights, EMA weights, Adam moments, the generator state, the step and the loss history — is
written atomically to ``state_dir/state.safetensors`` as *one* file (tensors, with the step, losses and
config as JSON in its metadata; no pickle), so a crash at any moment leaves either the previous state or
the new one; a run restarted with the same config resumes there and reaches the same state as an
uninterrupted run (:func:`save_state`, :func:`load_state`, also used by Phase-2 finetuning).  The final EMA weights are
saved with :func:`dpmsched.checkpoints.save_model` into ``out``.

Command line (:mod:`dpmsched.cli.train`): ``python -m dpmsched train --config data/configs/digits-edm.yaml``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from safetensors import safe_open

from .checkpoints import save_model
from .data import IMAGE_SETS, image_set
from .denoisers.nets import EDMDenoiser, build_net
from .denoisers.vp import VPDenoiser
from .files import atomic_write_bytes, clean_stale_temporaries, read_yaml, tensors_from_file, tensors_to_bytes
from .models import EXACT_MODELS, exact_model
from .noise import DiscreteVP
from .resources import data_dir

__all__ = ["DEFAULTS", "load_config", "train", "edm_loss", "ddpm_loss", "training_loss", "make_model", "make_data", "save_state",
           "load_state", "has_state", "STATE_FILE"]

#: the one file of a resumable training state (tensors + JSON metadata)
STATE_FILE = "state.safetensors"

#: every config key with its default; a config file may set only these
DEFAULTS: dict = {
    "name": None,              # model name (the folder name under data/)
    "kind": "edm",             # edm | ddpm | classifier
    "data": "digits",          # digits | mnist | toy2d-ring | toy2d-grid
    "arch": {"type": "unet"},  # nets.build_net config
    "steps": 1000,             # optimizer steps
    "batch": 64,               # batch size
    "lr": 1e-3,                # Adam learning rate (after warm-up)
    "warmup": 100,             # linear learning-rate warm-up, steps
    "ema": 0.999,              # EMA decay per step (warm-up: min(ema, (1+t)/(10+t)))
    "seed": 0,                 # the one seed of the run
    "ckpt_every": 250,         # steps between training-state checkpoints
    "label_dropout": 0.0,      # class-conditional EDM: probability of training on the null label instead of y
    "channels_last": False,    # train a conv net in channels-last memory format (~30 % faster on CPU; same math)
    "P_mean": -1.2,            # EDM: mean of ln σ
    "P_std": 1.2,              # EDM: std of ln σ
    "sigma_data": None,        # EDM: σ_d; None = std of the training data
    "sigma_min": 0.002,        # EDM: recorded σ range of the model
    "sigma_max": 80.0,
    "T": 1000,                 # DDPM: number of steps of the linear-β table
    "out": None,               # final checkpoint folder; None = data/<name>
    "state_dir": None,         # training-state folder; None = .<out name>-state next to out
    "device": "cpu",
}

KINDS = ("edm", "ddpm", "classifier")


def load_config(path_or_dict) -> dict:
    """A complete config: ``DEFAULTS`` updated by a YAML file (or a dict); unknown keys raise ValueError."""
    if isinstance(path_or_dict, dict):
        user = dict(path_or_dict)
    else:
        path = Path(path_or_dict)
        user = read_yaml(path, "training config") or {}
        if not isinstance(user, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown training config key(s) {unknown}; expected some of {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **user}
    if not (isinstance(cfg["label_dropout"], (int, float)) and 0 <= cfg["label_dropout"] < 1):
        raise ValueError(f"label_dropout must be a probability in [0, 1), got {cfg['label_dropout']!r}")
    if not cfg["name"]:
        raise ValueError("training config needs a 'name'")
    if cfg["kind"] not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {cfg['kind']!r}")
    for k in ("steps", "batch", "ckpt_every"):
        if not (isinstance(cfg[k], int) and cfg[k] >= 1):
            raise ValueError(f"{k} must be a positive int, got {cfg[k]!r}")
    cfg["out"] = str(cfg["out"] or data_dir() / cfg["name"])
    # the resumable state lives next to the output: <out>-state (never under the package when --out is given)
    cfg["state_dir"] = str(cfg["state_dir"] or Path(cfg["out"]).parent / f".{Path(cfg['out']).name}-state")
    return cfg


# -- data and model -----------------------------------------------------------------------------
def make_data(name: str, split: str = "train"):
    """``(sample(n, generator) -> (x0, labels|None), event_shape, std)`` for a data-set name."""
    if name in IMAGE_SETS:
        x, y = image_set(name)[0](split, labels=True)

        def sample(n, g):
            i = torch.randint(len(x), (n,), generator=g)
            return x[i], y[i]

        return sample, tuple(x.shape[1:]), float(x.std())
    if name.startswith("toy2d-"):
        if name not in EXACT_MODELS:
            raise ValueError(f"unknown toy data {name!r}; expected one of {[k for k in EXACT_MODELS if 'toy2d' in k]}")
        mix = exact_model(name)
        return (lambda n, g: (mix.sample(n, g, dtype=torch.float32), None)), tuple(mix.event_shape), mix.std
    raise ValueError(f"unknown data {name!r}; expected 'digits', 'mnist' or a toy2d-* mixture")


def make_model(cfg: dict, event_shape, data_std: float):
    """The trainable model for ``cfg['kind']``: EDMDenoiser, VPDenoiser(ε-net) or DigitsClassifier."""
    net = build_net(cfg["arch"])
    if cfg["kind"] == "classifier":
        net.name = cfg["name"]
        return net
    if cfg["kind"] == "edm":
        sd = cfg["sigma_data"] if cfg["sigma_data"] is not None else data_std
        return EDMDenoiser(net, sd, event_shape, cfg["sigma_min"], cfg["sigma_max"], cfg["name"])
    return VPDenoiser(net, DiscreteVP.linear(cfg["T"]), "epsilon", event_shape, name=cfg["name"])


# -- losses -------------------------------------------------------------------------------------
def edm_loss(den, x0: torch.Tensor, g: torch.Generator, P_mean: float = -1.2, P_std: float = 1.2,
             labels: torch.Tensor | None = None, label_dropout: float = 0.0) -> torch.Tensor:
    """EDM loss, mean over the batch of λ(σ)‖D(x0+σε; σ[, y]) − x0‖²/d, ln σ ~ N(P_mean, P_std²).

    ``labels`` (B,) long: class-conditional training; each label is replaced by the net's null label with
    probability ``label_dropout`` (classifier-free guidance training)."""
    b = x0.shape[0]
    sigma = torch.exp(P_mean + P_std * torch.randn(b, generator=g, dtype=x0.dtype))
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
    sd = den.sigma_data
    weight = (s**2 + sd**2) / (s * sd) ** 2
    kw = {}
    if labels is not None:
        drop = torch.rand(b, generator=g) < label_dropout
        kw["labels"] = torch.where(drop.to(labels.device), den.net.null_label(), labels)
    return (weight * (den(x0 + s * eps, sigma, **kw) - x0) ** 2).mean()


def ddpm_loss(vp, x0: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Discrete DDPM ε-MSE (§7): n ~ U{0..T−1}, x_n = √ᾱ_n x0 + √(1−ᾱ_n) ε, mean ‖ε̂(x_n, n) − ε‖²/d."""
    ab = torch.as_tensor(vp.noise.alphas_cumprod, dtype=x0.dtype)
    n = torch.randint(len(ab), (x0.shape[0],), generator=g)
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    a = ab[n].reshape(-1, *([1] * (x0.ndim - 1)))
    x_n = a.sqrt() * x0 + (1 - a).sqrt() * eps
    return ((vp.eps(x_n, n.to(x0.dtype)) - eps) ** 2).mean()


def training_loss(cfg, model, x0, y, g):
    """The loss of ``cfg["kind"]`` on one batch: EDM, DDPM (ε) or cross-entropy (classifier)."""
    if cfg["kind"] == "edm":
        conditional = getattr(model.net, "num_classes", 0) > 0
        return edm_loss(model, x0, g, cfg["P_mean"], cfg["P_std"], y if conditional else None, cfg["label_dropout"])
    if cfg["kind"] == "ddpm":
        return ddpm_loss(model, x0, g)
    return torch.nn.functional.cross_entropy(model(x0), y)


def classifier_accuracy(net, split: str = "test", data: str = "digits") -> float:
    """Accuracy of a classifier on a split of ``data`` (digits | mnist)."""
    x, y = image_set(data)[0](split, labels=True)
    with torch.no_grad():
        return float((net.eval()(x).argmax(1) == y).double().mean())


# -- training state: one safetensors file, its JSON in the metadata -----------------------------
def has_state(state_dir) -> bool:
    """True when ``state_dir`` holds a resumable state written by :func:`save_state`."""
    return (Path(state_dir) / STATE_FILE).is_file()


def save_state(state_dir, step: int, net, ema: dict, opt, g: torch.Generator, losses: list, wall_s: float,
               cfg: dict) -> Path:
    """Write the whole training state as one atomic file ``state_dir/state.safetensors``.

    Tensors: ``net.*`` (raw weights), ``ema.*``, ``opt.<i>.<name>`` (Adam moments), ``rng`` (``g``'s state),
    ``torch_rng`` (the global RNG, for dropout).  Metadata ``"meta"``: JSON of the step, the loss history, the
    wall time, Adam's param groups and ``cfg`` (minus ``out``/``state_dir``).  One file, one ``os.replace``:
    a crash leaves either the previous state or this one, never a mix.  Stale temporaries of a killed
    writer are removed first.
    """
    state_dir = Path(state_dir)
    clean_stale_temporaries(state_dir)
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.items()})
    osd = opt.state_dict()
    for i, st in osd["state"].items():
        tensors.update({f"opt.{i}.{k}": torch.as_tensor(v) for k, v in st.items()})
    tensors["rng"] = g.get_state()
    tensors["torch_rng"] = torch.get_rng_state()
    meta = {"step": step, "losses": losses, "wall_s": wall_s, "param_groups": osd["param_groups"],
            "config": {k: v for k, v in cfg.items() if k not in ("out", "state_dir")}}
    return atomic_write_bytes(state_dir / STATE_FILE, tensors_to_bytes(tensors, metadata={"meta": json.dumps(meta)}))


def _same(c: dict) -> dict:
    """The settings an interrupted run must share with its resumption (the step count may grow)."""
    return json.loads(json.dumps({k: v for k, v in c.items() if k not in ("out", "state_dir", "steps")}))


def load_state(state_dir, net, ema: dict, opt, g: torch.Generator, cfg: dict) -> tuple[int, list, float]:
    """Restore a :func:`save_state` state into ``net``, ``ema``, ``opt``, ``g`` and the global RNG; returns
    ``(step, losses, wall_s)``.  A state made with other settings raises ValueError naming them."""
    path = Path(state_dir) / STATE_FILE
    t = tensors_from_file(path)
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("meta")
    if raw is None:
        raise ValueError(f"{path} is not a dpmsched training state (no 'meta' in its metadata); delete it or "
                         "start without resuming")
    meta = json.loads(raw)
    old, new = _same(meta["config"]), _same(cfg)
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ValueError(f"the training state in {state_dir} was made with other settings ({', '.join(diff)} differ: "
                         + "; ".join(f"{k} {old.get(k)!r} there vs {new.get(k)!r} now" for k in diff[:4])
                         + "); use the same settings, or delete it / start without resuming")
    net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")})
    for k in ema:
        ema[k].copy_(t[f"ema.{k}"])
    state = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    g.set_state(t["rng"])
    torch.set_rng_state(t["torch_rng"])
    return meta["step"], meta["losses"], meta["wall_s"]


# -- the loop -----------------------------------------------------------------------------------
def train(config, *, resume: bool = True, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train the model of ``config`` (a YAML path or a dict, see :data:`DEFAULTS`); returns a summary.

    ``stop_after``: stop (after checkpointing) once this step is reached, as if interrupted — used by
    the resume test.  With ``resume`` a matching state in ``state_dir`` is continued.  When
    ``cfg['steps']`` is reached the EMA model is saved to ``cfg['out']``.  Returns
    ``{"step", "losses" (per-step list), "wall_s", "out" (or None), "test_accuracy" (classifier)}``.
    """
    from tqdm.auto import tqdm

    cfg = load_config(config)
    g = torch.Generator().manual_seed(int(cfg["seed"]))
    torch.manual_seed(int(cfg["seed"]))
    sample, event_shape, data_std = make_data(cfg["data"])
    model = make_model(cfg, event_shape, data_std)
    net = model if cfg["kind"] == "classifier" else (model.net if cfg["kind"] == "edm" else model.model)
    net.to(cfg["device"])
    fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
    net.to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    state_dir = Path(cfg["state_dir"])
    step, losses, wall = 0, [], 0.0
    if resume and has_state(state_dir):
        step, losses, wall = load_state(state_dir, net, ema, opt, g, cfg)
    end = min(cfg["steps"], stop_after) if stop_after is not None else cfg["steps"]
    t0 = time.perf_counter()
    bar = tqdm(total=end, initial=step, desc=cfg["name"], disable=not progress, mininterval=5)
    net.train()
    while step < end:
        for group in opt.param_groups:
            group["lr"] = cfg["lr"] * min(1.0, (step + 1) / max(1, cfg["warmup"]))
        x0, y = sample(cfg["batch"], g)
        x0 = x0.to(cfg["device"]).contiguous(memory_format=fmt) if x0.ndim == 4 else x0.to(cfg["device"])
        loss = training_loss(cfg, model, x0, None if y is None else y.to(cfg["device"]), g)
        lval = float(loss.detach())
        if not math.isfinite(lval):
            raise FloatingPointError(f"training loss became {lval} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay = min(cfg["ema"], (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in net.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].lerp_(v, 1.0 - decay)
                else:
                    ema[k].copy_(v)
        losses.append(lval)
        step += 1
        bar.update(1)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
        if step % cfg["ckpt_every"] == 0 or step == end:
            save_state(state_dir, step, net, ema, opt, g, losses, wall + time.perf_counter() - t0, cfg)
    bar.close()
    wall += time.perf_counter() - t0
    out = {"step": step, "losses": losses, "wall_s": wall, "out": None}
    if step >= cfg["steps"]:
        net.load_state_dict(ema)
        net.to(memory_format=torch.contiguous_format).eval()
        training = {k: cfg[k] for k in ("steps", "batch", "lr", "warmup", "ema", "seed", "P_mean", "P_std")}
        if cfg["label_dropout"]:
            training["label_dropout"] = cfg["label_dropout"]
        training.update(wall_s=round(wall, 1), final_loss_avg100=sum(losses[-100:]) / len(losses[-100:]),
                        torch=torch.__version__, threads=torch.get_num_threads(), device=cfg["device"],
                        params=sum(p.numel() for p in net.parameters()))
        if cfg["kind"] == "classifier":
            out["test_accuracy"] = training["test_accuracy"] = classifier_accuracy(net, data=cfg["data"])
        save_model(model, cfg["out"], kind=cfg["kind"], dataset=cfg["data"], training=training)
        out["out"] = cfg["out"]
    return out
