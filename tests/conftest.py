"""Shared fixtures. Unit tests generate their own tiny data; real data under ../shared/data is optional."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("AD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Tests are many small ops: one thread is faster than contention between threads on 2 cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic MVTec-layout dataset (all synthetic categories, 64 px) generated once per session."""
    from ad.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, num_train=12, num_test_good=4, num_test_defect=2, size=64, seed=0)
    return root


@pytest.fixture(scope="session")
def bottle_root() -> Path:
    """The real MVTec AD bottle images (image-level only), or skip."""
    p = SHARED_DATA / "mvtec_ad"
    if not (p / "bottle" / "train" / "good").is_dir():
        pytest.skip("real MVTec bottle data not present under ../shared/data/mvtec_ad")
    return p


@pytest.fixture(scope="session")
def visa_split_csv() -> Path:
    p = SHARED_DATA / "visa" / "split_csv" / "1cls.csv"
    if not p.is_file():
        pytest.skip("official VisA split_csv/1cls.csv not present under ../shared/data/visa")
    return p
