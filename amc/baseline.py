"""Training dense baselines, and a cache of them keyed by model, data and training settings."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from amc.checkpoint import save_model
from amc.cost import count_cost
from amc.data import DataConfig, load_data
from amc.engine import spec_for
from amc.models import create_model
from amc.files import write_json_atomic
from amc.train import TrainConfig, evaluate, train


def train_baseline(model_name: str, data_config: DataConfig, config: TrainConfig, out: Path, device: str = "cpu", progress: bool = True) -> dict:
    """Trains a dense model and writes ``out/model.pt`` and ``out/report.json``; returns the report."""
    data = load_data(data_config)
    spec = spec_for(model_name, data)
    torch.manual_seed(config.seed)
    model = create_model(spec).to(device)
    train(model, data.loader("train", config.batch_size, shuffle=True, seed=config.seed), config,
          desc=f"train {model_name}", progress=progress)
    model.cpu().eval()
    cost = count_cost(model, spec.example_inputs())
    report = {
        "model": model_name, "data": data.name, "top1": evaluate(model, data.loader("test", 256)),
        "val_top1": evaluate(model, data.loader("val", 256)), "flops": cost.flops, "params": cost.params,
        "train": asdict(config), "data_config": asdict(data_config),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_model(out / "model.pt", model, spec)
    write_json_atomic(out / "report.json", report)
    return report


BASELINE_VERSION = 2
"""Bumped whenever model builders, data preprocessing or training change what a cached baseline holds
(2: PyTorch's default conv init and zero-background digits; models cached before are trained again)."""


def baseline_key(model_name: str, data_config: DataConfig, config: TrainConfig) -> str:
    blob = json.dumps({"model": model_name, "data": asdict(data_config), "train": asdict(config),
                       "version": BASELINE_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cached_baseline(model_name: str, data_config: DataConfig, config: TrainConfig, cache_dir: Path, progress: bool = True) -> Path:
    """Path of a trained dense checkpoint, training it first when the cache does not hold it yet."""
    safe = model_name.replace(":", "_")
    out = cache_dir / f"{safe}-{data_config.name}-{baseline_key(model_name, data_config, config)}"
    if not (out / "model.pt").is_file():
        train_baseline(model_name, data_config, config, out, progress=progress)
    return out / "model.pt"
