"""Crowd layer, MW variant (Rodrigues and Pereira, "Deep learning from crowds", AAAI 2018).

A classifier gives the consensus logits c(x) (C,); annotator r's logits are a learned C x C
matrix applied to them:

    logits_r(x) = W_r c(x),   W_r initialised to the identity

so at the start every annotator says what the classifier says, and W_r learns how r departs from
it (a swap of two classes is a permutation block in W_r). The loss is the cross-entropy of the
labelled (item, annotator) pairs; `identity_decay` optionally pulls every W_r towards the
identity (an L2 penalty on W_r - I, per matrix entry and pair), which keeps annotators who gave
few labels close to the consensus. The consensus is the classifier's softmax.

The annotator embedding is W_r flattened (C * C values per annotator).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.heads import AnnotatorHead, labelled_pairs


class CrowdLayerHead(AnnotatorHead):
    """A classifier and one C x C matrix per annotator on its logits.

    >>> head = CrowdLayerHead(dim=16, n_annotators=3, n_classes=4)
    >>> head.annotator_logits(torch.zeros(5, 16)).shape, head.consensus_logits(torch.zeros(5, 16)).shape
    (torch.Size([5, 3, 4]), torch.Size([5, 4]))
    >>> head.annotator_embeddings().shape
    torch.Size([3, 16])
    """

    kind = "crowd_layer"

    def __init__(self, dim: int, n_annotators: int, n_classes: int, identity_decay: float = 0.0) -> None:
        super().__init__()
        self.n_annotators, self.n_classes, self.identity_decay = n_annotators, n_classes, identity_decay
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_classes)
        self.weight = nn.Parameter(torch.eye(n_classes).repeat(n_annotators, 1, 1))  # (R, C, C)

    def _consensus(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.norm(z)).float()

    def annotator_logits(self, z: torch.Tensor) -> torch.Tensor:
        """(n, R, C): logits_r = W_r c(x) for every annotator."""
        return torch.einsum("rlc,nc->nrl", self.weight, self._consensus(z))

    def consensus_logits(self, z: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self._consensus(z), dim=-1)

    def loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the labelled pairs (+ the pull towards the identity when asked)."""
        frame, annotator, label = labelled_pairs(labels)
        c = self._consensus(z)[frame]
        logits = torch.einsum("plc,pc->pl", self.weight[annotator], c)
        loss = F.cross_entropy(logits, label)
        if self.identity_decay:
            eye = torch.eye(self.n_classes, device=self.weight.device)
            loss = loss + self.identity_decay * ((self.weight[annotator] - eye) ** 2).mean()
        return loss

    def annotator_embeddings(self) -> torch.Tensor:
        return self.weight.detach().reshape(self.n_annotators, -1)

    def spec_options(self) -> dict[str, Any]:  # JSON boundary: the head's section of model.json
        return {"identity_decay": self.identity_decay}

    @torch.no_grad()
    def add_annotators(self, n: int) -> None:
        """New annotators start at the mean matrix of the others (an "average annotator")."""
        rows = self.weight.detach().mean(dim=0, keepdim=True).expand(n, -1, -1).clone()
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), rows]))
        self.n_annotators += n
