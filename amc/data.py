"""Data set registry with deterministic train / search-val / test splits.

``digits`` (scikit-learn's bundled handwritten digits, upsampled to 16x16) is the embedded default and
needs nothing on disk. ``cifar10`` and ``imagefolder`` read a directory the user already has (nothing is
ever downloaded); ``synthetic`` makes random tensors for smoke runs. The search-val split is held out
from the training data, as AMC does, so the search never sees the test split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from amc.errors import ConfigError, DataNotFoundError
from amc.registry import Registry


@dataclass(frozen=True)
class DataConfig:
    """Which data set to use and how to split it.

    Attributes:
        name: Registered data set name (``digits``, ``cifar10``, ``imagefolder``, ``synthetic``).
        root: Directory of a data set on disk (cifar10, imagefolder); unused otherwise.
        input_size: Side of the square input images; 0 picks the data set's default.
        val_size: Images held out from the training data as the search-val split (0: the default).
        selection_size: Images held out from the training data as the selection split (0: none), disjoint from
            search-val and test: a search re-evaluates its best policies on it at the end and returns the best
            there (``selection_top_k``), so the reported policy is not just the luckiest on search-val. They are
            taken from the end of the training part, so search-val and test stay the same images and the
            dense model trains on that many fewer.
        seed: Seed of the deterministic split.
        num_classes: Class count (synthetic only).
        num_samples: Total images (synthetic only).
    """

    name: str = "digits"
    root: str | None = None
    input_size: int = 0
    val_size: int = 0
    selection_size: int = 0
    seed: int = 0
    num_classes: int = 10
    num_samples: int = 512


@dataclass(frozen=True)
class DataBundle:
    """The three splits plus what a model builder needs to know about the inputs."""

    train: Dataset
    val: Dataset
    test: Dataset
    in_channels: int
    num_classes: int
    input_size: int
    name: str
    selection: Dataset | None = None

    def loader(self, split: str, batch_size: int = 128, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A DataLoader over ``split`` (``train``, ``val``, ``test`` or ``selection``); shuffling is seeded."""
        dataset = {"train": self.train, "val": self.val, "test": self.test, "selection": self.selection}.get(split)
        if dataset is None:
            hint = " (this data has no selection split: set data.selection_size)" if split == "selection" else ""
            raise ConfigError(f"unknown split {split!r}; use train, val, test or selection{hint}")
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


DataBuilder = Callable[[DataConfig], DataBundle]
DATASETS: Registry[DataBuilder] = Registry("data set")


def register_dataset(name: str) -> Callable[[DataBuilder], DataBuilder]:
    """Decorator that registers a data set builder under ``name``."""
    return DATASETS.register(name)  # type: ignore[return-value]


def load_data(config: DataConfig) -> DataBundle:
    """Builds the data set named by ``config.name``."""
    return DATASETS.get(config.name)(config)


