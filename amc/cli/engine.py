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
    fraction,
    non_negative_int,
    positive_int,
    seed_int,
)
from amc.errors import ConfigError

if TYPE_CHECKING:
    from amc.engine import FinetuneSchedule, Workspace
    from amc.policy import Policy
    from amc.pruning import PruneResult


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
    p.add_argument(
        "--keep-epoch",
        type=non_negative_int,
        metavar="K",
        help="also keep the weights after epoch K (0: the initial ones) as epochK.pt, for amc prune --rewind-weights",
    )
    p.add_argument("--out", required=True, type=_out_dir, help="output directory (model.pt, report.json)")


@_train_args.run
def _train(args: argparse.Namespace) -> int:
    from amc.baseline import train_baseline
    from amc.train import TrainConfig

    _check_device(args.device)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    report = train_baseline(
        args.model, _data_config(args), config, args.out, device=args.device, keep_epoch=args.keep_epoch
    )
    print(
        f"dense {args.model} on {args.data}: test top-1 {report['top1']:.2%}, {report['flops'] / 1e6:.2f} MFLOPs, "
        f"{report['params'] / 1e3:.1f}k params -> {args.out / 'model.pt'}"
    )
    return 0


# --------------------------------------------------------------------------- prune
@command("prune", "apply a per-group pruning policy, fine-tune and report")
def _prune_args(p: argparse.ArgumentParser) -> None:
    _add_model_data(p)
    p.add_argument(
        "--checkpoint",
        help="dense model file (model.pt from `amc train`; default with --policy: the dense model its search or "
        "export recorded; without one the model is random)",
    )
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
    _add_recovery(p)
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
        help="what runs the latency measurement: torch (eager PyTorch), onnxruntime (the model exported to "
        "ONNX) or onnxruntime-int8 (that ONNX model quantized to INT8) (default: torch)",
    )
    _add_quantize(p)
    p.add_argument("--out", required=True, type=_out_dir, help="output directory (model.pt, policy.json, report.json)")


def _add_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantize",
        choices=("int8",),
        help="also write the model as ONNX (model.onnx) and quantized to INT8 (model.int8.onnx, ONNX Runtime "
        "static quantization: QDQ, per-channel weights); report.json gains their sizes, top-1 and latency",
    )
    _add_calib_batches(p)


def _add_calib_batches(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--calib-batches",
        type=positive_int,
        default=4,
        help="training batches of 64 images that calibrate the activation ranges (default: 4)",
    )


def _add_recovery(p: argparse.ArgumentParser) -> None:
    """Flags that choose how the pruned model recovers: distillation, weight rewinding, from scratch."""
    restart = p.add_mutually_exclusive_group()
    restart.add_argument(
        "--rewind-weights",
        action="store_true",
        help="lottery-ticket rewinding: restart the kept channels from the dense weights of the epoch kept by "
        "`amc train --keep-epoch K` and train with the rest of its schedule (instead of fine-tuning)",
    )
    restart.add_argument(
        "--from-scratch",
        action="store_true",
        help="re-initialise the pruned architecture and train it with the dense model's full schedule "
        "(from the checkpoint's report.json)",
    )
    p.add_argument("--distill", action="store_true", help="fine-tune with the dense model as a teacher")
    p.add_argument(
        "--distill-weight",
        type=lambda text: fraction(text, "the teacher's weight"),
        default=0.5,
        help="with --distill: weight of the teacher's term, in [0, 1] (default: 0.5)",
    )
    p.add_argument(
        "--distill-temperature",
        type=_positive_float,
        default=4.0,
        help="with --distill: softening temperature (default: 4)",
    )


def _retraining(args: argparse.Namespace):
    """The :class:`amc.retrain.Retraining` that --rewind-weights / --from-scratch ask for (None: fine-tune)."""
    if not (args.rewind_weights or args.from_scratch):
        return None
    from amc.retrain import retraining_for

    flag = "--rewind-weights" if args.rewind_weights else "--from-scratch"
    if not args.checkpoint:
        raise ConfigError(f"{flag} needs the dense model's --checkpoint (its report.json holds the training schedule)")
    return retraining_for("rewind" if args.rewind_weights else "scratch", args.checkpoint)


