"""Gated-attention MIL (Ilse, Tomczak & Welling, ICML 2018): the usual comparison aggregator.

a_i = w^T (tanh(V h_i) * sigmoid(U h_i)); A = softmax_i(a_i); bag logit = Linear(d, 1)(A^T h).
The per-patch scores it returns are the attention logits a_i. They rank patches by how much the
bag prediction leans on them, but they are NOT calibrated instance probabilities: sigmoid(a_i)
has no meaning as P(patch is tumour) unless the instance/ranking losses are trained on them,
which is what hnm's trainer does when it treats them as instance logits.
"""

from __future__ import annotations

import torch
from torch import nn

from hnm.mil.batch import NEG_INF, BagBatch, map_rows, masked_softmax, pad, pool

ATTENTION_DIM = 128


class GatedABMIL(nn.Module):
    def __init__(self, feature_dim: int, attention_dim: int = ATTENTION_DIM) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.attention_v = nn.Linear(feature_dim, attention_dim)
        self.attention_u = nn.Linear(feature_dim, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(feature_dim, 1)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bag logit (), attention logits (N,)) for one bag h (N, d)."""
        attention_logits = self._attention_logits(h)
        pooled = torch.softmax(attention_logits, dim=0) @ h
        return self.classifier(pooled).view(()), attention_logits

    def forward_batch(self, batch: BagBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(bag logits (B,), attention logits (B, Lmax) with -inf on padding) of B bags at once."""
        attention_logits = pad(map_rows(self._attention_logits, batch), NEG_INF)
        pooled = pool(masked_softmax(attention_logits, batch.mask), batch)
        return self.classifier(pooled).view(-1), attention_logits

    def _attention_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(N,) gated-attention logits of the rows of h."""
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        return self.attention_w(gate).squeeze(-1)
