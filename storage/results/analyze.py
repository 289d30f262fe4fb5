"""What the analyze stage returns: annotator distances, trees, clusters and what they rest on.

Numbers that can be undefined (a NaN correlation, an ARI over a single cluster) are
`storage.results.Number`.
"""

from __future__ import annotations

from typing import Literal

from storage.results import Number, ResultModel, StageResult
from storage.results.styles import StylesReport

Clusters = dict[str, dict[str, int]]  # {"k": {annotator: cluster id}}


class TruthScore(ResultModel):
    """Adjusted Rand index of one tree's cuts against the known style groups."""

    true_k: int
    at_true_k: Number
    by_k: dict[str, Number]


class AriVsTruth(ResultModel):
    """ARI against the dataset's known groups (demo data), for the distance and embedding trees."""

    distances: TruthScore
    embeddings: TruthScore | None = None
    truth: dict[str, str | None]  # annotator -> its true group


class TreeComparison(ResultModel):
    """How the embedding tree agrees with the distance tree: per k, ARI and the annotators that move."""

    cophenetic_correlation: Number
    ari: dict[str, Number]
    moved: dict[str, list[str]]


class EmbeddingTree(ResultModel):
    """The tree of the learned annotator embeddings (the MABe notebook's second tree)."""

    linkage_method: str
    linkage: list[list[float]]
    clusters: Clusters
    comparison: TreeComparison


class PartialSums(ResultModel):
    """Prediction-based distances: the partial sums reused and computed (tasks.distances)."""

    metric: str
    stat: str
    n_frames: int
    partials_reused: list[tuple[int, int]]
    partials_computed: list[tuple[int, int]]
    frames_computed: int
    seconds: float
    frames_per_second: Number
    read_chunk_frames: int


class LabelCounts(ResultModel):
    """Label-based distances: how long the pair counts took over how many frames."""

    seconds: float
    n_frames: int


class Overlap(ResultModel):
    """Label-only data: how many items annotator pairs share, and the pairs whose distance is imputed."""

    kind: str
    min_overlap: int
    n_pairs: int
    n_low_overlap_pairs: int
    imputed_fraction: float
    imputed_value: Number
    overlap_median: Number
    isolated_annotators: list[str]
    low_overlap_pairs: list[tuple[str, str, int]]  # (annotator a, annotator b, shared items)


class ItemLevelSummary(ResultModel):
    """Item-level views of the encoder embeddings on a sample of frames (tasks.projections)."""

    n_frames: int
    label_source: Literal["gold", "consensus"]
    n_labels: int
    purity: dict[str, Number]
    rsm: dict[str, Number]  # within, between, difference
    projections: list[str]
    seconds: dict[str, float] = {}  # each view's time: kmeans, pca, tsne, umap (raw and scaled), rsm
    samples: dict[str, int] = {}  # frames each projection method ran on (t-SNE and UMAP: a sub-sample)


class StoreRef(ResultModel):
    uri: str
    version: str


class PredictionStoreRef(StoreRef):
    model_run_id: str | None
    dataset_version: str


class Stores(ResultModel):
    """The stores an analysis read, at the versions it read them."""

    dataset: StoreRef
    predictions: PredictionStoreRef | None = None


class AnalysisResult(StageResult):
    """One analysis of a dataset (also `<root>/analysis/<name>/summary.json`).

    `method` says where the distances come from: "predictions" (`metric`, `distances` is a
    `PartialSums`, `scheduler`, `embeddings`, `item_level`) or "labels" (`metric` is the label
    distance, `distances` is `LabelCounts`, `overlap`). `clusters` are the cuts of the tree of
    `linkage_method` (the first configured linkage); `mlflow_link` is set once MLflow has the run.
    """

    dataset: str
    method: Literal["predictions", "labels"]
    metric: str
    annotators: list[str]
    distance_matrix: list[list[Number]]
    linkage_method: str
    linkage: list[list[float]]
    clusters: Clusters
    clusters_by_method: dict[str, Clusters]
    tree_fit: dict[str, Number]
    ari_vs_truth: AriVsTruth | None = None
    cophenetic_correlation: Number = None
    embeddings: EmbeddingTree | None = None
    distances: PartialSums | LabelCounts
    scheduler: str | None = None
    overlap: Overlap | None = None
    item_level: ItemLevelSummary | None = None
    styles: StylesReport | None = None  # what sets each annotator and cluster apart (tasks.styles)
    stores: Stores
    warnings: list[str] = []
    outputs: str
    seconds: float
    mlflow_link: str | None = None
