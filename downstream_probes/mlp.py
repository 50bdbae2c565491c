"""The one MLP of every probe, on time-pooled upstream features."""
from __future__ import annotations

import torch
import torch.nn as nn


class PooledMLP(nn.Module):
    """The one MLP of every probe, on pooled (batch, dim) features: [Linear -> BatchNorm1d -> Dropout -> ReLU] x
    ``hidden_layers`` -> Linear, the HEAR kit's layout (heareval ``FullyConnectedPrediction``; a Dropout before
    or after the ReLU gives the same values, as a ReLU commutes with a positive scale).

    ``init`` None keeps PyTorch's default initialisation (the s3prl runner probes). ``'xavier_uniform'`` /
    ``'xavier_normal'`` (the HEAR protocol): each Linear keeps PyTorch's default bias; its weight is redrawn right
    after it is built (the kit's order of random draws) with the gain ``calculate_gain`` of what precedes it:
    'linear' (1) for the input, 'relu' (sqrt 2) after a hidden layer."""

    def __init__(self, input_dim: int, num_classes: int, hidden_dim: int = 1024, hidden_layers: int = 1,
                 dropout: float = 0.1, init: str | None = None):
        super().__init__()
        init_weight = getattr(nn.init, init + "_") if init else None
        blocks, width, previous = [], input_dim, "linear"
        for _ in range(hidden_layers):
            linear = nn.Linear(width, hidden_dim)
            if init_weight:
                init_weight(linear.weight, gain=nn.init.calculate_gain(previous))
            blocks += [linear, nn.BatchNorm1d(hidden_dim), nn.Dropout(dropout), nn.ReLU()]
            width, previous = hidden_dim, "relu"
        projection = nn.Linear(width, num_classes)
        if init_weight:
            init_weight(projection.weight, gain=nn.init.calculate_gain(previous))
        self.mlp = nn.Sequential(*blocks, projection)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (batch, dim) -> logits (batch, classes)."""
        return self.mlp(pooled)
