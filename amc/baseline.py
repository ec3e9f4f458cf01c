"""Training dense baselines, and a cache of them keyed by model, data and training settings.

The cache lives in one user cache directory (:func:`default_cache_dir`), never in the directory a
command runs from, so every search of the same model, data and training settings reuses one baseline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from amc.checkpoint import save_model
from amc.cost import count_cost
from amc.data import DataConfig, load_data
from amc.engine import spec_for
from amc.errors import ConfigError
from amc.files import default_cache_dir, write_json_atomic
from amc.models import create_model
from amc.progress import format_duration
from amc.train import TrainConfig, evaluate, state_copy, train


def kept_epoch_file(epoch: int) -> str:
    """File name of the dense weights kept after ``epoch`` (beside ``model.pt``), for weight rewinding."""
    return f"epoch{epoch}.pt"


def train_baseline(
    model_name: str,
    data_config: DataConfig,
    config: TrainConfig,
    out: Path,
    device: str = "cpu",
    progress: bool = True,
    keep_epoch: int | None = None,
) -> dict:
    """Trains a dense model and writes ``out/model.pt`` and ``out/report.json``; returns the report.

    Args:
        keep_epoch: Also write the weights after this epoch (0: the initial weights) to
            ``out/`` :func:`kept_epoch_file`, for ``amc prune --rewind-weights``; the report names it.
    """
    if keep_epoch is not None and not 0 <= keep_epoch < config.epochs:
        raise ConfigError(
            f"--keep-epoch {keep_epoch} is not an epoch before the last: use 0 (the initial weights) to "
            f"{config.epochs - 1}"
        )
    data = load_data(data_config)
    spec = spec_for(model_name, data)
    torch.manual_seed(config.seed)
    model = create_model(spec).to(device)
    kept: dict[int, dict] = {}

    def keep(epoch: int, current: torch.nn.Module) -> None:
        if epoch == keep_epoch:
            kept[epoch] = state_copy(current)

    train(
        model,
        data.loader("train", config.batch_size, shuffle=True, seed=config.seed),
        config,
        desc=f"train {model_name}",
        progress=progress,
        after_epoch=keep,
    )
    model.cpu().eval()
    cost = count_cost(model, spec.example_inputs())
    report = {
        "model": model_name,
        "data": data.name,
        "top1": evaluate(model, data.loader("test", 256)),
        "val_top1": evaluate(model, data.loader("val", 256)),
        "flops": cost.flops,
        "params": cost.params,
        "train": asdict(config),
        "data_config": asdict(data_config),
    }
    out.mkdir(parents=True, exist_ok=True)
    if keep_epoch is not None:
        early = create_model(spec)
        early.load_state_dict(kept[keep_epoch])
        save_model(out / kept_epoch_file(keep_epoch), early.eval(), spec)
        report["kept_epoch"] = {"epoch": keep_epoch, "file": kept_epoch_file(keep_epoch)}
    save_model(out / "model.pt", model, spec)
    write_json_atomic(out / "report.json", report)
    return report


BASELINE_VERSION = 2
"""Bumped whenever model builders, data preprocessing or training change what a cached baseline holds
(2: PyTorch's default conv init and zero-background digits; models cached before are trained again)."""


LATER_DATA_FIELDS = ("selection_size", "train_size", "test_size")
"""DataConfig fields added after baselines were cached; left out of the key while 0 (their default), so that a
baseline trained before a field existed is still found."""


def baseline_key(model_name: str, data_config: DataConfig, config: TrainConfig) -> str:
    data = asdict(data_config)
    for later in LATER_DATA_FIELDS:  # at their defaults: the key of the baselines cached before they existed
        if not data[later]:
            del data[later]
    blob = json.dumps(
        {"model": model_name, "data": data, "train": asdict(config), "version": BASELINE_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


BASELINES_DIR = "baselines"
"""Subdirectory of the cache directory that holds the dense baselines."""


def baseline_dir(model_name: str, data_config: DataConfig, config: TrainConfig, cache_dir: Path | None = None) -> Path:
    """Directory of the cached baseline of these settings (``<cache>/baselines/<model>-<data>-<key>``).

    Args:
        model_name: Registered model name.
        data_config: Data set settings.
        config: Training settings.
        cache_dir: Cache directory (None: :func:`default_cache_dir`).
    """
    root = (cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve()
    safe = model_name.replace(":", "_").replace("/", "_")
    return root / BASELINES_DIR / f"{safe}-{data_config.name}-{baseline_key(model_name, data_config, config)}"


def cached_baseline(
    model_name: str, data_config: DataConfig, config: TrainConfig, cache_dir: Path | None = None, progress: bool = True
) -> Path:
    """Path of a trained dense checkpoint, training it first when the cache does not hold it yet.

    The baseline is trained into a temporary directory beside its final one and renamed into place in
    one step, so concurrent trainings of the same baseline (parallel searches, sweeps) never leave a
    half-written model: the first rename wins and the others reuse its result.

    Args:
        model_name: Registered model name.
        data_config: Data set settings.
        config: Training settings.
        cache_dir: Cache directory (None: :func:`default_cache_dir`); baselines go to its ``baselines/``.
        progress: Show training progress (see :mod:`amc.progress`), and say on stderr when a baseline is
            trained because the cache lacks it, and how long it took.

    Returns:
        The ``model.pt`` of the cached baseline.
    """
    out = baseline_dir(model_name, data_config, config, cache_dir)
    if (out / "model.pt").is_file():
        return out / "model.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        _say(
            f"training the dense baseline {model_name} on {data_config.name} ({config.epochs} epoch{'' if config.epochs == 1 else 's'}), "
            f"cached in {out}"
        )
    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        report = train_baseline(model_name, data_config, config, tmp, progress=progress)
        _publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        _say(
            f"dense baseline {model_name} on {data_config.name} trained in {format_duration(time.monotonic() - start)}: "
            f"test top-1 {report['top1']:.2%} -> {out / 'model.pt'}"
        )
    return out / "model.pt"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _publish(tmp: Path, out: Path) -> None:
    """Renames the finished ``tmp`` onto ``out``, unless another process already published a baseline there."""
    if out.exists() and not (out / "model.pt").is_file():
        shutil.rmtree(out, ignore_errors=True)  # left by an interrupted run of an older version
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / "model.pt").is_file():  # not a lost race: a real failure
            raise
