"""Heads on top of an encoder: the interface every head keeps, the consensus classifier that the
baselines use, and `build_head` that builds the one a config asks for from the head registry
(`configs.heads.HEADS`: a new head is a module with an `AnnotatorHead` subclass, plus its
options model and one `register` line in `configs/heads.py`).

An annotator head maps frame embeddings z (n, dim) to one output per annotator for every frame
(`annotator_logits`, (n, n_annotators, n_classes), also for annotators who never saw the frame)
and a consensus (`consensus_logits`, (n, n_classes) log-probabilities). It trains on a label
matrix (n, n_annotators) with -1 for "not labelled" (`loss`), and it can grow by new annotators
(`add_annotators`) keeping what it learned about the others.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from configs.heads import HEADS
from configs.train import HeadConfig
from tasks.registry import load


def labelled_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (frame, annotator, label) triples of a label matrix, skipping -1."""
    frame, annotator = torch.nonzero(labels >= 0, as_tuple=True)
    return frame, annotator, labels[frame, annotator].long()


class AnnotatorHead(nn.Module):
    """The base of every annotator head (in the manner of crowd-kit's `BaseClassificationAggregator`).

    A head is built as `Head(dim, n_annotators, n_classes, **options)`, where `options` are the
    fields of its options model (`configs.heads`, the config's `train.head.<kind>:` section).
    It must set `kind` (its registered name), `n_annotators` and `n_classes`, and provide:

    - `annotator_logits(z)`: (n, n_annotators, n_classes), every annotator's output for every
      frame embedding, also annotators who never saw the frame (logits or log-probabilities);
    - `consensus_logits(z)`: (n, n_classes) log-probabilities of the consensus;
    - `loss(z, labels)`: a scalar to minimise on a label matrix (n, n_annotators), -1 = not labelled;
    - `annotator_embeddings()`: (n_annotators, e), the learned table of annotator embeddings;
    - `add_annotators(n)`: grow by n annotators (appended), keeping what it learned of the others;
    - `spec_options()`: its options as it is now (after `add_annotators`), what the model's spec
      saves so that `Head(dim, n_annotators, n_classes, **spec_options())` rebuilds it.
    """

    kind: str
    n_annotators: int
    n_classes: int

    def annotator_logits(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def consensus_logits(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def annotator_embeddings(self) -> torch.Tensor:
        raise NotImplementedError

    def add_annotators(self, n: int) -> None:
        raise NotImplementedError

    def spec_options(self) -> dict[str, Any]:  # JSON boundary: the head's section of model.json
        raise NotImplementedError

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.annotator_logits(z), self.consensus_logits(z)


class ClassifierHead(nn.Module):
    """LayerNorm and a linear classifier trained on one label per frame (MV or DS labels).

    >>> head = ClassifierHead(dim=8, n_classes=3)
    >>> head.consensus_logits(torch.zeros(4, 8)).shape
    torch.Size([4, 3])
    """

    kind = "classifier"

    def __init__(self, dim: int, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_classes)

    def consensus_logits(self, z: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.classifier(self.norm(z)).float(), dim=-1)

    def loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target >= 0
        return F.nll_loss(self.consensus_logits(z[keep]), target[keep].long())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.consensus_logits(z)


def build_head(config: HeadConfig, dim: int, n_annotators: int, n_classes: int) -> AnnotatorHead:
    """The annotator head a config asks for (its class from the `HEADS` registry), on embeddings of size `dim`."""
    head_class = load(HEADS[config.kind])
    head: AnnotatorHead = head_class(dim, n_annotators, n_classes, **config.options().model_dump())
    return head


def head_spec(config: HeadConfig, head: AnnotatorHead) -> HeadConfig:
    """The head config a model's spec saves: `config` with the head's options as the head is now."""
    return config.with_options(head.spec_options())
