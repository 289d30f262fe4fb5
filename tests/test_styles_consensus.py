"""The leave-one-out consensus (`tasks.styles.consensus`): never the annotator's own vote, and
ties broken exactly as documented (the class the whole crowd uses most, then the lower code)."""

from __future__ import annotations

import numpy as np

from tasks.styles.consensus import leave_one_out, vote_counts


def test_own_vote_is_left_out():
    labels = np.array([[0, 1, 1], [1, 1, -1], [2, -1, -1]], np.int16)
    ref = leave_one_out(labels, 3)
    assert ref.rows[0].tolist() == [0, 1] and ref.reference[0].tolist() == [1, 1]
    assert ref.rows[2].tolist() == [0] and ref.reference[2].tolist() == [1]


def test_a_tie_goes_to_the_class_the_crowd_uses_most_even_with_many_classes():
    """Item 0: the others split between class 0 and class k - 1; the crowd uses class k - 1 once
    more than class 0 over the other items, so it wins, whatever k and the number of labels."""
    for k in (3, 1000):
        labels = np.full((1 + 2 * k, 3), -1, np.int16)
        labels[0] = [5 % k, 0, k - 1]
        labels[1:k + 1, 0] = np.arange(k)  # every class once
        labels[k + 1:2 * k + 1, 0] = np.arange(k)  # and again ...
        labels[k + 1, 0] = k - 1  # ... but class k - 1 in place of class 0
        ref = leave_one_out(labels, k)
        assert ref.rows[0][0] == 0 and ref.reference[0][0] == k - 1, k
    # equal use: the lower code
    labels = np.array([[2, 0, 1], [0, -1, -1], [1, -1, -1]], np.int16)
    assert leave_one_out(labels, 3).reference[0][0] == 0


def test_vote_counts_ignore_missing_labels():
    labels = np.array([[0, 0, -1], [2, 1, 2], [-1, -1, -1]], np.int16)
    assert vote_counts(labels, 3).tolist() == [[2, 0, 0], [0, 1, 2], [0, 0, 0]]
