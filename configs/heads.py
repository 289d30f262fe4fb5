"""The annotator heads a config can name (`train.head.kind`) and the options each one takes.

A head is one `tasks/` module with an `AnnotatorHead` subclass (see `tasks/heads.py`) plus, here,
its options model and one `HEADS.register(...)` line. The options model's fields are the
keyword arguments of the head's constructor after (dim, n_annotators, n_classes), and are the
head's section of `train.head` (`train.head.<name>: {...}`); `configs.train.HeadConfig` gets one
such section per registered head.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ConfigDict, Field

from configs.base import Strict
from configs.registry import Entry, Registry


@dataclass(frozen=True)
class HeadEntry(Entry):
    """A head: its name, its class ("tasks.module:Class") and its options model."""

    options: type[Strict]


class MultiAnnotatorConfig(Strict):
    """`tasks.multi_annotator_head.MultiAnnotatorHead` (MABe 2021 winning solution)."""

    hidden: int = Field(64, gt=0, description="width of the residual MLP")
    embedding_dim: int | None = Field(
        None, gt=0, description="annotator embedding size; default one per annotator (identity init)")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class ConalConfig(Strict):
    """`tasks.conal.ConalHead` (Chu et al. 2021)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    lambda_: float = Field(1e-5, ge=0.0, alias="lambda",
                           description="loss = CE - lambda * sum_r ||L_r - G|| (paper: 1e-5)")
    embedding_dim: int = Field(20, gt=0, description="size of the instance and annotator embeddings")
    aux_hidden: int = Field(128, gt=0, description="hidden width of the auxiliary network")
    confusion_init: float = Field(2.0, description="diagonal of the initial confusion logits")


class CrowdLayerConfig(Strict):
    """`tasks.crowd_layer.CrowdLayerHead` (Rodrigues and Pereira 2018, the MW variant)."""

    identity_decay: float = Field(0.0, ge=0.0, description="L2 pull of every annotator matrix towards the identity")


HEADS = Registry[HeadEntry]("head")
HEADS.register(HeadEntry("multi_annotator", "tasks.multi_annotator_head:MultiAnnotatorHead", MultiAnnotatorConfig))
HEADS.register(HeadEntry("conal", "tasks.conal:ConalHead", ConalConfig))
HEADS.register(HeadEntry("crowd_layer", "tasks.crowd_layer:CrowdLayerHead", CrowdLayerConfig))
