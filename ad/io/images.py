"""Reading images and masks: the one place that knows which files are images, how each file kind decodes to
RGB, and how a mask becomes a binary 0/255 map. Used by the datasets, the models that read extra images
(EfficientAD's teacher, texture sources) and predict; torch-free."""
from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from ad.errors import ConfigError, DataError

try:  # libspng decodes PNGs ~1.7x faster than Pillow's zlib decoder, to the same pixels (tests/test_data.py)
    import pyspng as _spng
except ImportError:  # optional: Pillow reads everything without it
    _spng = None

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_LOSSY_EXTENSIONS = (".jpg", ".jpeg")


class DataFileError(DataError):
    """A bad image or mask file, raised while loading.

    A DataLoader worker re-raises an exception as `type(exc)("Caught ... Original Traceback ...\n<last line>")`;
    this class keeps only the original one-line message so the runner can still print it as one line.
    """

    def __init__(self, message: str = "") -> None:
        if message.startswith("Caught ") and "Traceback" in message:
            last = [ln for ln in message.strip().splitlines() if ln.strip()][-1]
            head, sep, rest = last.partition(": ")
            message = rest if sep and "Error" in head else last
        super().__init__(message)


def list_images(folder: Path) -> List[Path]:
    """Image files of a folder, sorted by name (deterministic order across file systems)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def find_images(folder: Path, exclude: Optional[Path] = None) -> List[Path]:
    """Image files anywhere under `folder` (recursive, sorted); files under `exclude` (e.g. an output folder
    inside it) are skipped."""
    skip = exclude.resolve() if exclude is not None else None
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and (skip is None or skip not in p.resolve().parents))


def image_inputs(inp: Path, exclude: Optional[Path] = None) -> List[Path]:
    """The images a scoring tool was pointed at: the file itself, or every image under a folder (recursive,
    sorted). `exclude` (the tool's output folder) is skipped, so outputs written inside the input folder are
    never scored as inputs on a second call. A missing path or an empty folder is one line."""
    if inp.is_file():
        return [inp]
    if inp.is_dir():
        files = find_images(inp, exclude)
        if not files:
            raise ConfigError(f"input folder {inp} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return files
    raise ConfigError(f"input {inp} does not exist; pass an image file or a folder of images")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fast_png(data: bytes) -> Optional[Image.Image]:
    """An 8-bit grey or RGB PNG (the file's bytes) decoded by libspng (decode is most of a memory model's data
    cost: 20-40 ms for a 900-1024 px MVTec PNG with Pillow), or None for anything else, which Pillow then reads
    from the same bytes (and reports if it is broken). Other PNG kinds (palette, 16-bit, alpha) keep Pillow's
    conversion rules."""
    # IHDR is the first chunk: width, height (4 bytes each), bit depth (byte 24), colour type (25: 0 grey, 2 RGB)
    if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR" or len(data) < 26 or data[24] != 8 \
            or data[25] not in (0, 2):
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        return None  # Pillow applies its decompression-bomb limit (one rule for every decoder)
    try:
        arr = _spng.load(data, "L" if data[25] == 0 else "RGB")
    except Exception:  # truncated or corrupt: Pillow raises the error the caller reports
        return None
    if arr.dtype != np.uint8 or arr.ndim != (2 if data[25] == 0 else 3):
        return None
    image = Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")
    return image.convert("RGB") if image.mode == "L" else image


def decode_png(data: bytes) -> Optional[Image.Image]:
    """An 8-bit grey or RGB PNG's bytes through libspng when it is installed, else None (read with Pillow)."""
    return _fast_png(data) if _spng is not None else None


def load_image(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB by one rule per bit depth, the same for every file of a dataset (never by a
    file's own min/max, which would stretch an under-exposed defect to full contrast): see `to_rgb`.
    Grey-scale and palette images become 3-channel."""
    try:
        source: "str | Path | io.BytesIO" = path
        if _spng is not None and str(path).lower().endswith(".png"):
            with open(path, "rb") as f:  # read once: libspng or, failing it, Pillow decodes these bytes
                data = f.read()
            fast = _fast_png(data)
            if fast is not None:
                return fast
            source = io.BytesIO(data)
        with Image.open(source) as im:
            return to_rgb(im, path)
    except FileNotFoundError:
        raise DataFileError(f"image file {path} does not exist; restore it or fix the dataset listing") from None
    except Image.DecompressionBombError as exc:
        raise DataFileError(f"image {path} is too large to decode safely ({_one_line(exc)}); downscale it "
                            "(e.g. to at most 8000x8000) or crop it into tiles") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataFileError(
            f"cannot read image {path} ({exc.__class__.__name__}: {_one_line(exc)}); replace or remove the file"
        ) from None


# Pixel modes by bit depth (Pillow's names). Everything else Pillow opens is 8 bits per channel.
_MODES_16BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(im: Image.Image, path: "str | Path" = "image") -> Image.Image:
    """The one decoding rule of every image `ad` reads (training, ad.predict, ad.deploy; docs/reliability.md,
    "Image formats"): 8-bit RGB, by bit depth:

    - 8 bits per channel (grey, RGB, palette, 1-bit, CMYK ...): Pillow's conversion to RGB.
    - 16 bits per channel: the high byte, value // 256 — the full 16-bit range onto 0..255 (an 8-bit value v
      stored as v·257 comes back as v). Pillow already reads 16-bit colour PNG/TIFF this way; 16-bit grey
      (`I;16*`, or a 16-bit PNG opened as `I`) is converted here by the same rule.
    - 32-bit float grey (`F`, e.g. a float TIFF): values must lie in [0, 1]; value · 255, rounded. A file with
      values outside [0, 1] (or NaN) is refused: its range is not known.
    - 32-bit integer grey (`I` from a TIFF): refused — no fixed range to map from; convert to 16 or 8 bit.
    """
    mode = im.mode
    if mode in _MODES_16BIT or (mode == "I" and im.format == "PNG"):
        arr = np.asarray(im).astype(np.int64)
        return Image.fromarray(np.clip(arr >> 8, 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = (float(np.nanmin(arr)), float(np.nanmax(arr))) if arr.size else (0.0, 0.0)
        if np.isnan(arr).any() or lo < 0.0 or hi > 1.0:
            raise DataFileError(
                f"image {path} is a 32-bit float image with values in [{lo:g}, {hi:g}] (NaN: "
                f"{bool(np.isnan(arr).any())}); float images must hold values in [0, 1] - rescale it to [0, 1] "
                "or save it as 8/16-bit")
        return Image.fromarray(np.rint(arr * 255.0).astype(np.uint8)).convert("RGB")
    if mode == "I":
        raise DataFileError(f"image {path} is a 32-bit integer image, which has no fixed range to map to 8 bits; "
                            "save it as 16-bit or 8-bit (or as float in [0, 1])")
    return im.convert("RGB")


def load_mask(path: str | Path, image_size: tuple[int, int]) -> Image.Image:
    """Open a mask as a binary 'L' image (0/255), checking it has the size of its image.

    Any non-zero label is a defect (VisA masks hold class ids, MVTec masks 255). Palette masks are read by
    index, not by colour (a label id 1 may be drawn black in the palette); colour masks count a pixel as
    defect when any colour channel is non-zero; JPEG masks are thresholded at half range to ignore
    compression noise. A folder (MVTec LOCO: one PNG per defect) is the union of its mask files.
    """
    if Path(path).is_dir():
        return _union_mask(Path(path), image_size)
    try:
        with Image.open(path) as im:
            size = im.size
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataFileError(f"mask file {path} does not exist; restore it or remove it from the listing") from None
    except Image.DecompressionBombError as exc:
        raise DataFileError(f"mask {path} is too large to decode safely ({_one_line(exc)}); downscale it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataFileError(
            f"cannot read mask {path} ({exc.__class__.__name__}: {_one_line(exc)}); replace or remove the file"
        ) from None
    if size != tuple(image_size):
        raise DataFileError(
            f"mask {path} is {size[0]}x{size[1]} but its image is {image_size[0]}x{image_size[1]}; "
            "masks must have the size of their image (re-export the mask at the image resolution)"
        )
    if arr.ndim == 3:
        arr = arr[..., : (arr.shape[-1] - 1 if mode.endswith("A") else arr.shape[-1])].max(axis=-1)
    threshold = (np.iinfo(arr.dtype).max // 2) if (
        Path(path).suffix.lower() in _LOSSY_EXTENSIONS and np.issubdtype(arr.dtype, np.integer)
    ) else 0
    return Image.fromarray(np.where(arr > threshold, 255, 0).astype(np.uint8))


def mask_files(folder: Path) -> List[Path]:
    """The mask files of a mask folder (MVTec LOCO's `ground_truth/<type>/<id>/000.png, 001.png, ...`)."""
    files = list_images(folder)
    if not files:
        raise DataFileError(f"mask folder {folder} holds no mask file; restore its PNGs (one per defect)")
    return files


def _union_mask(folder: Path, image_size: tuple[int, int]) -> Image.Image:
    union = None
    for f in mask_files(folder):
        arr = np.asarray(load_mask(f, image_size)) > 0
        union = arr if union is None else (union | arr)
    return Image.fromarray(np.where(union, 255, 0).astype(np.uint8))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or "unreadable"
