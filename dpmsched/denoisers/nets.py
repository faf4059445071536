"""Small trainable networks: an MLP for 2-D toys, a UNet for 8×8/16×16 images, a digits classifier.
(docs/math.md §0.1 EDM preconditioning, §5.2 skip connections, §7 discrete DDPM)

* :class:`MLP` and :class:`UNet` are raw networks ``F(x, c) -> out`` where ``c`` (B,) is the noise
  input: ``c_noise = ¼ log σ`` for EDM models, the (continuous) step index n ∈ [0, T−1] for the
  discrete DDPM ε-model.  Both embed ``c`` with sinusoidal features and an MLP.
* :class:`EDMDenoiser` wraps a raw net with EDM preconditioning (eq. in §0.1)::

      D(x; σ) = c_skip x + c_out F(c_in x, c_noise)
      c_skip = σ_d²/(σ²+σ_d²),  c_out = σ σ_d/√(σ²+σ_d²),  c_in = 1/√(σ²+σ_d²),  c_noise = ¼ log σ

  and is a Denoiser (``event_shape``, ``sigma_min``, ``sigma_max``, ``sigma_data``, ``name``).
  The discrete ε-model is wrapped by :class:`dpmsched.denoisers.vp.VPDenoiser` instead
  (see :func:`dpmsched.checkpoints.load_model`).
* Skip-Tuning hook (§5.2): ``UNet.skip_scales`` — ``None`` (unchanged) or a sequence of ``n_skips``
  floats ρ_j, j = 0 the first skip popped by the decoder (the deepest) … ``n_skips − 1`` the
  input-conv skip.  Each decoder block then concatenates ``[h, ρ_j · skip_j]``.  Set it on the net
  (``den.net.skip_scales = [...]``), or pass ``skip_scales=`` to a forward call.
  :func:`level_skip_scales` expands per-level (resolution) values to per-skip values.

Every net computes in its own parameter dtype (``.double()`` gives a float64 net) and returns the
dtype of its input, so solvers may run in float64 against a float32 net; everything is
differentiable in σ (no ``float()`` on σ anywhere).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import sigma_like

__all__ = ["MLP", "UNet", "DigitsClassifier", "EDMDenoiser", "ARCHS", "build_net", "precond_coefficients",
           "level_skip_scales"]


# -- σ / time embedding -------------------------------------------------------------------------
class PositionalEmbedding(nn.Module):
    """[cos(c·f_k), sin(c·f_k)] with f_k = (1/max_positions)^{k/half}, k = 0..half−1 (EDM/DDPM style).

    ``c`` (B,) → (B, dim).  For c_noise = ¼ log σ ∈ [−1.6, 1.1] the high frequencies resolve σ, for
    step indices 0..999 the low ones do.
    """

    def __init__(self, dim: int, max_positions: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        half = dim // 2
        self.register_buffer("freqs", (1.0 / max_positions) ** (torch.arange(half) / half), persistent=False)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        a = c.reshape(-1, 1) * self.freqs.to(c.dtype)[None]
        return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


def _emb_mlp(emb_dim: int) -> nn.Sequential:
    return nn.Sequential(PositionalEmbedding(emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU(),
                         nn.Linear(emb_dim, emb_dim), nn.SiLU())


class _DtypeFollowing(nn.Module):
    """Runs ``_forward`` in the parameters' dtype and returns the input's dtype."""

    def forward(self, x: torch.Tensor, c: torch.Tensor, **kw) -> torch.Tensor:
        p = next(self.parameters())
        c = torch.as_tensor(c, device=x.device)
        if c.ndim == 0:
            c = c.expand(x.shape[0])
        out = self._forward(x.to(p.dtype), c.reshape(-1).to(p.dtype), **kw)
        return out.to(x.dtype)


# -- MLP for 2-D toys ---------------------------------------------------------------------------
class MLP(_DtypeFollowing):
    """F(x, c) for x (B, dim): ``depth`` residual SiLU layers of width ``width``, c-embedding added."""

    def __init__(self, dim: int = 2, width: int = 128, depth: int = 3, emb_dim: int = 32):
        super().__init__()
        self.config = {"type": "mlp", "dim": dim, "width": width, "depth": depth, "emb_dim": emb_dim}
        self.emb = _emb_mlp(emb_dim)
        self.inp = nn.Linear(dim, width)
        self.emb_proj = nn.ModuleList(nn.Linear(emb_dim, width) for _ in range(depth))
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def _forward(self, x, c):
        e = self.emb(c)
        h = self.inp(x)
        for lin, proj in zip(self.layers, self.emb_proj):
            h = h + lin(F.silu(h + proj(e)))
        return self.out(F.silu(h))


# -- UNet for small images ----------------------------------------------------------------------
def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class ResBlock(nn.Module):
    """GN → SiLU → conv3 → (+ emb) → GN → SiLU → dropout → conv3, plus a (1×1) residual."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.res = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = self.c1(F.silu(self.n1(x))) + self.emb(e)[:, :, None, None]
        h = self.c2(self.drop(F.silu(self.n2(h))))
        return self.res(x) + h


