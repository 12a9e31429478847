"""Metric math: Gaussian statistics of embeddings and the Fréchet distance between them (FAD, FID).

    d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))

Tr((S1 S2)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
S1^(1/2) S2 S1^(1/2), which has the same eigenvalues as S1 S2. Both steps are symmetric eigendecompositions
(`numpy.linalg.eigh`), so there are no complex parts to discard and no failure on singular covariances, which
are the rule here: 512 samples of 2,048-d features, or a few test clips of 128-d VGGish embeddings, give rank-
deficient covariances. Tiny negative eigenvalues from rounding are clamped to 0.

Statistics of large reference sets are accumulated in batches (`StatsAccumulator`, Chan et al.'s pairwise
update of mean and scatter matrix in float64), so a test split never has to fit in memory at once.
Pure numpy; no Ray or MLflow here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GaussianStats:
    """Mean [D], covariance [D, D] (unbiased, ddof=1, as FID/FAD reference code uses) and sample count."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int

    def __post_init__(self) -> None:
        mu, sigma = np.asarray(self.mu), np.asarray(self.sigma)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"need mu [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")

    @property
    def dim(self) -> int:
        return int(np.asarray(self.mu).shape[0])


def _as_features(features) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [M, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    return x


def embedding_statistics(features) -> GaussianStats:
    """(mu, sigma) of features [M, D]; needs M >= 2 for a covariance."""
    x = _as_features(features)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {x.shape[0]}")
    return GaussianStats(x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1]), x.shape[0])


class StatsAccumulator:
    """Running mean and covariance over batches of features [m, D] (float64, numerically stable merge)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None  # sum of outer products of deviations from the mean

    def update(self, features) -> StatsAccumulator:
        x = _as_features(features)
        m = x.shape[0]
        if m == 0:
            return self
        if self.mean is not None and x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"feature width changed from {self.mean.shape[0]} to {x.shape[1]}")
        batch_mean = x.mean(axis=0)
        dev = x - batch_mean
        batch_scatter = dev.T @ dev
        if self.mean is None:
            self.count, self.mean, self.scatter = m, batch_mean, batch_scatter
            return self
        n = self.count + m
        delta = batch_mean - self.mean
        self.scatter = self.scatter + batch_scatter + np.outer(delta, delta) * (self.count * m / n)
        self.mean = self.mean + delta * (m / n)
        self.count = n
        return self

    def stats(self) -> GaussianStats:
        if self.count < 2 or self.mean is None or self.scatter is None:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        return GaussianStats(self.mean.copy(), self.scatter / (self.count - 1), self.count)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (negative eigenvalues from rounding clamp to 0)."""
    sym = (matrix + matrix.T) / 2.0
    vals, vecs = np.linalg.eigh(sym)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2."""
    root1 = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    inner = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1
    vals = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); >= 0 up to rounding (clamped at 0)."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"means must be vectors of one width, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be [{d}, {d}], got {s1.shape} and {s2.shape}")
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
    return max(value, 0.0)


def frechet_distance_stats(a: GaussianStats, b: GaussianStats) -> float:
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def frechet_distance_features(features_a, features_b) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets [Ma, D] and [Mb, D]."""
    return frechet_distance_stats(embedding_statistics(features_a), embedding_statistics(features_b))
