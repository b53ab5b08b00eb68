"""Image decoding and preprocessing for deployed models, without torch.

Reproduces training's data pipeline (`ad.io.load_image` + `ad.data.ImageTransform`) with numpy and Pillow
only: the same decoder and colour rule (`ad.io.images`: RGB, grey and palette images 3-channel, 16-bit grey
scaled by the image's own maximum), Pillow bilinear resize to the run's `image_size`, optional centre crop, then uint8 / 255 in float32. The
backbone's mean/std normalisation is inside the exported graph, as it is inside the model. A parity test
holds this module to the training pipeline pixel for pixel.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ad.errors import DataError
from ad.io.images import IMAGE_EXTENSIONS, DataFileError, decode_png, to_rgb

ImageInput = Union[str, Path, bytes, np.ndarray, Image.Image]


class ImageInputError(DataError):
    """An input that is not a readable image (the message says which and why)."""


class ImageTooLargeError(ImageInputError):
    """An image with more pixels than allowed (a service's decompression-bomb guard)."""


def decode(data: bytes, name: str = "upload", max_pixels: Optional[int] = None) -> Image.Image:
    """RGB image from encoded bytes; one-line `ImageInputError` for empty, undecodable or oversized data."""
    if not data:
        raise ImageInputError(f"{name} is empty (0 bytes); send an image file")
    fast = decode_png(data)  # libspng for 8-bit grey/RGB PNGs, as training decodes them
    if fast is not None:
        _check_pixels(fast, name, max_pixels)
        return fast
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_pixels(im, name, max_pixels)
            return to_rgb(im, name)
    except ImageInputError:
        raise
    except DataFileError as exc:  # a pixel mode the one decoding rule refuses (e.g. 32-bit integer grey)
        raise ImageInputError(str(exc).replace("image image ", "image ")) from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"{name} declares more pixels than Pillow's safety limit; send a smaller image") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"cannot read {name}: not a recognised image format; send a PNG, JPEG, BMP or "
                              "TIFF file") from None
    except (OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise ImageInputError(f"cannot read {name} as an image ({exc.__class__.__name__}: {reason}); "
                              f"send a PNG, JPEG, BMP or TIFF file") from None


# Pixel modes training reads into RGB (grey, palette, colour with or without alpha, 16/32-bit integer grey);
# float images ('F') and other exotic modes have no defined 8-bit conversion and are refused.
MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
         "I", "I;16", "I;16B", "I;16L")


def _check_pixels(im: Image.Image, name: str, max_pixels: Optional[int]) -> None:
    if im.mode not in MODES:
        raise ImageInputError(f"{name} has pixel mode {im.mode!r}, which has no 8-bit RGB reading; send an 8/16-bit "
                              "grey or RGB image")
    if max_pixels is not None and im.width * im.height > max_pixels:
        raise ImageTooLargeError(f"{name} is {im.width}x{im.height} pixels, more than the {max_pixels} allowed; "
                              "send a smaller image")


def load(source: ImageInput, max_pixels: Optional[int] = None, name: str = "upload") -> Image.Image:
    """RGB `PIL.Image` from a path, encoded bytes, a PIL image or a numpy array (H×W grey or H×W×3 RGB,
    uint8; uint16 grey is scaled like a 16-bit file)."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode(bytes(source), name=name, max_pixels=max_pixels)
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageInputError(f"image file {path} does not exist") from None
        except IsADirectoryError:
            raise ImageInputError(f"{path} is a folder, not an image file") from None
        return decode(data, name=f"image {path}", max_pixels=max_pixels)
    raise ImageInputError(f"cannot score a {type(source).__name__}; pass a path, bytes, a PIL image or a numpy array")


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype == np.uint16 and arr.ndim == 2:
        return to_rgb(Image.fromarray(arr))  # mode I;16: the 16-bit rule of every file
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise ImageInputError(f"array of shape {arr.shape} and dtype {arr.dtype} is not an image; pass uint8 "
                              "H×W (grey) or H×W×3 (RGB) pixels")
    return Image.fromarray(np.ascontiguousarray(arr)).convert("RGB")


def _pair(v: Any) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    h, w = (int(x) for x in v)
    return (h, w)


def resize(image: Image.Image, recipe: Mapping[str, Any]) -> np.ndarray:
    """uint8 [H,W,3] at the model's input size: Pillow resize to `resize` (h, w) with the recipe's filter,
    then the centre crop, exactly as `ImageTransform.resize`."""
    if recipe.get("interpolation", "bilinear") != "bilinear":
        raise ImageInputError(f"deploy.json asks for interpolation {recipe.get('interpolation')!r}; this version "
                              "of ad.deploy reproduces 'bilinear' only")
    h, w = _pair(recipe["resize"])
    image = image.resize((w, h), Image.BILINEAR)
    crop = recipe.get("center_crop")
    if crop:
        ch, cw = _pair(crop)
        left, top = (image.width - cw) // 2, (image.height - ch) // 2
        image = image.crop((left, top, left + cw, top + ch))
    return np.array(image, dtype=np.uint8)


def to_input(pixels: np.ndarray) -> np.ndarray:
    """float32 [1,3,H,W] in [0,1] from uint8 [H,W,3] (x / 255 in float32, as training's `to_float`)."""
    return (np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0))[None]
