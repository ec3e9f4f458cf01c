"""``amc train``, ``amc prune`` and ``amc sensitivity``: the pruning / fine-tune engine's commands.

Only argparse code runs at import time; torch and the engine are imported inside the commands.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from amc.cli.commands import command
from amc.cli.options import (
    LATENCY_BACKEND_NAMES,
    add_criterion,
    add_device,
    non_negative_int,
    positive_int,
    seed_int,
)
from amc.errors import ConfigError

if TYPE_CHECKING:
    from amc.engine import Workspace
    from amc.policy import Policy


# --------------------------------------------------------------------------- shared flags
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a pruning ratio is the fraction of channels removed, in [0, 1); got {text}")
    return value


def _out_dir(text: str) -> Path:
    if not text or "\x00" in text:
        raise argparse.ArgumentTypeError(f"expected a directory path, got {text!r}")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} exists and is not a directory; pass a directory for the outputs")
    return path


MODEL_HELP = (
    "model name: resnet20, resnet56, plain20, vgg_small, mobilenetv2_small, resnet20_1d / resnet20_1d_wide (1-D "
    "signals, --data mnist1d), torchvision:NAME or timm:NAME"
)


def _add_model_data(p: argparse.ArgumentParser, model_required: bool = False, device: bool = True) -> None:
    p.add_argument(
        "--model",
        required=model_required,
        help=MODEL_HELP + (" (required)" if model_required else " (default: the model of --checkpoint)"),
    )
    p.add_argument(
        "--data",
        default="digits",
        help="data set: digits (embedded, default), mnist1d (generated offline, cached), cifar10, imagefolder, synthetic",
    )
    p.add_argument(
        "--data-dir", default=None, help="directory of a data set on disk (cifar10, imagefolder); nothing is downloaded"
    )
    p.add_argument(
        "--input-size", type=non_negative_int, default=0, help="input image side (0: the data set's default)"
    )
    if device:
        add_device(p)
    p.add_argument("--seed", type=seed_int, default=0, help="random seed (default: 0)")


def _data_config(args: argparse.Namespace):
    from amc.data import DataConfig

    return DataConfig(name=args.data, root=args.data_dir, input_size=args.input_size)


def _model_name(args: argparse.Namespace) -> str:
    if args.model:
        return args.model
    ckpt = getattr(args, "checkpoint", None)
    if ckpt:
        from amc.checkpoint import load_model

        return load_model(ckpt).spec.name
    raise ConfigError("say which model to use: --model NAME (e.g. resnet20)")


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but no CUDA device is available; use --device cpu")


def _write_report(out: Path, report: dict) -> Path:
    from amc.files import write_json_atomic

    return write_json_atomic(out / "report.json", report)


# --------------------------------------------------------------------------- train
@command("train", "train a dense baseline model")
def _train_args(p: argparse.ArgumentParser) -> None:
    _add_model_data(p, model_required=True)
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default: 15)")
    p.add_argument(
        "--lr", type=_positive_float, default=0.1, help="initial learning rate, cosine schedule (default: 0.1)"
    )
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per training step (default: 64)")
    p.add_argument("--out", required=True, type=_out_dir, help="output directory (model.pt, report.json)")


@_train_args.run
def _train(args: argparse.Namespace) -> int:
    from amc.baseline import train_baseline
    from amc.train import TrainConfig

    _check_device(args.device)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    report = train_baseline(args.model, _data_config(args), config, args.out, device=args.device)
    print(
        f"dense {args.model} on {args.data}: test top-1 {report['top1']:.2%}, {report['flops'] / 1e6:.2f} MFLOPs, "
        f"{report['params'] / 1e3:.1f}k params -> {args.out / 'model.pt'}"
    )
    return 0


# --------------------------------------------------------------------------- prune
@command("prune", "apply a per-group pruning policy, fine-tune and report")
def _prune_args(p: argparse.ArgumentParser) -> None:
    _add_model_data(p)
    p.add_argument("--checkpoint", help="dense model file (model.pt from `amc train`); without it the model is random")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--policy", type=Path, help="policy JSON (from `amc search` or written by hand)")
    which.add_argument("--uniform", type=_ratio, metavar="R", help="prune every group by the same ratio R")
    add_criterion(p, "that picks the removed channels with --uniform (a --policy names its own)")
    p.add_argument(
        "--granularity",
        default="channel",
        choices=("channel", "unstructured", "nm"),
        help="with --uniform: remove whole channels (default), single weights, or 2:4 (N:M) patterns",
    )
    p.add_argument(
        "--round-to",
        type=positive_int,
        default=1,
        help="with --uniform: round kept channels to a multiple (default: 1)",
    )
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="accept a --policy that leaves groups of the model out; those groups stay dense (listed)",
    )
    p.add_argument(
        "--finetune-epochs", type=non_negative_int, default=5, help="fine-tuning epochs in total (default: 5)"
    )
    p.add_argument(
        "--iterative",
        type=positive_int,
        default=1,
        metavar="K",
        help="prune in K rounds, fine-tuning after each (default: 1)",
    )
    p.add_argument("--lr", type=_positive_float, default=0.01, help="fine-tuning learning rate (default: 0.01)")
    p.add_argument(
        "--lr-rewind", action="store_true", help="rewind to the training learning rate (0.1) for fine-tuning"
    )
    p.add_argument(
        "--bn-batches",
        type=non_negative_int,
        default=8,
        help="training batches for BatchNorm recalibration after pruning (default: 8; 0 turns it off)",
    )
    p.add_argument("--latency-batch", type=positive_int, default=1, help="batch size for latency (default: 1)")
    p.add_argument("--latency-threads", type=positive_int, default=1, help="CPU threads for latency (default: 1)")
    p.add_argument(
        "--latency-backend",
        choices=LATENCY_BACKEND_NAMES,
        default="torch",
        help="what runs the latency measurement: torch (eager PyTorch) or onnxruntime (the model exported to "
        "ONNX) (default: torch)",
    )
    p.add_argument("--out", required=True, type=_out_dir, help="output directory (model.pt, policy.json, report.json)")


@_prune_args.run
def _prune(args: argparse.Namespace) -> int:
    from amc.cost import LatencyConfig
    from amc.engine import FinetuneSchedule, build_workspace, cost_report, prune_and_finetune, uniform_policy
    from amc.policy import load_policy

    _check_device(args.device)
    if args.allow_partial and not args.policy:
        raise ConfigError("--allow-partial only applies to --policy (a --uniform policy covers every group); drop it")
    policy = load_policy(args.policy) if args.policy else None
    if not args.checkpoint:
        warnings.warn("no --checkpoint given: pruning a randomly initialised model", stacklevel=1)
    ws = build_workspace(_model_name(args), _data_config(args), args.checkpoint)
    if policy is None:
        policy = uniform_policy(ws.graph, ws.identity, args.uniform, args.criterion, args.round_to, args.granularity)
    else:
        policy = _complete_policy(policy, ws, args.allow_partial)
    schedule = FinetuneSchedule(
        args.finetune_epochs,
        args.iterative,
        args.lr,
        args.lr_rewind,
        bn_batches=args.bn_batches,
        seed=args.seed,
        device=args.device,
    )
    result, acc = prune_and_finetune(ws, policy, schedule)
    from amc.train import evaluate

    report = {
        "model": ws.spec.name,
        "data": ws.data.name,
        "dense_top1": evaluate(ws.model, ws.data.loader("test", 256)),
        **acc,
    }
    report.update(
        cost_report(
            ws,
            result.model,
            LatencyConfig(args.latency_batch, args.latency_threads, args.device, backend=args.latency_backend),
        )
    )
    report.update(
        {
            "granularity": policy.granularity,
            "latency_backend": args.latency_backend,
            "iterative": args.iterative,
            "finetune_epochs": args.finetune_epochs,
            "widths": result.widths,
        }
    )
    _save_pruned(args.out, ws, policy, result, report)
    _print_table(report)
    return 0


def _complete_policy(policy: Policy, ws: Workspace, allow_partial: bool) -> Policy:
    """The policy with every group of the workspace's model (missing ones dense, only with --allow-partial)."""
    policy.check_matches(ws.identity, ws.graph.names)
    dense = policy.check_complete(ws.graph.names, allow_partial)
    if dense:
        print(f"--allow-partial: {len(dense)} group(s) not in the policy stay dense: {', '.join(dense)}")
    return policy.completed(ws.graph.names)