class UNet(_DtypeFollowing):
    """A small ADM/DDPM++-style UNet ``F(x, c)`` for x (B, C, H, W), H = W divisible by 2^(levels−1).

    Encoder: input conv (a skip), then per level ``blocks`` ResBlocks (each a skip) and a 2× average-pool
    downsample (a skip) between levels.  Decoder: per level ``blocks + 1`` ResBlocks, each consuming
    ``cat([h, ρ_j · skips.pop()])`` (§5.2), then a nearest upsample + conv.  So
    ``n_skips = 1 + levels·blocks + (levels − 1)``; with the defaults (2 levels, 1 block) that is 4.
    ``skip_levels`` (length ``n_skips``) gives each skip's resolution level (0 = full resolution).

    ``num_classes`` > 0 makes it class-conditional: a label embedding (``num_classes + 1`` entries, the last one
    the *null* label ∅) is added to the noise embedding; ``labels`` (B,) long, or None for ∅ — one network gives the
    conditional and the unconditional denoiser, as classifier-free guidance needs (``denoisers.guidance``).
    """

    def __init__(self, in_ch: int = 1, ch: int = 32, mults=(1, 2), blocks: int = 1, emb_dim: int = 64,
                 dropout: float = 0.0, size: int = 8, num_classes: int = 0):
        super().__init__()
        mults = tuple(int(m) for m in mults)
        if size % (2 ** (len(mults) - 1)):
            raise ValueError(f"size {size} must be divisible by 2^(levels-1) = {2 ** (len(mults) - 1)}")
        self.config = {"type": "unet", "in_ch": in_ch, "ch": ch, "mults": list(mults), "blocks": blocks,
                       "emb_dim": emb_dim, "dropout": dropout, "size": size}
        self.num_classes = int(num_classes)
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if self.num_classes:                          # unconditional configs stay as they were
            self.config["num_classes"] = self.num_classes
        self.label_emb = nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes else None
        self.emb = _emb_mlp(emb_dim)
        self.inp = nn.Conv2d(in_ch, ch, 3, padding=1)
        skip_ch, skip_lv = [ch], [0]
        self.down = nn.ModuleList()
        cur = ch
        for lv, m in enumerate(mults):
            for _ in range(blocks):
                self.down.append(ResBlock(cur, ch * m, emb_dim, dropout))
                cur = ch * m
                skip_ch.append(cur)
                skip_lv.append(lv)
            if lv < len(mults) - 1:
                self.down.append(nn.AvgPool2d(2))
                skip_ch.append(cur)
                skip_lv.append(lv + 1)
        self.mid = nn.ModuleList([ResBlock(cur, cur, emb_dim, dropout), ResBlock(cur, cur, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for lv in reversed(range(len(mults))):
            for _ in range(blocks + 1):
                self.up.append(ResBlock(cur + skip_ch.pop(), ch * mults[lv], emb_dim, dropout))
                cur = ch * mults[lv]
            if lv > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(cur, cur, 3, padding=1)))
        self.out_norm = _norm(cur)
        self.out = nn.Conv2d(cur, in_ch, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        #: resolution level of each skip in the order the decoder pops them (0 = full resolution)
        self.skip_levels = tuple(reversed(skip_lv))
        self.skip_scales = None

    @property
    def n_skips(self) -> int:
        return len(self.skip_levels)

    def _scales(self, skip_scales):
        rho = self.skip_scales if skip_scales is None else skip_scales
        if rho is None:
            return None
        rho = list(rho) if not isinstance(rho, torch.Tensor) else rho
        if len(rho) != self.n_skips:
            raise ValueError(f"skip_scales must have {self.n_skips} entries (one per decoder skip, deepest "
                             f"first), got {len(rho)}")
        return rho

    def null_label(self) -> int:
        """The index of the null label ∅ (= ``num_classes``)."""
        return self.num_classes

    def _labels(self, labels, batch: int, device) -> torch.Tensor:
        lab = torch.full((batch,), self.num_classes, dtype=torch.long, device=device) if labels is None else \
            torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1).expand(batch)
        if lab.shape != (batch,) or (lab < 0).any() or (lab > self.num_classes).any():
            raise ValueError(f"labels must be one class in 0..{self.num_classes - 1} (or {self.num_classes} = null) "
                             f"per sample, got shape {tuple(lab.shape)} for a batch of {batch}")
        return lab

    def _forward(self, x, c, skip_scales=None, labels=None):
        rho = self._scales(skip_scales)
        e = self.emb(c)
        if self.label_emb is not None:
            e = e + self.label_emb(self._labels(labels, x.shape[0], x.device))
        elif labels is not None:
            raise ValueError("this UNet is unconditional (num_classes = 0): it takes no labels")
        h = self.inp(x)
        skips = [h]
        for blk in self.down:
            h = blk(h, e) if isinstance(blk, ResBlock) else blk(h)
            skips.append(h)
        for blk in self.mid:
            h = blk(h, e)
        j = 0
        for blk in self.up:
            if isinstance(blk, ResBlock):
                s = skips.pop()
                if rho is not None:                       # Skip-Tuning: [h, ρ_j · skip_j]  (§5.2)
                    s = rho[j] * s
                h = blk(torch.cat([h, s], dim=1), e)
                j += 1
            else:
                h = blk(h)
        return self.out(F.silu(self.out_norm(h)))


def level_skip_scales(net: UNet, per_level) -> list[float]:
    """Per-skip ρ from per-resolution-level values (``per_level[0]`` = full resolution)."""
    per_level = list(per_level)
    if len(per_level) != max(net.skip_levels) + 1:
        raise ValueError(f"need {max(net.skip_levels) + 1} per-level values, got {len(per_level)}")
    return [float(per_level[lv]) for lv in net.skip_levels]


# -- digits classifier (feature space of the Fréchet distance) ----------------------------------
class DigitsClassifier(nn.Module):
    """Small CNN on ``size``×``size`` digits in [−1, 1] (8: sklearn digits, 28: MNIST): two conv stages, each
    halving the resolution → ``feat_dim`` features → ``n_classes`` logits.

    ``features(x)`` (B, feat_dim) are the penultimate activations used by the Fréchet distances of
    :mod:`dpmsched.metrics` (Fréchet-digits, Fréchet-MNIST).
    """

    def __init__(self, ch: int = 32, feat_dim: int = 64, n_classes: int = 10, dropout: float = 0.2, size: int = 8):
        super().__init__()
        if size % 4:
            raise ValueError(f"classifier size must be divisible by 4, got {size}")
        self.size = int(size)
        self.config = {"type": "cnn", "ch": ch, "feat_dim": feat_dim, "n_classes": n_classes, "dropout": dropout}
        if self.size != 8:                             # the shipped 8×8 config stays as it was
            self.config["size"] = self.size
        self.body = nn.Sequential(
            nn.Conv2d(1, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(ch, 2 * ch, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(2 * ch * (self.size // 4) ** 2, feat_dim), nn.SiLU())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feat_dim, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, self.size, self.size):
            raise ValueError(f"expected images of shape (B, 1, {self.size}, {self.size}), got {tuple(x.shape)}")
        return self.body(x.to(next(self.parameters()).dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))


ARCHS = {"mlp": MLP, "unet": UNet, "cnn": DigitsClassifier}


def build_net(config: dict) -> nn.Module:
    """A fresh network from an architecture config ``{"type": "mlp"|"unet"|"cnn", **kwargs}``."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in ARCHS:
        raise ValueError(f"unknown architecture type {kind!r}; expected one of {sorted(ARCHS)}")
    try:
        return ARCHS[kind](**config)
    except TypeError as e:
        raise ValueError(f"bad {kind} architecture config {config}: {e}") from None


# -- EDM preconditioning ------------------------------------------------------------------------
def precond_coefficients(sigma: torch.Tensor, sigma_data: float):
    """(c_skip, c_out, c_in, c_noise) of EDM preconditioning at σ (any shape), §0.1."""
    sd2 = sigma_data**2
    s2 = sigma**2 + sd2
    return sd2 / s2, sigma * sigma_data / torch.sqrt(s2), torch.rsqrt(s2), torch.log(sigma) / 4


class EDMDenoiser(nn.Module):
    """EDM-preconditioned denoiser ``D(x, σ) = c_skip x + c_out F(c_in x, c_noise)``  (§0.1).

    ``x`` (B, *event_shape) of any float dtype, ``sigma`` a float, 0-d or (B,) tensor, σ > 0.  The
    coefficients are computed in ``x``'s dtype; the net runs in its own dtype.  Extra keyword
    arguments (``skip_scales=``) go to the net.
    """

    def __init__(self, net: nn.Module, sigma_data: float, event_shape, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, name: str = "edm-model"):
        super().__init__()
        if not (sigma_data > 0 and 0 < sigma_min < sigma_max):
            raise ValueError(f"need sigma_data > 0 and 0 < sigma_min < sigma_max, got {sigma_data}, "
                             f"{sigma_min}, {sigma_max}")
        self.net = net
        self.sigma_data, self.sigma_min, self.sigma_max = float(sigma_data), float(sigma_min), float(sigma_max)
        self.event_shape = tuple(event_shape)
        self.name = name

    def forward(self, x: torch.Tensor, sigma, **kw) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"expected x of shape (B, {', '.join(map(str, self.event_shape))}), "
                             f"got {tuple(x.shape)}")
        s = sigma_like(sigma, x)
        if (s <= 0).any():
            raise ValueError("EDMDenoiser needs sigma > 0 (c_noise = log(sigma)/4)")
        c_skip, c_out, c_in, c_noise = precond_coefficients(s, self.sigma_data)
        return c_skip * x + c_out * self.net(c_in * x, c_noise.reshape(-1), **kw)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, event_shape={self.event_shape}, sigma_data={self.sigma_data:.4g}, "
                f"sigma=[{self.sigma_min:.4g}, {self.sigma_max:.4g}]")
