"""Cross-fitting folds of the training normals, for categories too small to hold out validation normals.

With only a few training images (few-shot), a threshold fitted on the very images a model was fitted on
would be optimistic (a nearest-neighbour model scores its own training images 0). Instead each fold's images
are scored by a model fitted on the other folds: out-of-fold scores of normal images, never a test image.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch

from ad.data._base import LoaderOptions, Sample, SampleDataset, _stratified_head, make_loader


class FoldData:
    """A data module view: train = the other folds, "heldout" = this fold, no validation split."""

    name = "fold"

    def __init__(self, transform: Any, train: Sequence[Sample], heldout: Sequence[Sample],
                 loading: LoaderOptions = LoaderOptions()) -> None:
        self.transform = transform
        self.loading = loading  # the parent source's cache and threads: fold models re-read the same images
        self._splits = {"train": list(train), "val": [], "heldout": list(heldout), "test": []}

    def setup(self) -> "FoldData":
        return self

    def samples(self, split: str) -> List[Sample]:
        return self._splits[split]

    def dataset(self, split: str, limit: Optional[int] = None) -> SampleDataset:
        samples = self._splits[split]
        if limit is not None and limit < len(samples):
            samples = _stratified_head(samples, limit)
        return SampleDataset(samples, self.transform, self.loading.cache, self.loading.decode_threads)

    def dataloader(self, split: str, batch_size: int, shuffle: bool = False, num_workers: int = 0,
                   limit: Optional[int] = None, generator: Optional[torch.Generator] = None,
                   drop_last: bool = False):
        return make_loader(self.dataset(split, limit), batch_size, shuffle, num_workers, generator, drop_last,
                           pin_memory=self.loading.pin_memory)