def _save_pruned(out: Path, ws, policy, result, report: dict) -> None:
    from dataclasses import replace

    from amc.checkpoint import save_model

    measured = {
        k: report[k] for k in ("top1", "top1_before_finetune", "flops", "flops_ratio", "params", "params_ratio")
    }
    final = replace(policy, measured={**policy.measured, **measured})
    out.mkdir(parents=True, exist_ok=True)
    save_model(out / "model.pt", result.model, ws.spec, final, result.history)
    final.save(out / "policy.json")
    _write_report(out, report)


def _print_table(r: dict) -> None:
    rows = [
        ("", "dense", "pruned"),
        ("top-1 (test)", f"{r['dense_top1']:.2%}", f"{r['top1']:.2%}"),
        ("top-1 before fine-tune", "", f"{r['top1_before_finetune']:.2%}"),
        ("search-val top-1 before / after", "", f"{r['val_top1_before_finetune']:.2%} / {r['val_top1']:.2%}"),
        ("fine-tune epoch kept (0: none)", "", str(r["finetune_best_epoch"])),
        ("MFLOPs", f"{r['dense_flops'] / 1e6:.2f}", f"{r['flops'] / 1e6:.2f} ({r['flops_ratio']:.1%})"),
        ("params", f"{r['dense_params']:,}", f"{r['params']:,} ({r['params_ratio']:.1%})"),
        ("non-zero params", "", f"{r['nonzero_params']:,}"),
    ]
    if "latency_ms" in r:
        rows.append(
            ("latency (ms)", f"{r['dense_latency_ms']:.3f}", f"{r['latency_ms']:.3f} ({r['latency_ratio']:.1%})")
        )
    width = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>14}  {c:>22}")


