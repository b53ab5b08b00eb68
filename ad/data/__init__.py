"""Datasets: MVTec AD, VisA, BTAD, a user folder and a generated synthetic set (`conf/dataset/<name>.yaml` names each class)."""
from ad.data._base import (  # noqa: F401
    IMAGE_EXTENSIONS,
    AnomalyDataModule,
    ImageTransform,
    LoaderOptions,
    Sample,
    SampleDataset,
    collate,
    kfold_split,
    list_images,
    load_image,
    load_mask,
    split_validation,
)
from ad.data.source import DataSource
from ad.registry import DATASETS

__all__ = [
    "IMAGE_EXTENSIONS",
    "AnomalyDataModule", "DataSource", "ImageTransform", "LoaderOptions", "Sample", "SampleDataset", "collate", "kfold_split", "list_images", "load_image",
    "load_mask", "split_validation", "DATASETS",
]
