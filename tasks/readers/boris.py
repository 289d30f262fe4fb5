"""Reader for BORIS's "aggregated events" export (TSV or CSV): per-frame tracks per observer.

BORIS (Friard & Gamba 2016) pairs each STATE event's start and stop in this export, one row per
event: `Observation id`, `Source` / `Media file name`, `Media duration (s)`, `FPS (frame/s)`
(older versions: `Total length`, `FPS`, `Media file`), `Subject`, `Behavior`, `Behavior type`
(STATE or POINT), `Start (s)`, `Stop (s)`, ... . How the rows become tracks:

- Observer: by default each file is one observer's export (each rater codes in their own BORIS
  project), named by the file's name without its suffix; `observer_column` names a column
  instead (an independent variable `Observer`, or `Observation id`). Sequence: the media
  file's base name (or `sequence_column`), `<media>/<subject>` when the rows name several
  subjects. One observer's track of a sequence comes from one observation of one file.
- Frames: frame f covers [f/fps, (f+1)/fps). A STATE event [start, stop) labels the frames whose
  start time lies in it, frames ceil(start*fps) to ceil(stop*fps) - 1, so a stop exactly on a
  frame boundary leaves that frame out; a POINT event labels frame floor(time*fps), over any
  STATE covering it (a POINT at the media's end, where BORIS's player stops, the last frame). A time within `time_precision` seconds of a boundary counts as on it (BORIS
  writes milliseconds: 1/30 s is written 0.033). Frames no event covers get `background`; a
  STATE event shorter than a frame that holds no frame's start labels none.
- Length: ceil(media duration * fps) when the export gives the duration, else the end of the
  last event; the longest of a sequence's observers. The file's FPS, else the config's
  `frame_rate`; neither is an error, as are observers of one sequence at different rates.
- Errors, naming the file, the column, the line and the value: non-numeric or negative times, a
  stop before its start, overlapping STATE events of one behaviour (same observer, sequence),
  an unknown behaviour type, a behaviour outside the configured classes, a missing frame rate,
  an event past the media's end, a non-zero time offset, an observation over several media files
  (their times run on across the files). Overlapping events of different behaviours (two STATEs,
  or two POINTs in one frame) are an error naming both lines, since a frame gets one label, unless
  `priority` ranks them: the first listed wins the shared frames.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from configs.inputs import (
    MAX_FRAMES,
    MAX_LABEL_CELLS,
    MAX_SEQUENCE_FRAMES,
    check_classes,
    check_count,
    class_key,
)
from configs.sources import BorisSource
from errors import InputError
from storage.batch import MISSING, Batch
from tasks.readers.common import check_annotators, natural_sorted, require_columns
from tasks.readers.table import read_frame

BEHAVIOR, TYPE, START, STOP = "Behavior", "Behavior type", "Start (s)", "Stop (s)"
MEDIA_COLUMNS = ("Media file name", "Media file", "Source")
FPS_COLUMNS = ("FPS (frame/s)", "FPS")
DURATION_COLUMNS = ("Media duration (s)", "Total length")
OFFSET, OBSERVATION = "Time offset (s)", "Observation id"
NO_VALUE = {"", "NA", "NAN", "NONE"}
NO_SUBJECT = {"", "NO FOCAL SUBJECT"}
_PLAYER = re.compile(r"^player\s*#\d+\s*:\s*", re.IGNORECASE)


@dataclass
class _Event:
    """One row of the export, its times in frames (snapped to boundaries within the precision)."""

    file: Path
    line: int
    observation: str
    observer: str
    sequence: str
    behavior: str
    point: bool
    start: float
    stop: float
    fps: float
    duration: float | None


@dataclass
class _Track:
    """One observer's events of one sequence."""

    events: list[_Event]

    @property
    def first(self) -> _Event:
        return self.events[0]