def _split(n: int, sizes: tuple[int, ...], seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum((0, *sizes))
    return [perm[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _carve_selection(config: DataConfig, train: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Splits ``config.selection_size`` indices off the end of the training indices: (train, selection or None)."""
    size = config.selection_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(f"data.selection_size must be an integer >= 0 (0: no selection split), got {size!r}")
    if size == 0:
        return train, None
    if size >= len(train):
        raise ConfigError(
            f"data.selection_size={size} leaves no training images ({len(train)} in the training part of "
            f"{config.name}); choose fewer than {len(train)}"
        )
    return train[: len(train) - size], train[len(train) - size :]


@register_dataset("digits")
def digits(config: DataConfig) -> DataBundle:
    """scikit-learn's 1797 handwritten digits: 1100 train / 300 search-val / 397 test, 16x16."""
    from sklearn.datasets import load_digits

    size = config.input_size or 16
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x / 0.4  # unit-ish variance; the background stays 0 so zero padding matches it (no mean shift)
    y = torch.tensor(bunch.target, dtype=torch.long)
    val = config.val_size or 300
    n_test = 397
    train_idx, val_idx, test_idx = _split(len(y), (len(y) - val - n_test, val, n_test), config.seed)
    train_idx, sel_idx = _carve_selection(config, train_idx)
    part = lambda idx: TensorDataset(x[idx], y[idx])  # noqa: E731
    selection = part(sel_idx) if sel_idx is not None else None
    return DataBundle(part(train_idx), part(val_idx), part(test_idx), 1, 10, size, "digits", selection)


@register_dataset("synthetic")
def synthetic(config: DataConfig) -> DataBundle:
    """Random 3-channel images with random labels, for smoke runs (accuracy is meaningless)."""
    size = config.input_size or 32
    n = max(config.num_samples, 12)
    gen = torch.Generator().manual_seed(config.seed)
    x = torch.randn(n, 3, size, size, generator=gen)
    y = torch.randint(0, config.num_classes, (n,), generator=gen)
    n_val = config.val_size or max(n // 6, 1)
    n_test = max(n // 6, 1)
    tr, va, te = _split(n, (n - n_val - n_test, n_val, n_test), config.seed)
    tr, sel = _carve_selection(config, tr)
    part = lambda idx: TensorDataset(x[idx], y[idx])  # noqa: E731
    selection = part(sel) if sel is not None else None
    return DataBundle(part(tr), part(va), part(te), 3, config.num_classes, size, "synthetic", selection)


def _require_root(config: DataConfig, layout: str) -> Path:
    if not config.root:
        raise DataNotFoundError(f"data set {config.name!r} needs a directory: pass --data-dir DIR ({layout})")
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"{root} is not a directory; {config.name} expects {layout}")
    return root


@register_dataset("cifar10")
def cifar10(config: DataConfig) -> DataBundle:
    """CIFAR-10 from a directory the user has: 45000 train / 5000 search-val / 10000 test, 32x32."""
    import torchvision
    from torchvision import transforms

    layout = "DIR/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (the python version)"
    root = _require_root(config, layout)
    needed = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [f for f in needed if not (root / "cifar-10-batches-py" / f).is_file()]
    if missing:
        raise DataNotFoundError(f"CIFAR-10 not found under {root}: missing {', '.join(missing)}; expected {layout}")
    norm = transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    train_tf = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]
    )
    eval_tf = transforms.Compose([transforms.ToTensor(), norm])
    train_aug = torchvision.datasets.CIFAR10(str(root), train=True, transform=train_tf, download=False)
    train_plain = torchvision.datasets.CIFAR10(str(root), train=True, transform=eval_tf, download=False)
    test = torchvision.datasets.CIFAR10(str(root), train=False, transform=eval_tf, download=False)
    n_val = config.val_size or 5000
    tr, va = _split(len(train_aug), (len(train_aug) - n_val, n_val), config.seed)
    tr, sel = _carve_selection(config, tr)
    selection = Subset(train_plain, sel.tolist()) if sel is not None else None
    return DataBundle(
        Subset(train_aug, tr.tolist()), Subset(train_plain, va.tolist()), test, 3, 10, 32, "cifar10", selection
    )


@register_dataset("imagefolder")
def imagefolder(config: DataConfig) -> DataBundle:
    """An ImageNet-style tree: DIR/train/CLASS/*.jpg and DIR/val/CLASS/*.jpg (val is the test split)."""
    import torchvision
    from torchvision import transforms

    layout = "DIR/train/<class>/<image> and DIR/val/<class>/<image>"
    root = _require_root(config, layout)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataNotFoundError(f"{root / sub} is missing; imagefolder expects {layout}")
    size = config.input_size or 224
    norm = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]
    )
    eval_tf = transforms.Compose(
        [transforms.Resize(int(size * 8 / 7)), transforms.CenterCrop(size), transforms.ToTensor(), norm]
    )
    train_aug = torchvision.datasets.ImageFolder(str(root / "train"), transform=train_tf)
    train_plain = torchvision.datasets.ImageFolder(str(root / "train"), transform=eval_tf)
    test = torchvision.datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    n_val = config.val_size or min(10000, max(len(train_aug) // 10, 1))
    tr, va = _split(len(train_aug), (len(train_aug) - n_val, n_val), config.seed)
    tr, sel = _carve_selection(config, tr)
    return DataBundle(
        Subset(train_aug, tr.tolist()),
        Subset(train_plain, va.tolist()),
        test,
        3,
        len(train_aug.classes),
        size,
        "imagefolder",
        Subset(train_plain, sel.tolist()) if sel is not None else None,
    )
