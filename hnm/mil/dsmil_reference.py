"""The `reference` DSMIL variant: the bag branch of the HNM authors' code, which the paper trained.

The authors' `BClassifier` (nonlinear, no dropout) passes every patch through one shared layer
g = ReLU(Linear(d, d)(h)) and takes both the query q = Tanh(Linear(d, 128)(g)) and the value
v = Linear(d, d)(g) from it; the critical instance m = argmax_i s_i is chosen on the instance
logits of the raw features, but its query, like every other, comes from g. Then
A = softmax_i(q_i . q_m / sqrt(128)), B = A^T v and bag logit = Conv1d(1, 1, kernel d)(B).

`forward` computes this in the authors' order, v for every patch and then A^T v, so that it is a
check of `forward_batch`, which pools first: v is affine in g and A sums to 1, so
A^T v = Linear(d, d)(A^T g), and the d x d value map runs once per bag instead of once per patch.
The shared layer g cannot be skipped that way (the ReLU is not affine): this variant pays one
N x d x d product per bag that the `fast` one (hnm.mil.dsmil) does not.
"""

from __future__ import annotations

import torch
from torch import nn

from hnm.mil.batch import NEG_INF, BagBatch, map_rows, pad, pool_rows
from hnm.mil.dsmil import QUERY_DIM, CriticalInstanceAttention


class ReferenceDSMIL(CriticalInstanceAttention):
    """DSMIL with the authors' shared-layer bag branch (`mil.dsmil: reference`)."""

    variant = "reference"

    def __init__(self, feature_dim: int, query_dim: int = QUERY_DIM) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.query_dim = query_dim
        self.instance = nn.Linear(feature_dim, 1)
        self.shared = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.ReLU())
        self.query = nn.Sequential(nn.Linear(feature_dim, query_dim), nn.Tanh())
        self.value = nn.Linear(feature_dim, feature_dim)
        self.bag = nn.Conv1d(1, 1, kernel_size=feature_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bag logit (), instance logits (N,)) for one bag h (N, d), in the authors' order."""
        instance_logits, shared, attention = self.instance_shared_attention(h)
        bag_embedding = attention @ self.value(shared)  # B = A^T v, v for every patch
        return self.classify(bag_embedding.unsqueeze(0)).view(()), instance_logits

    def instance_shared_attention(
        self, h: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Instance logits (N,), shared features g (N, d) and attention A (N,) of one bag."""
        instance_logits, shared, queries = self._project(h)
        return instance_logits, shared, self.critical_attention(instance_logits, queries)

    def forward_batch(self, batch: BagBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(bag logits (B,), instance logits (B, Lmax) with -inf on padding) of B bags at once."""
        projected = map_rows(self._project, batch)
        instance_logits = pad([instance for instance, _, _ in projected], NEG_INF)
        shared = [bag_shared for _, bag_shared, _ in projected]
        queries = [bag_queries for _, _, bag_queries in projected]
        attention = self.batch_attention(instance_logits, queries, batch.mask)
        return self.bag_branch(attention, shared), instance_logits

    def _project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each row's instance logit (N,), shared features g (N, d) and query (N, query_dim)."""
        shared = self.shared(h)
        return self.instance(h).squeeze(-1), shared, self.query(shared)

    def bag_branch(self, attention: torch.Tensor, shared: list[torch.Tensor]) -> torch.Tensor:
        """(B,) bag logits from the padded attention and each bag's g: Conv1d(value(A^T g))."""
        return self.classify(self.value(pool_rows(attention, shared)))  # == A^T v
