"""The scoring service: API behaviour (TestClient), bad uploads answered in one line while the server keeps
serving, a real headless Chromium upload with a screenshot of the overlay, and a bounded load test on a real
uvicorn server."""
from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.test_export import fitted_run, odd_images

pytest.importorskip("fastapi", reason="the service needs the serve extra (pip install 'ad[serve]')")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from ad.export import export_run

    tmp = tmp_path_factory.mktemp("serve")
    run_dir = fitted_run("patchcore", tmp)
    export_dir = export_run(run_dir, "onnx", images=odd_images(tmp / "odd"))
    image = Path(next(r for r in (run_dir / "predictions.csv").read_text().splitlines()[1:] if ",1," in r).split(",")[0])
    return export_dir, image


@pytest.fixture(scope="module")
def client(served):
    from fastapi.testclient import TestClient

    from ad.serve import create_app

    return TestClient(create_app(served[0], max_bytes=200_000, max_pixels=1_000_000))


def _post(client, data: bytes, name="x.png", **params):
    return client.post("/predict", files={"file": (name, data, "application/octet-stream")}, params=params)


def test_predict_answers_like_the_inferencer(client, served):
    from ad.deploy import Inferencer

    export_dir, image = served
    want = Inferencer(export_dir).predict(image)
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "patchcore" and health["input_size"] == [32, 32]
    r = _post(client, image.read_bytes(), overlay="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["score"] == want.score and body["is_anomalous"] == want.is_anomalous
    assert body["threshold"] == health["threshold"] and body["normalized_score"] == pytest.approx(want.normalized_score)
    with Image.open(io.BytesIO(base64.b64decode(body["overlay_png"]))) as im:
        assert im.size == (32, 32) and np.array_equal(np.asarray(im), want.overlay())
    # the threshold moves per request without re-export: just above / at the score flips the decision
    assert _post(client, image.read_bytes(), threshold=want.score).json()["is_anomalous"] is True
    assert _post(client, image.read_bytes(), threshold=float(np.nextafter(want.score, np.inf))).json()["is_anomalous"] is False
    assert "overlay_png" not in _post(client, image.read_bytes()).json()
    assert "<input id=\"file\"" in client.get("/").text


def _tiff_float() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.float32), "F").save(buf, format="TIFF")
    return buf.getvalue()


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("data,name,status,words", [
    (b"", "empty.png", 400, "empty"),
    (b"GIF89a not really", "x.gif", 415, "not a recognised image format"),
    (b"%PDF-1.4 hello", "doc.pdf", 415, "not a recognised image format"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "truncated.png", 415, "cannot read"),
    (b"x" * 200_001, "big.png", 413, "larger than 200000 bytes"),
    (_png(2000, 1000), "wide.png", 413, "2000x1000 pixels"),
    (_tiff_float(), "float.tif", 415, "pixel mode 'F'"),
])
def test_bad_uploads_get_one_line_and_the_server_keeps_serving(client, served, data, name, status, words):
    r = _post(client, data, name)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and words in detail
    assert _post(client, served[1].read_bytes()).status_code == 200


def test_missing_field_and_bad_threshold_are_one_line(client, served):
    r = client.post("/predict")
    assert r.status_code == 422 and r.json()["detail"] == "file: Field required; send the image as multipart form field 'file'"
    r = _post(client, served[1].read_bytes(), threshold="abc")
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    """A real `python -m ad.serve` process on localhost (stopped after the module)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ad.serve", f"model={served[0]}", f"port={port}", "threads=1"],
                                cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(f"ad.serve exited: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _multipart(data: bytes, name: str = "x.png"):
    boundary = "adtestboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_load_200_requests_4_concurrent(server, served):
    body, ctype = _multipart(served[1].read_bytes())

    def one(_):
        t = time.perf_counter()
        req = urllib.request.Request(server + "/predict", data=body, headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=120) as r:
            ok = r.status == 200 and "score" in json.loads(r.read())
        return ok, (time.perf_counter() - t) * 1000

    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(200)))
    wall = time.perf_counter() - t0
    lat = np.array([ms for _, ms in results])
    assert all(ok for ok, _ in results) and len(results) == 200
    load = open("/proc/loadavg").read().split()[0] if Path("/proc/loadavg").exists() else "?"
    print(f"\nload test: 200 requests, 4 concurrent: p50 {np.percentile(lat, 50):.1f} ms, p95 "
          f"{np.percentile(lat, 95):.1f} ms, {200 / wall:.1f} req/s (load average {load})")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium not installed (.ci/run installs it: "
                                             "apt-get install chromium)")
def test_real_browser_upload_shows_the_overlay(server, served, tmp_path):
    from tests.cdp import Browser

    with Browser(CHROMIUM, tmp_path / "profile") as browser:
        browser.open(server + "/")
        browser.wait_for("document.body.dataset.ready === '1'")
        browser.set_file("#file", served[1])
        browser.wait_for("document.body.dataset.state === 'scored'")
        verdict = browser.eval("document.getElementById('verdict').textContent")
        score = float(browser.eval("document.getElementById('score').textContent"))
        shot = browser.screenshot(tmp_path / "page.png")
        box = browser.eval("(() => { const r = document.getElementById('overlay').getBoundingClientRect(); "
                           "return [r.left, r.top, r.width, r.height]; })()")
        # the slider re-decides locally: far left flags the image, far right clears it
        browser.eval("const s = document.getElementById('sens'); s.value = 0.05; s.dispatchEvent(new Event('input'))")
        left = browser.eval("document.getElementById('verdict').textContent")
        browser.eval("const t = document.getElementById('sens'); t.value = 0.95; t.dispatchEvent(new Event('input'))")
        right = browser.eval("document.getElementById('verdict').textContent")
    from ad.deploy import Inferencer

    want = Inferencer(served[0]).predict(served[1])
    assert score == pytest.approx(want.score, rel=1e-5)
    assert verdict == ("ANOMALOUS" if want.is_anomalous else "normal")
    # threshold at slider position u is min + 2u(t - min): flagged exactly when the normalised score >= u
    assert left == ("ANOMALOUS" if want.normalized_score >= 0.05 else "normal")
    assert right == ("ANOMALOUS" if want.normalized_score >= 0.95 else "normal")
    with Image.open(shot) as im:
        page = np.asarray(im.convert("RGB")).astype(int)
    # the overlay on the page is the service's overlay: sample the centre of each displayed source pixel
    left, top, width, height = box
    h, w = want.anomaly_map.shape
    ys = (top + (np.arange(h) + 0.5) * height / h).astype(int)
    xs = (left + (np.arange(w) + 0.5) * width / w).astype(int)
    shown = page[np.ix_(ys, xs)]
    assert np.abs(shown - want.overlay().astype(int)).max() <= 3, "the page does not show the overlay"