@_prune_args.run
def _prune(args: argparse.Namespace) -> int:
    from amc.engine import FinetuneSchedule, build_workspace, prune_and_finetune, uniform_policy
    from amc.policy import load_policy

    _check_device(args.device)
    if args.allow_partial and not args.policy:
        raise ConfigError("--allow-partial only applies to --policy (a --uniform policy covers every group); drop it")
    policy = load_policy(args.policy) if args.policy else None
    args.checkpoint = _dense_checkpoint(args, policy)
    retrain = _retraining(args)
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
        distill=args.distill,
        distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature,
        retrain=retrain,
    )
    result, acc = prune_and_finetune(ws, policy, schedule)
    report = _prune_report(args, ws, policy, result, acc, schedule)
    if args.quantize:
        report.update(_quantized(result.model, ws.model, ws.spec.example_inputs(), ws.data, args))
    if policy.granularity != "channel":
        report.update(_sparse_export(result.model, ws.model, args.out))
    _save_pruned(args.out, ws, policy, result, report)
    _print_table(report)
    return 0


def _prune_report(
    args: argparse.Namespace,
    ws: Workspace,
    policy: Policy,
    result: PruneResult,
    acc: dict[str, float],
    schedule: FinetuneSchedule,
) -> dict:
    """report.json of ``amc prune``: accuracies, costs and latency, and how the model was made."""
    from amc.cost import LatencyConfig
    from amc.engine import cost_report
    from amc.train import evaluate

    report = {
        "model": ws.spec.name,
        "data": ws.data.name,
        "dense_top1": evaluate(ws.model, ws.data.loader("test", 256)),
        **acc,
    }
    latency = LatencyConfig(args.latency_batch, args.latency_threads, args.device, backend=args.latency_backend)
    report.update(cost_report(ws, result.model, latency))
    report.update(
        {
            "granularity": policy.granularity,
            "latency_backend": args.latency_backend,
            "iterative": args.iterative,
            "finetune_epochs": args.finetune_epochs,
            "recovery": _recovery_record(schedule),
            "widths": result.widths,
            "dense_checkpoint": str(Path(args.checkpoint).resolve()) if args.checkpoint else None,
        }
    )
    return report


def _dense_checkpoint(args: argparse.Namespace, policy: Policy | None) -> str | None:
    """``--checkpoint``, else the dense model a ``--policy`` was made from; None (with a warning): a random model."""
    checkpoint = args.checkpoint
    if policy is not None and not checkpoint:
        checkpoint = _policy_checkpoint(args.policy, policy, args.model)
    if not checkpoint:
        warnings.warn("no --checkpoint given: pruning a randomly initialised model", stacklevel=1)
    return checkpoint


def _policy_checkpoint(path: Path, policy: Policy, model: str | None) -> str | None:
    """The dense model ``policy`` was made from, as ``amc search`` / ``amc export`` recorded it beside ``path``.

    Says on stdout which file it takes. None (a random model) only when ``--model`` asks for one.

    Raises:
        ConfigError: when the recorded file is gone, or nothing is recorded and no ``--model`` is given.
    """
    from amc.policy_source import recorded_dense_model

    record = recorded_dense_model(path)
    if record is None:
        if model:
            return None
        raise ConfigError(
            f"{path} records no dense model (no export.json or search directory beside it): pass --checkpoint "
            f"DENSE.pt, the {policy.model.name} model the policy was made for"
        )
    if not record.checkpoint.is_file():
        raise ConfigError(
            f"{path} was made from the dense model {record.checkpoint} (recorded in {record.recorded_in}), which "
            "is not there; pass --checkpoint DENSE.pt (the same weights)"
        )
    print(f"dense model: {record.checkpoint} (the policy's, recorded in {record.recorded_in})", flush=True)
    return str(record.checkpoint)


def _sparse_export(model, dense, out: Path) -> dict:
    """Writes the sparse model as ``model.sparse.npz`` (masks and non-zero values); report.json's size fields."""
    import tempfile

    from amc.sparse_export import save_sparse

    sparse_bytes = save_sparse(out / "model.sparse.npz", model)
    with tempfile.TemporaryDirectory() as tmp:
        dense_bytes = save_sparse(Path(tmp) / "dense.npz", dense)
    return {"sparse_file": "model.sparse.npz", "sparse_bytes": sparse_bytes, "dense_npz_bytes": dense_bytes}


def _quantized(model, dense, example_inputs, data, args: argparse.Namespace) -> dict:
    """Writes ``model`` as float and INT8 ONNX files into ``args.out``; returns report.json's INT8 fields."""
    from amc.cost import LatencyConfig
    from amc.quantize import calibration_inputs, int8_report, quantize_int8

    calib = calibration_inputs(data, args.calib_batches, args.seed)
    quantized = quantize_int8(model, example_inputs, calib, args.out)
    latency = LatencyConfig(args.latency_batch, args.latency_threads)
    return int8_report(quantized, dense, example_inputs, data.loader("test", 256), latency)


