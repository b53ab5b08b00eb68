"""The scoring service: a FastAPI app around one `ad.deploy.Inferencer` (no torch).

- `POST /predict` — multipart field `file` -> JSON {score, normalized_score, is_anomalous, threshold,
  image_size}; `?overlay=true` adds the heat-map overlay as a base64 PNG (`overlay_png`), `?threshold=<raw>`
  decides with another threshold for this request.
- `GET /health` — model name, format, input size, calibrated threshold and normalisation.
- `GET /` — a page: drop an image, see overlay, score and decision; a slider moves the threshold.

A bad upload (missing, empty, not an image, too many bytes or pixels, an unsupported pixel mode) gets a 4xx with
a one-line `detail`; the server keeps serving.
"""
import base64
import io
import math
from pathlib import Path
from typing import Any, Dict, Optional

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from ad.deploy import Inferencer
from ad.deploy.images import ImageInputError, ImageTooLargeError
from ad.errors import ADError

MAX_BYTES = 32 * 1024 * 1024  # an upload larger than this is refused before decoding (413)
MAX_PIXELS = 40_000_000  # decoded size limit: a few-kB PNG can declare gigapixels (413)


def _png(pixels) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _nan_to_none(v: Optional[float]) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def create_app(model: "str | Path", max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
               threads: Optional[int] = None) -> FastAPI:
    from ad.serve.page import PAGE

    inferencer = Inferencer(model, threads=threads, max_pixels=max_pixels)
    manifest = inferencer.manifest
    app = FastAPI(title=f"ad · {manifest['model']['name']}", version=str(manifest["ad_version"]))
    info: Dict[str, Any] = {
        "status": "ok",
        "model": manifest["model"]["name"],
        "format": manifest["format"],
        "input_size": manifest["preprocess"]["input_size"],
        "categories": manifest.get("categories"),
        "threshold": inferencer.threshold,
        "normalization": manifest["normalization"]["image"],
        "run": manifest["run"].get("run_name"),
        "metrics": {"image_auroc": (manifest["metrics"].get("image") or {}).get("auroc")},
    }

    @app.exception_handler(RequestValidationError)
    async def _one_line(request: Request, exc: RequestValidationError):  # FastAPI's default is a nested list
        errs = exc.errors()
        where = ".".join(str(p) for p in errs[0].get("loc", ())[1:]) if errs else "request"
        msg = errs[0].get("msg", "invalid") if errs else "invalid request"
        hint = "; send the image as multipart form field 'file'" if where == "file" else ""
        return JSONResponse(status_code=422, content={"detail": f"{where}: {msg}{hint}"})

    @app.get("/health")
    def health() -> Dict[str, Any]:
        return info

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.post("/predict")
    def predict(file: UploadFile = File(...), overlay: bool = Query(False),
                threshold: Optional[float] = Query(None)) -> Dict[str, Any]:
        data = file.file.read(max_bytes + 1)
        name = file.filename or "upload"
        if len(data) > max_bytes:
            raise HTTPException(413, f"{name} is larger than {max_bytes} bytes; send a smaller image")
        if not data:
            raise HTTPException(400, f"{name} is empty (0 bytes); send an image file")
        if threshold is not None and not math.isfinite(threshold):
            raise HTTPException(422, "threshold must be a finite number")
        try:
            res = inferencer.predict(data, threshold=threshold, name=name)
        except ImageTooLargeError as exc:
            raise HTTPException(413, str(exc)) from None
        except ImageInputError as exc:
            raise HTTPException(415, str(exc)) from None
        except ADError as exc:
            raise HTTPException(400, str(exc)) from None
        out = {**res.to_dict(), "normalized_score": _nan_to_none(res.normalized_score),
               "image_size": list(res.anomaly_map.shape), "filename": name}
        if overlay:
            out["overlay_png"] = _png(res.overlay())
        return out

    return app
