"""Channel reconstruction (AMC, He et al. 2018; ThiNet, Luo et al. 2017): refit a pruned layer's weights.

After channels are removed, a conv / linear layer whose *input* lost channels no longer reproduces the
dense layer's output. Reconstruction refits its weights by least squares so that, on a few calibration
batches, the pruned layer's output (from the pruned model's own features) matches the dense layer's
output on the channels it kept. Layers are refitted in forward order and each one's inputs are taken from
the pruned model as refitted so far, so later layers compensate for the errors left by earlier ones.

For a kxk convolution every output position is a linear function of one input patch; the patches are
unfolded (``torch.nn.functional.unfold``) and a few positions per image are sampled (AMC samples about
10), which keeps the system small. The solve is a ridge regression towards the current weights:
``min ||X W - Y||^2 + lam ||W - W0||^2`` with ``lam = ridge * mean(diag(X^T X))``, by the normal
equations in float64 (Cholesky; ``torch.linalg.lstsq`` when they are singular).

Measured on digits ResNet-20 (uniform L1 pruning, no fine-tuning, BatchNorm re-estimated afterwards,
2 batches of 64 images): test top-1 at 20% FLOPs 57.4% -> 98.0%, at 50% FLOPs 91.7% -> 99.7% (dense
99.7%); 1 to 8 batches gave the same within a point. Re-estimating BatchNorm *before* collecting the
features was worse (77-81% at 20% FLOPs): the targets are the dense layers' outputs, which the dense
BatchNorm statistics fit.

Refitted: ``nn.Conv2d`` with ``groups == 1``, zero padding given as numbers, and ``nn.Linear``. Left as
they are: depthwise / grouped convs (one input channel per output, nothing to refit across channels),
convs with string padding or a non-zero padding mode, every other module type, and modules called more
than once per forward pass (shared weights).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from amc.errors import ConfigError
from amc.groups import execution_order
from amc.pruning import KeptChannels

Positions = dict[str, torch.Tensor | None]


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the features it needs are captured."""


def reconstruct(
    dense: nn.Module,
    pruned: nn.Module,
    kept: Mapping[str, KeptChannels],
    batches: Sequence[torch.Tensor],
    *,
    samples_per_image: int | None = 10,
    ridge: float = 1e-3,
    seed: int = 0,
) -> nn.Module:
    """Refits, in place and in forward order, every layer of ``pruned`` whose input channels were removed.

    The batches are concatenated and run through each model once: one pass of the dense model collects
    the targets, and in one pass of the pruned model a pre-forward hook refits each layer just before it
    runs, so its inputs come from the layers before it as already refitted.

    Args:
        dense: The model ``pruned`` was cut from (not modified); its module names must match.
        pruned: The physically pruned model (e.g. ``PruneResult.model``); modified in place.
        kept: Kept channel indices per module (``PruneResult.kept``).
        batches: Calibration input batches (no labels needed), all held in memory at once. More rows
            (images x sampled positions) than a layer has weights per output (``in_channels * k * k``)
            make a well-posed fit; the ridge term keeps smaller systems solvable.
        samples_per_image: Output positions sampled per image for convs (None: every position).
        ridge: Strength of the pull towards the current weights, relative to the mean input energy.
        seed: Seed of the position sampling.

    Returns:
        ``pruned``, refitted. Nothing changes when no layer lost input channels.

    Raises:
        ConfigError: when there are no batches, a setting is out of range, or ``kept`` names modules the
            models do not have.
    """
    _validate(dense, pruned, kept, batches, samples_per_image, ridge)
    inputs = torch.cat(list(batches))
    targets = refit_targets(dense, pruned, kept, inputs[:1])
    if not targets:
        return pruned
    generator = torch.Generator().manual_seed(seed)
    with _eval_mode(dense), _eval_mode(pruned), torch.no_grad():
        positions, wanted = _dense_targets(dense, targets, kept, inputs, samples_per_image, generator)
        _refit_in_forward(pruned, targets, inputs, positions, wanted, ridge)
    return pruned


def refit_targets(
    dense: nn.Module, pruned: nn.Module, kept: Mapping[str, KeptChannels], example: torch.Tensor
) -> list[str]:
    """Names of the modules :func:`reconstruct` refits, in forward order.

    Args:
        dense: The dense model.
        pruned: The pruned model.
        kept: Kept channel indices per module.
        example: One input batch (a forward pass of it fixes the order and finds shared modules).
    """
    reduced = {
        name
        for name, channels in kept.items()
        if _refittable(pruned.get_submodule(name)) and len(channels.inputs) < _in_channels(dense.get_submodule(name))
    }
    if not reduced:
        return []
    order, _ = execution_order(pruned, example)
    counts = _call_counts(pruned, example)
    return [name for name in order if name in reduced and counts.get(name, 0) == 1]


