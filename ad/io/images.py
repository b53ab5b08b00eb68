"""Reading images and masks: the one place that knows which files are images, how each file kind decodes to
RGB, and how a mask becomes a binary 0/255 map. Used by the datasets, the models that read extra images
(EfficientAD's teacher, texture sources) and predict; torch-free."""
from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from ad.errors import DataError

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


def to_rgb(im: Image.Image) -> Image.Image:
    """The colour rule of every image `ad` reads (training, ad.predict, ad.deploy): 3-channel RGB; grey and
    palette images become 3 equal channels; 16/32-bit grey is scaled to 8 bit by the image's own maximum
    instead of letting convert() clip."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = max(float(arr.max()), 1.0)
        im = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8))
    return im.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB (grey-scale and palette images become 3-channel)."""
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
            return to_rgb(im)
    except FileNotFoundError:
        raise DataFileError(f"image file {path} does not exist; restore it or fix the dataset listing") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataFileError(
            f"cannot read image {path} ({exc.__class__.__name__}: {_one_line(exc)}); replace or remove the file"
        ) from None


def load_mask(path: str | Path, image_size: tuple[int, int]) -> Image.Image:
    """Open a mask as a binary 'L' image (0/255), checking it has the size of its image.

    Any non-zero label is a defect (VisA masks hold class ids, MVTec masks 255). Palette masks are read by
    index, not by colour (a label id 1 may be drawn black in the palette); colour masks count a pixel as
    defect when any colour channel is non-zero; JPEG masks are thresholded at half range to ignore
    compression noise.
    """
    try:
        with Image.open(path) as im:
            size = im.size
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataFileError(f"mask file {path} does not exist; restore it or remove it from the listing") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or "unreadable"
