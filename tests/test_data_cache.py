"""Decode-once cache: never changes a tensor or a metric, re-decodes changed files, bounded memory, safe
with several processes sharing the disk cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ad.data._cache import _STORE, clear_memory_cache, resolve_decode_threads
from ad.data.mvtec import MVTecAD
from ad.engine.trainer import Trainer, seed_everything
from ad.errors import ConfigError, DataError
from tests.conftest import REPO_ROOT


def _data(root, category="syn_tiles", **kw):
    kw.setdefault("image_size", 48)
    return MVTecAD(root=str(root), category=category, val_fraction=0.25, seed=0, **kw)


def _all_items(dm, split):
    return [dm.dataset(split)[i] for i in range(len(dm.samples(split)))]


@pytest.fixture()
def copy_root(synthetic_root, tmp_path):
    """A private copy of one synthetic category (tests below modify files)."""
    import shutil

    shutil.copytree(synthetic_root / "syn_tiles", tmp_path / "data" / "syn_tiles")
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def _fresh_memory():
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_items_are_bit_identical_to_uncached(synthetic_root, tmp_path, mode):
    ref = _data(synthetic_root, center_crop=40, cache="off")
    dm = _data(synthetic_root, center_crop=40, cache=mode, cache_dir=str(tmp_path / "c"))
    for split in ("train", "val", "test"):
        expected = _all_items(ref, split)
        for _ in range(2):  # first pass fills, second reads the cache
            for a, b in zip(expected, _all_items(dm, split)):
                assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
                assert a["image"].dtype == b["image"].dtype == torch.float32
    n = sum(len(dm.samples(s)) for s in ("train", "val", "test"))
    assert dm.cache.stats["decoded"] == n  # each file decoded once across both passes of all splits
    if mode == "disk":
        assert len(list((tmp_path / "c").rglob("*.bin"))) == n
        clear_memory_cache()  # a new process: everything comes from disk, nothing is decoded
        dm2 = _data(synthetic_root, center_crop=40, cache="disk", cache_dir=str(tmp_path / "c"))
        for a, b in zip(_all_items(ref, "test"), _all_items(dm2, "test")):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        # the pre-training check read every file of the run from disk (into memory): nothing was decoded
        assert dm2.cache.stats["decoded"] == 0 and dm2.cache.stats["disk_hits"] == n


def test_training_and_predictions_identical_with_and_without_cache(synthetic_root, tmp_path):
    """The loop a trained model sees (shuffled, several epochs, prefetch threads) gives the same losses and
    predictions as decoding every image every time."""
    from tests.fakes import TinyAE

    runs = []
    for mode, threads in (("off", 0), ("disk", 2), ("memory", 1)):
        clear_memory_cache()
        seed_everything(0)
        dm = _data(synthetic_root, cache=mode, cache_dir=str(tmp_path / "c"), decode_threads=threads)
        trainer = Trainer(max_epochs=3, batch_size=4, eval_batch_size=5, progress_bar=False, seed=0,
                          early_stopping={"enabled": False})
        model = TinyAE()
        fit = trainer.fit(model, dm)
        pred = trainer.predict(model, dm.dataloader("test", 5))
        runs.append((fit.train_losses, fit.val_losses, pred.scores, pred.maps))
        if mode != "off":
            assert dm.cache.stats["memory_hits"] > 0
    for other in runs[1:]:
        assert other[0] == runs[0][0] and other[1] == runs[0][1]
        np.testing.assert_array_equal(other[2], runs[0][2])
        np.testing.assert_array_equal(other[3], runs[0][3])


def test_modified_image_is_decoded_again(copy_root, tmp_path):
    cache_dir = tmp_path / "c"
    dm = _data(copy_root, cache="disk", cache_dir=str(cache_dir))
    target = dm.samples("test")[0]
    before = dm.dataset("test")[0]["image"]
    old_entries = list(cache_dir.rglob("*.bin"))
    # Same size on disk, new content and a newer mtime (what an edit in place looks like).
    arr = np.asarray(Image.open(target.path).convert("RGB")).copy()
    arr[:, :, 0] = 255 - arr[:, :, 0]
    Image.fromarray(arr).save(target.path)
    st = os.stat(target.path)
    os.utime(target.path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    for fresh_process in (False, True):
        if fresh_process:
            clear_memory_cache()
        dm2 = _data(copy_root, cache="disk", cache_dir=str(cache_dir))
        after = dm2.dataset("test")[0]["image"]
        expected = _data(copy_root, cache="off").dataset("test")[0]["image"]
        assert torch.equal(after, expected) and not torch.equal(after, before)
        assert dm2.cache.stats["decoded"] == (0 if fresh_process else 1)
    # The stale entry of that path was replaced, not kept beside the new one; the others are untouched.
    new_entries = list(cache_dir.rglob("*.bin"))
    assert len(old_entries) == len(new_entries) and len(set(old_entries) - set(new_entries)) == 1


def test_truncated_or_foreign_cache_entry_is_a_miss(synthetic_root, tmp_path):
    dm = _data(synthetic_root, cache="disk", cache_dir=str(tmp_path / "c"))
    expected = _all_items(dm, "test")
    entries = sorted((tmp_path / "c").rglob("*.bin"))
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # torn (what a non-atomic writer could leave)
    entries[1].write_bytes(b"not an entry")
    clear_memory_cache()
    dm2 = _data(synthetic_root, cache="disk", cache_dir=str(tmp_path / "c"))
    for a, b in zip(expected, _all_items(dm2, "test")):
        assert torch.equal(a["image"], b["image"])
    assert dm2.cache.stats["decoded"] == 2


def test_memory_budget_streams_the_rest_and_never_evicts_the_current_run(synthetic_root):
    one = 3 * 48 * 48  # bytes of one cached image (no masks on train images)
    dm = _data(synthetic_root, cache="memory", cache_mb=5 * one / 2**20).setup()
    # the pre-training check decoded every file once and kept the first 5 (train images come first)
    everything = sum(len(dm.samples(s)) for s in ("train", "val", "test"))
    assert dm.cache.stats["decoded"] == everything and dm.cache.stats["not_kept"] == everything - 5
    start = dict(dm.cache.stats)
    ref = _data(synthetic_root, cache="off")
    for _ in range(2):
        for a, b in zip(_all_items(ref, "train"), _all_items(dm, "train")):
            assert torch.equal(a["image"], b["image"])
    n = len(dm.samples("train"))
    assert len(_STORE) == 5 and _STORE.nbytes <= 5 * one
    # each pass: 5 hits and n - 5 decoded again (streamed), nothing evicted
    assert dm.cache.stats["memory_hits"] - start["memory_hits"] == 10
    assert dm.cache.stats["decoded"] - start["decoded"] == 2 * (n - 5)
    # A later data module (the next job of an in-process sweep) may evict the earlier one's images.
    dm_next = _data(synthetic_root, category="syn_disc", cache="memory", cache_mb=5 * one / 2**20).setup()
    start = dict(dm_next.cache.stats)
    _all_items(dm_next, "train")
    assert dm_next.cache.stats["memory_hits"] - start["memory_hits"] == 5
    assert dm_next.cache.stats["not_kept"] - start["not_kept"] == len(dm_next.samples("train")) - 5


def test_corrupt_image_still_fails_with_one_line_through_prefetch(copy_root):
    dm = _data(copy_root, cache="memory", decode_threads=2)
    bad = dm.samples("train")[3]
    Path(bad.path).write_bytes(b"garbage")
    with pytest.raises(DataError) as err:
        for _ in dm.dataloader("train", 2, shuffle=True, generator=torch.Generator().manual_seed(0)):
            pass
    assert bad.path in str(err.value) and "\n" not in str(err.value)


def test_bad_cache_settings_are_one_line_config_errors(synthetic_root):
    with pytest.raises(ConfigError, match="dataset.cache="):
        _data(synthetic_root, cache="sometimes")
    with pytest.raises(ConfigError, match="dataset.cache_dir"):
        _data(synthetic_root, cache="disk", cache_dir=None)
    with pytest.raises(ConfigError, match="dataset.decode_threads=-1"):
        resolve_decode_threads(-1)
    assert resolve_decode_threads(3) == 3 and resolve_decode_threads("auto") >= 1


_WORKER = textwrap.dedent("""
    import hashlib, json, sys
    from ad.data.mvtec import MVTecAD
    root, cache_dir, out = sys.argv[1:4]
    digest = hashlib.sha1()
    stats = {}
    for cat in ("syn_tiles", "syn_weave", "syn_disc"):
        dm = MVTecAD(root=root, category=cat, image_size=48, val_fraction=0.25, seed=0,
                     cache=sys.argv[4], cache_dir=cache_dir, decode_threads=1)
        for split in ("train", "val", "test"):
            for b in dm.dataloader(split, 4):
                digest.update(b["image"].numpy().tobytes()); digest.update(b["mask"].numpy().tobytes())
        for k, v in dm.cache.stats.items():
            stats[k] = stats.get(k, 0) + v
    open(out, "w").write(json.dumps({"digest": digest.hexdigest(), "stats": stats}))
