"""DSMIL (Li et al., CVPR 2021), binary, in the layout the HNM paper trains (docs/method.md).

Instance branch: s_i = Linear(d, 1)(h_i). Bag branch: the critical instance m = argmax_i s_i;
q = Tanh(Linear(128, 128)(ReLU(Linear(d, 128)(h)))); A = softmax_i(q_i . q_m / sqrt(128));
v = Linear(d, d)(h); B = A^T v; bag logit = Conv1d(1, 1, kernel d)(B).

One algebraic shortcut, exact up to float rounding: because the attention weights sum to 1,
A^T (h W^T + b) = (A^T h) W^T + b. Pooling the raw features first costs N*d + d^2 instead of N*d^2,
which removes the largest matrix product of a training step on bags of thousands of patches.

`forward` takes one bag (the reference, kept for inspection and tests); `forward_batch` takes a
BagBatch (hnm.mil.batch) and is what training and scoring run. Its bag branch, `bag_branch`,
accepts the padded/masked batch (attention (B, Lmax), zero on padding), so a variant of the bag
branch is one more method of that signature.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hnm.mil.batch import NEG_INF, BagBatch, map_rows, masked_softmax, pad, pool

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

    def forward_batch(self, batch: BagBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(bag logits (B,), instance logits (B, Lmax) with -inf on padding) of B bags at once."""
        projected = map_rows(self._project, batch)
        instance_logits = pad([instance for instance, _ in projected], NEG_INF)
        queries = [bag_queries for _, bag_queries in projected]
        attention = self.batch_attention(instance_logits, queries, batch.mask)
        return self.bag_branch(attention, batch), instance_logits

    def _project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's instance logit (N,) and query (N, query_dim)."""
        return self.instance(h).squeeze(-1), self.query(h)

    def batch_attention(
        self, instance_logits: torch.Tensor, queries: list[torch.Tensor], mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, Lmax) attention of each bag on its critical instance: a masked argmax picks it, a
        masked softmax normalises. Queries stay per bag: padding them would copy N x 128 floats
        (and their gradients) per bag, more than the similarity itself costs."""
        critical = torch.argmax(instance_logits.detach(), dim=1, keepdim=True)  # (B, 1)
        # index_select with a (1,) tensor: indexing by a 0-d device tensor would read it back
        similarity = [(q @ q.index_select(0, m).T).squeeze(1) for q, m in zip(queries, critical)]
        return masked_softmax(pad(similarity, NEG_INF) / math.sqrt(self.query_dim), mask)

    def bag_branch(self, attention: torch.Tensor, batch: BagBatch) -> torch.Tensor:
        """(B,) bag logits from the padded attention: Conv1d(value(A^T h)) per bag."""
        bag_embeddings = self.value(pool(attention, batch))  # (B, d) == A^T v
        return self.bag(bag_embeddings.unsqueeze(1)).view(-1)
