"""Unified (multi-class) data: several categories' data modules seen as one.

The model trains on the shuffled union of every category's training normals and is never told which category
an image comes from (batches handed to `training_step` carry no category). Validation normals stay held out
per category (each module's own split), so one global threshold can be fitted on all of them and per-category
thresholds beside it. Test images carry a `category` field used only for evaluation. Nothing is preloaded:
images are read per batch, so memory does not grow with the number of categories.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from ad.data._base import AnomalyDataModule, Sample, make_loader
from ad.errors import ConfigError


class _Tagged(Dataset):
    """A category's split with each item tagged with its category (evaluation bookkeeping only)."""

    def __init__(self, inner: Dataset, category: str, tag: bool) -> None:
        self.inner, self.category, self.tag = inner, category, tag
        self.samples = getattr(inner, "samples", [])

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> Dict:
        item = self.inner[i]
        if self.tag:
            item = {**item, "category": self.category}
        return item


class UnifiedData:
    """The union of several `AnomalyDataModule`s with the loader interface the trainer uses.

    `limit` (smoke runs) applies per category, so every category stays represented.
    """

    name = "unified"

    def __init__(self, modules: Mapping[str, AnomalyDataModule]) -> None:
        if not modules:
            raise ConfigError("setting=unified needs at least one category; set setting.categories=[a,b,...] or all")
        self.modules: Dict[str, AnomalyDataModule] = dict(modules)
        first = next(iter(self.modules.values()))
        self.transform = first.transform
        self.loading = first.loading  # one category's loader options stand for all (the same config made them)
        self.category = "+".join(self.modules)

    @property
    def categories(self) -> List[str]:
        return list(self.modules)

    def setup(self) -> "UnifiedData":
        for m in self.modules.values():
            m.setup()
        return self

    def samples(self, split: str) -> List[Sample]:
        return [s for m in self.modules.values() for s in m.samples(split)]

    @property
    def has_masks(self) -> bool:
        return all(m.has_masks for m in self.modules.values())

    def dataset(self, split: str, limit: Optional[int] = None) -> Dataset:
        # The category tag rides along for validation/test bookkeeping; training batches never carry it.
        parts = [_Tagged(m.dataset(split, limit), name, tag=split != "train") for name, m in self.modules.items()]
        ds = ConcatDataset(parts)
        ds.samples = [s for p in parts for s in p.samples]  # type: ignore[attr-defined]
        return ds

    def dataloader(self, split: str, batch_size: int, shuffle: bool = False, num_workers: int = 0,
                   limit: Optional[int] = None, generator: Optional[torch.Generator] = None,
                   drop_last: bool = False) -> DataLoader:
        return make_loader(self.dataset(split, limit), batch_size, shuffle, num_workers, generator, drop_last,
                           pin_memory=self.loading.pin_memory)