""")


def test_two_processes_share_the_disk_cache(synthetic_root, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cache_dir = tmp_path / "cache"

    def start(name, mode="disk"):
        return subprocess.Popen([sys.executable, str(script), str(synthetic_root), str(cache_dir),
                                 str(tmp_path / f"{name}.json"), mode], env=env)

    procs = [start("a"), start("b")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert start("ref", "off").wait(timeout=300) == 0
    a, b, ref = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b", "ref"))
    assert a["digest"] == b["digest"] == ref["digest"]
    n_files = sum(len(list((synthetic_root / c).rglob("test/*/*.png"))) + len(list((synthetic_root / c).rglob("train/good/*.png")))
                  for c in ("syn_tiles", "syn_weave", "syn_disc"))
    # Every image decoded exactly once between the two processes (the other one waited or read the entry).
    assert a["stats"]["decoded"] + b["stats"]["decoded"] == n_files
    assert a["stats"]["decoded"] + a["stats"]["disk_hits"] == n_files == b["stats"]["decoded"] + b["stats"]["disk_hits"]
    entries = list(cache_dir.rglob("*.bin"))
    assert len(entries) == n_files
    assert not list(cache_dir.rglob("*.lock")) and not list(cache_dir.rglob("*.tmp"))


@pytest.mark.slow  # three CLI processes (~15 s each on an idle 2-core machine); the Trainer-level test is the fast check
def test_cli_results_identical_with_cold_and_warm_disk_cache(synthetic_root, tmp_path):
    """`python -m ad.train` end to end: decoding every time, filling the disk cache, and reading it back give
    the same results.json metrics."""
    from tests.test_run import FAST, _cli

    args = ["model=padim", "category=syn_weave", f"dataset.root={synthetic_root}", "backbone.pretrained=false", *FAST]
    results = {}
    for name, extra in (("off", ["dataset.cache=off"]), ("cold", []), ("warm", [])):
        out = _cli([*args, *extra, f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        results[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert len(list((tmp_path / ".cache" / "decoded").rglob("*.bin"))) > 0  # the default cache_dir under AD_ROOT
    for name in ("cold", "warm"):
        for section in ("image", "pixel", "per_defect", "thresholds", "counts"):
            assert results[name][section] == results["off"][section], (name, section)
        assert results[name]["validation"]["objective"] == results["off"]["validation"]["objective"]


def test_the_pretraining_check_and_training_read_each_image_once(synthetic_root, monkeypatch):
    """The check reads every file in full before training; with a cache that read is the training decode
    (before: it was thrown away and every image was decoded twice per run)."""
    import ad.data._base as base

    calls: list = []
    real = base.load_image
    monkeypatch.setattr(base, "load_image", lambda path: (calls.append(str(path)), real(path))[1])
    dm = _data(synthetic_root, cache="memory", decode_threads=1)
    for split in ("train", "val", "test"):
        for _ in dm.dataloader(split, 4):
            pass
    assert sorted(calls) == sorted(s.path for split in ("train", "val", "test") for s in dm.samples(split))
