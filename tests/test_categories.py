"""One category list per dataset (`categories:` of conf/dataset/<name>.yaml): the `category=` options, the sweep
presets and the Python constants derive from it; a toy dataset added the documented way gets all of them."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from ad import categories as C
from ad.config import CONFIG_DIR, compose, dataset_categories


def test_generated_options_and_presets_are_in_sync_with_the_lists():
    assert C.sync(Path(CONFIG_DIR), write=False) == [], "run `python -m ad.categories`"
    assert C.main(["--check"]) == 0


def test_constants_and_unified_all_come_from_the_yaml_list():
    from ad.data.btad import BTAD_CATEGORIES
    from ad.data.mvtec import MVTEC_CATEGORIES
    from ad.data.visa import VISA_CATEGORIES

    assert list(MVTEC_CATEGORIES) == dataset_categories("mvtec") and len(MVTEC_CATEGORIES) == 15
    assert list(VISA_CATEGORIES) == dataset_categories("visa") and list(BTAD_CATEGORIES) == ["01", "02", "03"]
    assert dataset_categories("mvtec_loco") == ["breakfast_box", "juice_bottle", "pushpins", "screw_bag",
                                                "splicing_connectors"]
    assert len(dataset_categories("mvtec_ad2")) == 8 and len(dataset_categories("real_iad")) == 30
    cfg = compose(["dataset=mvtec_loco", "setting=unified"])
    assert list(cfg.dataset.categories) == dataset_categories("mvtec_loco")


def test_shared_names_keep_their_first_owner_and_the_other_dataset_sweeps_dataset_category():
    owners = C.category_owners()
    assert owners["toothbrush"] == "mvtec" and owners["zipper"] == "mvtec" and owners["audiojack"] == "real_iad"
    assert compose(["category=toothbrush"]).hydra.runtime.choices.dataset == "mvtec"
    cfg = compose(["+sweep=real_iad"])
    assert cfg.hydra.runtime.choices.dataset == "real_iad"
    assert str(cfg.hydra.sweeper.params["dataset.category"]).split(",") == dataset_categories("real_iad")


@pytest.mark.parametrize("dataset", ["mvtec_ad2", "mvtec_loco"])
def test_new_benchmark_categories_select_their_dataset(dataset):
    for cat in dataset_categories(dataset):
        cfg = compose([f"category={cat}"])
        assert cfg.hydra.runtime.choices.dataset == dataset and cfg.dataset.category == cat
    cats = str(compose([f"+sweep={dataset}"]).hydra.sweeper.params.category).split(",")
    assert cats == dataset_categories(dataset)


TOY_MODULE = '''
from ad.data import AnomalyDataModule, Sample


class Toy(AnomalyDataModule):
    name = "Toy"

    def list_samples(self):
        return [Sample(f"{self.root}/{self.category}/train.png", 0, "good", None, "train")]
'''

TOY_YAML = """
_target_: toy_dataset.Toy
root: /data/toy
category: toy_a
categories: [toy_a, toy_b, bottle]
image_size: 32
"""


def test_adding_a_toy_dataset_the_documented_way(tmp_path, monkeypatch):
    """docs/adding_a_dataset.md: a module, a YAML with its `categories:`, then `python -m ad.categories`."""
    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf)
    (tmp_path / "toy_dataset.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    (conf / "dataset" / "toy.yaml").write_text(TOY_YAML)
    assert C.main(["--check", "--conf-dir", str(conf)]) == 1  # stale until regenerated
    C.main(["--conf-dir", str(conf)])
    assert C.sync(conf) == []
    assert (conf / "category" / "toy_a.yaml").is_file() and (conf / "category" / "toy_b.yaml").is_file()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = hydra_compose("config", overrides=["category=toy_b"], return_hydra_config=True)
            assert cfg.hydra.runtime.choices.dataset == "toy"
            data = instantiate(cfg.dataset, seed=0, cache="off", cache_dir=None)
            assert type(data).__name__ == "Toy" and data.category == "toy_b"
            assert data.categories == ["toy_a", "toy_b", "bottle"]
            sweep = hydra_compose("config", overrides=["+sweep=toy"], return_hydra_config=True)
            # `bottle` belongs to mvtec's shortcut, so the toy preset sweeps dataset.category on dataset=toy
            assert sweep.hydra.runtime.choices.dataset == "toy"
            assert str(sweep.hydra.sweeper.params["dataset.category"]) == "toy_a,toy_b,bottle"
            assert hydra_compose("config", overrides=["category=bottle"],
                                 return_hydra_config=True).hydra.runtime.choices.dataset == "mvtec"
    finally:
        GlobalHydra.instance().clear()
    # removing the dataset removes what was generated from it
    (conf / "dataset" / "toy.yaml").unlink()
    C.main(["--conf-dir", str(conf)])
    assert not (conf / "category" / "toy_a.yaml").exists() and not (conf / "sweep" / "toy.yaml").exists()
