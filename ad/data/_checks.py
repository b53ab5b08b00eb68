"""Checks the data layer runs before any long work: config values at construction (one line naming the key)
and a header pass over every listed image and mask (`verify_samples`), so a corrupt test image or a mask of
the wrong size stops the run before training instead of after it."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

from PIL import Image, UnidentifiedImageError

from ad.errors import ConfigError, DataError
from ad.values import image_size, number

# Image modes `load_image` turns into RGB (everything Pillow opens from the supported formats).
_READABLE_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
                   "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# Full-file integrity (chunk CRCs) is cheap for these formats; it catches truncated or overwritten files too.
_VERIFIABLE = {"PNG"}
_MAX_EXAMPLES = 3


class DatasetConfigError(ConfigError, DataError):
    """A bad `dataset.*` value: both a config and a data error (callers catching either see it)."""


def check_number(value: Any, key: str, kind: type, low: Optional[float] = None, high: Optional[float] = None,
                 high_open: bool = False):
    """`value` as `kind` within [low, high] (or [low, high)): `ad.values.number`, raising the data layer's
    DatasetConfigError."""
    return number(value, key, kind, low=low, high=high, high_open=high_open, error=DatasetConfigError)


def check_size(value: Any, key: str) -> Tuple[int, int]:
    """An image side `N` or `[height, width]` of positive integers, as (h, w) (`ad.values.image_size`)."""
    return image_size(value, key, error=DatasetConfigError)


def image_header(path: str | Path) -> Tuple[str, Tuple[int, int], str]:
    """(format, (width, height), mode) of an image file without decoding its pixels (PNGs are also checked
    whole: chunk CRCs). Raises DataError naming the file."""
    try:
        with Image.open(path) as im:
            header = (str(im.format), tuple(im.size), str(im.mode))
            if im.format in _VERIFIABLE:
                im.verify()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path} is too large to decode safely ({' '.join(str(exc).split())}); downscale it "
                        "(e.g. to at most 8000x8000) or crop it into tiles") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = " ".join(str(exc).split()) or exc.__class__.__name__
        raise DataError(f"{path} is not a readable image ({exc.__class__.__name__}: {reason})") from None
    if header[1][0] < 1 or header[1][1] < 1:
        raise DataError(f"{path} has an empty size {header[1]}")
    if header[2] not in _READABLE_MODES:
        raise DataError(f"{path} has pixel mode {header[2]} that cannot be turned into RGB")
    return header  # type: ignore[return-value]


def _mask_files(mask_path: str, problems: List[str]) -> List[Path]:
    """A mask file, or every file of a mask folder (MVTec LOCO: one PNG per defect)."""
    p = Path(mask_path)
    if not p.is_dir():
        return [p]
    files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
    if not files:
        problems.append(f"mask folder {p} holds no mask file")
    return files


def verify_samples(samples: Sequence[Any], read: Optional[Callable[[Any], None]] = None, threads: int = 0) -> None:
    """Open every image and mask header of `samples` (objects with `path` and `mask_path`) and check each mask
    has its image's size; then, with `read`, read every file whose header passed in full (`read(sample)` raises
    DataError for a truncated or undecodable file: a cut-off JPEG, BMP or TIFF has a valid header). One
    DataError listing the count and the first few problems, or None."""
    problems: List[str] = []
    good = []
    for s in samples:
        try:
            _, size, _ = image_header(s.path)
        except DataError as exc:
            problems.append(f"image {exc}")
            continue
        for mask in _mask_files(s.mask_path, problems) if s.mask_path else ():
            try:
                _, msize, _ = image_header(mask)
            except DataError as exc:
                problems.append(f"mask {exc}")
                continue
            if msize != size:
                problems.append(f"mask {mask} is {msize[0]}x{msize[1]} but its image {s.path} is "
                                f"{size[0]}x{size[1]}")
                continue
        good.append(s)
    if read is not None and good:
        problems += [p for p in _read_all(good, read, threads) if p]
    if problems:
        more = f" (and {len(problems) - _MAX_EXAMPLES} more)" if len(problems) > _MAX_EXAMPLES else ""
        raise DataError(f"{len(problems)} of {len(samples)} listed files failed the pre-training check: "
                        f"{'; '.join(problems[:_MAX_EXAMPLES])}{more}; replace or remove them")


def _read_all(samples: Sequence[Any], read: Callable[[Any], None], threads: int) -> List[Optional[str]]:
    def one(s: Any) -> Optional[str]:
        try:
            read(s)
        except DataError as exc:
            return str(exc)
        return None

    if threads <= 1 or len(samples) < 2:
        return [one(s) for s in samples]
    with ThreadPoolExecutor(threads) as pool:  # Pillow releases the GIL while decoding
        return list(pool.map(one, samples))
