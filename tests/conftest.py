"""Shared fixtures. Unit tests generate their own tiny data; real data under ../shared/data is optional."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("AD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Tests are many small ops: one thread is faster than contention between threads on 2 cores.
torch.set_num_threads(1)


_SYNTHETIC = dict(num_train=12, num_test_good=4, num_test_defect=2, size=64, seed=0)
# The same parameters as overrides, for a run pointed at synthetic_root (`dataset.root=...`) with dataset=synthetic.
SYNTHETIC_ROOT_OVERRIDES = ["dataset.num_train=12", "dataset.num_test_good=4", "dataset.num_test_defect=2",
                            "dataset.generated_size=64", "dataset.generation_seed=0"]
_SHARED_SYNTHETIC: dict = {}  # root -> {marker file: its text} once this worker generated the session dataset


def _markers(root: Path) -> dict:
    from ad.data.synthetic import MARKER

    return {str(m): m.read_text() for m in sorted(root.glob(f"*/{MARKER}"))}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic MVTec-layout dataset (all synthetic categories, 64 px) generated once per session."""
    from ad.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, **_SYNTHETIC)
    _SHARED_SYNTHETIC[root] = _markers(root)
    return root


@pytest.fixture(autouse=True)
def _shared_synthetic_root_unchanged(request):
    """The session's synthetic_root is shared by every test of a worker. A run pointed at it with other
    generation parameters (`dataset.root=<it>` with another `dataset.num_train`, size...) regenerates it, and
    the tests after it in that worker see other data (an order-dependent failure). Such a test fails here,
    named, and the dataset is put back."""
    yield
    from ad.data.synthetic import generate_synthetic

    for root, before in _SHARED_SYNTHETIC.items():
        if _markers(root) != before:
            generate_synthetic(root, **_SYNTHETIC)
            pytest.fail(f"{request.node.nodeid} regenerated the shared synthetic_root {root} with other "
                        "generation parameters; give the run the conftest's parameters or its own dataset.root",
                        pytrace=False)


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


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster (munged, slurmctld, slurmd on this machine; tests/slurm_cluster.py) for the
    session, with SLURM_CONF pointing at it; skipped with the reason where it cannot run (not root, SLURM not
    installed). With AD_REQUIRE_SLURM=1 (CI) a cluster that fails to start fails the tests instead."""
    from tests.slurm_cluster import LocalSlurm, unavailable_reason

    reason = unavailable_reason()
    if reason:
        if os.environ.get("AD_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    # .ci/run names the folder (AD_SLURM_ROOT) so that it can stop the daemons by PID whatever happens to pytest
    root = os.environ.get("AD_SLURM_ROOT")
    cluster = LocalSlurm(Path(root) if root else tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("AD_REQUIRE_SLURM") == "1":
            raise
        pytest.skip(f"a local SLURM cluster could not be started: {str(exc).splitlines()[0]}")
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
