"""A new source format added through the reader registry alone: a config model, a reader function
and one `READERS.register(...)` line, all in this module, then ingested end to end into a real
store with the plain stage function `tasks.ingest.ingest`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import yaml

from configs.schema import config_for_batch, load_config
from configs.sources import READERS, InputPath, ReaderEntry, SourceConfig
from errors import InputError
from storage.batch import MISSING, Batch, class_key
from storage.dataset_store import DatasetStore
from storage.layout import RootLayout
from tasks.ingest import ingest


# --- the toy format: one line per item, `item: annotator=label annotator=label ...` -----------
class VotesSource(SourceConfig):
    """A `.votes` text file: `item: annotator=label ...` per line."""

    kind: Literal["votes"]
    path: InputPath


def read_votes(src: VotesSource, classes: Sequence[bool | int | str] | None = None,
               annotators: Sequence[str] | None = None) -> Batch:
    """Every line an item (a one-frame sequence), every `annotator=label` one label."""
    votes: dict[str, dict[str, str]] = {}
    for number, line in enumerate(Path(src.path).read_text().splitlines(), 1):
        item, sep, rest = line.partition(":")
        if not sep:
            raise InputError(src.path, f"line {number}", line, "expected `item: annotator=label ...`")
        votes[item.strip()] = dict(pair.split("=", 1) for pair in rest.split())
    names = sorted({a for labels in votes.values() for a in labels}) if annotators is None else list(annotators)
    keys = [class_key(c) for c in classes] if classes else sorted({v for labels in votes.values() for v in labels.values()})
    labels = np.full((len(votes), len(names)), MISSING, np.int16)
    for row, item_votes in enumerate(votes.values()):
        for annotator, label in item_votes.items():
            labels[row, names.index(annotator)] = keys.index(class_key(label))
    items = list(votes)
    return Batch(sequence_names=items, sequence_lengths=np.ones(len(items), np.int64), annotators=names,
                 classes=keys, labels=labels, item_names=items, sources={"labels": str(src.path)})


READERS.register(ReaderEntry("votes", f"{__name__}:read_votes", VotesSource,
                             suffixes=frozenset({".votes"}), batch_field="path"))


# --- the test -----------------------------------------------------------------------------------
def write_config(folder: Path, source: dict[str, object]) -> Path:
    path = folder / "toy.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "source": source, "classes": ["no", "yes"]}))
    return path


def test_a_reader_added_through_the_registry_alone_ingests_end_to_end(tmp_path: Path, root: Path) -> None:
    (tmp_path / "first.votes").write_text("i1: ann=yes bob=no\ni2: ann=no\ni3: bob=yes\n")
    config = load_config(write_config(tmp_path, {"kind": "votes", "path": "first.votes"}))
    assert isinstance(config.source, VotesSource) and config.source.path == tmp_path / "first.votes"
    assert config.model_dump(mode="json")["source"] == {"kind": "votes", "path": str(tmp_path / "first.votes")}
    assert "votes" in READERS.names()

    layout = RootLayout(root)
    result = ingest(config, layout)
    assert result.batch_status == "appended" and result.store == layout.dataset_uri("toy")
    assert (result.n_items, result.n_annotators, result.n_labels, result.n_classes) == (3, 2, 4, 2)
    assert result.batch.new_frames == 3 and result.batch.labels_added == 4

    store = DatasetStore.open(layout.dataset_uri("toy"))
    assert store.version == result.version and store.annotators == ["ann", "bob"]
    assert store.classes == ["no", "yes"] and store.item_names.tolist() == ["i1", "i2", "i3"]
    np.testing.assert_array_equal(store.read_labels(), [[1, 0], [0, MISSING], [MISSING, 1]])

    # a new batch in the format: the entry's batch_field takes the batch's path
    (tmp_path / "more.votes").write_text("i2: bob=yes\ni4: ann=yes\n")
    more = ingest(config_for_batch(config, tmp_path / "more.votes"), layout)
    assert more.batch_status == "appended" and more.batch.changed_frames == 1 and more.n_labels == 6
    np.testing.assert_array_equal(DatasetStore.open(more.store).read_labels()[1:], [[0, 1], [MISSING, 1], [1, MISSING]])
    assert ingest(config, layout).batch_status == "unchanged"


def test_a_registered_reader_gets_the_schema_errors_and_its_name_is_listed(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found") as err:
        load_config(write_config(tmp_path, {"kind": "votes", "path": "absent.votes"}))
    assert "source.path" in str(err.value)
    with pytest.raises(InputError, match="votes") as err:
        load_config(write_config(tmp_path, {"kind": "tallies", "path": "x"}))
    assert "source" in str(err.value)
    assert READERS["votes"].model is VotesSource
