"""What every dataset shares: the `Sample` record, image/mask loading, transforms, the validation split and
the `AnomalyDataModule` base class that the trainer talks to.

A dataset subclass only implements `list_samples()` (a pure listing of files with labels); everything else —
splitting, loading, resizing, batching — lives here so all datasets behave identically.
"""
from __future__ import annotations

import logging
import random
from functools import partial
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Dict, List, Literal, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from ad.data._cache import Decoded, DecodeCache, Prefetcher, resolve_decode_threads

from ad.data._checks import DatasetConfigError, check_number, check_size, verify_samples
from ad.data.leaks import check_disjoint
from ad.values import ImageSize, NonNegativeFloat, NonNegativeInt, PositiveInt, Range
from ad.errors import ConfigError, DataError
from ad.io.images import (IMAGE_EXTENSIONS, DataFileError, list_images, load_image,  # noqa: F401  (the data API)
                          load_mask)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Sample:
    """One image on disk. `label` 0 = normal, 1 = anomalous; `mask_path` None = no pixel annotation."""

    path: str
    label: int
    defect_type: str = "good"
    mask_path: Optional[str] = None
    split: str = "test"  # "train" | "test" (validation is carved out of train by the data module)


def check_root(root: Path, what: str, expected: str, key: str = "dataset.root") -> None:
    """One-line error for a missing or non-directory dataset root, saying which layout belongs there."""
    if not root.exists():
        raise DataError(f"{what} root {root} does not exist; put the data there or set {key}=<dir> ({expected})")
    if not root.is_dir():
        raise DataError(f"{what} root {root} is not a directory; set {key}=<dir> ({expected})")


def require_dir(folder: Path, expected: str) -> None:
    if not folder.is_dir():
        raise DataError(f"expected folder {folder} is missing ({expected})")


def mask_stem(path: Path) -> str:
    """`000_mask.png` and `000.png` both belong to image `000`."""
    return path.stem[: -len("_mask")] if path.stem.endswith("_mask") else path.stem


def mask_index(folder: Path) -> Dict[str, Path]:
    """stem -> mask file of a ground-truth folder (any image extension; `<stem>_mask` preferred when both)."""
    index: Dict[str, Path] = {}
    if not folder.is_dir():
        return index
    for p in list_images(folder):
        stem = mask_stem(p)
        if stem not in index or p.stem.endswith("_mask"):
            index[stem] = p
    return index


class ImageTransform:
    """Resize (+ optional centre crop) an image and its mask together; masks use nearest interpolation.

    Output image is float [3,H,W] in [0,1]. Per-backbone normalisation is applied by the model, so a saved
    model scores raw images without needing the data config.
    """

    def __init__(self, image_size: int | Sequence[int] = 256, center_crop: int | Sequence[int] | None = None):
        self.image_size = _pair(image_size)
        self.center_crop = _pair(center_crop) if center_crop else None
        if self.center_crop and any(c > i for c, i in zip(self.center_crop, self.image_size)):
            raise DataError(
                f"dataset.center_crop={center_crop} is larger than dataset.image_size={image_size}; "
                "crop to at most the resized size"
            )

    @property
    def output_size(self) -> tuple[int, int]:
        return self.center_crop or self.image_size

    @property
    def key(self) -> tuple:
        """What the output depends on besides the file: part of every decode-cache key."""
        return ("bilinear", self.image_size, self.center_crop)

    def resize(self, image: Image.Image, mask: Optional[Image.Image] = None):
        """uint8 image [3,H,W] and uint8 mask [H,W] in {0,1} (None without a mask) at the output size."""
        h, w = self.image_size
        image = image.resize((w, h), Image.BILINEAR)
        if mask is not None:
            mask = mask.resize((w, h), Image.NEAREST)
        if self.center_crop:
            image = _center_crop(image, self.center_crop)
            mask = _center_crop(mask, self.center_crop) if mask is not None else None
        img = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        m = torch.from_numpy((np.asarray(mask) > 0).astype(np.uint8)) if mask is not None else None
        return img, m

    @staticmethod
    def to_float(image: torch.Tensor, mask: Optional[torch.Tensor]):
        """float image in [0,1] (x / 255 in float32, the same rounding as dividing the decoded pixels) and mask."""
        img = image.to(torch.float32) / 255.0
        m = mask.to(torch.float32) if mask is not None else torch.zeros(img.shape[1:], dtype=torch.float32)
        return img, m

    def __call__(self, image: Image.Image, mask: Optional[Image.Image] = None):
        return self.to_float(*self.resize(image, mask))


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ValueError(f"expected an int or (height, width), got {v}")
    return v  # type: ignore[return-value]