def read_boris(
    src: BorisSource,
    classes: Sequence[bool | int | str] | None = None,
    annotators: Sequence[str] | None = None,
) -> Batch:
    """Read BORIS aggregated events files into one Batch of per-frame tracks (see the module)."""
    paths = [Path(p) for p in src.paths]
    where = ", ".join(map(str, paths))
    fixed = None if classes is None else [class_key(c) for c in classes]
    background = class_key(src.background)
    if fixed is not None and background not in fixed:
        raise InputError(where, "background", src.background,
                         f"the background class is not among the configured classes [{', '.join(fixed)}]")
    rows = [row for path in paths for row in _read_rows(path, src)]
    if not rows:
        raise InputError(where, BEHAVIOR, None, "no events: the exports hold a header but no rows")
    several_subjects = len({r[3] for r in rows}) > 1
    events = [_event(src, fixed, background, *row, several_subjects=several_subjects) for row in rows]

    tracks: dict[tuple[str, str], _Track] = {}
    for event in events:
        track = tracks.setdefault((event.observer, event.sequence), _Track([]))
        if track.events:
            _same_observation(track.first, event)
        track.events.append(event)

    seq_names = natural_sorted({seq for _, seq in tracks})
    ann_names = natural_sorted({obs for obs, _ in tracks})
    check_annotators(ann_names, annotators, where, src.observer_column or "observer")
    lengths = _lengths(tracks, seq_names)
    n_frames = int(sum(lengths.values()))
    check_count(where, "frames", n_frames, MAX_FRAMES, "frames in one batch")
    check_count(where, "labels", n_frames * len(ann_names), MAX_LABEL_CELLS, "labels (frames x annotators)")

    class_list = fixed if fixed is not None else natural_sorted({e.behavior for e in events} | {background})
    check_classes(class_list, where, BEHAVIOR)
    rank = {class_key(b): i for i, b in enumerate(src.priority or [])}
    offsets = dict(zip(seq_names, np.cumsum([0] + [lengths[s] for s in seq_names[:-1]]), strict=True))
    ann_index = {name: i for i, name in enumerate(ann_names)}
    labels = np.full((n_frames, len(ann_names)), MISSING, dtype=np.int16)
    for (observer, seq), track in tracks.items():
        start = int(offsets[seq])
        labels[start:start + lengths[seq], ann_index[observer]] = _paint(
            track, lengths[seq], class_list, class_list.index(background), rank, src.priority is not None)
    return Batch(
        sequence_names=seq_names,
        sequence_lengths=np.array([lengths[s] for s in seq_names], dtype=np.int64),
        annotators=ann_names,
        classes=class_list,
        labels=labels,
        sources={"labels": where},
        # one frame rate for the whole batch: the style explanations give bout lags in seconds too
        meta={"frame_rate": rates.pop()} if len(rates := {e.fps for e in events}) == 1 else {},
    )


# --- rows --------------------------------------------------------------------------------------

_Row = tuple[Path, int, dict[str, str], str, str, str, str, str | None, str | None]
"""file, line, the row's cells by column, subject, observer, observation, sequence, fps and
duration column names (None: the file has none)."""


def _read_rows(path: Path, src: BorisSource) -> list[_Row]:
    """Every row of one export with the columns the reader uses, as the text the file holds."""
    wanted = [BEHAVIOR, TYPE, START, STOP, OBSERVATION, OFFSET, *MEDIA_COLUMNS, *FPS_COLUMNS, *DURATION_COLUMNS]
    wanted += [c for c in (src.observer_column, src.sequence_column, src.subject_column) if c is not None]
    table = read_frame(path, src.format, "format", text_columns=wanted)
    columns = [str(c) for c in table.columns]
    need = {"behavior": BEHAVIOR, "behavior type": TYPE, "start": START, "stop": STOP}
    if src.observer_column is not None:
        need["observer_column"] = src.observer_column
    if src.sequence_column is not None:
        need["sequence_column"] = src.sequence_column
    if src.subject_column is not None and "subject_column" in src.model_fields_set:
        need["subject_column"] = src.subject_column
    require_columns(path, columns, need)
    media = src.sequence_column or next((c for c in MEDIA_COLUMNS if c in columns), None)
    if media is None:
        raise InputError(path, "sequence_column", None, f"no media file column ({', '.join(MEDIA_COLUMNS)}) "
                                                        "to name the sequences: set sequence_column")
    fps = next((c for c in FPS_COLUMNS if c in columns), None)
    duration = next((c for c in DURATION_COLUMNS if c in columns), None)
    subject = src.subject_column if src.subject_column in columns else None
    keep = [c for c in dict.fromkeys([BEHAVIOR, TYPE, START, STOP, media, OBSERVATION, OFFSET, fps, duration,
                                      subject, src.observer_column]) if c is not None and c in columns]
    cells = table[keep].astype(object).where(table[keep].notna(), "")
    out: list[_Row] = []
    for position, values in enumerate(cells.itertuples(index=False, name=None)):
        row = {c: str(v).strip() for c, v in zip(keep, values, strict=True)}
        who = path.stem if src.observer_column is None else row[src.observer_column]
        sub = row.get(subject, "") if subject is not None else ""
        out.append((path, position + 2, row, "" if sub.upper() in NO_SUBJECT else sub, who,
                    row.get(OBSERVATION, path.stem), media, fps, duration))
    return out


