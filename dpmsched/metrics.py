"""Sample-quality and error metrics.  (docs/math.md §9.4)

* :func:`truncation_error` — RMSE of a few-step solve against the reference solve from the same noise
  (what a schedule optimizer tries to minimise; in data units); :func:`gap_closure` — how much of the gap
  between the best hand-made schedule and the limit a method closes.
* :func:`sliced_wasserstein` — SW₂ between two sample sets (any dimension).
* :func:`gmm_nll` — exact negative log-likelihood of samples under a known mixture (nats per sample).
* :func:`frechet_distance` — the Fréchet distance between Gaussians fitted to two feature sets.
* :func:`frechet_digits` — the tutorial's FID: Fréchet distance in the penultimate features of the shipped
  ``digits-classifier``, plus the predicted class histograms; :func:`frechet_digits_floor` is its floor
  FD(train split, test split) — two finite samples of the *same* distribution.
* :func:`frechet_mnist` — the same on 28×28 MNIST in the features of ``mnist-classifier``, with the class
  accuracy of conditional samples; :func:`frechet_mnist_floor` its floor.
"""
from __future__ import annotations

import torch

from .checkpoints import load_model
from .data import image_set

__all__ = ["truncation_error", "rmse_se", "paired_rmse_difference", "gap_closure", "sliced_wasserstein", "gmm_nll", "frechet_distance", "frechet_digits",
           "frechet_digits_floor", "digits_features", "frechet_mnist", "frechet_mnist_floor", "image_features",
           "frechet_image"]


def _flat(x) -> torch.Tensor:
    x = torch.as_tensor(x).double()
    return x.reshape(x.shape[0], -1)


def truncation_error(x: torch.Tensor, x_ref: torch.Tensor, per_sample: bool = False):
    """RMSE √(mean (x − x_ref)²) over all samples and coordinates (data units).

    ``x``, ``x_ref``: (B, *event), the solver output and the reference solve from the same noise.
    With ``per_sample=True`` returns a (B,) tensor of per-sample RMSEs instead of a float.
    """
    if x.shape != x_ref.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(x_ref.shape)}")
    d2 = (_flat(x) - _flat(x_ref)) ** 2
    if not torch.isfinite(d2).all():
        raise ValueError("truncation_error got NaN/Inf samples")
    return d2.mean(1).sqrt() if per_sample else float(d2.mean().sqrt())


def rmse_se(per_sample: torch.Tensor) -> tuple[float, float]:
    """(RMSE, its standard error) from per-sample RMSEs r_b (B,) (``truncation_error(..., per_sample=True)``):
    RMSE = √(mean_b r_b²); SE by the delta method, SE(mean r²) / (2 RMSE) (data units)."""
    m2 = torch.as_tensor(per_sample, dtype=torch.float64).pow(2)
    rmse = float(m2.mean().sqrt())
    return rmse, float(m2.std() / len(m2) ** 0.5) / (2 * rmse) if rmse > 0 else 0.0


