"""The generic trainer: trained and memory models through one loop, resume, early stopping, checkpoints."""
from __future__ import annotations

import pytest
import torch

from ad.engine.trainer import Trainer, seed_everything
from tests.fakes import FakeData, TinyAE, TinyMemory, write_fake_layout


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return write_fake_layout(tmp_path_factory.mktemp("fake"))


def make(fake_root, **kw):
    data = FakeData(root=str(fake_root), category="fake", image_size=32, val_fraction=0.25, seed=0)
    trainer = Trainer(batch_size=4, eval_batch_size=4, progress_bar=False, seed=0,
                      early_stopping={"enabled": False}, **kw)
    return data, trainer


class Interrupt(Exception):
    pass


class InterruptAt:
    def __init__(self, step):
        self.step = step

    def on_train_step_end(self, trainer, model, step, loss):
        if step == self.step:
            raise Interrupt()


def test_resume_after_interruption_matches_uninterrupted_run(fake_root, tmp_path):
    seed_everything(0)
    data, trainer = make(fake_root, max_epochs=3)
    reference = TinyAE()
    trainer.fit(reference, data, run_dir=tmp_path / "ref")

    seed_everything(0)
    model = TinyAE()
    data, trainer = make(fake_root, max_epochs=3)
    trainer.callbacks = [InterruptAt(step=5)]  # mid-epoch 2 (2 steps per epoch with 9 train images)
    with pytest.raises(Interrupt):
        trainer.fit(model, data, run_dir=tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()

    seed_everything(123)  # the resumed process starts from a different RNG state: the checkpoint restores it
    resumed = TinyAE(lr=1e-2)
    data, trainer = make(fake_root, max_epochs=3)
    res = trainer.fit(resumed, data, run_dir=tmp_path / "run")
    assert res.resumed_from_epoch == 1
    assert res.epochs == 3
    ref_state, new_state = reference.state_dict(), resumed.state_dict()
    for k in ref_state:
        assert torch.equal(ref_state[k], new_state[k]), k


def test_resume_of_a_finished_run_trains_nothing(fake_root, tmp_path):
    data, trainer = make(fake_root, max_epochs=2)
    model = TinyAE()
    trainer.fit(model, data, run_dir=tmp_path)
    again = TinyAE()
    res = trainer.fit(again, data, run_dir=tmp_path)
    assert res.resumed_from_epoch == 1 and res.epochs == 2
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_loss_decreases_and_is_logged_per_epoch(fake_root, tmp_path):
    seed_everything(0)
    data, trainer = make(fake_root, max_epochs=6)
    res = trainer.fit(TinyAE(lr=2e-2), data, run_dir=tmp_path)
    assert len(res.train_losses) == 6 and len(res.val_losses) == 6
    assert res.train_losses[-1] < res.train_losses[0]


def test_early_stopping_stops_when_validation_loss_stalls(fake_root, tmp_path):
    data = FakeData(root=str(fake_root), category="fake", image_size=32, val_fraction=0.25, seed=0)
    trainer = Trainer(max_epochs=50, batch_size=4, progress_bar=False,
                      early_stopping={"enabled": True, "patience": 2, "min_delta": 0.0})
    res = trainer.fit(TinyAE(lr=0.0), data, run_dir=tmp_path)  # lr=0: the val loss can never improve
    assert res.stopped_early
    assert res.epochs == 3  # first epoch sets the best, then `patience` epochs without improvement
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


def test_max_steps_caps_training(fake_root):
    data, trainer = make(fake_root, max_epochs=10, max_steps=3)
    res = trainer.fit(TinyAE(), data)
    assert res.steps == 3


def test_memory_model_single_pass_no_checkpoints(fake_root, tmp_path):
    data, trainer = make(fake_root)
    model = TinyMemory()
    res = trainer.fit(model, data, run_dir=tmp_path)
    assert model.fit_end_calls == 1 and int(model.count) == len(data.samples("train"))
    assert not (tmp_path / "checkpoints").exists()
    assert res.epochs == 1 and res.steps == 0
    pred = trainer.predict(model, data.dataloader("test", 4))
    assert pred.maps.shape == (8, 32, 32)
    # bright squares are far from the train statistics
    assert pred.scores[pred.labels == 1].min() > pred.scores[pred.labels == 0].max()


def test_state_dict_round_trip_resizes_buffers(fake_root):
    data, trainer = make(fake_root)
    model = TinyMemory()
    trainer.fit(model, data)
    fresh = TinyMemory()
    fresh.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.predict(x).maps, fresh.predict(x).maps)



class BudgetRecorder(TinyAE):
    default_max_epochs = 2

    def configure_optimizers(self, budget):
        self.seen = (budget.max_epochs, budget.max_steps)
        return super().configure_optimizers(budget)


@pytest.mark.parametrize("kw,expected", [
    ({}, (2, None)),                                  # the model's declared epochs
    ({"max_epochs": 1}, (1, None)),                   # trainer override
    ({"max_steps": 3}, (None, 3)),                    # a step budget alone decides
    ({"max_epochs": 1, "max_steps": 3}, (1, 3)),      # both: whichever ends first
])
def test_model_sees_its_budget_before_configuring_optimizers(fake_root, kw, expected):
    data, trainer = make(fake_root, **kw)
    model = BudgetRecorder()
    trainer.fit(model, data)
    assert model.seen == expected