def _event(src: BorisSource, fixed: list[str] | None, background: str, path: Path, line: int,
           row: dict[str, str], subject: str, observer: str, observation: str, media: str,
           fps_column: str | None, duration_column: str | None, *, several_subjects: bool) -> _Event:
    """One row checked and turned into an event with its times in frames."""
    def bad(column: str, value: object, problem: str) -> InputError:
        return InputError(path, column, value, f"line {line}: {problem}")

    if not observer:
        raise bad(src.observer_column or "observer", observer, "no observer named in this row")
    behavior_text = row[BEHAVIOR]
    if not behavior_text:
        raise bad(BEHAVIOR, behavior_text, "no behaviour named in this row")
    behavior = class_key(behavior_text)
    if behavior == background:
        raise bad(BEHAVIOR, behavior_text, f"a behaviour is named like the background class {src.background!r}: "
                                           "set `background` to another name")
    if fixed is not None and behavior not in fixed:
        raise bad(BEHAVIOR, behavior_text, f"behaviour outside the configured classes [{', '.join(fixed)}]")
    kind = row[TYPE].upper()
    if not kind.startswith(("STATE", "POINT")):
        raise bad(TYPE, row[TYPE], "the behaviour type must be STATE or POINT")
    point = kind.startswith("POINT")
    media_name = row[media]
    if media_name.upper() in NO_VALUE:
        raise bad(media, media_name, "no media file to name the sequence (a live observation?): set sequence_column")
    if src.sequence_column is None:
        media_name = re.split(r"[\\/]", _PLAYER.sub("", media_name))[-1]
    sequence = f"{media_name}/{subject}" if several_subjects and subject else media_name
    offset = _number(row, OFFSET, bad, optional=True, single=True)
    if offset:
        raise bad(OFFSET, row[OFFSET], "a non-zero time offset is not read: export with offset 0")
    fps = _number(row, fps_column, bad, optional=True) if fps_column else None
    if fps is None:
        if src.frame_rate is None:
            raise bad(fps_column or "frame_rate", row.get(fps_column or ""),
                      "no frame rate: the file gives none for this observation and the config sets no `frame_rate`")
        fps = src.frame_rate
    if fps <= 0:
        raise bad(fps_column or "frame_rate", row.get(fps_column or ""), "the frame rate must be above 0")
    duration = _number(row, duration_column, bad, optional=True) if duration_column else None
    start = _number(row, START, bad)
    stop = start if point else _number(row, STOP, bad)
    assert start is not None and stop is not None
    if stop < start:
        raise bad(STOP, row[STOP], f"the event stops before it starts ({row[START]} s)")
    tolerance = src.time_precision * fps
    first, last = _snap(start * fps, tolerance), _snap(stop * fps, tolerance)
    frames = None if duration is None else _snap(duration * fps, tolerance)
    if point and frames is not None and first == frames == math.floor(frames) > 0:
        first = last = frames - 1  # a POINT at the media's very end (where the player stops): its last frame
    return _Event(path, line, observation, observer, sequence, behavior, point, first, last, fps, frames)


def _number(row: dict[str, str], column: str | None, bad: Callable[[str, object, str], InputError], *,
            optional: bool = False, single: bool = False) -> float | None:
    """A cell as a number of seconds (or frames per second); NA or empty is None when `optional`."""
    if column is None or column not in row:
        return None
    text = row[column]
    if text.upper() in NO_VALUE:
        if optional:
            return None
        raise bad(column, text, "no time given (a STATE event needs its start and stop)")
    if not single and re.search(r"[;|]", text):
        raise bad(column, text, "an observation over several media files is not read (times run on across "
                                "the files): export one media file per observation")
    try:
        value = float(text)
    except ValueError:
        raise bad(column, text, "not a number") from None
    if not math.isfinite(value) or value < 0:
        raise bad(column, text, "must be a finite number >= 0")
    return value


def _snap(frames: float, tolerance: float) -> float:
    """A time in frames, on the nearest frame boundary when it lies within `tolerance` of it."""
    nearest = round(frames)
    return float(nearest) if abs(frames - nearest) <= tolerance else frames


def _same_observation(first: _Event, event: _Event) -> None:
    """A track comes from one observation of one file, at one frame rate and media duration."""
    who = f"observer {event.observer!r}, sequence {event.sequence!r}"
    if event.file != first.file:
        raise InputError(event.file, "observer", event.observer,
                         f"line {event.line}: {who} is also in {first.file} (line {first.line}); a track comes from one file")
    if event.observation != first.observation:
        raise InputError(event.file, OBSERVATION, event.observation,
                         f"line {event.line}: {who} is also coded in observation {first.observation!r} (line "
                         f"{first.line}); give each observation its own observer (observer_column)")
    if event.fps != first.fps:
        raise InputError(event.file, "FPS", event.fps, f"line {event.line}: {who} has frame rate {first.fps} on line {first.line}")


