"""Batched k-means in torch, for the self-training targets and the random codec's codebooks.

Seeding is k-means++ on a random subsample (at most 32 points per cluster), so its k passes
stay cheap for the ST stage's millions of frames; Lloyd iterations then use every point.
Distances are computed in chunks so memory stays O(chunk × k).
"""
from __future__ import annotations

import torch


def _nearest(points: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of, and squared distance to, the nearest centroid: points (N, D), centroids (K, D) -> (N,), (N,)."""
    centroid_norms = (centroids * centroids).sum(dim=1)
    indices, distances = [], []
    for start in range(0, points.shape[0], chunk):
        block = points[start:start + chunk]
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2 ; |x|^2 is constant per row for the argmin
        scores = centroid_norms[None, :] - 2.0 * block @ centroids.T
        best, index = scores.min(dim=1)
        indices.append(index)
        distances.append((best + (block * block).sum(dim=1)).clamp_min(0))
    return torch.cat(indices), torch.cat(distances)


def kmeans(points: torch.Tensor, k: int, iterations: int = 50, seed: int = 0, tolerance: float = 1e-6,
           init: str = "kmeans++", allow_repeats: bool = False) -> torch.Tensor:
    """Lloyd's algorithm. points (N, D) float -> centroids (k, D) float32.

    ``init``: 'kmeans++' (better optimum, k passes over a subsample) or 'random' (k distinct points,
    instant). Empty clusters are re-seeded with the points farthest from their centroid, so all k
    codes stay in use. ``allow_repeats``: with fewer than k points, repeat some as centroids instead
    of failing (a codebook fitted to a small corpus).
    """
    points = points.float()
    n = points.shape[0]
    generator = torch.Generator(device=points.device).manual_seed(seed)
    if n < k:
        if not allow_repeats:
            raise ValueError(f"k-means needs at least k={k} points, got {n}: extract more clips (--num-clips) "
                             f"or lower --k.")
        return points[torch.randint(n, (k,), generator=generator, device=points.device)].clone()
    order = torch.randperm(n, generator=generator, device=points.device)
    if init == "kmeans++":
        centroids = _kmeans_plus_plus(points[order[: min(n, 32 * k)]], k, generator)
    elif init == "random":
        centroids = points[order[:k]].clone()
    else:
        raise ValueError(f"k-means init must be 'kmeans++' or 'random', got {init!r}")
    previous = float("inf")
    for _ in range(iterations):
        assignment, distance = _nearest(points, centroids)
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None].float()
        empty = int((~filled).sum())
        if empty:
            centroids[~filled] = points[distance.topk(empty).indices]
        inertia = float(distance.mean())
        if empty == 0 and abs(previous - inertia) <= tolerance * max(previous, 1e-12):
            break
        previous = inertia
    return centroids


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each next centre drawn with probability proportional to squared distance."""
    first = int(torch.randint(points.shape[0], (1,), generator=generator, device=points.device))
    centroids = [points[first]]
    closest = ((points - points[first]) ** 2).sum(dim=1)
    for _ in range(1, k):
        weights = closest.clamp_min(0)
        index = int(torch.multinomial(weights / weights.sum(), 1, generator=generator)) if weights.sum() > 0 else \
            int(torch.randint(points.shape[0], (1,), generator=generator, device=points.device))
        centroids.append(points[index])
        closest = torch.minimum(closest, ((points - points[index]) ** 2).sum(dim=1))
    return torch.stack(centroids).clone()


def assign(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid index of each point: (N, D) -> (N,) long."""
    return _nearest(points.float(), centroids.float())[0]
