"""The multi-annotator head of the MABe 2021 winning solution.

LayerNorm of the frame embedding h, then a residual MLP whose input is h concatenated with a
learned annotator embedding e_r (initialised to the identity: one row per annotator), then a
linear classifier shared by all annotators:

    logits_r(x) = W (h + MLP([h, e_r])) + b,   h = LayerNorm(z(x))

so every annotator gets an output for every frame, and annotators who label alike end up with
nearby embeddings (the MABe notebook clusters them).

Consensus: the mean over annotators of the per-annotator probabilities, i.e. what an annotator
drawn at random from the pool would say. It needs no extra parameters or targets, is defined for
every input, follows the pool when annotators are added, and a near-random annotator, whose
predicted distribution is flat, barely moves its argmax (majority vote counts such an annotator's
label as much as anyone's). Its limit: a systematic style shared by most of the pool is the
consensus (as with majority vote); CoNAL's denoised classifier is the alternative then.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.encoders import Dropout
from tasks.heads import AnnotatorHead, labelled_pairs


class MultiAnnotatorHead(AnnotatorHead):
    """One output per annotator for every frame, from a shared residual MLP and learned embeddings.

    >>> head = MultiAnnotatorHead(dim=16, n_annotators=3, n_classes=4)
    >>> head.annotator_logits(torch.zeros(5, 16)).shape
    torch.Size([5, 3, 4])
    >>> head.add_annotators(2); head.annotator_embeddings().shape
    torch.Size([5, 3])
    """

    kind = "multi_annotator"

    def __init__(self, dim: int, n_annotators: int, n_classes: int, hidden: int = 64,
                 embedding_dim: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        self.n_annotators, self.n_classes, self.hidden, self.dropout = n_annotators, n_classes, hidden, dropout
        e = embedding_dim or n_annotators
        init = torch.zeros(n_annotators, e)
        k = min(n_annotators, e)
        init[:k, :k] = torch.eye(k)
        self.embedding = nn.Parameter(init)
        self.norm = nn.LayerNorm(dim)
        # the first layer on [h, e_r], split in two so that h's part is computed once per frame
        self.in_frame = nn.Linear(dim, hidden)
        self.in_annotator = nn.Linear(e, hidden, bias=False)
        self.act = nn.GELU()
        self.drop = Dropout(dropout)
        self.out = nn.Linear(hidden, dim)
        self.classifier = nn.Linear(dim, n_classes)

    def _logits(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """h: (..., dim) normalised frames, a: (..., hidden) annotator parts, broadcastable."""
        residual = self.out(self.drop(self.act(self.in_frame(h) + a)))
        return self.classifier(h + residual)

    def annotator_logits(self, z: torch.Tensor) -> torch.Tensor:
        h = self.norm(z)
        a = self.in_annotator(self.embedding)  # (R, hidden)
        return self._logits(h[:, None, :], a[None, :, :]).float()

    def consensus_logits(self, z: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.annotator_logits(z), dim=-1).mean(dim=1)
        return torch.log(probs.clamp_min(1e-12))

    def loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the labelled (frame, annotator) pairs; -1 is ignored."""
        frame, annotator, label = labelled_pairs(labels)
        h = self.norm(z)
        a = self.in_annotator(self.embedding)
        logits = self._logits(h[frame], a[annotator]).float()
        return F.cross_entropy(logits, label)

    def annotator_embeddings(self) -> torch.Tensor:
        return self.embedding.detach()

    def spec_options(self) -> dict[str, Any]:  # JSON boundary: the head's section of model.json
        """The embedding size is the table's (one per annotator at first): it rebuilds a grown head."""
        return {"hidden": self.hidden, "embedding_dim": int(self.embedding.shape[1]), "dropout": self.dropout}

    @torch.no_grad()
    def add_annotators(self, n: int) -> None:
        """Append n embedding rows, each the mean of the existing rows (an "average annotator")."""
        rows = self.embedding.mean(dim=0, keepdim=True).expand(n, -1)
        self.embedding = nn.Parameter(torch.cat([self.embedding.detach(), rows.clone()]))
        self.n_annotators += n