# --------------------------------------------------------------------------- check
@command("check", "pre-flight report: prunable groups, frozen or refused modules, cost, reload, rounding, search time")
def _check_args(p: argparse.ArgumentParser) -> None:
    _add_model_data(p, device=False)  # runs on the CPU
    p.add_argument("--checkpoint", default=None, help="dense model file (default: a randomly initialised --model)")
    p.add_argument("--episodes", type=positive_int, default=300, help="episodes of the search time estimate")


@_check_args.run
def _check(args: argparse.Namespace) -> int:
    import torch

    from amc.checkpoint import load_model
    from amc.data import load_data
    from amc.engine import spec_for
    from amc.errors import TraceError
    from amc.models import create_model
    from amc.preflight import check

    data = load_data(_data_config(args))
    spec = spec_for(_model_name(args), data)
    torch.manual_seed(args.seed)  # the random initialisation of a model without --checkpoint
    model = load_model(args.checkpoint, spec=spec).model if args.checkpoint else create_model(spec)
    report = check(model, spec.example_inputs(), args.episodes, val_size=len(data.val))
    print(report, flush=True)
    if not report.prunable:
        raise TraceError(f"nothing in {spec.name} can be pruned: {report.refused}")
    return 0


# --------------------------------------------------------------------------- sensitivity
@command("sensitivity", "prune each group alone at ratios 0.1 to 0.9 and plot search-val accuracy")
def _sens_args(p: argparse.ArgumentParser) -> None:
    _add_model_data(p)
    p.add_argument("--checkpoint", required=True, help="dense model file (model.pt from `amc train`)")
    p.add_argument(
        "--ratios",
        default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
        help="comma-separated pruning ratios, each the fraction of a group's channels removed (default: 0.1 to 0.9)",
    )
    add_criterion(p, "that picks the removed channels")
    p.add_argument("--out", required=True, type=_out_dir, help="output directory (sensitivity.csv, sensitivity.png)")


@_sens_args.run
def _sensitivity(args: argparse.Namespace) -> int:
    from amc.engine import build_workspace
    from amc.sensitivity import sensitivity, write_sensitivity

    try:
        ratios = tuple(_ratio(r) for r in args.ratios.split(","))
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"--ratios: {exc}") from None
    _check_device(args.device)
    ws = build_workspace(_model_name(args), _data_config(args), args.checkpoint)
    dense, rows = sensitivity(ws, ratios, args.criterion, device=args.device, seed=args.seed)
    csv_path, png_path = write_sensitivity(args.out, dense, rows)
    print(f"dense search-val top-1 {dense:.2%}; wrote {csv_path} and {png_path}")
    return 0
