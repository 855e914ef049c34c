"""Which rows of a data set a split holds: stratified hold-outs, and views of rows of a decoded-image cache."""

from __future__ import annotations

from .. import backend

np = backend.np


class RowView:
    """Rows of a uint8 image array (a memory map of the decoded-image cache) without copying them: a split of an
    image folder. Indexing it reads just those rows."""

    def __init__(self, pixels, rows=None):
        self.pixels = pixels
        self.rows = np.arange(len(pixels)) if rows is None else np.asarray(rows)
        self.shape = (len(self.rows), *pixels.shape[1:])
        self.ndim, self.dtype = len(self.shape), pixels.dtype
        self.size = int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return np.asarray(self.pixels[self.rows[index]])

    def take(self, indices) -> RowView:
        return RowView(self.pixels, self.rows[indices])


def stratified_split(labels, fraction: float, rng, classification: bool):
    """Indices (train, val): `fraction` of each class held out (of all samples for regression)."""
    n = len(labels)
    if not classification:
        order = rng.permutation(n)
        n_val = max(1, round(n * fraction))
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    val = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        val.append(members[:round(len(members) * fraction)])
    val_idx = np.sort(np.concatenate(val))
    mask = np.ones(n, dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask), val_idx


def fold_numbers(labels, folds: int, rng, classification: bool):
    """Each sample's fold, 0..folds-1: the samples in random order, class after class (stratified), dealt out to the
    folds in turn, so that every fold holds each class's count / folds (give or take one) and the folds' sizes differ
    by one at most."""
    n = len(labels)
    order = [rng.permutation(n)] if not classification else [
        rng.permutation(members) for members in (np.flatnonzero(labels == cls) for cls in np.unique(labels))]
    numbers = np.empty(n, dtype=np.int64)
    numbers[np.concatenate(order)] = np.arange(n) % folds
    return numbers
