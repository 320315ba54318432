"""Membership inference: the ROC figures on known scores, and the attack against a
deliberately overfit generator, with and without DP-SGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfdd_flwr.data.datasets import LabelledImages, load_split
from sfdd_flwr.methods.diffusion import Diffusion, to_model_space
from sfdd_flwr.methods.diffusion.model import noise_schedule
from sfdd_flwr.methods.diffusion.privacy import PrivateTraining
from sfdd_flwr.methods.diffusion.training import train_locally
from sfdd_flwr.settings import Settings
from sfdd_lab.attacks.membership import denoising_scores, result_of, roc_auc, save_roc_plot, tpr_at_fpr


def test_auc_and_tpr_on_known_scores():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5  # ties count half
    assert roc_auc(np.array([1.0, 3.0]), np.array([2.0, 4.0])) == pytest.approx(0.25)
    members = np.arange(100, 200, dtype=float)
    non_members = np.r_[np.arange(99, dtype=float), [150.5]]  # one of 100 non-members above half the members
    assert tpr_at_fpr(members, non_members, 0.005) == pytest.approx(0.49)  # no false positive allowed
    assert tpr_at_fpr(members, non_members, 0.01) == pytest.approx(1.0)  # one allowed: every member


def overfit(data: LabelledImages, settings: Settings, steps: int, private: PrivateTraining | None):
    method = Diffusion(settings)
    model = method.new_unet()
    params = settings.group(Diffusion.settings_group)
    params = type(params)(**{**params.__dict__, "diffusion_local_steps": steps})
    train_locally(model, noise_schedule(params), to_model_space(data.images, settings.dataset_spec), data.labels,
                  params, 3e-3, method.null_label, torch.Generator().manual_seed(0), torch.device("cpu"), private)
    return model, params


def test_the_attack_separates_an_overfit_generators_members_and_dp_blurs_them(tiny_mnist_dir, tmp_path):
    """16 training images, seen 200 times each: their denoising loss is far lower than that
    of 16 images the model never saw. The same training with DP-SGD (noise multiplier 1,
    clip 1) leaves the attacker much closer to a coin toss."""
    train = load_split("mnist", str(tiny_mnist_dir), train=True)
    members = LabelledImages(train.images[::19][:16], train.labels[::19][:16])
    non_members = LabelledImages(train.images[5::19][:16], train.labels[5::19][:16])
    settings = Settings.from_mapping({"preset": "", "data-dir": str(tiny_mnist_dir), "method": "diffusion",
                                      "diffusion-channels": "8,16", "diffusion-batch": 16})
    spec = settings.dataset_spec

    def attack(model, params):
        return result_of(denoising_scores(model, params, members, spec), denoising_scores(model, params, non_members, spec))

    plain = attack(*overfit(members, settings, 200, None))
    private = attack(*overfit(members, settings, 200, PrivateTraining(1.0, 1.0, 16, 1e-5)))
    assert plain.auc >= 0.8
    assert abs(private.auc - 0.5) < abs(plain.auc - 0.5)
    path = save_roc_plot({"plain": plain, "DP-SGD": private}, tmp_path / "roc.png")
    assert path.is_file() and path.stat().st_size > 1000
