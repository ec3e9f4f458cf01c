"""Model-zoo walk: every torchvision classifier, and timm's CNN families, traced, pruned uniformly, counted and
replayed.

For each name in ``torchvision.models.list_models(module=torchvision.models)`` and each timm model chosen by
:func:`timm_models` (one per family, the smallest, plus every model under ``--timm-max-params``; random weights,
``pretrained=False``, 10 classes, the smallest square input of 64 / 96 / 128 / 224 pixels, or a timm model's
default size, the model accepts) it

* traces the dependency groups (:class:`amc.groups.ModelGraph`),
* prunes every group at the same ratio (default 0.5) with :func:`amc.pruning.prune_channels`,
* checks the analytic cost table: ``graph.estimate(widths)`` equals the count on the pruned model,
* replays the saved pruning history onto a fresh dense model with the same weights
  (:func:`amc.pruning.replay_history`) and checks that both give identical outputs,
* runs what a user gets from there: one epoch of fine-tuning with keep-best (:func:`amc.train.finetune`, one
  batch of 8 random images as both training and validation data), saves the model file
  (:func:`amc.checkpoint.save_model`) and loads it back (:func:`amc.checkpoint.load_model`), and checks that the
  reloaded model gives the fine-tuned model's outputs.

A model is ``pruned`` when all of this holds, ``refused`` when amc-search raised one of its own errors
(:class:`amc.errors.AmcError`, whose message names the operator / module; a trace past its time limit is one),
``hung`` when its process ran past ``--timeout``, and ``failed`` otherwise (a bug: a raw exception or a check
that did not hold). Each model runs in its own forked process, so the largest ones (``regnet_y_128gf``,
``vit_h_14``) free their memory.

Usage::

    python experiments/bench/model_zoo.py                  # torchvision and timm; writes results/model_zoo.json
    python experiments/bench/model_zoo.py --models resnext50_32x4d,regnet_x_400mf --no-write
    python experiments/bench/model_zoo.py --source timm --timm-max-params 2e6 --update  # only the timm part
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import multiprocessing
import multiprocessing.connection
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from amc.cost import count_cost
from amc.errors import AmcError
from amc.groups import ModelGraph
from amc.models import ModelSpec, create_model
from amc.pruning import build_graph, prune_channels, replay_history, widths_for

SIZES = (64, 96, 128, 224)
RESULTS = Path(__file__).parent / "results" / "model_zoo.json"


@dataclass(frozen=True)
class ZooResult:
    """The outcome of one model.

    Attributes:
        model: torchvision / timm name (without the ``torchvision:`` / ``timm:`` prefix).
        status: ``pruned``, ``refused``, ``failed`` or ``hung``.
        size: Input side used (0 when no size worked).
        groups: Prunable groups found (0 when not traced).
        grouped: Groups whose widths are tied to grouped convs (kept in multiples of their ``groups``).
        flops_ratio: FLOPs of the pruned model over the dense FLOPs (physically counted).
        params_ratio: The same for params.
        seconds: Wall time of trace + prune + count + replay (model construction excluded).
        detail: The error message for refused / failed models.
    """

    model: str
    status: str
    size: int = 0
    groups: int = 0
    grouped: int = 0
    flops_ratio: float = 1.0
    params_ratio: float = 1.0
    seconds: float = 0.0
    detail: str = ""


SOURCES = ("torchvision", "timm")


def sizes_for(name: str, source: str) -> tuple[int, ...]:
    """Input sides tried for a model, smallest first: :data:`SIZES`, and for timm the model's own default side last
    (some take only that one, e.g. halonet_h1 256, swinv2_tiny_window16_256)."""
    if source != "timm":
        return SIZES
    import timm

    with torch.device("meta"):
        side = int(timm.create_model(name, pretrained=False).pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    return tuple(sorted({*SIZES, side}))


STATUSES = ("pruned", "refused", "failed", "hung")


def _build(name: str, size: int, source: str = "torchvision") -> nn.Module:
    torch.manual_seed(0)
    return create_model(ModelSpec(f"{source}:{name}", 3, 10, size)).eval()


def timm_models(max_params: float, families: list[str] | None = None) -> list[str]:
    """timm models to walk: the smallest of each family (timm module), plus every model under ``max_params``.

    Parameters are counted on the meta device (nothing is allocated); a model that cannot be built there is
    counted as large.
    """
    import timm

    chosen: set[str] = set()
    for family in families or timm.list_modules():
        sizes = {name: _meta_params(name) for name in timm.list_models(module=family)}
        if not sizes:
            continue
        chosen.add(min(sizes, key=lambda n: (sizes[n], n)))
        chosen.update(n for n, p in sizes.items() if p <= max_params)
    return sorted(chosen)


def _meta_params(name: str) -> float:
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=10)
        return float(sum(p.numel() for p in model.parameters()))
    except Exception:
        return float("inf")


@torch.no_grad()
def smallest_size(model: nn.Module, sizes: tuple[int, ...] = SIZES) -> int:
    """The smallest input side in ``sizes`` the model runs on (0 when none)."""
    for size in sizes:
        try:
            model(torch.randn(1, 3, size, size))
            return size
        except Exception:
            continue
    return 0


def check_model(
    name: str, ratio: float = 0.5, sizes: tuple[int, ...] = SIZES, source: str = "torchvision"
) -> ZooResult:
    """Traces, prunes uniformly at ``ratio``, counts and replays model ``name`` of ``source`` (torchvision, timm)."""
    model = _build(name, sizes[0], source)
    size = smallest_size(model, sizes)
    if size == 0:
        return ZooResult(name, "failed", detail=f"runs on none of the input sizes {sizes}")
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    graph: ModelGraph | None = None
    try:
        graph = build_graph(model, x)
        widths = widths_for(graph, {g.name: ratio for g in graph})
        result = prune_channels(model, graph, widths)
        counted = count_cost(result.model, x)
        fresh = _build(name, size, source)
        fresh.load_state_dict(model.state_dict())
        replay_history(fresh, x, result.history)
        with torch.no_grad():
            same = torch.equal(fresh(x), result.model(x))
        reloaded = _finetune_save_reload(f"{source}:{name}", size, result)
    except AmcError as exc:
        return ZooResult(
            name,
            "refused",
            size,
            len(graph) if graph else 0,
            seconds=time.perf_counter() - start,
            detail=f"{type(exc).__name__}: {exc}",
        )
    except Exception as exc:
        return ZooResult(
            name,
            "failed",
            size,
            len(graph) if graph else 0,
            seconds=time.perf_counter() - start,
            detail=f"{type(exc).__name__}: {exc}",
        )
    seconds = time.perf_counter() - start
    dense = graph.dense_cost
    problems = []
    if counted != graph.estimate(widths):
        problems.append(f"estimate {graph.estimate(widths)} != counted {counted}")
    if not same:
        problems.append("the replayed model's outputs differ from the pruned model's")
    if not reloaded:
        problems.append("the reloaded model's outputs differ from the fine-tuned model's")
    return ZooResult(
        name,
        "failed" if problems else "pruned",
        size,
        len(graph),
        sum(g.multiple > 1 for g in graph),
        counted.flops / dense.flops,
        counted.params / dense.params,
        seconds,
        "; ".join(problems),
    )


def _finetune_save_reload(model_name: str, size: int, result) -> bool:
    """One fine-tuning epoch with keep-best on 8 random images, saved and loaded back: the same outputs?"""
    import tempfile

    from torch.utils.data import DataLoader, TensorDataset

    from amc.checkpoint import load_model, save_model
    from amc.train import finetune

    gen = torch.Generator().manual_seed(2)
    # 8 images: with 2, BatchNorm's batch statistics at the last 1x1 feature maps turn a random model's outputs NaN
    data = TensorDataset(torch.randn(8, 3, size, size, generator=gen), torch.randint(0, 10, (8,), generator=gen))
    loader = DataLoader(data, batch_size=8)
    finetune(result.model, loader, epochs=1, lr=1e-3, progress=False, val_loader=loader)
    spec = ModelSpec(model_name, 3, 10, size)
    x = data.tensors[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(Path(tmp) / "model.pt", result.model, spec, history=result.history)
        loaded = load_model(path).model.eval()
    with torch.no_grad():
        return torch.equal(loaded(x), result.model.eval()(x))


def _check_in_child(name: str, ratio: float, source: str, conn: multiprocessing.connection.Connection) -> None:
    torch.set_num_threads(1)
    try:
        conn.send(check_model(name, ratio, sizes_for(name, source), source))
    except BaseException as exc:
        conn.send(ZooResult(name, "failed", detail=f"{type(exc).__name__}: {exc}"))


def walk(names: list[str], ratio: float, timeout: float, source: str = "torchvision") -> list[ZooResult]:
    """Checks each model in a fresh forked process (memory of the large ones is given back); a process still
    running after ``timeout`` seconds is stopped and its model counted as ``hung``."""
    context = multiprocessing.get_context("fork")
    results = []
    for name in names:
        start = time.perf_counter()
        receive, send = context.Pipe(duplex=False)
        worker = context.Process(target=_check_in_child, args=(name, ratio, source, send))
        worker.start()
        send.close()  # the child holds the only writer: its death reads as EOF
        if receive.poll(timeout):
            try:
                result = receive.recv()
            except EOFError:
                worker.join()
                result = ZooResult(name, "failed", detail=f"worker died (exit code {worker.exitcode}; out of memory?)")
        else:
            result = ZooResult(
                name,
                "hung",
                seconds=time.perf_counter() - start,
                detail=f"timed out after {timeout:.0f} s (worker exit code {worker.exitcode})",
            )
        worker.kill()
        worker.join()
        print(_row(result), flush=True)
        results.append(result)
    return results


def _row(r: ZooResult) -> str:
    detail = r.detail if len(r.detail) < 110 else r.detail[:107] + "..."
    return (
        f"{r.model:<22} {r.status:<8} {r.size:>4} {r.groups:>6} {r.grouped:>7} {r.flops_ratio:>7.3f} "
        f"{r.seconds:>7.1f}  {detail}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", choices=(*SOURCES, "all"), default="all", help="which models to walk")
    parser.add_argument("--models", default="", help="comma-separated names of --source (default: its whole walk)")
    parser.add_argument("--ratio", type=float, default=0.5, help="uniform pruning ratio")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model before it counts as hung")
    parser.add_argument(
        "--timm-max-params",
        type=float,
        default=3e6,
        help="timm: every model up to this many parameters (and the smallest of each family)",
    )
    parser.add_argument("--timm-families", default="", help="timm: comma-separated modules (default: all)")
    parser.add_argument("--update", action="store_true", help="keep the other source's part of the results file")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS}")
    return parser


def _names(source: str, args: argparse.Namespace) -> list[str]:
    if args.models:
        return args.models.split(",")
    if source == "timm":
        return timm_models(args.timm_max_params, args.timm_families.split(",") if args.timm_families else None)
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def _counts(results: list[ZooResult]) -> dict[str, int]:
    return {s: sum(r.status == s for r in results) for s in STATUSES}


def _payload(source: str, results: list[ZooResult], args: argparse.Namespace) -> dict:
    """The results file's part for ``source``: torchvision's at the top level (as before), timm's under "timm"."""
    if source == "timm":
        import timm

        return {
            "timm": {
                **_counts(results),
                "timm": timm.__version__,
                "max_params": args.timm_max_params,
                "models": [asdict(r) for r in results],
            }
        }
    import torchvision

    return {"counts": _counts(results), "torchvision": torchvision.__version__, "results": [asdict(r) for r in results]}


def main() -> None:
    args = _parser().parse_args()
    payload = json.loads(RESULTS.read_text()) if args.update and RESULTS.is_file() else {}
    for source in SOURCES if args.source == "all" else (args.source,):
        names = _names(source, args)
        print(f"{source}: {len(names)} models")
        print(
            f"{'model':<22} {'status':<8} {'size':>4} {'groups':>6} {'grouped':>7} {'flops':>7} {'seconds':>7}  detail"
        )
        results = walk(names, args.ratio, args.timeout, source)
        print(", ".join(f"{n} {s}" for s, n in _counts(results).items()))
        payload.update(_payload(source, results, args))
    if not args.no_write:
        payload.update(
            ratio=args.ratio,
            threads=1,
            torch=torch.__version__,
            torch_pruning=importlib.metadata.version("torch-pruning"),
            machine=platform.machine(),
            processor=platform.processor(),
        )
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