def _center_crop(im: Image.Image, size: tuple[int, int]) -> Image.Image:
    h, w = size
    left = (im.width - w) // 2
    top = (im.height - h) // 2
    return im.crop((left, top, left + w, top + h))


def read_sample(sample: Sample) -> None:
    """Read a sample's image and mask in full by the same rules as training (`load_image`, `load_mask`):
    the pre-training check, which finds truncated files and unmappable pixel modes before any work."""
    image = load_image(sample.path)
    if sample.mask_path:
        load_mask(sample.mask_path, image.size)


def decode_sample(sample: Sample, transform: ImageTransform) -> Decoded:
    """Read and resize one sample's image (and mask): the work the decode cache saves."""
    image = load_image(sample.path)
    mask = load_mask(sample.mask_path, image.size) if sample.mask_path else None
    return Decoded(*transform.resize(image, mask))


class SampleDataset(Dataset):
    """Torch dataset over `Sample`s. Items are dicts: image [3,H,W] in [0,1], mask [H,W] in {0,1}, label,
    path, defect_type, has_mask. Images come through `cache` (decoded once, see `ad.data._cache`) and, with
    `decode_threads`, are decoded ahead of the loader on background threads."""

    def __init__(self, samples: Sequence[Sample], transform: ImageTransform, cache: Optional[DecodeCache] = None,
                 decode_threads: int = 0) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache
        self.prefetcher = Prefetcher(self._load, self._is_cached, decode_threads)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int) -> Decoded:
        s = self.samples[i]
        return self.cache.load(s) if self.cache is not None else decode_sample(s, self.transform)

    def _is_cached(self, i: int) -> bool:
        return self.cache is not None and self.cache.cached(self.samples[i])

    def __getitem__(self, i: int) -> Dict:
        s = self.samples[i]
        pending = self.prefetcher.take(i)
        decoded = pending.result() if pending is not None and not pending.cancelled() else self._load(i)
        img, m = ImageTransform.to_float(decoded.image, decoded.mask)
        return {
            "image": img,
            "mask": m,
            "label": s.label,
            "path": s.path,
            "defect_type": s.defect_type,
            "has_mask": s.mask_path is not None,
        }


class _PrefetchSampler(Sampler):
    """Yields the wrapped sampler's order unchanged (same generator draws) and tells the dataset's prefetcher
    what comes next."""

    def __init__(self, sampler: Sampler, dataset: SampleDataset) -> None:
        self.sampler, self.dataset = sampler, dataset

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self):
        return self.dataset.prefetcher.run(list(self.sampler))


