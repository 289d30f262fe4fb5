"""Typed pipeline configs: one YAML file per dataset, validated here; unknown keys are errors.

Relative paths in a config are resolved against the folder of the config file, so
`configs/bluebirds.yaml` names the shared sets as `../../shared/datasets/...`. A config is read by
`configs.inputs` (a regular UTF-8 file of at most `MAX_CONFIG_BYTES`; YAML 1.2 core types; no
aliases, no duplicate keys, at most `MAX_DEPTH` levels).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator

from configs.analyze import AnalyzeConfig, PredictConfig
from configs.base import CodecConfig, Strict
from configs.inputs import (
    MAX_ANNOTATORS,
    MAX_CHUNK_FRAMES,
    MAX_CONFIG_BYTES,
    check_classes,
    check_count,
    class_key,
    load_yaml,
)
from configs.probe import ProbeConfig
from configs.sources import (
    READERS,
    DemoSource,
    InputPath,
    MappingSource,
    SourceConfig,
    TableSource,
    TracksSource,
)
from configs.train import TrainConfig
from configs.uri import check_prefix, redact
from errors import InputError

__all__ = [  # the source models live in configs.sources; importable from here too
    "DemoSource", "InputPath", "MappingSource", "PipelineConfig", "SourceConfig", "StoreConfig",
    "TableSource", "TracksSource", "config_for_batch", "load_config",
]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""A dataset name, matched whole (`fullmatch`: a trailing newline is refused too)."""


class StoreConfig(Strict):
    """How arrays are laid out, and where the dataset and prediction stores live.

    `uri_prefix` (an fsspec URL such as `s3://bucket/annostyle`, or an absolute folder) puts
    `datasets/<name>.zarr` and `predictions/<name>.zarr` there instead of under the root; models,
    MLflow and analysis outputs stay under the root. Credentials come from the environment only
    (see storage.location). One writer per store at a time: the local write lock does not reach
    object storage.
    """

    chunk_frames: int = Field(65536, gt=0, le=MAX_CHUNK_FRAMES, description="frames per chunk along the frame axis")
    codec: CodecConfig = CodecConfig()
    uri_prefix: str | None = Field(
        None, description="where the stores live (fsspec URL or absolute folder); None: under the root"
    )

    @field_validator("uri_prefix")
    @classmethod
    def _prefix(cls, prefix: str | None) -> str | None:
        return None if prefix is None else check_prefix(prefix)


