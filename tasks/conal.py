"""CoNAL: learning from crowds by modelling common confusions (Chu, Ma and Wang, AAAI 2021).

A classifier gives p(y | x), the denoised prediction. Each annotator's labels are explained by a
mixture of a global confusion matrix G, shared by everyone, and the annotator's own L_r:

    p_r(l | x) = w_r(x) * sum_y p(y|x) G[y, l] + (1 - w_r(x)) * sum_y p(y|x) L_r[y, l]
    w_r(x) = sigmoid(<u(x) / |u(x)|, e_r / |e_r|>)

with u an auxiliary network on the frame embedding and e_r a learned annotator embedding (the
paper's one-hot user feature through a linear layer is the same thing as a learned table). Rows
of G and L_r are softmaxes of free parameters initialised to `confusion_init` * I. The loss is
the cross-entropy of p_r on the labelled pairs minus lambda * sum_r ||L_r - G||_F: the
regulariser pushes the individual matrices away from the common one so that G captures what
everyone shares; on row-stochastic matrices it is bounded, so the small lambda cannot diverge.

Differences from `crowdkit.learning.CoNAL` (1.4.2): its output adds a probability to a
log-probability (see STACK-NOTES), its G is not row-normalised, its auxiliary network has no
non-linearity and a lazily initialised first layer. Here the output is the paper's mixture of
probabilities, and `annotator_logits` are its logs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tasks.heads import AnnotatorHead, labelled_pairs


class ConalHead(AnnotatorHead):
    """CoNAL on frame embeddings; `confusions()` gives the row-stochastic G and L_r.

    >>> head = ConalHead(dim=16, n_annotators=3, n_classes=4)
    >>> head.annotator_logits(torch.zeros(5, 16)).shape, head.consensus_logits(torch.zeros(5, 16)).shape
    (torch.Size([5, 3, 4]), torch.Size([5, 4]))
    >>> g, local = head.confusions(); local.shape
    torch.Size([3, 4, 4])
    """

    kind = "conal"

    def __init__(self, dim: int, n_annotators: int, n_classes: int, embedding_dim: int = 20,
                 aux_hidden: int = 128, lambda_: float = 1e-5, confusion_init: float = 2.0) -> None:
        super().__init__()
        self.n_annotators, self.n_classes, self.lambda_ = n_annotators, n_classes, lambda_
        self.aux_hidden, self.confusion_init = aux_hidden, confusion_init
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_classes)
        eye = confusion_init * torch.eye(n_classes)
        self.global_confusion = nn.Parameter(eye.clone())
        self.annotator_confusion = nn.Parameter(eye.repeat(n_annotators, 1, 1))
        self.aux = nn.Sequential(nn.Linear(dim, aux_hidden), nn.GELU(), nn.Linear(aux_hidden, embedding_dim))
        self.embedding = nn.Parameter(torch.randn(n_annotators, embedding_dim) / embedding_dim ** 0.5)

    def confusions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """G (C, C) and L (R, C, C), rows = true class, columns = given label, rows sum to 1."""
        return F.softmax(self.global_confusion, dim=-1), F.softmax(self.annotator_confusion, dim=-1)

    def _parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.norm(z)
        p = F.softmax(self.classifier(h).float(), dim=-1)
        u = F.normalize(self.aux(h).float(), dim=-1)
        return h, p, u

    def _weights(self, u: torch.Tensor, annotator: torch.Tensor | None = None) -> torch.Tensor:
        e = F.normalize(self.embedding, dim=-1)
        if annotator is None:
            return torch.sigmoid(u @ e.T)  # (n, R)
        return torch.sigmoid((u * e[annotator]).sum(-1))  # (pairs,)

    def annotator_logits(self, z: torch.Tensor) -> torch.Tensor:
        """log p_r(l | x) for every annotator, (n, R, C)."""
        _, p, u = self._parts(z)
        g, local = self.confusions()
        w = self._weights(u)[..., None]
        common = (p @ g)[:, None, :]
        own = torch.einsum("nc,rcl->nrl", p, local)
        return torch.log((w * common + (1 - w) * own).clamp_min(1e-12))

    def consensus_logits(self, z: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.classifier(self.norm(z)).float(), dim=-1)

    def loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        frame, annotator, label = labelled_pairs(labels)
        _, p, u = self._parts(z)
        g, local = self.confusions()
        p = p[frame]
        w = self._weights(u[frame], annotator)
        # probability of the given label only: p @ M[:, l] for the pair's label l
        common = (p * g[:, label].T).sum(-1)
        own = (p * local[annotator, :, label]).sum(-1)
        nll = -torch.log((w * common + (1 - w) * own).clamp_min(1e-12)).mean()
        return nll - self.lambda_ * torch.linalg.matrix_norm(local - g).sum()

    def annotator_embeddings(self) -> torch.Tensor:
        return self.embedding.detach()

    def spec_options(self) -> dict[str, Any]:  # JSON boundary: the head's section of model.json
        return {"lambda_": self.lambda_, "embedding_dim": int(self.embedding.shape[1]),
                "aux_hidden": self.aux_hidden, "confusion_init": self.confusion_init}

    @torch.no_grad()
    def add_annotators(self, n: int) -> None:
        """New annotators start with the mean embedding and L_r equal to the current G."""
        rows = self.embedding.mean(dim=0, keepdim=True).expand(n, -1).clone()
        self.embedding = nn.Parameter(torch.cat([self.embedding.detach(), rows]))
        new = self.global_confusion.detach()[None].expand(n, -1, -1).clone()
        self.annotator_confusion = nn.Parameter(torch.cat([self.annotator_confusion.detach(), new]))
        self.n_annotators += n