def _recovery_record(schedule) -> dict:
    """How the pruned model recovered, for report.json."""
    record: dict = {"method": "finetune", "lr": schedule.peak_lr, "epochs": schedule.epochs}
    if schedule.retrain is not None:
        r = schedule.retrain
        method = "weight_rewind" if r.method == "rewind" else "from_scratch"
        record = {"method": method, "lr": r.schedule.lr, "epochs": r.epochs, "start_epoch": r.start_epoch}
    elif schedule.lr_rewind:
        record["method"] = "lr_rewind"
    if schedule.distill:
        record["distill"] = {"weight": schedule.distill_weight, "temperature": schedule.distill_temperature}
    return record


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
    if "sparse_bytes" in r:
        rows.append(
            ("weights file KB (sparse .npz)", f"{r['dense_npz_bytes'] / 1e3:.1f}", f"{r['sparse_bytes'] / 1e3:.1f}")
        )
    if "latency_ms" in r:
        rows.append(
            ("latency (ms)", f"{r['dense_latency_ms']:.3f}", f"{r['latency_ms']:.3f} ({r['latency_ratio']:.1%})")
        )
    rows += _int8_rows(r)
    width = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>14}  {c:>22}")


def _int8_rows(r: dict) -> list[tuple[str, str, str]]:
    """The INT8 rows of the table (none without --quantize)."""
    if "int8_top1" not in r:
        return []
    sizes = r["size_bytes"]
    rows = [
        ("top-1 (test), ONNX float / INT8", "", f"{r['onnx_top1']:.2%} / {r['int8_top1']:.2%}"),
        (
            "ONNX file KB, float / INT8",
            f"{r['dense_size_bytes'] / 1e3:.1f}",
            f"{sizes['float'] / 1e3:.1f} / {sizes['int8'] / 1e3:.1f}",
        ),
        ("INT8 compression vs dense float32", "", f"{r['compression']:.1f}x"),
    ]
    if "int8_latency_ms" in r:
        rows.append(("ONNX Runtime ms, float / INT8", "", f"{r['onnx_latency_ms']:.3f} / {r['int8_latency_ms']:.3f}"))
    return rows


# --------------------------------------------------------------------------- quantize
@command("quantize", "quantize a saved model (dense or pruned) to INT8 ONNX and report size, top-1 and latency")
def _quantize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_file", metavar="MODEL.pt", help="model file from `amc train` or `amc prune`")
    p.add_argument(
        "--data",
        default="digits",
        help="data set of the model: digits (embedded, default), cifar10, imagefolder, synthetic",
    )
    p.add_argument("--data-dir", default=None, help="directory of a data set on disk (cifar10, imagefolder)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the calibration batches (default: 0)")
    p.add_argument("--latency-batch", type=positive_int, default=1, help="batch size for latency (default: 1)")
    p.add_argument("--latency-threads", type=positive_int, default=1, help="CPU threads for latency (default: 1)")
    _add_calib_batches(p)
    p.add_argument(
        "--out", required=True, type=_out_dir, help="output directory (model.onnx, model.int8.onnx, report.json)"
    )


@_quantize_args.run
def _quantize(args: argparse.Namespace) -> int:
    from amc.checkpoint import load_model
    from amc.data import DataConfig, load_data
    from amc.models import create_model

    saved = load_model(args.model_file)
    data = load_data(DataConfig(name=args.data, root=args.data_dir, input_size=saved.spec.input_size))
    if (data.in_channels, data.num_classes) != (saved.spec.in_channels, saved.spec.num_classes):
        raise ConfigError(
            f"{args.model_file} takes {saved.spec.in_channels}-channel inputs into {saved.spec.num_classes} classes; "
            f"data set {args.data} has {data.in_channels} and {data.num_classes}: pass the model's --data"
        )
    report = {"model": saved.spec.name, "data": data.name, "model_file": str(args.model_file)}
    report.update(_quantized(saved.model, create_model(saved.spec), saved.spec.example_inputs(), data, args))
    _write_report(args.out, report)
    for a, b, c in _int8_rows({**report}):
        print(f"{a:<34}  {b:>10}  {c:>22}")
    print(f"wrote {args.out / 'model.int8.onnx'} and {args.out / 'report.json'}")
    return 0


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
    if args.checkpoint:
        saved = load_model(args.checkpoint, spec=spec)
        if saved.history:
            raise ConfigError(
                f"{args.checkpoint} holds a pruned model; `amc check` reports on the dense model a search starts "
                "from: pass its checkpoint"
            )
        model = saved.model
    else:
        model = create_model(spec)
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