# --- frames ------------------------------------------------------------------------------------


def _end(event: _Event) -> int:
    """The frame after the event's last one (a POINT: its frame + 1)."""
    return math.floor(event.start) + 1 if event.point else math.ceil(event.stop)


def _lengths(tracks: dict[tuple[str, str], _Track], seq_names: list[str]) -> dict[str, int]:
    """Frames per sequence: its observers' longest media duration, else their last event's end.

    Observers of one sequence must share a frame rate; an event past its media's end is an error.
    """
    lengths = dict.fromkeys(seq_names, 0)
    rates: dict[str, _Event] = {}
    for (_, seq), track in tracks.items():
        first = track.first
        other = rates.setdefault(seq, first)
        if other.fps != first.fps:
            raise InputError(first.file, "FPS", first.fps,
                             f"line {first.line}: sequence {seq!r} is at {first.fps} frames/s here but at {other.fps} "
                             f"in {other.file} (line {other.line}); its observers' frames would not match")
        length = max(_end(e) for e in track.events)
        if first.duration is not None:
            media_end = math.ceil(first.duration)
            late = next((e for e in track.events if _end(e) > media_end), None)
            if late is not None:
                column = START if late.point else STOP
                raise InputError(late.file, column, round((late.start if late.point else late.stop) / late.fps, 6),
                                 f"line {late.line}: the event ends after the media's end "
                                 f"({round(first.duration / first.fps, 6)} s, frame {media_end})")
            length = media_end
        check_count(first.file, "frames", length, MAX_SEQUENCE_FRAMES, "frames in one sequence")
        lengths[seq] = max(lengths[seq], length)
    for seq, length in lengths.items():
        if length == 0:
            first = next(t.first for (_, s), t in tracks.items() if s == seq)
            raise InputError(first.file, "sequence", seq, "the sequence has no frames (no media duration, no event past time 0)")
    return lengths


def _paint(track: _Track, length: int, class_list: list[str], background: int, rank: dict[str, int],
           ranked: bool) -> np.ndarray:
    """One observer's per-frame codes of one sequence: STATE bouts, then POINT frames over them."""
    states = sorted((e for e in track.events if not e.point), key=lambda e: (e.behavior, e.start, e.stop))
    for before, after in zip(states, states[1:], strict=False):
        if after.behavior == before.behavior and after.start < before.stop:
            raise InputError(after.file, START, round(after.start / after.fps, 6),
                             f"line {after.line}: this {after.behavior!r} event starts before the one on line "
                             f"{before.line} stops ({round(before.stop / before.fps, 6)} s): STATE events of one "
                             f"behaviour may not overlap (observer {after.observer!r}, sequence {after.sequence!r})")
    code = {name: i for i, name in enumerate(class_list)}
    unranked = len(rank) + 1
    rank_of = np.array([rank.get(name, unranked) for name in class_list], dtype=np.int64)
    codes = np.full(length, background, dtype=np.int16)
    for group in ([e for e in track.events if not e.point], [e for e in track.events if e.point]):
        held = np.full(length, -1, dtype=np.int64)  # the code this group gave the frame, -1 = none yet
        line = np.zeros(length, dtype=np.int64)  # and the line of the event that gave it
        for event in group:
            begin = math.floor(event.start) if event.point else math.ceil(event.start)
            frames = np.arange(begin, _end(event))
            mine = code[event.behavior]
            taken = (held[frames] >= 0) & (held[frames] != mine)
            win = np.ones(len(frames), dtype=bool)
            if taken.any():
                others = held[frames][taken]
                if not ranked or rank_of[mine] == unranked or (rank_of[others] == unranked).any():
                    at = int(np.flatnonzero(taken)[0])
                    frame, other = int(frames[at]), class_list[int(held[frames[at]])]
                    hint = " (list both in `priority`)" if ranked else ""
                    raise InputError(
                        event.file, BEHAVIOR, event.behavior,
                        f"line {event.line}: {event.behavior!r} overlaps {other!r} (line {int(line[frame])}) at "
                        f"frame {frame} ({round(frame / event.fps, 6)} s) of observer {event.observer!r}, sequence "
                        f"{event.sequence!r}: a frame gets one label; make the behaviours mutually exclusive in "
                        f"BORIS or rank them with `priority`{hint}")
                win[taken] = rank_of[mine] < rank_of[others]
            codes[frames[win]] = mine
            held[frames[win]] = mine
            line[frames[win]] = event.line
    return codes
