"""Shared fixtures: a dense ResNet-20 trained once per test session on the embedded digits data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from amc.baseline import train_baseline
from amc.data import DataConfig
from amc.train import TrainConfig

torch.set_num_threads(1)  # small models: one thread is fastest and avoids contention

# Measured: 15 epochs of ResNet-20 on digits (16x16) reach 98.7% test top-1 (seed 0).
BASELINE_EPOCHS = 15
KEPT_EPOCH = 10
"""The epoch whose weights the session baseline keeps (epoch10.pt) for weight rewinding."""


@pytest.fixture(scope="session")
def trained_resnet20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with model.pt and report.json of a trained dense ResNet-20 on digits."""
    out = tmp_path_factory.mktemp("baseline")
    config = TrainConfig(epochs=BASELINE_EPOCHS)
    train_baseline("resnet20", DataConfig("digits"), config, out, progress=False, keep_epoch=KEPT_EPOCH)
    return out


@pytest.fixture(scope="session")
def baseline_report(trained_resnet20: Path) -> dict:
    return json.loads((trained_resnet20 / "report.json").read_text())
