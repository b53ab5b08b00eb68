"""Datasets: MVTec AD, VisA, BTAD, a user folder and a generated synthetic set (all registered in DATASETS)."""
from ad.data._base import (  # noqa: F401
    IMAGE_EXTENSIONS,
    AnomalyDataModule,
    ImageTransform,
    Sample,
    SampleDataset,
    collate,
    list_images,
    load_image,
    load_mask,
    split_validation,
)
from ad.registry import DATASETS, import_submodules

import_submodules(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "AnomalyDataModule", "ImageTransform", "Sample", "SampleDataset", "collate", "list_images", "load_image",
    "load_mask", "split_validation", "DATASETS",
]
