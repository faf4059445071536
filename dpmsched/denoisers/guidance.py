"""Classifier-free guidance: a guided denoiser is a denoiser.  (Ho & Salimans 2021; docs/math.md §9.6)

For a class-conditional model ``D(x, σ, y)`` trained with label dropout (the null label ∅),

    D_w(x, σ; y) = D(x, σ, ∅) + w · (D(x, σ, y) − D(x, σ, ∅)),

``w = 1`` is exactly the conditional model and ``w = 0`` the unconditional one (each one network call);
other ``w`` need both, batched as one forward pass of 2B rows, as diffusers does.  :func:`guided` returns a
callable ``D(x, σ)`` with the usual attributes, so every solver, optimizer, teacher, finetune and Skip-Tuning entry
point takes it unchanged.

**NFE.** We count NFE as the diffusers and k-diffusion literature does: one NFE is one evaluation of the (guided)
denoiser per solver stage — ``dpmsched.solvers.nfe``.  The network work is ``calls_per_eval`` times that: 2 for
guided sampling (``w ∉ {0, 1}``; one batched pass of twice the rows), 1 otherwise.
"""
from __future__ import annotations

import math

import torch

__all__ = ["guided", "Guided", "as_tuned"]


class Guided(torch.nn.Module):
    """``D_w(x, σ; y)`` of a class-conditional denoiser ``model(x, sigma, labels=...)`` (module doc).

    ``labels``: one class for every sample (an int) or one per sample (B,); with ``cycle=True`` a list of K classes
    that row i of every batch takes in turn (``labels[i mod K]``: any batch size works, as the optimizers, teachers
    and Skip-Tuning evaluate batches of their own sizes); ``w`` a finite number.  Attributes
    ``event_shape``, ``sigma_min``, ``sigma_max``, ``name`` come from the model; ``calls_per_eval`` is the
    network passes per evaluation counted in batch units (1 or 2).

    A module around ``model`` (its parameters are the model's), so Phase-2 can finetune the *guided* denoiser:
    ``copy.deepcopy``, ``.train()``, ``.parameters()`` and ``.to(device)`` reach the wrapped network, and
    :func:`dpmsched.finetune.save_finetuned` writes the network with the guidance it was tuned for (``guidance``).
    """

    def __init__(self, model, labels, w: float, cycle: bool = False):
        super().__init__()
        if not (isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)):
            raise ValueError(f"guidance weight w must be a finite number, got {w!r}")
        net = getattr(model, "net", model)
        if not getattr(net, "num_classes", 0):
            raise ValueError(f"{getattr(model, 'name', type(model).__name__)} is not class-conditional "
                             "(its network has no num_classes > 0); guidance needs a model trained with a null label")
        self.model, self.w, self.null = model, float(w), int(net.null_label())
        self.labels = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels, dtype=torch.long)
        if self.labels.numel() == 0:
            raise ValueError("guided: no labels given; pass one class, or one per sample")
        self.cycle = bool(cycle)
        for a in ("event_shape", "sigma_min", "sigma_max"):
            if hasattr(model, a):
                setattr(self, a, getattr(model, a))
        self.name = f"{getattr(model, 'name', 'model')}|labels|w={self.w:g}"
        self.calls_per_eval = 1 if self.w in (0.0, 1.0) else 2

    def _labels(self, batch: int, device) -> torch.Tensor:
        lab = self.labels.to(device=device, dtype=torch.long).reshape(-1)
        if lab.numel() == 1:
            return lab.expand(batch)
        if self.cycle:
            return lab.repeat(-(-batch // lab.numel()))[:batch]
        if lab.numel() != batch:
            raise ValueError(f"guided: {lab.numel()} labels for a batch of {batch} samples; pass one label, or one "
                             "per sample with a solver batch that holds them all")
        return lab

    @property
    def guidance(self) -> dict:
        """{"labels": [...], "w": w, "cycle": bool}: what :func:`guided` needs to rebuild this denoiser."""
        return {"labels": [int(v) for v in self.labels.reshape(-1)], "w": self.w, "cycle": self.cycle}

    def forward(self, x: torch.Tensor, sigma, **kw) -> torch.Tensor:
        lab = self._labels(x.shape[0], x.device)
        if self.w == 1.0:
            return self.model(x, sigma, labels=lab, **kw)
        null = torch.full_like(lab, self.null)
        if self.w == 0.0:
            return self.model(x, sigma, labels=null, **kw)
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        s2 = s.reshape(-1).expand(x.shape[0]).repeat(2) if s.numel() in (1, x.shape[0]) else s
        out = self.model(torch.cat([x, x]), s2, labels=torch.cat([lab, null]), **kw)
        cond, uncond = out[: x.shape[0]], out[x.shape[0]:]
        return uncond + self.w * (cond - uncond)


def guided(model, labels, w: float, cycle: bool = False) -> Guided:
    """The guided denoiser ``D_w(·; labels)`` of a class-conditional ``model`` (see :class:`Guided`)."""
    return Guided(model, labels, w, cycle)


def as_tuned(model):
    """``model`` guided as its checkpoint was finetuned (``config["finetune"]["guidance"]``, written by
    :func:`dpmsched.finetune.save_finetuned`), or ``model`` itself when it was not tuned with guidance: the
    finetuned weights are only meaningful in the guided combination they were tuned in."""
    g = ((getattr(model, "config", None) or {}).get("finetune") or {}).get("guidance")
    return model if g is None else guided(model, g["labels"], g["w"], cycle=g.get("cycle", False))