def paired_rmse_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(RMSE_a − RMSE_b, its paired standard error) from per-sample RMSEs of two methods on the *same* samples
    (B,) each.  Exact identity RMSE_a − RMSE_b = mean_b(a_b² − b_b²) / (RMSE_a + RMSE_b); the SE is that of the
    mean paired difference of squared errors over the same denominator — far smaller than the two unpaired SEs
    when both methods fail on the same latents."""
    a2, b2 = (torch.as_tensor(v, dtype=torch.float64).pow(2) for v in (a, b))
    if a2.shape != b2.shape:
        raise ValueError(f"paired samples must have the same shape, got {tuple(a2.shape)} and {tuple(b2.shape)}")
    den = float(a2.mean().sqrt() + b2.mean().sqrt())
    d = a2 - b2
    return (float(d.mean()) / den, float(d.std() / len(d) ** 0.5) / den) if den > 0 else (0.0, 0.0)


def gap_closure(error: float, error_hand: float, error_limit: float, tol: float = 1e-12) -> float | None:
    """Gap closure (E_hand − E)/(E_hand − E_limit): 1 reaches the limit, 0 is no better than the best hand-made
    schedule, negative is worse; None when there is no gap (E_hand − E_limit ≤ ``tol``: the limit does not
    beat the hand-made schedule, so closure is undefined)."""
    gap = float(error_hand) - float(error_limit)
    return (float(error_hand) - float(error)) / gap if gap > tol else None


def _quantiles(v: torch.Tensor, n: int) -> torch.Tensor:
    """Empirical quantile function of each column of v (M, P) at (k + ½)/n, k = 0..n−1."""
    v = torch.sort(v, dim=0).values
    m = v.shape[0]
    pos = ((torch.arange(n, dtype=torch.float64) + 0.5) / n) * m - 0.5
    lo = pos.floor().clamp(0, m - 1).long()
    hi = (lo + 1).clamp(max=m - 1)
    t = (pos - lo.double()).clamp(0, 1)[:, None]
    return (1 - t) * v[lo] + t * v[hi]


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256,
                       seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance √(E_θ W₂²(θᵀx, θᵀy)) over random unit directions θ.

    ``x`` (M, *event), ``y`` (M', *event); sets of different sizes are compared through their
    quantile functions.  Directions come from ``seed`` so repeated calls agree.
    """
    X, Y = _flat(x), _flat(y)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"dimension mismatch: {X.shape[1]} vs {Y.shape[1]}")
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(X.shape[1], n_projections, generator=g, dtype=torch.float64)
    theta /= theta.norm(dim=0, keepdim=True)
    n = max(X.shape[0], Y.shape[0])
    qx, qy = _quantiles(X @ theta, n), _quantiles(Y @ theta, n)
    return float(((qx - qy) ** 2).mean().sqrt())


def gmm_nll(samples: torch.Tensor, mixture) -> float:
    """Mean −log p(x) (nats) of ``samples`` (B, d) under an exact mixture (``.log_prob(x, 0)``)."""
    lp = mixture.log_prob(torch.as_tensor(samples).double(), 0.0)
    return float(-lp.mean())


