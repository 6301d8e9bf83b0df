"""Distances between image sets: Fréchet distance of features, nearest-neighbour L2."""
from __future__ import annotations

import numpy as np
import torch


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative eigenvalues from
    round-off are clipped to 0)."""
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) (eq. 6, Heusel et al. 2017).

    Tr(sqrt(Ca Cb)) is computed as Tr(sqrt(sqrt(Ca) Cb sqrt(Ca))), which is symmetric PSD, so eigh applies.
    """
    a = torch.as_tensor(np.asarray(feats_a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(feats_b), dtype=torch.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N>=2, D) feature arrays of the same D, got {tuple(a.shape)} and {tuple(b.shape)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrtm_psd(ca)
    cross = _sqrtm_psd(root_a @ cb @ root_a)
    fd = (mu_a - mu_b).square().sum() + torch.trace(ca) + torch.trace(cb) - 2 * torch.trace(cross)
    return max(float(fd), 0.0)


def nearest_l2(queries_uint8: np.ndarray, reference_uint8: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Per query, the L2 distance (pixels in [0, 1]) to its nearest reference image."""
    q = torch.from_numpy(queries_uint8.reshape(len(queries_uint8), -1)).double() / 255
    r = torch.from_numpy(reference_uint8.reshape(len(reference_uint8), -1)).double() / 255
    d = torch.cdist(q, r)  # (Q, R)
    if exclude_self:  # queries are the first Q references: skip each image's distance to itself
        d[torch.arange(len(q)), torch.arange(len(q))] = float("inf")
    return d.min(dim=1).values.numpy()
