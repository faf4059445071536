r"""Skip-Tuning: scale a UNet's skip connections at sampling time.  (docs/math.md §5)

Ma, Xue et al., *The Surprising Effectiveness of Skip-Tuning in Diffusion Sampling* (ICML 2024).
Decoder block j of a UNet consumes ``cat([h, skip_j])``; Skip-Tuning replaces it by
``cat([h, ρ_j · skip_j])`` with ρ_j < 1, at inference only — no weight changes.

**Index conventions** (eq. of §5.1: Δρ = (ρ_top − ρ_bottom)/K, ρ_k = ρ_bottom + k·Δρ, k = 0 … K)

* skips are numbered in the order the decoder pops them: ``j = 0`` is the deepest skip (the
  "bottom", the first consumed) and ``j = n_skips − 1`` the input-conv skip (the "top") — the order of
  :attr:`dpmsched.denoisers.nets.UNet.skip_scales`;
* ``per="skip"`` interpolates over the individual skips: K = n_skips − 1, k = j;
* ``per="level"`` interpolates over resolution levels: K = n_levels − 1, k = (deepest level − level),
  and every skip of a level gets its level's ρ (docs/math.md §5.2: the paper leaves open which of the two it
  means).

**Where ρ applies**

* the shipped :class:`~dpmsched.denoisers.nets.UNet` (inside an :class:`~dpmsched.denoisers.nets.EDMDenoiser`):
  through its ``skip_scales`` hook;
* a diffusers ``UNet2DModel`` (bare, or loaded through :func:`dpmsched.adapters.load_diffusers`):
  through forward pre-hooks on its up-blocks that scale the ``res_hidden_states_tuple`` they concatenate;
* constant in σ, or only inside a σ-window ``(σ_lo, σ_hi)`` (ρ = 1 outside; decided per sample).

:func:`skip_tuning` is the context manager that switches it on and *always* restores the model (also
after an exception); :func:`grid_search` scores a (ρ_top, ρ_bottom) grid on fixed seeds, optionally
in a process pool; :func:`denoising_loss` measures the pixel-space denoising error per σ, which the
paper reports getting *worse* while sample quality improves (§5.4).  Figures of a grid search:
:func:`dpmsched.plots.skip_heatmap`; sample mosaics: :func:`dpmsched.plots.digits_mosaic`.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager

import numpy as np
import torch

from . import solvers
from .denoisers import sigma_like
from .metrics import frechet_image

__all__ = ["interpolate_rho", "skip_layout", "skip_scales", "skip_tuning", "SkipTuned", "denoising_loss",
           "grid_search", "fd_score", "RHO_GRID"]

#: the ρ grid of the paper's protocol (§5.3): 1.0, 0.95, …, 0.6
RHO_GRID = tuple(round(1.0 - 0.05 * k, 2) for k in range(9))
PER = ("skip", "level")
_ACTIVE = "_dpmsched_skiptune_active"


# -- ρ conventions ---------------------------------------------------------------------------------
def _check_rho(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} {v!r}")
    v = float(v)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be finite and >= 0, got {v}")
    return v


def interpolate_rho(rho_top: float, rho_bottom: float, n: int) -> np.ndarray:
    """ρ_k = ρ_bottom + k (ρ_top − ρ_bottom)/K, k = 0 (bottom, deepest) … K = n − 1 (top)  (§5.1).

    Returns a float64 array of shape (n,); ``n = 1`` gives ``[ρ_bottom]``.
    """
    rho_top, rho_bottom = _check_rho("rho_top", rho_top), _check_rho("rho_bottom", rho_bottom)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if n == 1:
        return np.array([rho_bottom])
    k = np.arange(n, dtype=np.float64)
    return rho_bottom + k * (rho_top - rho_bottom) / (n - 1)


def _find_net(model):
    """(kind, net): kind "unet" (the shipped UNet) or "diffusers" (a UNet2DModel) inside ``model``."""
    seen, todo = set(), [model]
    while todo:
        m = todo.pop(0)
        if m is None or id(m) in seen:
            continue
        seen.add(id(m))
        if hasattr(m, "skip_levels") and hasattr(m, "skip_scales"):
            return "unet", m
        if hasattr(m, "up_blocks") and hasattr(m, "down_blocks"):
            return "diffusers", m
        todo += [getattr(m, a, None) for a in ("model", "net", "unet", "denoiser")]
    raise TypeError(f"{type(model).__name__} has no UNet with skip connections: expected a dpmsched UNet "
                    "(e.g. an EDMDenoiser of a shipped checkpoint) or a diffusers UNet2DModel "
                    "(bare or loaded with denoisers.adapters.load_diffusers)")


def _diffusers_layout(unet):
    """[(up_block, [global skip index j of each tuple position p])], and the level of each j."""
    blocks, levels, j = [], [], 0
    n_up = len(unet.up_blocks)
    for b, blk in enumerate(unet.up_blocks):
        L = len(blk.resnets)
        # the block pops its tuple from the end: position p is consumed (L − 1 − p)-th
        blocks.append((blk, [j + L - 1 - p for p in range(L)]))
        levels += [n_up - 1 - b] * L
        j += L
    return blocks, levels


def skip_layout(model) -> tuple[str, int, tuple[int, ...]]:
    """``(kind, n_skips, levels)`` of the UNet inside ``model``.

    ``levels[j]`` is the resolution level (0 = full resolution) of skip j, j in decoder pop order
    (0 = deepest).  ``kind`` is "unet" or "diffusers".
    """
    kind, net = _find_net(model)
    levels = tuple(net.skip_levels) if kind == "unet" else tuple(_diffusers_layout(net)[1])
    return kind, len(levels), levels


def skip_scales(model, rho_top: float, rho_bottom: float, per: str = "skip") -> list[float]:
    """Per-skip ρ_j (decoder pop order, j = 0 deepest) for ``model``'s UNet, interpolated by §5.1.

    ``per="skip"``: over the n_skips individual skips; ``per="level"``: over the resolution levels,
    the same ρ for every skip of a level.  See the module docstring for the index conventions.
    """
    if per not in PER:
        raise ValueError(f"per must be one of {PER}, got {per!r}")
    _, n, levels = skip_layout(model)
    if per == "skip":
        return [float(r) for r in interpolate_rho(rho_top, rho_bottom, n)]
    deepest = max(levels)
    by_level = interpolate_rho(rho_top, rho_bottom, deepest + 1)      # k = deepest − level
    return [float(by_level[deepest - lv]) for lv in levels]


# -- the hook ------------------------------------------------------------------------------------
class _Hook:
    """Sets the current per-skip scales on a UNet; :meth:`close` restores the model exactly."""

    def __init__(self, model):
        self.kind, self.net = _find_net(model)
        if getattr(self.net, _ACTIVE, False):
            raise RuntimeError("skip-tuning is already active on this model (nested skip_tuning contexts)")
        _, self.n, _ = skip_layout(model)
        self.scales = None
        self.handles = []
        self.closed = False
        if self.kind == "unet":
            self.saved = self.net.skip_scales
        else:
            for blk, js in _diffusers_layout(self.net)[0]:
                self.handles.append(blk.register_forward_pre_hook(self._pre_hook(js), with_kwargs=True))
        setattr(self.net, _ACTIVE, True)

    def _pre_hook(self, js):
        def hook(module, args, kwargs):
            if self.scales is None:
                return None
            if "res_hidden_states_tuple" in kwargs:
                res = kwargs["res_hidden_states_tuple"]
                kwargs = dict(kwargs, res_hidden_states_tuple=self._scaled(res, js))
                return args, kwargs
            args = (args[0], self._scaled(args[1], js), *args[2:])
            return args, kwargs
        return hook

    def _scaled(self, res, js):
        return tuple(_times(self.scales[j], t) for j, t in zip(js, res))

    def set(self, scales):
        """``scales``: None (plain model) or n_skips entries, floats or (B,) tensors (per sample)."""
        if scales is not None and len(scales) != self.n:
            raise ValueError(f"need {self.n} skip scales (one per decoder skip, deepest first), got {len(scales)}")
        self.scales = scales
        if self.kind == "unet":
            self.net.skip_scales = self.saved if scales is None else _as_unet_scales(scales, self.net)

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []
        if self.kind == "unet":
            self.net.skip_scales = self.saved
        setattr(self.net, _ACTIVE, False)
        self.closed = True


def _times(rho, t: torch.Tensor) -> torch.Tensor:
    if isinstance(rho, torch.Tensor):
        return rho.to(device=t.device, dtype=t.dtype).reshape(-1, *([1] * (t.ndim - 1))) * t
    return t if rho == 1.0 else rho * t


def _as_unet_scales(scales, net):
    if not any(isinstance(r, torch.Tensor) for r in scales):
        return list(scales)
    p = next(net.parameters())
    return [torch.as_tensor(r, dtype=p.dtype, device=p.device).reshape(-1, 1, 1, 1) for r in scales]


class SkipTuned:
    """A denoiser ``D(x, σ)`` that runs ``model`` with skip scales ``rho`` (per skip, pop order).

    Inside ``sigma_window = (σ_lo, σ_hi)`` (inclusive) a sample gets ``rho``, outside ρ = 1; with
    ``sigma_window=None`` every σ gets ``rho``.  Other attributes (``event_shape``, ``sigma_min``, …)
    are the model's.  Made by :func:`skip_tuning`; valid only inside its ``with`` block.
    """

    def __init__(self, model, hook: _Hook, rho, sigma_window=None):
        self.model, self._hook, self.rho, self.sigma_window = model, hook, list(rho), sigma_window

    def __call__(self, x: torch.Tensor, sigma, **kw) -> torch.Tensor:
        if self._hook.closed:
            raise RuntimeError("this SkipTuned denoiser was used outside its skip_tuning context")
        if self.sigma_window is None:
            return self.model(x, sigma, **kw)
        lo, hi = self.sigma_window
        s = sigma_like(sigma, x).reshape(-1)
        inside = (s >= lo) & (s <= hi)
        if bool(inside.all()):
            scales = self.rho
        elif not bool(inside.any()):
            scales = None
        else:
            scales = [torch.where(inside, torch.as_tensor(r, dtype=s.dtype), torch.ones_like(s)) for r in self.rho]
        self._hook.set(scales)
        try:
            return self.model(x, sigma, **kw)
        finally:
            self._hook.set(None)

    def __getattr__(self, name):
        if name in ("model", "_hook", "rho", "sigma_window"):
            raise AttributeError(name)
        return getattr(self.model, name)

    def __repr__(self) -> str:
        rho = ", ".join(f"{r:.3g}" for r in self.rho)
        win = "" if self.sigma_window is None else f", sigma_window={self.sigma_window}"
        return f"SkipTuned({getattr(self.model, 'name', type(self.model).__name__)}, rho=[{rho}]{win})"


def _window(sigma_window):
    if sigma_window is None:
        return None
    try:
        lo, hi = (float(v) for v in sigma_window)
    except (TypeError, ValueError):
        raise ValueError(f"sigma_window must be None or a pair (sigma_lo, sigma_hi), got {sigma_window!r}") from None
    if not (0 <= lo <= hi):
        raise ValueError(f"sigma_window needs 0 <= sigma_lo <= sigma_hi, got {sigma_window!r}")
    return lo, hi


@contextmanager
def skip_tuning(model, rho_top: float = 1.0, rho_bottom: float = 1.0, *, per: str = "skip", rho=None,
                sigma_window=None):
    """Context manager: run ``model`` with scaled skips; yields the denoiser to sample with.

    ``rho_top``/``rho_bottom`` are interpolated by :func:`skip_scales` (``per`` = "skip" or "level");
    or give ``rho`` explicitly (n_skips values, decoder pop order, j = 0 deepest).  With
    ``sigma_window=None`` the model itself is tuned inside the block (calling ``model`` directly works
    too); with a window ``(σ_lo, σ_hi)`` only the yielded :class:`SkipTuned` applies ρ, per sample.
    On exit — normal or by an exception — the model is exactly as before (weights are never touched)::

        with skip_tuning(den, rho_top=0.8, rho_bottom=0.95) as d:
            x = solvers.euler(d, x_T, schedule)
    """
    window = _window(sigma_window)
    if rho is None:
        rho = skip_scales(model, rho_top, rho_bottom, per)
    else:
        rho = [_check_rho(f"rho[{j}]", r) for j, r in enumerate(rho)]
    hook = _Hook(model)
    try:
        if len(rho) != hook.n:
            raise ValueError(f"rho needs {hook.n} entries (one per decoder skip, deepest first), got {len(rho)}")
        if window is None:
            hook.set(rho)
        yield SkipTuned(model, hook, rho, window)
    finally:
        hook.close()


# -- denoising loss --------------------------------------------------------------------------------
@torch.no_grad()
def denoising_loss(model, x0: torch.Tensor, sigmas, seed: int = 0, weighted: bool = False) -> np.ndarray:
    """Pixel-space denoising error per noise level: mean ‖D(x0 + σ ε; σ) − x0‖² / d over the batch.

    ``x0`` (B, *event), ``sigmas`` a 1-D sequence of M noise levels (> 0).  The same ε (from ``seed``)
    is used at every σ and for every model, so two models (e.g. with and without Skip-Tuning) are
    compared on identical inputs.  ``weighted=True`` multiplies by EDM's training weight
    λ(σ) = (σ² + σ_d²)/(σ σ_d)² (needs ``model.sigma_data``; §0.1).  Returns float64 (M,).
    """
    sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if sig.size == 0 or not np.all(np.isfinite(sig)) or np.any(sig <= 0):
        raise ValueError("sigmas must be a non-empty sequence of finite values > 0")
    if weighted and not hasattr(model, "sigma_data"):
        raise ValueError("weighted=True needs a model with sigma_data (an EDM denoiser)")
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    out = np.empty(sig.size)
    for i, s in enumerate(sig):
        err = ((model(x0 + s * eps, float(s)) - x0).double() ** 2).reshape(x0.shape[0], -1).mean(1).mean()
        w = (s**2 + model.sigma_data**2) / (s * model.sigma_data) ** 2 if weighted else 1.0
        out[i] = w * float(err)
    return out


# -- grid search ---------------------------------------------------------------------------------
_WORKER: dict = {}


def _score_point(ctx: dict, rt: float, rb: float) -> float:
    with skip_tuning(ctx["model"], rt, rb, per=ctx["per"], sigma_window=ctx["sigma_window"]) as den:
        x = solvers.sample(den, ctx["schedule"], ctx["solver"], ctx["n"], seed=ctx["seed"], batch=ctx["batch"],
                           dtype=ctx["dtype"], **ctx["solver_opts"])
    return float(ctx["score"](x))


def _init_worker(ctx: dict):
    torch.set_num_threads(1)
    _WORKER.clear()
    _WORKER.update(ctx)


def _worker_point(args):
    return _score_point(_WORKER, *args)


def fd_score(x, data: str = "digits") -> float:
    """The default grid-search score: :func:`dpmsched.metrics.frechet_digits` of the samples against the
    digits test split (360 images), in the shipped classifier's features; lower is better.  ``data="mnist"``:
    :func:`dpmsched.metrics.frechet_mnist` (28×28 samples vs the MNIST test split; pass
    ``functools.partial(fd_score, data="mnist")`` as ``score``, it pickles for ``workers > 1``)."""
    return float(frechet_image(x, data)["fd"])


def grid_search(model, schedule, solver: str = "euler", rho_tops=RHO_GRID, rho_bottoms=RHO_GRID, *,
                n: int = 512, seed: int = 0, per: str = "skip", sigma_window=None, score=None, workers: int = 1,
                batch: int = 512, dtype=torch.float32, progress: bool = False, **solver_opts) -> dict:
    """Score every (ρ_top, ρ_bottom) of the grid on the same ``n`` seeded samples; lower is better.

    Each point samples ``n`` images with ``solver`` on ``schedule`` from the noise of ``seed``
    (:func:`dpmsched.solvers.sample`, so every point sees the same z) under :func:`skip_tuning` and
    scores them with ``score(samples) -> float`` (default :func:`dpmsched.metrics.frechet_digits`).
    ``workers > 1`` scores points in a spawn process pool (one torch thread each; ``model`` and
    ``score`` must pickle — a module-level function, not a lambda); the result does not depend on it.

    Returns ``{"rho_top": [...], "rho_bottom": [...], "scores": (T, B) float64 array,
    "best": {"rho_top", "rho_bottom", "score"}, "baseline": score at ρ ≡ 1, "improvement": baseline/best,
    "nfe", "seconds", settings}``.  Cost: (T·B + 1) × n × NFE network evaluations.
    """
    tops = [_check_rho("rho_tops entry", r) for r in rho_tops]
    bottoms = [_check_rho("rho_bottoms entry", r) for r in rho_bottoms]
    if not tops or not bottoms:
        raise ValueError("rho_tops and rho_bottoms must be non-empty")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    skip_layout(model)                                    # fail early on a model without skips
    solvers.get(solver)
    ctx = {"model": model, "schedule": schedule, "solver": solver, "n": int(n), "seed": int(seed), "per": per,
           "sigma_window": _window(sigma_window), "score": score or fd_score, "batch": int(batch),
           "dtype": dtype, "solver_opts": solver_opts}
    points = [(rt, rb) for rt in tops for rb in bottoms]
    if (1.0, 1.0) not in points:
        points.append((1.0, 1.0))
    t0 = time.perf_counter()
    if workers == 1:
        it = points
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(points, desc=f"skip grid {solver}")
        vals = [_score_point(ctx, rt, rb) for rt, rb in it]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(ctx,)) as ex:
            vals = list(ex.map(_worker_point, points))
    by_point = dict(zip(points, vals))
    scores = np.array([[by_point[(rt, rb)] for rb in bottoms] for rt in tops], dtype=np.float64)
    i, j = np.unravel_index(int(np.argmin(scores)), scores.shape)
    base = by_point[(1.0, 1.0)]
    best = float(scores[i, j])
    return {"rho_top": tops, "rho_bottom": bottoms, "scores": scores,
            "best": {"rho_top": tops[i], "rho_bottom": bottoms[j], "score": best},
            "baseline": base, "improvement": base / best if best > 0 else math.inf,
            "nfe": solvers.nfe(solver, schedule, **solver_opts),
            "solver": solver, "per": per, "n": int(n), "seed": int(seed), "sigma_window": ctx["sigma_window"],
            "seconds": time.perf_counter() - t0}
