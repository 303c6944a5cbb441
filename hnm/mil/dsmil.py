"""DSMIL (Li et al., CVPR 2021), binary: the `fast` bag branch and what both variants share.

hnm has two DSMIL variants, chosen with `mil.dsmil` (docs/method.md, "The two DSMIL variants").
Both have the instance branch s_i = Linear(d, 1)(h_i), pick the critical instance m = argmax_i s_i
(detached: argmax has no gradient), attend from it, A = softmax_i(q_i . q_m / sqrt(128)), and end in
bag logit = Conv1d(1, 1, kernel d)(A^T v). They differ in q and v:

- `reference` (hnm.mil.dsmil_reference): the HNM authors' `BClassifier`, the one the paper trained:
  a shared layer g = ReLU(Linear(d, d)(h)), q = Tanh(Linear(d, 128)(g)), v = Linear(d, d)(g);
- `fast` (this module, the default): the original DSMIL code's two-layer query on the raw
  features, q = Tanh(Linear(128, 128)(ReLU(Linear(d, 128)(h)))), and v = Linear(d, d)(h). It has no
  d x d layer over every patch, which makes it several times cheaper per step on a CPU. It is not
  the layout the paper's numbers come from.

One algebraic shortcut serves both, exact up to float rounding: because the attention weights sum
to 1, A^T (x W^T + b) = (A^T x) W^T + b for the rows x the value map reads (h here, g in the
reference variant). Pooling first costs N*d + d^2 instead of N*d^2, which removes the largest
matrix product of a training step on bags of thousands of patches.

`forward` takes one bag (kept for inspection and tests); `forward_batch` takes a BagBatch
(hnm.mil.batch) and is what training and scoring run. A state dict names its variant by its keys,
and loading one variant's weights into the other is refused with an error that says so, rather
than with torch's list of missing and unexpected keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from hnm.core.errors import CheckpointError
from hnm.mil.batch import NEG_INF, BagBatch, map_rows, masked_softmax, pad, pool

QUERY_DIM = 128

# A key only one variant's state dict has: the reference variant's shared layer, the fast one's
# second query layer.
_VARIANT_KEYS = {"reference": "shared.0.weight", "fast": "query.2.weight"}


def state_dict_variant(state_dict: Mapping[str, Any]) -> str | None:
    """The DSMIL variant whose weights `state_dict` holds, or None when it is neither's."""
    found = [variant for variant, key in _VARIANT_KEYS.items() if key in state_dict]
    return found[0] if len(found) == 1 else None


class CriticalInstanceAttention(nn.Module):
    """The parts both DSMIL variants share: attention from the critical instance, the Conv1d bag
    classifier, and the refusal of the other variant's weights. A subclass sets `variant` and
    `query_dim` and defines `instance` (Linear(d, 1)) and `bag` (Conv1d(1, 1, d))."""

    variant: ClassVar[str]
    query_dim: int
    instance: nn.Linear
    bag: nn.Conv1d

    def critical_attention(
        self, instance_logits: torch.Tensor, queries: torch.Tensor
    ) -> torch.Tensor:
        """(N,) attention of one bag on its critical instance, from its (N,) instance logits and
        (N, query_dim) queries."""
        critical = torch.argmax(instance_logits.detach())
        similarity = queries @ queries[critical] / math.sqrt(self.query_dim)
        return torch.softmax(similarity, dim=0)

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

    def classify(self, bag_embeddings: torch.Tensor) -> torch.Tensor:
        """(B,) bag logits of (B, d) bag embeddings B = A^T v."""
        return self.bag(bag_embeddings.unsqueeze(1)).view(-1)

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """torch's load, after refusing the other variant's weights with a message that names
        both variants and the setting (a checkpoint, a model.pt or a selected epoch's state)."""
        found = state_dict_variant(state_dict)
        if found is not None and found != self.variant:
            raise CheckpointError(
                f"these weights are of the '{found}' DSMIL variant but the model is the "
                f"'{self.variant}' one: the two bag branches have different layers; load them "
                f"with mil.dsmil: {found}, or retrain with mil.dsmil: {self.variant}"
            )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class DSMIL(CriticalInstanceAttention):
    """The `fast` variant: two-layer query and linear value map on the raw features."""

    variant = "fast"

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
        return self.classify(bag_embedding.unsqueeze(0)).view(()), instance_logits

    def instance_and_attention(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance logits (N,) and attention A (N,) over the bag, kept separate for inspection."""
        instance_logits = self.instance(h).squeeze(-1)
        return instance_logits, self.critical_attention(instance_logits, self.query(h))

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

    def bag_branch(self, attention: torch.Tensor, batch: BagBatch) -> torch.Tensor:
        """(B,) bag logits from the padded attention: Conv1d(value(A^T h)) per bag."""
        return self.classify(self.value(pool(attention, batch)))  # value(A^T h) == A^T v
