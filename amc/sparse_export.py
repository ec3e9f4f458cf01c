"""A sparse model file: each mostly-zero weight stored as a bit mask and its non-zero values.

Unstructured and N:M pruning zero weights in place, so a plain state_dict is as large as the dense one. Here
every floating-point weight tensor with at least :data:`MIN_SPARSITY` zeros is stored as ``np.packbits`` of its
non-zero mask (one bit per weight) plus the non-zero values (float32), the other tensors as they are, in an
uncompressed ``.npz`` (a zip archive NumPy reads without pickle): ``32 * (1 - s) + 1`` bits per weight at
sparsity ``s`` instead of 32. :func:`load_sparse` gives back the exact state_dict, zeros included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from amc.errors import ModelFileError
from amc.files import atomic_path

MIN_SPARSITY = 1 / 32
"""A tensor with fewer zeros than this fraction is stored dense (its mask would cost more than it saves)."""
_MASK, _VALUES, _SHAPE = "::mask", "::values", "::shape"


def _arrays(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name, tensor in state.items():
        a = tensor.detach().cpu().numpy()
        zeros = a.size - np.count_nonzero(a)
        if tensor.is_floating_point() and tensor.dim() > 1 and zeros >= MIN_SPARSITY * a.size:
            mask = a != 0
            arrays[name + _MASK] = np.packbits(mask.ravel())
            arrays[name + _VALUES] = a[mask].astype(np.float32)
            arrays[name + _SHAPE] = np.asarray(a.shape, dtype=np.int64)
        else:
            arrays[name] = a
    return arrays


def save_sparse(path: str | Path, model: nn.Module) -> int:
    """Writes ``model``'s state_dict to ``path`` (``.npz``) in the sparse format, atomically; returns its bytes."""
    arrays = _arrays(model.state_dict())
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path).stat().st_size


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict :func:`save_sparse` wrote to ``path``, every zero back in place.

    Raises:
        ModelFileError: When the file is missing or not a sparse model file.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a sparse model file written by amc prune: {exc}") from None
    state: dict[str, torch.Tensor] = {}
    for key, a in arrays.items():
        if key.endswith(_MASK):
            name = key[: -len(_MASK)]
            shape = tuple(int(d) for d in arrays[name + _SHAPE])
            mask = np.unpackbits(a, count=int(np.prod(shape))).astype(bool)
            dense = np.zeros(mask.size, dtype=np.float32)
            dense[mask] = arrays[name + _VALUES]
            state[name] = torch.from_numpy(dense.reshape(shape))
        elif not key.endswith((_VALUES, _SHAPE)):
            state[key] = torch.from_numpy(np.array(a))
    return state