@torch.no_grad()
def output_errors(
    dense: nn.Module, pruned: nn.Module, kept: Mapping[str, KeptChannels], batches: Sequence[torch.Tensor]
) -> dict[str, float]:
    """Relative squared error of each refittable layer's output against the dense layer's kept outputs.

    ``||pruned_out - dense_out[kept]||^2 / ||dense_out[kept]||^2`` summed over ``batches``, for every
    module :func:`reconstruct` would refit; a measure of how well the pruned model reproduces the dense
    one layer by layer.
    """
    _validate(dense, pruned, kept, batches, None, 0.0)
    targets = refit_targets(dense, pruned, kept, batches[0][:1])
    err = dict.fromkeys(targets, 0.0)
    ref = dict.fromkeys(targets, 0.0)
    with _eval_mode(dense), _eval_mode(pruned):
        for x in batches:
            want = _outputs(dense, targets, x)
            got = _outputs(pruned, targets, x)
            for name in targets:
                target = want[name].index_select(1, _index(kept[name].outputs, want[name].device))
                err[name] += float((got[name] - target).pow(2).sum())
                ref[name] += float(target.pow(2).sum())
    return {name: err[name] / max(ref[name], 1e-30) for name in targets}


# --------------------------------------------------------------------------- validation and helpers
def _validate(
    dense: nn.Module,
    pruned: nn.Module,
    kept: Mapping[str, KeptChannels],
    batches: Sequence[torch.Tensor],
    samples_per_image: int | None,
    ridge: float,
) -> None:
    if len(batches) == 0:
        raise ConfigError("reconstruction needs at least one calibration batch of inputs")
    if samples_per_image is not None and (int(samples_per_image) != samples_per_image or samples_per_image < 1):
        raise ConfigError(
            f"samples_per_image must be an integer >= 1 or None (every position), got {samples_per_image!r}"
        )
    if not ridge >= 0.0:
        raise ConfigError(f"ridge must be >= 0 (0: plain least squares), got {ridge!r}")
    names = {n for n, _ in dense.named_modules()} & {n for n, _ in pruned.named_modules()}
    unknown = sorted(set(kept) - names)
    if unknown:
        raise ConfigError(
            f"kept channels name modules the models do not have: {', '.join(unknown[:5])}; pass the PruneResult.kept "
            "of the pruning that made this pruned model from this dense model"
        )


def _refittable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _in_channels(module: nn.Module) -> int:
    return int(module.in_features if isinstance(module, nn.Linear) else module.in_channels)


