"""The `predict:` and `analyze:` sections of a pipeline config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from configs.base import CodecConfig, Strict
from configs.inputs import MAX_CHUNK_FRAMES, MAX_SEED
from configs.registry import Entry, Registry

METRICS = Registry[Entry]("distance metric")
"""Distances between annotators' predicted probabilities; each target is a
`tasks.distances.DistanceMetric` (the statistic summed per chunk and the distance made of it)."""
METRICS.register(Entry("euclidean", "tasks.distances:EUCLIDEAN"))
METRICS.register(Entry("cosine", "tasks.distances:COSINE"))
METRICS.register(Entry("jensenshannon", "tasks.distances:JENSENSHANNON"))

LinkageMethod = Literal["ward", "average", "complete"]


class PredictConfig(Strict):
    """How per-annotator predictions are written to the prediction store.

    float16 logits halve the store and read fastest; on planted-style data they change the
    annotator distance matrix by at most 3e-5 relative (float32: 3e-13) and leave every
    cluster cut unchanged (tests/test_prediction_store.py measures it).
    """

    dtype: Literal["float16", "float32"] = Field("float16", description="dtype of the stored logits")
    embedding_dtype: Literal["float16", "float32"] = Field("float32", description="dtype of the stored embeddings")
    codec: CodecConfig = CodecConfig()
    chunk_frames: int | None = Field(
        None, gt=0, le=MAX_CHUNK_FRAMES, description="frames per chunk; None: about 8 MiB of logits per chunk (a power of 2)"
    )


class StylesConfig(Strict):
    """The style explanations (`tasks.styles`): each annotator against a reference, quality
    flags, bout timing, drift and the style cards."""

    enabled: bool = Field(True, description="explain each annotator's and each cluster's style")
    reference: Literal["others", "model"] = Field(
        "others", description="what an annotator is compared with: the consensus of the other annotators "
                              "(leave-one-out) or the trained model's consensus (which saw every annotator)")
    min_others: int = Field(1, ge=1, le=1000, description="fewest other annotators an item needs to have a "
                                                          "leave-one-out consensus")
    background: str | None = Field(
        None, description="the class behaviour bouts start from and return to (e.g. `other`); bout lags "
                          "are then measured at the edges bordering it; None: at every edge")
    frame_rate: float | None = Field(None, gt=0, le=1e6, description="frames per second, to give lags in "
                                                                     "seconds as well as frames; None: the "
                                                                     "reader's, when it found one (BORIS's FPS)")
    constant_share: float = Field(0.95, gt=0.5, le=1.0, description="an annotator giving one answer this "
                                                                    "often (and the others not) is flagged constant")
    min_labels: int = Field(10, ge=2, description="annotators with fewer compared labels get no flags")
    level: float = Field(0.01, gt=0, lt=0.5, description="test level of the near-random, adversarial and "
                                                         "drift flags (Bonferroni-corrected over annotators)")
    slight_kappa: float = Field(0.2, gt=0, lt=1, description="near-random: kappa shown to be below this bound "
                                                             "(the top of Landis & Koch's 'slight agreement')")


class AnalyzeConfig(Strict):
    """How annotators are grouped by style (and what item-level views are made)."""

    metric: str = Field(
        "euclidean", description=f"distance between annotators' predicted probabilities: {', '.join(METRICS.names())}"
    )
    linkage: list[LinkageMethod] = Field(
        ["ward", "average", "complete"], min_length=1,
        description="linkage methods; the first one gives the reported clusters",
    )
    ks: list[int] = Field([2, 3, 4], min_length=1, description="numbers of clusters to cut the trees at")
    scheduler: str | None = Field(
        None, description='Dask scheduler of predict and analyze: None = local threads, "local-cluster", '
                          "or the address of a running cluster, tcp://host:port"
    )
    read_chunk_frames: int | None = Field(
        None, gt=0, le=MAX_CHUNK_FRAMES, description="frames per Dask chunk when reading logits; None: store chunks, about 16 MiB"
    )
    label_distance: Literal["disagreement", "kappa"] = Field(
        "disagreement", description="label-only data: 1 - agreement rate, or 1 - Cohen's kappa"
    )
    min_overlap: int = Field(10, ge=1, description="label-only data: fewer shared items than this = a missing pair")
    impute: Literal["max", "mean"] = Field(
        "max", description="value given to missing pairs: the largest or the mean observed distance"
    )
    projections: bool = Field(True, description="item-level views of the encoder embeddings")
    projection_sample: int = Field(2000, ge=50, description="frames sampled for the item-level views "
                                   "(PCA, KMeans purity)")
    rsm_sample: int = Field(500, ge=10, description="frames in the representational similarity matrix")
    # measured on the demo (2 cores, loaded machine): PCA + KMeans of 2,000 frames, raw and scaled,
    # well under 1 s; t-SNE of 500 frames 4-8 s, of 2,000 about 90 s; UMAP of 1,000 frames about 3 s
    # per variant once its kernels are cached, plus 7-9 s to import umap (60 s on a cold cache)
    tsne: bool = Field(False, description="t-SNE projections (opt-in: seconds even on a small sample)")
    tsne_sample: int = Field(500, ge=10, description="most frames t-SNE runs on (its cost grows faster than linearly)")
    umap: bool = Field(False, description="UMAP projections (opt-in: importing umap takes seconds, about a "
                                          "minute the first time on a machine while Numba compiles)")
    umap_sample: int = Field(1000, ge=20, description="most frames UMAP runs on")
    styles: StylesConfig = StylesConfig()
    figures: bool = True
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @field_validator("metric")
    @classmethod
    def _metric(cls, name: str) -> str:
        return METRICS.check(name)

    @field_validator("ks")
    @classmethod
    def _ks(cls, ks: list[int]) -> list[int]:
        if any(k < 2 for k in ks):
            raise ValueError("every k must be at least 2")
        return sorted(set(ks))

    @field_validator("linkage")
    @classmethod
    def _unique(cls, methods: list[str]) -> list[str]:
        return list(dict.fromkeys(methods))