# -- Fréchet distance in a classifier's feature space (the FID of this tutorial) ----------------
def _gaussian_fit(f: torch.Tensor):
    """Mean (P,) and unbiased covariance (P, P) of features f (M, P), float64."""
    f = _flat(f)
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors to fit a covariance, got {f.shape[0]}")
    if not torch.isfinite(f).all():
        raise ValueError("features contain NaN/Inf")
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0), float64."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """Fréchet (2-Wasserstein²) distance between the Gaussians fitted to two feature sets.

    ``FD = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2})``, the formula of FID
    (Heusel et al. 2017); ``feat_a`` (M, P), ``feat_b`` (M', P); covariances unbiased (M − 1).  The trace
    of the matrix square root is the sum of √eigenvalues of the symmetric PSD matrix
    Σ_a^{1/2} Σ_b Σ_a^{1/2} (float64 ``eigh``; no scipy).  Units: squared feature units.  Like FID it is
    biased upwards for finite M (two samples of one distribution give FD > 0).
    """
    mu_a, cov_a = _gaussian_fit(feat_a)
    mu_b, cov_b = _gaussian_fit(feat_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimension mismatch: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    ra = _sqrt_psd(cov_a)
    cross = torch.linalg.eigvalsh(ra @ cov_b @ ra).clamp(min=0).sqrt().sum()
    fd = ((mu_a - mu_b) ** 2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross
    return float(fd.clamp(min=0))


_CLASSIFIER = {}


def _classifier(classifier):
    """The digits classifier: a model object as is, a name/folder through ``checkpoints.load_model``
    (cached per name)."""
    if not isinstance(classifier, str):
        return classifier
    if classifier not in _CLASSIFIER:
        clf = load_model(classifier)
        if not hasattr(clf, "features"):
            raise ValueError(f"{classifier!r} is not a classifier checkpoint (it has no .features)")
        _CLASSIFIER[classifier] = clf
    return _CLASSIFIER[classifier]


def _images(x, what: str, data: str) -> torch.Tensor:
    """Images (M, 1, S, S) of ``data`` (S = 8 digits, 28 MNIST) from a tensor/array or a split name."""
    load, side = image_set(data)
    if isinstance(x, str):
        return load(x)
    x = torch.as_tensor(x)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, side, side):
        raise ValueError(f"{what}: expected {data} images of shape (M, 1, {side}, {side}) in [-1, 1] or a split "
                         f"name, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN/Inf")
    return x


def image_features(images, classifier, data: str = "digits", clamp: bool = True, batch: int = 1024):
    """Penultimate features (M, P) float64 and predicted labels (M,) of ``data`` images (digits | mnist).

    ``images``: (M, 1, S, S) (or (M, S, S)) in the data scale [−1, 1], or a split name.  With ``clamp``
    the images are clipped to [−1, 1] first (as an image file would be: sampler outputs overshoot a
    little).
    """
    clf = _classifier(classifier)
    x = _images(images, "images", data)
    if clamp:
        x = x.clamp(-1.0, 1.0)
    feats, labels = [], []
    was_training = clf.training
    clf.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                f = clf.features(x[i:i + batch])
                feats.append(f.double())
                labels.append(clf.head(f).argmax(1))
    finally:
        clf.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def digits_features(images, classifier="digits-classifier", clamp: bool = True, batch: int = 1024):
    """:func:`image_features` of 8×8 digits images in ``digits-classifier``'s features."""
    return image_features(images, classifier, "digits", clamp, batch)


def _frechet(samples, reference, classifier, data: str, clamp: bool) -> dict:
    fa, la = image_features(samples, classifier, data, clamp)
    fb, lb = image_features(reference, classifier, data, clamp)
    k = int(_classifier(classifier).head.out_features)

    def hist(lab):
        return torch.bincount(lab, minlength=k).double() / len(lab)

    return {"fd": frechet_distance(fa, fb), "class_hist": hist(la), "class_hist_reference": hist(lb),
            "n": int(len(fa)), "n_reference": int(len(fb)), "predicted": la}


def frechet_digits(samples, reference="test", classifier="digits-classifier", clamp: bool = True) -> dict:
    """Fréchet distance of digits ``samples`` to ``reference`` in the classifier's penultimate features.

    ``samples``: (M, 1, 8, 8) in [−1, 1] (clipped to it when ``clamp``); ``reference``: images or a
    digits split name (default the test split, 360 images).  Returns ``{"fd": float, "class_hist":
    (10,) float64 fractions of predicted classes of the samples, "class_hist_reference": the same for
    the reference, "n": M, "n_reference": M', "predicted": (M,) predicted classes}``.  Compare ``fd`` with
    :func:`frechet_digits_floor` at a similar M: FD is biased upwards for small sample sets.
    """
    return _frechet(samples, reference, classifier, "digits", clamp)


def frechet_mnist(samples, reference="test", classifier="mnist-classifier", clamp: bool = True,
                  labels=None) -> dict:
    """Fréchet-MNIST: :func:`frechet_digits` for 28×28 MNIST samples (M, 1, 28, 28) in ``mnist-classifier``'s
    penultimate features; ``reference`` images or an MNIST split name (default the test split, 1,000 images).

    ``labels`` (M,) — the classes the samples were conditioned on: adds ``"class_accuracy"``, the fraction the
    classifier assigns to the requested class (a check of conditional / guided sampling).
    """
    out = _frechet(samples, reference, classifier, "mnist", clamp)
    if labels is not None:
        lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1).expand(out["n"])
        out["class_accuracy"] = float((out["predicted"] == lab).double().mean())
    return out


def frechet_image(samples, data: str = "digits") -> dict:
    """The Fréchet metric of an image data set by name (:data:`dpmsched.data.IMAGE_SETS`): :func:`frechet_digits`
    for "digits", :func:`frechet_mnist` for "mnist", each against its test split; an unknown name raises
    ValueError."""
    image_set(data)
    return (frechet_digits if data == "digits" else frechet_mnist)(samples)


def frechet_digits_floor(classifier="digits-classifier") -> float:
    """The floor of :func:`frechet_digits`: FD(train split (1,437), test split (360)).

    Two finite samples of the same distribution; a generator whose samples reach this value (with
    about 1,437 samples against the test split) is as good as this metric can tell.
    """
    return frechet_digits("train", "test", classifier)["fd"]


def frechet_mnist_floor(classifier="mnist-classifier") -> float:
    """The floor of :func:`frechet_mnist`: FD(train split (4,000), test split (1,000)) of the MNIST sample."""
    return frechet_mnist("train", "test", classifier)["fd"]
