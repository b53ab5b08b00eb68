"""ad.values: the one check every layer uses for counts, sizes and fractions."""
from __future__ import annotations

import math

import pytest

from ad.data._checks import DatasetConfigError
from ad.errors import ConfigError, DataError
from ad.values import non_negative_int, number, positive_int


@pytest.mark.parametrize("value,want", [(3, 3), (3.0, 3), ("3", 3), (" 12 ", 12)])
def test_whole_numbers_in_any_spelling(value, want):
    got = positive_int(value, "trainer.batch_size")
    assert got == want and type(got) is int


@pytest.mark.parametrize("value", [True, False, 2.5, "abc", "2.5", None, [3], math.nan, math.inf, {}])
def test_anything_else_is_refused_naming_the_key(value):
    with pytest.raises(ConfigError) as e:
        positive_int(value, "trainer.batch_size")
    msg = str(e.value)
    assert msg.startswith(f"trainer.batch_size={value!r} is not an integer") and "\n" not in msg
    assert "trainer.batch_size=<integer> >= 1" in msg


def test_ranges_and_null():
    assert positive_int(None, "trainer.max_epochs", optional=True) is None
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs=0 must be >= 1 or null \(the model's default\)$"):
        positive_int(0, "trainer.max_epochs", optional=True, null_means="the model's default")
    assert non_negative_int(0, "trainer.num_workers") == 0
    with pytest.raises(ConfigError, match=r"^trainer.num_workers=-1 must be >= 0$"):
        non_negative_int(-1, "trainer.num_workers")
    assert number(0.25, "dataset.val_fraction", float, low=0.0, high=1.0, high_open=True) == 0.25
    with pytest.raises(ConfigError, match=r"dataset.val_fraction=1.0 must be in \[0, 1\)"):
        number(1, "dataset.val_fraction", float, low=0.0, high=1.0, high_open=True)
    with pytest.raises(ConfigError, match=r"x=2 must be <= 1"):
        number(2, "x", int, high=1)


def test_the_data_layer_raises_its_own_error_type():
    from ad.data._checks import check_number

    with pytest.raises(DatasetConfigError) as e:
        check_number("abc", "dataset.shots", int, low=1)
    assert isinstance(e.value, ConfigError) and isinstance(e.value, DataError)


@pytest.mark.parametrize("kw,key", [({"num_threads": "abc"}, "trainer.num_threads"),
                                    ({"checkpoint_every_n_epochs": 0}, "trainer.checkpoint_every_n_epochs"),
                                    ({"log_every_n_steps": -5}, "trainer.log_every_n_steps"),
                                    ({"limit_train": 0}, "trainer.limit_train"),
                                    ({"limit_test": 1.5}, "trainer.limit_test")])
def test_trainer_settings_that_were_clamped_or_unchecked(kw, key):
    """These were silently clamped to 1 (checkpoint/log intervals), passed to torch unchecked (num_threads) or
    not checked at all (limit_*: 0 trained on nothing). The `trainer:` settings check them; the loop's own
    keywords are checked by the Trainer too (Python callers)."""
    from ad.engine.settings import TrainerSettings
    from ad.engine.trainer import Trainer

    with pytest.raises(ConfigError, match=rf"^{key}="):
        TrainerSettings(progress_bar=False, **kw)
    if set(kw) <= set(TrainerSettings.LOOP_KEYS):
        with pytest.raises(ConfigError, match=rf"^{key}="):
            Trainer(progress_bar=False, **kw)


def test_predict_batch_size_is_checked_by_the_same_helper(tmp_path, capsys):
    from ad.predict import main

    assert main([f"run_dir={tmp_path}", f"input={tmp_path}", "batch_size=abc"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: batch_size='abc' is not an integer; set batch_size=<integer> >= 1"], err
