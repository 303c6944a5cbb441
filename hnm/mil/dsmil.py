"""DSMIL (Li et al., CVPR 2021), binary, in the layout the HNM paper trains (docs/method.md).

Instance branch: s_i = Linear(d, 1)(h_i). Bag branch: the critical instance m = argmax_i s_i;
q = Tanh(Linear(128, 128)(ReLU(Linear(d, 128)(h)))); A = softmax_i(q_i . q_m / sqrt(128));
v = Linear(d, d)(h); B = A^T v; bag logit = Conv1d(1, 1, kernel d)(B).

One algebraic shortcut, exact up to float rounding: because the attention weights sum to 1,
A^T (h W^T + b) = (A^T h) W^T + b. Pooling the raw features first costs N*d + d^2 instead of N*d^2,
which removes the largest matrix product of a training step on bags of thousands of patches.
"""

from __future__ import annotations

import math

import torch
from torch import nn

QUERY_DIM = 128


class DSMIL(nn.Module):
    def __init__(self, feature_dim: int, query_dim: int = QUERY_DIM) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.query_dim = query_dim
        self.instance = nn.Linear(feature_dim, 1)
        self.query = nn.Sequential(
            nn.Linear(feature_dim, query_dim),
            nn.ReLU(),
            nn.Linear(query_dim, query_dim),
            nn.Tanh(),
        )
        self.value = nn.Linear(feature_dim, feature_dim)
        self.bag = nn.Conv1d(1, 1, kernel_size=feature_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bag logit (), instance logits (N,)) for one bag h (N, d)."""
        instance_logits, attention = self.instance_and_attention(h)
        pooled = attention @ h  # (d,): A^T h, see the module docstring
        bag_embedding = self.value(pooled)  # == A^T v
        bag_logit = self.bag(bag_embedding.view(1, 1, -1)).view(())
        return bag_logit, instance_logits

    def instance_and_attention(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance logits (N,) and attention A (N,) over the bag, kept separate for inspection."""
        instance_logits = self.instance(h).squeeze(-1)
        critical = torch.argmax(instance_logits.detach())
        queries = self.query(h)
        similarity = queries @ queries[critical] / math.sqrt(self.query_dim)
        return instance_logits, torch.softmax(similarity, dim=0)
