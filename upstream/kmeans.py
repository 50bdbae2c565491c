"""Batched k-means in torch, for the self-training targets and the random codec's codebooks.

Seeding is greedy k-means++ (scikit-learn's) on a random subsample (at most 32 points per cluster), so
its k passes stay cheap for the ST stage's millions of frames; Lloyd iterations then use every point.
Distances are computed in chunks so memory stays O(chunk × k).
"""
from __future__ import annotations

import math

import torch


class TooFewPointsError(ValueError):
    """Fewer points than clusters: ``k`` and ``points`` say how many of each there were."""

    def __init__(self, k: int, points: int):
        super().__init__(f"k-means needs at least k={k} points, got {points}: give it {k} points or more, "
                         f"or a k of at most {points}")
        self.k, self.points = k, points


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
            raise TooFewPointsError(k, n)
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
        # (the first pass has no previous inertia: inf - x <= tolerance * inf would stop it there)
        if empty == 0 and previous < float("inf") and abs(previous - inertia) <= tolerance * max(previous, 1e-12):
            break
        previous = inertia
    return centroids


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding, as scikit-learn's KMeans does: each next centre is the best, by the
    potential it leaves (sum of squared distances to the nearest centre), of 2 + log(k) candidates drawn
    with probability proportional to squared distance. Plain k-means++ (one candidate) ends some
    per cent higher in inertia at k = 1024."""
    n = points.shape[0]
    trials = 2 + int(math.log(k))
    norms = (points * points).sum(dim=1)
    first = int(torch.randint(n, (1,), generator=generator, device=points.device))
    chosen = [first]
    closest = (norms - 2.0 * points @ points[first] + norms[first]).clamp_min(0)
    for _ in range(1, k):
        potential = closest.sum()
        if float(potential) <= 0:  # every point is a centre already: any point will do
            chosen.append(int(torch.randint(n, (1,), generator=generator, device=points.device)))
            continue
        draws = torch.rand(trials, generator=generator, device=points.device, dtype=closest.dtype) * potential
        candidates = torch.searchsorted(closest.cumsum(0), draws).clamp_max(n - 1)        # (trials,)
        to_candidates = (norms[None, :] - 2.0 * points[candidates] @ points.T + norms[candidates, None]).clamp_min(0)
        after = torch.minimum(closest[None, :], to_candidates)                          # (trials, n)
        best = int(after.sum(dim=1).argmin())
        chosen.append(int(candidates[best]))
        closest = after[best]
    return points[torch.tensor(chosen, device=points.device)].clone()


def assign(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid index of each point: (N, D) -> (N,) long."""
    return _nearest(points.float(), centroids.float())[0]
