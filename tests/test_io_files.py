"""ad.io's JSON and CSV conversion, and that it (and the run records) load without numpy: the command line's
config check and the launchers read records before any numpy-based work starts."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import torch

from ad.io import to_jsonable, write_csv, write_json


def test_to_jsonable_converts_numpy_and_torch_and_drops_non_finite(tmp_path):
    data = {"f32": np.float32(0.25), "arr": np.arange(6, dtype=np.int64).reshape(2, 3), "b": np.bool_(True),
            "nan": float("nan"), "inf": np.float64("inf"), "t": torch.tensor(1.5), "zero_d": np.array(2.0),
            "nested": [(np.int32(7), {"x": np.float16(0.5)})], 3: "key"}
    got = to_jsonable(data)
    assert got == {"f32": 0.25, "arr": [[0, 1, 2], [3, 4, 5]], "b": True, "nan": None, "inf": None, "t": 1.5,
                   "zero_d": 2.0, "nested": [[7, {"x": 0.5}]], "3": "key"}
    assert type(got["arr"][0][0]) is int and type(got["b"]) is bool and type(got["f32"]) is float
    write_json(tmp_path / "r.json", data)  # allow_nan=False: would raise if a NaN got through
    assert json.loads((tmp_path / "r.json").read_text())["nan"] is None


def test_write_csv_formats_numpy_scalars_like_python_ones(tmp_path):
    rows = [{"a": np.float32(0.1), "b": np.bool_(True), "c": np.int64(3)}, {"a": 0.123456789, "b": False, "c": None}]
    write_csv(tmp_path / "p.csv", rows, ["a", "b", "c"])
    with open(tmp_path / "p.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert got == [{"a": "0.1", "b": "1", "c": "3"}, {"a": "0.12345679", "b": "0", "c": ""}]
    assert math.isclose(float(got[1]["a"]), 0.123456789, rel_tol=1e-7)


def test_records_and_io_load_without_numpy():
    code = ("import sys; import ad.io, ad.rundir.records, ad.launch.jobs, ad.train; "
            "from ad.io import to_jsonable; print(to_jsonable({'a': [1.5, float('nan')]})); "
            "print('numpy' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["{'a': [1.5, None]}", "False False"], out.stdout