def _index(indices: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(list(indices), dtype=torch.long, device=device)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _hooks(
    model: nn.Module, names: Sequence[str], hook_factory: Callable[[str], Callable[..., None]], pre: bool = False
) -> Iterator[None]:
    handles = []
    try:
        for name in names:
            module = model.get_submodule(name)
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(hook_factory(name)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _call_counts(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    counts: dict[str, int] = {}
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]

    def factory(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            counts[name] = counts.get(name, 0) + 1

        return hook

    with _eval_mode(model), torch.no_grad(), _hooks(model, names, factory, pre=True):
        model(example.to(_device(model)))
    return counts


def _outputs(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}

    def factory(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            out[name] = output.detach()

        return hook

    with _hooks(model, names, factory):
        model(x.to(_device(model)))
    return out


# --------------------------------------------------------------------------- features and the solve
def _sample(length: int, images: int, samples: int | None, generator: torch.Generator) -> torch.Tensor | None:
    """Per image, ``samples`` distinct positions out of ``length`` (None: all of them)."""
    if samples is None or samples >= length:
        return None
    return torch.rand(images, length, generator=generator).argsort(dim=1)[:, :samples]


def _rows(values: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """(images, features, positions) -> (rows, features), keeping the sampled positions only."""
    if positions is not None:
        positions = positions.to(values.device)
        values = values.gather(2, positions[:, None, :].expand(-1, values.shape[1], -1))
    return values.transpose(1, 2).reshape(-1, values.shape[1])


def _output_rows(
    module: nn.Module, output: torch.Tensor, kept_out: torch.Tensor, positions: torch.Tensor | None
) -> torch.Tensor:
    output = output.index_select(1 if isinstance(module, nn.Conv2d) else -1, kept_out)
    if isinstance(module, nn.Linear):
        return output.reshape(-1, output.shape[-1])
    return _rows(output.flatten(2), positions)


def _input_rows(module: nn.Module, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if positions is None:
        patches = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        return _rows(patches, None)
    return _patches_at(module, x, positions.to(x.device))


def _patches_at(module: nn.Conv2d, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The input patches of ``module`` at the sampled output positions, as ``unfold`` lays them out.

    Gathers only the sampled patches (unfolding the whole map and then sampling took ~20% of the time).
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = module.kernel_size, module.stride, module.padding, module.dilation
    padded = F.pad(x, (pw, pw, ph, ph))
    out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = (positions // out_w * sh)[..., None] + torch.arange(kh, device=x.device) * dh  # (images, samples, kh)
    cols = (positions % out_w * sw)[..., None] + torch.arange(kw, device=x.device) * dw
    images = torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    patches = padded[images, :, rows[..., :, None], cols[..., None, :]]  # (images, samples, kh, kw, C)
    return patches.permute(0, 1, 4, 2, 3).reshape(-1, x.shape[1] * kh * kw)


def _dense_targets(
    dense: nn.Module,
    targets: Sequence[str],
    kept: Mapping[str, KeptChannels],
    inputs: torch.Tensor,
    samples: int | None,
    generator: torch.Generator,
) -> tuple[Positions, dict[str, torch.Tensor]]:
    """Samples the positions of every target layer and collects the dense outputs there (one pass)."""
    outputs = _outputs(dense, targets, inputs)
    positions: Positions = {}
    wanted: dict[str, torch.Tensor] = {}
    for name in targets:  # forward order, so the draw does not depend on the order hooks ran in
        module, output = dense.get_submodule(name), outputs.pop(name)
        length = output.shape[2] * output.shape[3] if isinstance(module, nn.Conv2d) else 0
        positions[name] = _sample(length, output.shape[0], samples, generator) if length else None
        wanted[name] = _output_rows(module, output, _index(kept[name].outputs, output.device), positions[name])
    return positions, wanted


def _refit_in_forward(
    pruned: nn.Module,
    targets: Sequence[str],
    inputs: torch.Tensor,
    positions: Positions,
    wanted: Mapping[str, torch.Tensor],
    ridge: float,
) -> None:
    """One pass of the pruned model that refits each target layer just before it runs."""
    last = targets[-1]

    def factory(name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            _refit(module, _input_rows(module, args[0], positions[name]), wanted[name], ridge)
            if name == last:
                raise _Stop  # nothing after the last refitted layer matters

        return hook

    with _hooks(pruned, targets, factory, pre=True), contextlib.suppress(_Stop):
        pruned(inputs.to(_device(pruned)))


def _refit(module: nn.Module, inputs: torch.Tensor, wanted: torch.Tensor, ridge: float) -> None:
    """Solves ``min ||X W - Y||^2 + lam ||W - W0||^2`` (bias as a column of ones) and writes W."""
    weight = module.weight
    current = weight.detach().reshape(weight.shape[0], -1)
    x = inputs
    if module.bias is not None:
        x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
        current = torch.cat([current, module.bias.detach()[:, None]], dim=1)
    residual = wanted - x @ current.T
    delta = _ridge_solve(x, residual, ridge).T
    solved = (current.double() + delta).to(weight.dtype)
    if module.bias is not None:
        module.bias.copy_(solved[:, -1])
        solved = solved[:, :-1]
    weight.copy_(solved.reshape(weight.shape))


def _ridge_solve(x: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """``argmin_D ||x D - y||^2 + lam ||D||^2`` in float64, by the normal equations.

    The Gram matrix is formed in the inputs' precision and solved in float64 by Cholesky (2-5x faster
    than ``torch.linalg.lstsq`` on the stacked system for these sizes; measured equal to 1e-7);
    ``torch.linalg.lstsq`` takes over when the system is singular (``ridge=0`` with too few rows).
    """
    gram = (x.T @ x).double()
    rhs = (x.T @ y).double()
    lam = ridge * float(gram.diagonal().mean())
    gram.diagonal().add_(lam)
    factor, info = torch.linalg.cholesky_ex(gram)
    if int(info) == 0:
        return torch.cholesky_solve(rhs, factor)
    return torch.linalg.lstsq(gram, rhs).solution
