"""The Fréchet distance between Gaussians and streaming Gaussian statistics of features (FDD, FID-style), used by
:mod:`aconvlib.analysis.metrics` and the embedded models' FDD analogue."""
from __future__ import annotations

import os

import numpy as np
import torch

__all__ = ["GaussianStats", "frechet_distance"]


def frechet_distance(mu1, sigma1, mu2, sigma2, *, eps: float = 1e-6,
                     residual_tol: float = 1e-4, imag_tol: float = 1e-3) -> float:
    """Fréchet (2-Wasserstein) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂):
    ``‖μ₁−μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁Σ₂)^{1/2})``.

    The matrix square root is ``scipy.linalg.sqrtm`` in float64. Standard handling of numerical
    trouble (as in the FID reference implementations): when the square root of Σ₁Σ₂ is not finite
    or inaccurate (relative residual ``‖X² − Σ₁Σ₂‖_F / ‖Σ₁Σ₂‖_F > residual_tol``), which happens when
    the product is (near) singular, e.g. fewer samples than feature dimensions, it is recomputed
    as ``sqrtm((Σ₁ + εI)(Σ₂ + εI))``; small imaginary parts from round-off are dropped, and an
    imaginary diagonal larger than ``imag_tol`` raises ``ValueError``.
    """
    from scipy import linalg

    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.ndim != 1 or mu2.ndim != 1:
        raise ValueError(f"means must be vectors, got shapes {mu1.shape} and {mu2.shape}")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: mu1 {mu1.shape} vs mu2 {mu2.shape}")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must be ({d}, {d}) to match the means, got {s.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf")

    diff = mu1 - mu2

    def _sqrt(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, bool]:
        prod = a @ b
        with np.errstate(all="ignore"):
            x = linalg.sqrtm(prod)
        if isinstance(x, tuple):  # very old scipy returning (sqrtm, errest)
            x = x[0]
        if not np.isfinite(x).all():
            return x, False
        norm = np.linalg.norm(prod)
        res = np.linalg.norm(x @ x - prod) / norm if norm > 0 else np.linalg.norm(x)
        return x, bool(res <= residual_tol)

    covmean, ok = _sqrt(sigma1, sigma2)
    if not ok:
        offset = np.eye(d) * eps
        covmean, _ = _sqrt(sigma1 + offset, sigma2 + offset)
        if not np.isfinite(covmean).all():
            raise ValueError("matrix square root of sigma1 @ sigma2 is not finite even with eps*I added")
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=imag_tol):
            m = np.max(np.abs(np.diagonal(covmean).imag))
            raise ValueError(f"imaginary component {m:.3g} in sqrtm(sigma1 @ sigma2) exceeds {imag_tol}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


class GaussianStats:
    """Streaming mean and covariance of feature vectors, in float64.

    Keeps ``n``, a shift ``K`` (the first batch's mean, to avoid cancellation), ``Σ(x−K)`` and
    ``Σ(x−K)(x−K)ᵀ``: memory is O(D²) whatever the number of samples. ``cov`` is unbiased (N−1),
    equal to ``np.cov(X, rowvar=False)`` of all samples at once. ``merge`` combines stats of
    disjoint sets (e.g. from several processes); ``save``/``load`` cache a reference set's stats.
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None

    def update(self, features) -> "GaussianStats":
        """Add a batch ``[B, D]`` (tensor or array; a ``[D]`` vector counts as one sample)."""
        if isinstance(features, torch.Tensor):
            features = features.detach().to("cpu", torch.float64).numpy()
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise ValueError(f"features must be [B, D], got shape {x.shape}")
        if x.shape[0] == 0:
            return self
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"feature dimension {x.shape[1]} does not match the stats' {self.dim}")
        if self._shift is None:
            self._shift = x.mean(0)
            self._sum = np.zeros(self.dim)
            self._outer = np.zeros((self.dim, self.dim))
        y = x - self._shift
        self._sum += y.sum(0)
        self._outer += y.T @ y
        self.n += x.shape[0]
        return self

    @classmethod
    def from_features(cls, features) -> "GaussianStats":
        return cls().update(features)

    def merge(self, other: "GaussianStats") -> "GaussianStats":
        """Stats of the union of the two sample sets (a new object)."""
        if self.dim is not None and other.dim is not None and self.dim != other.dim:
            raise ValueError(f"cannot merge stats of dimension {self.dim} and {other.dim}")
        out = GaussianStats(self.dim if self.dim is not None else other.dim)
        for s in (self, other):
            if s.n == 0:
                continue
            if out._shift is None:
                out._shift, out._sum, out._outer = s._shift.copy(), s._sum.copy(), s._outer.copy()
                out.n = s.n
                continue
            dlt = s._shift - out._shift  # (x − K_out) = (x − K_s) + dlt
            out._sum += s._sum + s.n * dlt
            out._outer += s._outer + np.outer(s._sum, dlt) + np.outer(dlt, s._sum) + s.n * np.outer(dlt, dlt)
            out.n += s.n
        return out

    @property
    def mean(self) -> np.ndarray:
        if self.n < 1:
            raise ValueError("no samples accumulated")
        return self._shift + self._sum / self.n

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        c = (self._outer - np.outer(self._sum, self._sum) / self.n) / (self.n - 1)
        return (c + c.T) / 2

    def save(self, path: str | os.PathLike) -> None:
        if self.n < 1:
            raise ValueError("no samples accumulated")
        np.savez(path, n=self.n, shift=self._shift, sum=self._sum, outer=self._outer)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GaussianStats":
        with np.load(path) as z:
            s = cls(int(z["shift"].shape[0]))
            s.n = int(z["n"])
            s._shift, s._sum, s._outer = z["shift"].copy(), z["sum"].copy(), z["outer"].copy()
        return s

    def __repr__(self) -> str:
        return f"GaussianStats(n={self.n}, dim={self.dim})"
