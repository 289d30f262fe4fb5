"""The built-in demo: behaviour-like keypoint sequences labelled by simulated annotators.

Two agents move in an arena; a latent behaviour (a semi-Markov chain of bouts) drives how they
move. Simulated annotators label the latent behaviour frame by frame, each in the style of a
known group, so that later stages can be checked against the truth: does the model learn each
annotator's style, and does clustering find the groups?

Style groups (the first `n_groups` of `GROUPS`):
- lenient: every behaviour bout is extended into the background by 5-8 frames at onset and
  at offset (per annotator, per side);
- strict: bouts are shortened by 5-8 frames at onset and offset (short bouts vanish);
- confuser: boundaries within a frame of the truth, but an attack bout whose intensity is below
  the annotator's threshold (0.6-0.8) is labelled investigation. Intensity is visible in the
  features (weak attacks jitter less), so the confusion is learnable, and two confusers agree on
  most bouts because they share the intensity and differ only in their threshold.
Every annotator also relabels 1-3 % of its frames at random, in slips of 3-9 frames.

Everything is a pure function of the `DemoSource`: random numbers come from child streams of
`np.random.SeedSequence(seed)` (one for the styles, one for the assignment of sequences to
annotators, one per sequence), so a run is bit-identical for a seed, and the first k sequences'
features and gold do not depend on `n_sequences`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from configs.sources import DEMO_SIZES, DemoSource
from storage.batch import Batch

CLASSES: tuple[str, ...] = ("other", "approach", "attack", "investigation")
OTHER, APPROACH, ATTACK, INVESTIGATION = range(4)
GROUPS: tuple[str, ...] = ("lenient", "strict", "confuser")
KEYPOINTS: tuple[str, ...] = ("nose", "ear_left", "ear_right", "neck", "hip_left", "hip_right", "tail_base")
AGENTS: tuple[str, ...] = ("resident", "intruder")
FEATURE_NAMES: tuple[str, ...] = tuple(f"{a}_{k}_{xy}" for a in AGENTS for k in KEYPOINTS for xy in "xy")

# Defaults by size: (n_sequences, sequence_length, n_annotators, n_groups); the config validates
# against them, so they live with it.
SIZES = DEMO_SIZES

# Embedded chain of bouts (no self-transitions): rows are the current class, columns the next.
# Approach always ends in contact; "other" is the background most bouts return to.
TRANSITIONS = np.array(
    [
        [0.00, 0.70, 0.05, 0.25],  # other
        [0.00, 0.00, 0.45, 0.55],  # approach
        [0.60, 0.00, 0.00, 0.40],  # attack
        [0.65, 0.00, 0.35, 0.00],  # investigation
    ]
)
# Bout durations in frames: min + Gamma(shape, scale), clipped at max.
DURATIONS = np.array(
    [
        # min, shape, scale, max
        [30, 2.0, 50.0, 400],  # other, mean about 130
        [15, 3.0, 7.0, 80],  # approach, about 36
        [10, 2.0, 15.0, 120],  # attack, about 40
        [15, 2.0, 25.0, 200],  # investigation, about 65
    ]
)
# Inter-agent distance levels (arena units; the arena is about [-2, 2]^2, a body 0.25 long).
DISTANCE = np.array([[0.5, 1.5], [0.9, 1.5], [0.10, 0.22], [0.15, 0.28]])
# How fast the scene moves in each state (scales the intruder's wandering and the angle drift).
PACE = np.array([1.0, 1.0, 1.6, 0.3])
GRID = 40  # frames between distance anchors within a bout
RAMP = (15, 3)  # frames to leave contact (after a social bout) and to close in (contact start)
NOISE_SD = 0.008  # keypoint measurement noise
SLIP_MEAN = 6  # mean length of an annotator's slip (a short run of a wrong label)
ATTACK_JITTER = 0.02  # centre jitter per frame in attack, times (0.5 + intensity)
# Body template, in body lengths: x forward, y to the left.
BODY = np.array(
    [[0.5, 0.0], [0.3, 0.12], [0.3, -0.12], [0.2, 0.0], [-0.25, 0.15], [-0.25, -0.15], [-0.5, 0.0]]
)


@dataclass(frozen=True)
class DemoSpec:
    """The resolved sizes of one demo batch (defaults by size, then the config's overrides)."""

    size: str
    seed: int
    n_sequences: int
    sequence_length: int
    n_annotators: int
    n_groups: int
    annotators_per_sequence: int

    @classmethod
    def from_source(cls, src: DemoSource) -> DemoSpec:
        """Fill the defaults of `src.size` and apply the overrides that are set."""
        n_seq, length, n_ann, n_groups = SIZES[src.size]
        n_ann = src.n_annotators or n_ann
        return cls(
            size=src.size,
            seed=int(src.seed),
            n_sequences=src.n_sequences or n_seq,
            sequence_length=src.sequence_length or length,
            n_annotators=n_ann,
            n_groups=src.n_groups or n_groups,
            annotators_per_sequence=max(2, (n_ann + 1) // 2),
        )


@dataclass(frozen=True)
class AnnotatorStyle:
    """How one simulated annotator labels.

    onset_shift / offset_shift: frames a behaviour bout is extended (> 0) or shortened (< 0)
    by where it borders "other"; confusion: attack bouts with intensity below it are labelled
    investigation; noise: share of frames relabelled to another class, in short random slips.
    """

    name: str
    group: str
    onset_shift: int
    offset_shift: int
    confusion: float
    noise: float


@dataclass(frozen=True)
class Bouts:
    """A latent behaviour track: consecutive bouts of different classes filling `length` frames."""

    classes: np.ndarray  # (n_bouts,) int64 codes into CLASSES
    lengths: np.ndarray  # (n_bouts,) int64, sum = length
    intensity: np.ndarray  # (n_bouts,) float64 in [0, 1): how vigorous the bout is

    @property
    def length(self) -> int:
        return int(self.lengths.sum())

    @property
    def starts(self) -> np.ndarray:
        return np.cumsum(self.lengths) - self.lengths

    def frames(self) -> np.ndarray:
        """The class of every frame, int16."""
        return np.repeat(self.classes, self.lengths).astype(np.int16)


def simulate_behaviour(length: int, rng: np.random.Generator) -> Bouts:
    """Sample a semi-Markov behaviour track of `length` frames (the last bout is cut short)."""
    cum = np.cumsum(TRANSITIONS, axis=1)
    lo, shape, scale, hi = DURATIONS.T
    current = int(rng.choice(len(CLASSES), p=_START))
    classes: list[int] = []
    lengths: list[int] = []
    total = 0
    while total < length:
        # Draw in blocks: one uniform (next class) and one duration per class for each bout.
        draws = rng.random(64)
        gammas = rng.standard_gamma(shape, size=(64, len(CLASSES)))
        for u, g in zip(draws, gammas, strict=True):
            n = int(min(lo[current] + round(g[current] * scale[current]), hi[current]))
            classes.append(current)
            lengths.append(min(n, length - total))
            total += lengths[-1]
            if total >= length:
                break
            current = int(np.searchsorted(cum[current], u, side="right"))
    intensity = rng.random(len(classes))
    return Bouts(np.array(classes, dtype=np.int64), np.array(lengths, dtype=np.int64), intensity)


def _start_probabilities() -> np.ndarray:
    """Share of frames in each class in the long run: where a sequence starts."""
    vals, vecs = np.linalg.eig(TRANSITIONS.T)
    bouts = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    frames = bouts * (DURATIONS[:, 0] + DURATIONS[:, 1] * DURATIONS[:, 2])
    return frames / frames.sum()


_START = _start_probabilities()


def simulate_distance(bouts: Bouts, rng: np.random.Generator) -> np.ndarray:
    """Inter-agent distance per frame: piecewise linear through class-dependent anchors.

    Approach bouts fall from a far level at their onset to contact at the next bout's start;
    contact bouts (attack, investigation) stay close to their last frame; "other" wanders over
    far levels and leaves contact over its first frames.
    """
    t_len = bouts.length
    frame_cls = np.repeat(bouts.classes, bouts.lengths)
    starts, ends = bouts.starts, bouts.starts + bouts.lengths
    since = np.arange(t_len) - np.repeat(starts, bouts.lengths)
    contact = (bouts.classes == ATTACK) | (bouts.classes == INVESTIGATION)
    is_other = bouts.classes == OTHER
    next_cls = np.append(bouts.classes[1:], -1)
    # Anchors, most important first (np.unique keeps the first of equal times).
    times = [
        starts[bouts.classes == APPROACH],
        np.minimum(starts[contact] + RAMP[1], ends[contact] - 1),
        ends[contact] - 1,
        np.minimum(starts[is_other] + RAMP[0], ends[is_other] - 1),
        # "other" that ends in contact passes close by before
        ends[is_other & np.isin(next_cls, (ATTACK, INVESTIGATION))] - 1,
    ]
    grid = np.arange(0, t_len, GRID)
    keep = (frame_cls[grid] != APPROACH) & ~((frame_cls[grid] == OTHER) & (since[grid] < RAMP[0]))
    times += [grid[keep], np.array([0, t_len - 1])]
    t = np.concatenate(times)
    t, first = np.unique(t, return_index=True)
    cls = frame_cls[t]
    lo, hi = DISTANCE[cls, 0], DISTANCE[cls, 1]
    level = lo + (hi - lo) * rng.random(len(t))
    # Special anchors: "other" just before contact, and an approach cut off by the sequence end.
    n_special = sum(len(x) for x in times[:4])
    before_contact = (first >= n_special) & (first < n_special + len(times[4]))
    level[before_contact] = 0.45 + 0.3 * rng.random(int(before_contact.sum()))
    cut_approach = (t == t_len - 1) & (cls == APPROACH) & (t_len - 1 != starts[-1])
    level[cut_approach] = DISTANCE[INVESTIGATION, 0] + 0.1 * rng.random(int(cut_approach.sum()))
    return np.interp(np.arange(t_len), t, level)


def simulate_keypoints(bouts: Bouts, rng: np.random.Generator) -> np.ndarray:
    """Two agents' keypoints per frame, (length, 28) float32, driven by the latent behaviour.

    The intruder wanders (a sum of slow sinusoids in a state-dependent time); the resident sits
    at the simulated distance and a drifting angle from it. Approach: distance falls, resident
    faces the intruder; attack: close, fast jitter of both (stronger for intense bouts);
    investigation: close and slow; other: both wander, resident faces its own way.
    """
    t_len = bouts.length
    cls = np.repeat(bouts.classes, bouts.lengths)
    intensity = np.repeat(bouts.intensity, bouts.lengths)
    pace = PACE[cls]
    clock = np.cumsum(pace)
    # Intruder centre: three sinusoids per axis.
    periods = rng.uniform(150, 600, size=(3, 2))
    amps = rng.uniform(0.15, 0.3, size=(3, 2))
    phases = rng.uniform(0, 2 * np.pi, size=(3, 2))
    intruder = (amps * np.sin(2 * np.pi * clock[:, None, None] / periods + phases)).sum(axis=1)
    # Resident centre at distance d and a drifting angle from the intruder.
    distance = simulate_distance(bouts, rng)
    angle = rng.uniform(0, 2 * np.pi) + np.cumsum(pace * _smooth(rng.normal(0, 0.03, t_len), 15))
    offset = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    resident = intruder + distance[:, None] * offset
    # Headings: the resident faces the intruder in social states, else its own drifting way.
    social = _smooth((cls != OTHER).astype(float), 9)[:, None]
    own = rng.uniform(0, 2 * np.pi) + np.cumsum(_smooth(rng.normal(0, 0.05, t_len), 15))
    facing = social * -offset + (1 - social) * np.stack([np.cos(own), np.sin(own)], axis=1)
    heading_res = np.arctan2(facing[:, 1], facing[:, 0])
    heading_int = rng.uniform(0, 2 * np.pi) + np.cumsum(pace * _smooth(rng.normal(0, 0.05, t_len), 15))
    # Attack: fast jitter of both centres and headings.
    fight = np.flatnonzero(cls == ATTACK)
    if fight.size:
        sd = ATTACK_JITTER * (0.5 + intensity[fight])[:, None]
        resident[fight] += sd * rng.standard_normal((fight.size, 2))
        intruder[fight] += sd * rng.standard_normal((fight.size, 2))
        heading_res[fight] += 10 * sd[:, 0] * rng.standard_normal(fight.size)
        heading_int[fight] += 10 * sd[:, 0] * rng.standard_normal(fight.size)
    size = rng.uniform(0.22, 0.28, size=2)
    out = np.empty((t_len, 2, len(KEYPOINTS), 2), dtype=np.float32)
    for i, (centre, heading) in enumerate(((resident, heading_res), (intruder, heading_int))):
        cos, sin = np.cos(heading)[:, None], np.sin(heading)[:, None]
        bx, by = size[i] * BODY[:, 0], size[i] * BODY[:, 1]
        out[:, i, :, 0] = centre[:, :1] + cos * bx - sin * by
        out[:, i, :, 1] = centre[:, 1:] + sin * bx + cos * by
    flat = out.reshape(t_len, -1)
    flat += rng.standard_normal(flat.shape, dtype=np.float32) * np.float32(NOISE_SD)
    return flat


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average along axis 0 (edges averaged over what is there)."""
    c = np.cumsum(np.concatenate([np.zeros((1,) + x.shape[1:]), x]), axis=0)
    n = len(x)
    lo = np.clip(np.arange(n) - width // 2, 0, n)
    hi = np.clip(np.arange(n) + width - width // 2, 0, n)
    return (c[hi] - c[lo]) / (hi - lo).reshape((-1,) + (1,) * (x.ndim - 1))


def simulate_annotators(n_annotators: int, n_groups: int, rng: np.random.Generator) -> list[AnnotatorStyle]:
    """Draw the annotators' styles: groups as even as possible, in shuffled order."""
    groups = rng.permutation(np.arange(n_annotators) % n_groups)
    styles = []
    for i, g in enumerate(groups):
        group = GROUPS[int(g)]
        if group == "lenient":
            on, off = rng.integers(5, 9, size=2)
        elif group == "strict":
            on, off = -rng.integers(5, 9, size=2)
        else:
            on, off = rng.integers(-1, 2, size=2)
        confusion = rng.uniform(0.6, 0.8) if group == "confuser" else rng.uniform(0.0, 0.08)
        styles.append(
            AnnotatorStyle(
                name=f"ann{i}",
                group=group,
                onset_shift=int(on),
                offset_shift=int(off),
                confusion=round(float(confusion), 4),
                noise=round(float(rng.uniform(0.01, 0.03)), 4),
            )
        )
    return styles


def assign_sequences(
    n_sequences: int, n_annotators: int, per_sequence: int, rng: np.random.Generator
) -> np.ndarray:
    """Which annotator labels which sequence: (n_sequences, n_annotators) bool.

    Each sequence gets `per_sequence` annotators, the least loaded first (ties at random);
    then every annotator gets at least one sequence and every pair shares at least one
    (added to the sequence with the fewest annotators, so few sequences mean more per sequence).
    """
    per_sequence = min(per_sequence, n_annotators)
    plan = np.zeros((n_sequences, n_annotators), dtype=bool)
    load = np.zeros(n_annotators, dtype=np.int64)
    for s in range(n_sequences):
        pick = np.lexsort((rng.random(n_annotators), load))[:per_sequence]
        plan[s, pick] = True
        load[pick] += 1
    for a in range(n_annotators):
        if not plan[:, a].any():
            plan[int(np.argmin(plan.sum(axis=1))), a] = True
    for a in range(n_annotators):
        for b in range(a + 1, n_annotators):
            if not (plan[:, a] & plan[:, b]).any():
                rows = np.flatnonzero(plan[:, a])
                plan[rows[np.argmin(plan[rows].sum(axis=1))], b] = True
    return plan


def annotate(bouts: Bouts, style: AnnotatorStyle, rng: np.random.Generator) -> np.ndarray:
    """Label a behaviour track in an annotator's style: (length,) int16 codes."""
    classes = bouts.classes.copy()
    classes[(classes == ATTACK) & (bouts.intensity < style.confusion)] = INVESTIGATION
    edges = np.cumsum(bouts.lengths)[:-1]
    before, after = classes[:-1], classes[1:]
    onset = (before == OTHER) & (after != OTHER)
    offset = (before != OTHER) & (after == OTHER)
    moved = edges - style.onset_shift * onset + style.offset_shift * offset
    moved = np.maximum.accumulate(np.clip(moved, 0, bouts.length))
    labels = np.repeat(classes, np.diff(moved, prepend=0, append=bouts.length)).astype(np.int16)
    # Slips: short runs (3-9 frames) relabelled to another class, `noise` of the frames on average.
    n_slips = rng.poisson(style.noise * len(labels) / SLIP_MEAN)
    start = rng.integers(0, len(labels), size=n_slips)
    wrong = (labels[start] + rng.integers(1, len(CLASSES), size=n_slips)).astype(np.int16) % len(CLASSES)
    span = rng.integers(SLIP_MEAN - 3, SLIP_MEAN + 4, size=n_slips)
    for s, n, c in zip(start.tolist(), span.tolist(), wrong.tolist(), strict=True):
        labels[s : s + n] = c
    return labels


def read_demo(
    src: DemoSource,
    classes: Sequence[bool | int | str] | None = None,
    annotators: Sequence[str] | None = None,
) -> Batch:
    """The `demo` reader: the generated batch. The generator names its own classes and annotators,
    so a config's fixed `classes` and `annotators` do not apply to it (as before the registry)."""
    return generate_batch(src)


def generate_batch(src: DemoSource) -> Batch:
    """Generate the demo batch for a config's `source` section (deterministic for a seed)."""
    spec = DemoSpec.from_source(src)
    root = np.random.SeedSequence(spec.seed)
    style_seq, plan_seq = root.spawn(2)
    styles = simulate_annotators(spec.n_annotators, spec.n_groups, np.random.default_rng(style_seq))
    plan = assign_sequences(
        spec.n_sequences, spec.n_annotators, spec.annotators_per_sequence, np.random.default_rng(plan_seq)
    )
    n_frames = spec.n_sequences * spec.sequence_length
    features = np.empty((n_frames, len(FEATURE_NAMES)), dtype=np.float32)
    labels = np.full((n_frames, spec.n_annotators), -1, dtype=np.int16)
    gold = np.empty(n_frames, dtype=np.int16)
    # Sequence i's stream is the (i + 2)-th child of the root, whatever n_sequences is.
    for i in range(spec.n_sequences):
        world, labelling = np.random.SeedSequence(spec.seed, spawn_key=(i + 2,)).spawn(2)
        rng = np.random.default_rng(world)
        rows = slice(i * spec.sequence_length, (i + 1) * spec.sequence_length)
        bouts = simulate_behaviour(spec.sequence_length, rng)
        gold[rows] = bouts.frames()
        features[rows] = simulate_keypoints(bouts, rng)
        ann_rng = np.random.default_rng(labelling)
        for a in np.flatnonzero(plan[i]):
            labels[rows, a] = annotate(bouts, styles[a], ann_rng)
    return Batch(
        sequence_names=[f"seq{i:04d}" for i in range(spec.n_sequences)],
        sequence_lengths=np.full(spec.n_sequences, spec.sequence_length, dtype=np.int64),
        annotators=[s.name for s in styles],
        classes=list(CLASSES),
        labels=labels,
        gold=gold,
        features=features,
        item_names=None,
        sources={"labels": _describe(src)},
        meta={"generator": _generator_meta(spec), "truth": _truth_meta(styles)},
    )


def _describe(src: DemoSource) -> str:
    extra = "".join(
        f", {k}={getattr(src, k)}"
        for k in ("n_sequences", "sequence_length", "n_annotators", "n_groups")
        if getattr(src, k) is not None
    )
    return f"demo(seed={src.seed}, size={src.size}{extra})"


def _generator_meta(spec: DemoSpec) -> dict[str, Any]:  # JSON boundary: batch meta
    return {**asdict(spec), "classes": list(CLASSES), "feature_names": list(FEATURE_NAMES)}


def _truth_meta(styles: list[AnnotatorStyle]) -> dict[str, Any]:  # JSON boundary: batch meta
    return {
        "style_groups": {s.name: s.group for s in styles},
        "styles": {s.name: {k: v for k, v in asdict(s).items() if k != "name"} for s in styles},
    }
