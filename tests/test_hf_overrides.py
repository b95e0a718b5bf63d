"""The private ``transformers.Trainer`` methods the trainers override (``lrc.training.trainer.HF_PRIVATE_OVERRIDES``) still
exist in the installed release, take the arguments the overrides take, and still do what the overrides rely on. A
transformers release that changes one fails here, naming it, instead of silently breaking checkpoints or resume."""

from __future__ import annotations

import inspect

import pytest
from transformers import Trainer

from lrc.training.publish import StagedCheckpoints
from lrc.training.trainer import HF_PRIVATE_OVERRIDES, BaselineTrainer, DistillTrainer, LRCTrainer

TRAINERS = (StagedCheckpoints, DistillTrainer, LRCTrainer, BaselineTrainer)

# What each override relies on: (the HF method whose source must contain it, the text), i.e. its call sites and what
# the method itself does.
RELIED_ON = {
    "_get_output_dir": [("_get_output_dir", "run_dir = self.args.output_dir"),
                        ("_save_checkpoint", "self._get_output_dir(trial=trial)")],
    "_save_checkpoint": [("_save_checkpoint", "self.save_model("), ("_save_checkpoint", "_save_optimizer_and_scheduler("),
                         ("_save_checkpoint", "_save_rng_state("), ("_save_checkpoint", "TRAINER_STATE_NAME")],
    "_save": [("_save", "state_dict")],
    "_init_training_state": [("_init_training_state", "return epochs_trained, steps_trained_in_current_epoch"),
                             ("_inner_training_loop", "= self._init_training_state(")],
    "_load_optimizer_and_scheduler": [("_load_optimizer_and_scheduler", "self.lr_scheduler.load_state_dict"),
                                      ("_load_optimizer_and_scheduler", "self.optimizer.load_state_dict"),
                                      ("_prepare_for_training", "self._load_optimizer_and_scheduler(resume_from_checkpoint)")],
    "_load_from_checkpoint": [("train", "self._load_from_checkpoint(resume_from_checkpoint)")],
}


def _ours(name: str):
    for cls in TRAINERS:
        if name in vars(cls):
            return vars(cls)[name]
    raise AssertionError(f"{name} is listed in HF_PRIVATE_OVERRIDES but no trainer overrides it")


def test_every_private_override_is_listed():
    """Every private Trainer method a trainer here overrides is in HF_PRIVATE_OVERRIDES (and tested below)."""
    hf_private = {n for n in vars(Trainer) if n.startswith("_") and not n.startswith("__")}
    ours = {n for cls in TRAINERS for n in vars(cls) if n in hf_private}
    assert ours == set(HF_PRIVATE_OVERRIDES) == set(RELIED_ON)


@pytest.mark.parametrize("name", sorted(HF_PRIVATE_OVERRIDES))
def test_private_override_matches_the_installed_transformers(name):
    hf = getattr(Trainer, name, None)
    assert callable(hf), f"transformers.Trainer.{name} is gone: {HF_PRIVATE_OVERRIDES[name]}"
    hf_params = list(inspect.signature(hf).parameters)
    our_params = list(inspect.signature(_ours(name)).parameters)
    assert our_params == hf_params, f"Trainer.{name}{inspect.signature(hf)} changed; ours takes {our_params}"
    for where, needle in RELIED_ON[name]:
        assert needle in inspect.getsource(getattr(Trainer, where)), (
            f"Trainer.{where} no longer contains {needle!r}; the override of Trainer.{name} relies on it: "
            f"{HF_PRIVATE_OVERRIDES[name]}")