def split_validation(train: Sequence[Sample], fraction: float, seed: int) -> tuple[List[Sample], List[Sample]]:
    """Hold out `fraction` of the train normals (at least one when fraction > 0) for thresholds,
    normalisation and early stopping. Test images are never used for that."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"dataset.val_fraction={fraction} must be in [0, 1)")
    train = list(train)
    n_val = int(round(len(train) * fraction))
    if fraction > 0 and len(train) > 1:
        n_val = max(1, n_val)
    return split_count(train, min(n_val, len(train) - 1), seed)


def split_count(train: Sequence[Sample], n_val: int, seed: int) -> tuple[List[Sample], List[Sample]]:
    """(rest, val) with `n_val` normals drawn by `seed` held out; both in listing order."""
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    val = [s for i, s in enumerate(train) if i in val_idx]
    rest = [s for i, s in enumerate(train) if i not in val_idx]
    return rest, val


def choose_shots(train: Sequence[Sample], shots: Optional[int], seed: int, what: str = "dataset") -> List[Sample]:
    """The k-shot training set: `shots` normals drawn by `seed`, nested (for one seed the 2-shot set contains
    the 1-shot set, the 4-shot set the 2-shot set, ...) so a learning curve adds images instead of redrawing.
    `None` keeps every image. Returned in listing order."""
    train = list(train)
    if shots is None:
        return train
    if shots > len(train):
        raise DataError(f"dataset.shots={shots} but {what} has only {len(train)} training normals; "
                        f"use dataset.shots<={len(train)} (or null for all)")
    order = sorted(range(len(train)), key=lambda i: train[i].path)  # independent of the listing's order
    random.Random(f"shots:{seed}").shuffle(order)
    keep = set(order[:shots])
    return [s for i, s in enumerate(train) if i in keep]


def kfold_split(samples: Sequence[Sample], k: int, seed: int) -> List[tuple[List[Sample], List[Sample]]]:
    """Deterministic K-fold split for cross-fitted scores: `k` (fit, held) pairs in which every sample is held
    out exactly once and fold sizes differ by at most one. `k >= len(samples)` is leave-one-out. Needs at
    least 2 samples (a fold must keep something to fit on)."""
    samples = list(samples)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"cross-fitting needs k >= 2 folds, got {k!r}")
    if len(samples) < 2:
        raise DataError(f"cross-fitting needs at least 2 training normals, got {len(samples)}")
    k = min(k, len(samples))
    order = list(range(len(samples)))
    random.Random(f"folds:{seed}").shuffle(order)
    fold_of = {idx: pos % k for pos, idx in enumerate(order)}
    return [([s for i, s in enumerate(samples) if fold_of[i] != f],
             [s for i, s in enumerate(samples) if fold_of[i] == f]) for f in range(k)]


class AnomalyDataModule:
    """Base class of every dataset. Subclasses implement `list_samples()` returning all train and test
    `Sample`s; this class checks them, carves the validation split and builds loaders."""

    name: str = "base"

    def __init__(
        self,
        root: str,
        category: str,
        image_size: ImageSize = 256,
        center_crop: Optional[ImageSize] = None,
        val_fraction: Annotated[float, Range(0, 1, high_open=True)] = 0.1,
        seed: int = 0,
        shots: Optional[PositiveInt] = None,
        min_val: PositiveInt = 2,
        cache: Literal["auto", "memory", "disk", "off"] = "auto",
        cache_mb: Optional[NonNegativeFloat] = None,
        cache_dir: Optional[str] = None,
        decode_threads: Union[NonNegativeInt, Literal["auto"]] = "auto",
        pin_memory: Union[bool, Literal["auto"]] = "auto",
        categories: Optional[Sequence[str]] = None,
    ) -> None:
        if root is None or str(root).strip() in ("", "None", "null", "???"):
            raise DatasetConfigError(f"dataset.root is not set (got {root!r}); "
                                     f"set dataset.root=<folder of the {self.name} data>")
        if category is None or str(category).strip() in ("", "None", "null", "???"):
            raise DatasetConfigError(f"dataset.category is not set (got {category!r}); "
                                     "set category=<name> or dataset.category=<name>")
        self.root = Path(str(root)).expanduser()
        self.category = str(category)
        #: the dataset's official categories (`categories:` of its YAML; `setting=unified` with `all` uses them)
        self.categories: List[str] = [str(c) for c in (categories or [])]
        check_size(image_size, "dataset.image_size")
        if center_crop is not None:
            check_size(center_crop, "dataset.center_crop")
        self.transform = ImageTransform(image_size, center_crop)
        self.val_fraction = check_number(val_fraction, "dataset.val_fraction", float, low=0.0, high=1.0, high_open=True)
        self.seed = check_number(seed, "seed", int)
        self.shots = check_number(shots, "dataset.shots", int, low=1) if shots is not None else None
        self.min_val = check_number(min_val, "dataset.min_val", int, low=1)
        #: why there is no held-out validation split (None when there is one); set by setup()
        self.no_val_reason: Optional[str] = None
        self._splits: Optional[Dict[str, List[Sample]]] = None
        # Loading (not what the data is): decoded images are kept per file + transform, see ad.data._cache.
        self.cache = DecodeCache(partial(decode_sample, transform=self.transform), self.transform.key,
                                 mode=str(cache), budget_mb=cache_mb, cache_dir=cache_dir)
        self.decode_threads = resolve_decode_threads(decode_threads)
        self.pin_memory = torch.cuda.is_available() if pin_memory in ("auto", None) else bool(pin_memory)

    # --- to implement -------------------------------------------------------------------------------------
    def list_samples(self) -> List[Sample]:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------------
    def setup(self) -> "AnomalyDataModule":
        if self._splits is not None:
            return self
        samples = self.list_samples()
        train = [s for s in samples if s.split == "train"]
        test = [s for s in samples if s.split == "test"]
        if not train:
            raise DataError(f"no training images found for {self.name} category '{self.category}' under {self.root}")
        if any(s.label != 0 for s in train):
            raise DataError(f"{self.name} '{self.category}': training split contains anomalous images")
        if not test:
            raise DataError(f"no test images found for {self.name} category '{self.category}' under {self.root}")
        check_disjoint({"train": train, "test": test}, f"{self.name} '{self.category}'")
        train = choose_shots(train, self.shots, self.seed, f"{self.name} '{self.category}'")
        train, val, self.no_val_reason = self._hold_out(train)
        if self.no_val_reason:
            log.info("%s '%s': %s", self.name, self.category, self.no_val_reason)
        self.verify(train + val + test)
        self._splits = {"train": train, "val": val, "test": test}
        anomalous = [s for s in test if s.label == 1]
        unmasked = [s for s in anomalous if not s.mask_path]
        # Logged once per data module (setup is cached), whatever is asked of it afterwards.
        if unmasked and len(unmasked) == len(anomalous):
            log.warning(
                "%s '%s' has no ground-truth masks under %s: pixel metrics will be reported as unavailable",
                self.name, self.category, self.root,
            )
        elif unmasked:
            log.warning(
                "%s '%s': %d of %d anomalous test images have no mask (e.g. %s): pixel metrics will be reported "
                "as unavailable", self.name, self.category, len(unmasked), len(anomalous), unmasked[0].path,
            )
        return self

    def _hold_out(self, train: List[Sample]) -> tuple[List[Sample], List[Sample], Optional[str]]:
        """(train, val, reason there is no val). With `shots` the model trains on exactly those images, so no
        validation is held out; otherwise `val_fraction` of the normals, unless that is fewer than `min_val`
        (a threshold fitted on one or two normals is noise): then every normal trains and the caller uses its
        fallback (cross-fitted scores on the training normals, see `kfold_split`)."""
        n = len(train)
        if self.shots is not None:
            return train, [], (f"no held-out validation: dataset.shots={self.shots} trains on exactly {n} normal "
                               "image(s); thresholds need the training-normal fallback")
        if self.val_fraction == 0:
            return train, [], "no held-out validation: dataset.val_fraction=0"
        n_val = int(round(n * self.val_fraction))
        if n_val < self.min_val:
            return train, [], (f"no held-out validation: {n} training normals x dataset.val_fraction="
                               f"{self.val_fraction:g} gives {n_val} < dataset.min_val={self.min_val}; all {n} train")
        if n_val >= n:
            return train, [], (f"no held-out validation: dataset.val_fraction={self.val_fraction:g} of {n} training "
                               "normals would leave none to train on; all train")
        rest, val = split_count(train, n_val, self.seed)
        return rest, val, None

    @property
    def has_validation(self) -> bool:
        """True when a held-out validation split exists (`samples("val")` non-empty); else see `no_val_reason`."""
        return bool(self.samples("val"))

    def folds(self, k: int = 5) -> List[tuple[List[Sample], List[Sample]]]:
        """K-fold (fit, held) splits of the training normals, deterministic for the data seed (`kfold_split`)."""
        return kfold_split(self.samples("train"), k, self.seed)

    def verify(self, samples: Optional[Sequence[Sample]] = None) -> None:
        """The pre-training check of every image and mask of the splits (`verify_samples`): headers, mask
        sizes, then a full read of each file by the training decoder, kept in the decode cache (files already
        there, unchanged since, were read in full before and are not read again). `setup()` runs it."""
        if samples is None:
            samples = self.samples("train") + self.samples("val") + self.samples("test")
        verify_samples(samples, read=self._read_unless_cached, threads=max(1, self.decode_threads))

    def _read_unless_cached(self, sample: Sample) -> None:
        # The full read is the decode training needs anyway: with a cache, keep its result (within the memory
        # budget; a disk-cache hit is a cheap read) so that no image is decoded twice in a run.
        if self.cache.memory:
            self.cache.load(sample)
        else:
            read_sample(sample)

    def samples(self, split: str) -> List[Sample]:
        self.setup()
        assert self._splits is not None
        return self._splits[split]

    @property
    def has_masks(self) -> bool:
        """True when every anomalous test image has a mask (pixel metrics are then meaningful)."""
        anomalous = [s for s in self.samples("test") if s.label == 1]
        return bool(anomalous) and all(s.mask_path for s in anomalous)

    def dataset(self, split: str, limit: Optional[int] = None) -> SampleDataset:
        samples = self.samples(split)
        if limit is not None and limit < len(samples):
            samples = _stratified_head(samples, limit)
        return SampleDataset(samples, self.transform, self.cache, self.decode_threads)

    def dataloader(
        self, split: str, batch_size: int, shuffle: bool = False, num_workers: int = 0,
        limit: Optional[int] = None, generator: Optional[torch.Generator] = None, drop_last: bool = False,
    ) -> DataLoader:
        return make_loader(self.dataset(split, limit), batch_size, shuffle, num_workers, generator, drop_last,
                           pin_memory=self.pin_memory)

    @property
    def loading(self) -> "LoaderOptions":
        """How this module loads images, for views over its samples (cross-fitting folds, the unified union)."""
        return LoaderOptions(self.cache, self.decode_threads, self.pin_memory)


@dataclass(frozen=True)
class LoaderOptions:
    """How images are loaded — never what they are: the decode cache, decode threads and pinned memory. Every
    data source (a category, the unified union, a cross-fitting fold) loads through the same options."""

    cache: Optional[DecodeCache] = None
    decode_threads: int = 0
    pin_memory: bool = False


def make_loader(ds: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0,
                generator: Optional[torch.Generator] = None, drop_last: bool = False,
                pin_memory: bool = False) -> DataLoader:
    """The one way a split becomes batches (every data module, single, unified or a cross-fitting fold). The
    last partial batch is dropped only when there is more than one batch, so a tiny split still trains."""
    # Worker processes would each fill a private copy of the memory cache and lose it at the epoch's end;
    # with them, images still come from the disk cache. Background decode threads need no copy.
    inner = (RandomSampler(ds, generator=generator) if shuffle else SequentialSampler(ds))
    sampler = _PrefetchSampler(inner, ds) if num_workers == 0 and hasattr(ds, "prefetcher") else inner
    return DataLoader(
        ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers, generator=generator,
        drop_last=drop_last and len(ds) > batch_size, collate_fn=collate,
        persistent_workers=False, pin_memory=pin_memory,
    )


def _stratified_head(samples: List[Sample], limit: int) -> List[Sample]:
    """First `limit` samples keeping both classes when present (for smoke runs on a few images)."""
    normal = [s for s in samples if s.label == 0]
    anomalous = [s for s in samples if s.label == 1]
    if not normal or not anomalous:
        return samples[:limit]
    n_anom = max(1, limit // 2)
    n_norm = max(1, limit - n_anom)
    return normal[:n_norm] + anomalous[:n_anom]


def collate(items: List[Dict]) -> Dict:
    batch = {
        "image": torch.stack([it["image"] for it in items]),
        "mask": torch.stack([it["mask"] for it in items]),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "path": [it["path"] for it in items],
        "defect_type": [it["defect_type"] for it in items],
        "has_mask": torch.tensor([it["has_mask"] for it in items], dtype=torch.bool),
    }
    if "category" in items[0]:  # unified (multi-category) data: for evaluation only, never shown to the model
        batch["category"] = [it["category"] for it in items]
    return batch