class PipelineConfig(Strict):
    """A dataset and how every stage treats it."""

    name: str
    source: SerializeAsAny[SourceConfig] = Field(
        description="where the labels come from; `kind` names a registered reader (configs.sources.READERS)"
    )
    classes: list[bool | int | str] | None = Field(
        None, description="fixes the classes and their order; other label values are errors"
    )
    class_names: list[str] | None = None
    annotators: list[str] | None = Field(
        None, description="fixes the annotators; others are errors"
    )
    replace: bool = Field(False, description="a batch may overwrite an annotator's existing labels")
    store: StoreConfig = StoreConfig()
    train: TrainConfig = TrainConfig()
    predict: PredictConfig = PredictConfig()
    analyze: AnalyzeConfig = AnalyzeConfig()
    probe: ProbeConfig = ProbeConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not NAME_PATTERN.fullmatch(name) or ".." in name:
            raise ValueError(
                "dataset name must be letters, digits, '_', '-' or '.', must not start with "
                "'.' or contain '..' (it names a folder under the root)"
            )
        return name

    @field_validator("classes", mode="before")
    @classmethod
    def _distinct_classes(cls, classes: Any) -> Any:
        """Classes are distinct after `class_key` (`[0, 1, 1.0]` is refused, not merged), never both
        `true` and `1`, at most `MAX_CLASSES`; each is a single value."""
        if not isinstance(classes, list):
            return classes
        keys: dict[str, Any] = {}
        for value in classes:
            try:
                key = class_key(value)
            except ValueError as err:
                raise ValueError(f"{value!r} is not a class value (text, a number or true/false)") from err
            if key in keys:
                raise ValueError(f"{keys[key]!r} and {value!r} are the same class {key!r} (given twice)")
            keys[key] = value
        try:
            check_classes(keys, "config", "classes")
        except InputError as err:
            raise ValueError(err.problem) from err
        return classes

    @field_validator("annotators", mode="before")
    @classmethod
    def _distinct_annotators(cls, annotators: Any) -> Any:
        if isinstance(annotators, list):
            try:
                check_count("config", "annotators", len(annotators), MAX_ANNOTATORS, "annotators")
            except InputError as err:
                raise ValueError(err.problem) from err
            seen: set[str] = set()
            for name in annotators:
                if isinstance(name, str) and name.strip() in seen:
                    raise ValueError(f"annotator {name!r} given twice")
                seen.add(name.strip() if isinstance(name, str) else name)
        return annotators

    @field_validator("source", mode="plain")
    @classmethod
    def _source(cls, value: Any, info: ValidationInfo) -> SourceConfig:
        """Validate the section with the config model its `kind` registered."""
        if isinstance(value, SourceConfig):
            return value
        if not isinstance(value, dict) or "kind" not in value:
            raise ValueError(f"source needs a `kind`; known: {', '.join(READERS.names())}")
        entry = READERS[str(value["kind"])]
        return entry.model.model_validate(value, context=info.context)

    @field_validator("class_names")
    @classmethod
    def _names_match(cls, names: list[str] | None, info: ValidationInfo) -> list[str] | None:
        classes = info.data.get("classes")
        if names is not None and (classes is None or len(names) != len(classes)):
            raise ValueError("class_names needs `classes` and one name per class")
        return names


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:  # JSON boundary: YAML
    """Read and validate a YAML config; errors name the file, the key and the value.

    `overrides` are merged into the top level (nested dicts merge), for tests and the CLI.
    """
    path = Path(path)
    data = load_yaml(path, "config", typed=True, limit=MAX_CONFIG_BYTES)
    if not isinstance(data, dict):
        raise InputError(path, None, type(data).__name__, "config must be a YAML mapping")
    if overrides:
        data = _merge(data, overrides)
    return _validate(data, path.resolve().parent, path)


def _validate(data: dict[str, Any], base: Path, origin: Path) -> PipelineConfig:  # JSON boundary: YAML
    """Validate a config mapping; the first problem becomes an InputError naming its key."""
    try:
        return PipelineConfig.model_validate(data, context={"base": base})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        problem = first["msg"].removeprefix("Value error, ")
        more = f" ({err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
        value = redact(first.get("input")) if key == "store.uri_prefix" else first.get("input")
        raise InputError(origin, key or None, value, problem + more) from err


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:  # JSON boundary: YAML
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_for_batch(config: PipelineConfig, batch: str | Path) -> PipelineConfig:
    """The config whose source is a new batch: a data file or folder in the config's own source
    format, or a YAML file with a `source:` section for a batch in another format.

    The rest of the config (classes, annotators, replace, store, stages) stays as it is.
    """
    path = Path(batch).resolve()
    if not path.exists():
        raise InputError(path, "batch", str(batch), "batch file not found")
    if path.suffix in (".yaml", ".yml") and path.is_file():
        data = load_yaml(path, "batch", typed=True, limit=MAX_CONFIG_BYTES)
        if isinstance(data, dict) and isinstance(data.get("source"), dict) and "kind" in data["source"]:
            extra = set(data) - {"source"}
            if extra:
                raise InputError(path, sorted(extra)[0], None, "a batch file holds only a `source:` section")
            return _with_source(config, data["source"], path)
    try:
        src = READERS[config.source.kind].batch_source(config.source, path)
    except ValueError as err:
        raise InputError(path, "source.kind", config.source.kind, str(err)) from err
    return _with_source(config, src, path)


def _with_source(config: PipelineConfig, source: dict[str, Any], origin: Path) -> PipelineConfig:  # JSON boundary: YAML
    data = config.model_dump()
    data["source"] = source
    return _validate(data, origin.parent, origin)
