"""Data set registry with deterministic train / search-val / test splits.

``digits`` (scikit-learn's bundled handwritten digits, upsampled to 16x16) is the embedded default and
needs nothing on disk. ``cifar10`` and ``imagefolder`` read a directory the user already has (nothing is
ever downloaded); ``synthetic`` makes random tensors for smoke runs. The search-val split is held out
from the training data, as AMC does, so the search never sees the test split.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from amc.errors import ConfigError, DataNotFoundError
from amc.models import InputSize
from amc.registry import Registry


@dataclass(frozen=True)
class DataConfig:
    """Which data set to use and how to split it.

    Attributes:
        name: Registered data set name (``digits``, ``mnist1d``, ``cifar10``, ``imagefolder``, ``synthetic``).
        root: Directory of a data set on disk (cifar10, imagefolder); unused otherwise.
        input_size: Side of the square input images; 0 picks the data set's default.
        val_size: Images held out from the training data as the search-val split (0: the default).
        selection_size: Images held out from the training data as the selection split (0: none), disjoint from
            search-val and test: a search re-evaluates its best policies on it at the end and returns the best
            there (``selection_top_k``), so the reported policy is not just the luckiest on search-val. They are
            taken from the end of the training part, so search-val and test stay the same images and the
            dense model trains on that many fewer.
        seed: Seed of the deterministic split (and of MNIST-1D's generation).
        num_classes: Class count (synthetic only).
        num_samples: Total images (synthetic only).
        train_size: Training samples (mnist1d only; 0: its default, 4,000).
        test_size: Test samples (mnist1d only; 0: its default, 10,000).
    """

    name: str = "digits"
    root: str | None = None
    input_size: int = 0
    val_size: int = 0
    selection_size: int = 0
    seed: int = 0
    num_classes: int = 10
    num_samples: int = 512
    train_size: int = 0
    test_size: int = 0


@dataclass(frozen=True)
class DataBundle:
    """The three splits plus what a model builder needs to know about the inputs.

    ``input_size`` is a side (square images) or the sizes of every input dimension besides the channels
    (``(L,)`` for 1-D signals, ``(H, W)``, ``(D, H, W)``), as :class:`amc.models.ModelSpec` takes it.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    in_channels: int
    num_classes: int
    input_size: InputSize
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


MNIST1D_SIZES = {"train": 4000, "val": 2000, "test": 10000}
"""MNIST-1D's default split sizes: 4,000 training samples (where a 1-D ResNet-20 reaches ~99% and pruning methods
still differ), large search-val and test splits so that a search's figures are not noise."""
MNIST1D_DIR = "data"
"""Subdirectory of the cache directory (``$AMC_CACHE_DIR``) that holds the generated MNIST-1D samples."""


@register_dataset("mnist1d")
def mnist1d(config: DataConfig) -> DataBundle:
    """MNIST-1D (Greydanus 2020): 1-D signals of length 40 made from 10 digit templates, 10 classes.

    Generated offline with ``mnist1d.data.make_dataset`` at first use (a few seconds) and cached under
    ``$AMC_CACHE_DIR/data``; never downloaded. Split sizes: ``train_size`` (default 4,000), ``val_size`` (2,000),
    ``test_size`` (10,000) and ``selection_size`` (0: none), generated together as one pool under ``seed``
    (changing a size regenerates the pool). The input size is the signal length; ``input_size`` must be 0 or 40.
    """
    if config.input_size not in (0, 40):
        raise ConfigError(f"mnist1d signals have length 40; leave --input-size unset, got {config.input_size}")
    sizes = {
        "train": _size("train_size", config.train_size or MNIST1D_SIZES["train"]),
        "val": _size("val_size", config.val_size or MNIST1D_SIZES["val"]),
        "test": _size("test_size", config.test_size or MNIST1D_SIZES["test"]),
        "selection": _size("selection_size", config.selection_size, minimum=0),
    }
    x, y = _mnist1d_pool(sum(sizes.values()), config.seed)
    parts = _split(len(y), tuple(sizes.values()), config.seed)
    data = {name: TensorDataset(x[idx], y[idx]) for name, idx in zip(sizes, parts)}
    selection = data["selection"] if sizes["selection"] else None
    return DataBundle(data["train"], data["val"], data["test"], 1, 10, (int(x.shape[-1]),), "mnist1d", selection)


def _size(field: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"data.{field} must be an integer >= {minimum}, got {value!r}")
    return value


def _mnist1d_pool(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` MNIST-1D samples (rounded up to a multiple of 10) as (N, 1, 40) float32 and (N,) labels.

    Generated with ``make_dataset(get_dataset_args())`` (never ``get_dataset``, which downloads) and cached as
    ``.npz`` in the cache directory; a damaged cache file is generated again.
    """
    from amc.files import atomic_path, default_cache_dir

    count = -(-count // 10) * 10  # make_dataset makes num_samples // 10 per class
    path = default_cache_dir() / MNIST1D_DIR / f"mnist1d-{count}-seed{seed}.npz"
    try:
        with np.load(path) as cached:
            x, y = cached["x"], cached["y"]
    except (OSError, KeyError, ValueError):
        x, y = _generate_mnist1d(count, seed)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, x=x, y=y)
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def _generate_mnist1d(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise ConfigError("--data mnist1d needs the mnist1d package: pip install mnist1d==0.0.2.post1") from exc
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = count, 1.0, seed
    states = np.random.get_state(), random.getstate()  # make_dataset seeds the global generators; keep the caller's
    try:
        made = make_dataset(args)
    finally:
        np.random.set_state(states[0])
        random.setstate(states[1])
    return made["x"].astype(np.float32), made["y"].astype(np.int64)


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
    try:
        train_aug = torchvision.datasets.CIFAR10(str(root), train=True, transform=train_tf, download=False)
    except RuntimeError as exc:  # torchvision checks every file against CIFAR-10's published checksums
        raise DataNotFoundError(
            f"the CIFAR-10 files under {root} do not match CIFAR-10's published checksums (torchvision: {exc}); "
            "extract cifar-10-python.tar.gz again into that directory"
        ) from exc
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
