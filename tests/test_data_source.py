"""Every shape of a run's data — one category, the unified union, a cross-fitting fold — is a `DataSource`
that loads through the same options (decode cache, decode threads, pinned memory) as the category it views."""
from __future__ import annotations

from ad.data import DataSource, LoaderOptions
from ad.data.folds import FoldData
from ad.data.synthetic import Synthetic
from ad.data.unified import UnifiedData


def _module(root, category, **loading):
    # the session dataset's own generation parameters (conftest): other ones would regenerate it under the
    # other tests' feet
    return Synthetic(root=str(root), category=category, num_train=12, num_test_good=4, num_test_defect=2,
                     generated_size=64, image_size=32, **loading).setup()


def test_every_data_shape_is_a_data_source(synthetic_root):
    disc = _module(synthetic_root, "syn_disc")
    unified = UnifiedData({"syn_disc": disc, "syn_tiles": _module(synthetic_root, "syn_tiles")})
    fold = FoldData(disc.transform, disc.samples("train")[1:], disc.samples("train")[:1], disc.loading)
    for source in (disc, unified, fold):
        assert isinstance(source, DataSource), type(source).__name__


def test_unified_and_fold_views_keep_the_category_loader_options(synthetic_root):
    disc = _module(synthetic_root, "syn_disc", pin_memory=True, decode_threads=1)
    tiles = _module(synthetic_root, "syn_tiles", pin_memory=True, decode_threads=1)
    assert disc.loading == LoaderOptions(disc.cache, 1, True)
    unified = UnifiedData({"syn_disc": disc, "syn_tiles": tiles})
    assert unified.dataloader("train", 2).pin_memory is True  # was dropped by the union
    fold = FoldData(disc.transform, disc.samples("train")[1:], disc.samples("train")[:1], disc.loading)
    held = fold.dataset("heldout")
    assert held.cache is disc.cache and held.cache is not None  # folds decoded every image again without it
    assert fold.dataloader("train", 2).pin_memory is True
    # a fold image comes back identical to the category's own decoding of it
    path = disc.samples("train")[0].path
    i = [s.path for s in held.samples].index(path)
    j = [s.path for s in disc.dataset("train").samples].index(path)
    assert (held[i]["image"] == disc.dataset("train")[j]["image"]).all()
