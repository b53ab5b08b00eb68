"""`DataSource`: what the engine needs of a run's data, whichever shape it has — one category
(`AnomalyDataModule`), the unified union of several (`UnifiedData`) or a cross-fitting fold (`FoldData`)."""
from __future__ import annotations

from typing import Any, List, Optional, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset

from ad.data._base import ImageTransform, LoaderOptions, Sample


@runtime_checkable
class DataSource(Protocol):
    transform: ImageTransform  # the one resize/crop every split goes through
    loading: LoaderOptions  # decode cache, decode threads, pinned memory: shared by every view of the data

    def setup(self) -> Any: ...

    def samples(self, split: str) -> List[Sample]: ...

    def dataset(self, split: str, limit: Optional[int] = None) -> Dataset: ...

    def dataloader(self, split: str, batch_size: int, shuffle: bool = False, num_workers: int = 0,
                   limit: Optional[int] = None, generator: Optional[torch.Generator] = None,
                   drop_last: bool = False) -> DataLoader: ...
