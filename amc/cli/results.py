"""``amc pareto``, ``amc export`` and ``amc ui``: look at and take away what the searches found.

The work is done in :mod:`amc.service` (MLflow, moocore, matplotlib), imported inside the commands.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from amc.cli.commands import command
from amc.cli.options import add_tracking_uri, fraction, non_negative_int, seed_int
from amc.errors import ConfigError
from amc.service.ui import PARETO_FILTER

if TYPE_CHECKING:
    from amc.service.front import Candidate
    from amc.service.pareto import ParetoReport


def _flops_ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"the FLOPs ratio is the fraction of the dense FLOPs kept, in (0, 1]; got {text}"
        )
    return value


def _top1(text: str) -> float:
    return fraction(text, "top-1 (a fraction: 0.9 for 90%)")


MIN_TOP1_HELP = (
    "leave out the policies whose search-val top-1 (a fraction, 0.9 for 90%%) is below this, e.g. those at chance "
    "accuracy, before the front is computed (default: keep all)"
)


# --------------------------------------------------------------------------- pareto
@command("pareto", "compute an experiment's Pareto front over every policy its searches evaluated, log it to MLflow")
def _pareto_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", required=True, help="MLflow experiment name (e.g. digits-resnet20)")
    add_tracking_uri(p)
    p.add_argument("--out", type=Path, help="also write pareto_front.csv/.json/.png and pareto_candidates.csv here")
    p.add_argument(
        "--no-tracking",
        "--no-log",
        dest="no_tracking",
        action="store_true",
        help="do not log to MLflow: compute only, leave the experiment untouched",
    )
    p.add_argument("--min-top1", type=_top1, metavar="T", help=MIN_TOP1_HELP)


@_pareto_args.run
def _pareto(args: argparse.Namespace) -> int:
    from amc.service.pareto import update_pareto

    report = update_pareto(
        args.experiment, args.tracking_uri, args.out, log_to_mlflow=not args.no_tracking, min_top1=args.min_top1
    )
    front = report.front
    ref = ", ".join(f"{n} {r:g}" for n, r in zip(front.objectives, front.reference))
    kept = f" reaching top-1 {args.min_top1:.2%}" if args.min_top1 is not None else ""
    print(
        f"Pareto front of experiment {args.experiment!r}: {len(front.front)} of {len(front.candidates)} policies"
        f"{kept} from {len(report.runs)} searches; hypervolume {front.hypervolume:.4f} (reference point: {ref})"
    )
    _print_front(front.front, front.objectives, _all_rows_hint(report, args.out))
    if report.pareto_run_id:
        print(
            f"logged to MLflow run {report.pareto_run_id} (tag amc.kind=pareto); runs on the front are tagged "
            f"amc.pareto=true: filter with {PARETO_FILTER}"
        )
    for path in report.files:
        print(f"wrote {path}")
    return 0


def _all_rows_hint(report: ParetoReport, out: Path | None) -> str:
    """Where every row of the front is, as this call left it: the written CSV, the Pareto run's, or neither."""
    if out is not None:
        return f"all rows: {(out / 'pareto_front.csv').resolve()}"
    if report.pareto_run_id:
        return f"all rows: pareto_front.csv in the artifacts of MLflow run {report.pareto_run_id}"
    return "pass --out DIR to write all rows to DIR/pareto_front.csv"


def _print_front(front: Sequence[Candidate], objectives: tuple[str, ...], rest: str, limit: int = 20) -> None:
    shown = front[:limit]
    width = min(max((len(c.run_name) for c in shown), default=3), 60)
    latency = "latency_ratio" in objectives  # estimated beside measured milliseconds ("-": not measured)
    extra = f" {'ms estimated':>13} {'ms measured':>13}" if latency else ""
    print(f"  {'run':<{width}} {'run id':<8} {'episode':>7} " + " ".join(f"{n:>13}" for n in objectives) + extra)
    for c in shown:
        ms = f" {_ms(c.latency_ms):>13} {_ms(c.latency_ms_measured):>13}" if latency else ""
        print(
            f"  {c.run_name[:width]:<{width}} {c.run_id[:8]:<8} {c.episode:>7} "
            + " ".join(f"{c.objective(n):>13.4f}" for n in objectives)
            + ms
        )
    if len(front) > limit:
        print(f"  ... {len(front) - limit} more ({rest})")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------- export
@command(
    "export",
    "export a policy (Pareto front, one search run, or a local policy file) as amc, torch-pruning or nni files",
)
def _export_args(p: argparse.ArgumentParser) -> None:
    source = p.add_argument_group("where the policy comes from (--policy, or --experiment with --pareto / --run-id)")
    source.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="a local policy JSON (best_policy.json from `amc search --out`, or written by hand)",
    )
    source.add_argument("--experiment", help="MLflow experiment name")
    source.add_argument("--pareto", action="store_true", help="choose from the experiment's Pareto front")
    source.add_argument("--run-id", help="choose from this search run (its best episode unless told otherwise)")
    source.add_argument("--episode", type=int, help="with --run-id: export this episode")
    source.add_argument(
        "--max-flops-ratio",
        type=_flops_ratio,
        metavar="X",
        help="a filter on what the searches found, not a search budget: only policies whose FLOPs ratio (the kept "
        "fraction of the dense FLOPs, in (0, 1]) is at most X, whatever cost the search budgeted; the highest "
        "top-1 among them is chosen (default: no limit)",
    )
    source.add_argument("--min-top1", type=_top1, metavar="T", help="with --pareto: " + MIN_TOP1_HELP)
    source.add_argument(
        "--all",
        action="store_true",
        dest="every",
        help="with --pareto: every front policy within the budget, one directory each",
    )
    add_tracking_uri(source)
    p.add_argument(
        "--format",
        default="amc",
        help="amc (default), torch-pruning, nni, or a format registered in amc.service.export.EXPORT_FORMATS",
    )
    dense = p.add_argument_group("the dense model (torch-pruning reads its weights to record amc's exact channels)")
    dense.add_argument(
        "--checkpoint",
        type=Path,
        help="dense model file the policy was made for (default for a search run: the checkpoint it searched)",
    )
    dense.add_argument(
        "--data",
        help="data set `amc prune --data` would use, for the taylor criterion's gradient "
        "batch (default: the run's, else digits)",
    )
    dense.add_argument("--data-dir", help="directory of that data set (cifar10, imagefolder)")
    dense.add_argument(
        "--input-size", type=non_negative_int, default=0, help="input image side (0: the data set's default)"
    )
    dense.add_argument(
        "--seed", type=seed_int, default=0, help="`amc prune --seed`, for the taylor criterion (default: 0)"
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")


@_export_args.run
def _export(args: argparse.Namespace) -> int:
    from amc.data import DataConfig
    from amc.service.export import ExportRequest, export_policies

    data = DataConfig(args.data, args.data_dir, args.input_size) if args.data else None
    if data is None and (args.data_dir or args.input_size):
        raise ConfigError("--data-dir and --input-size describe a data set: pass --data NAME too")
    request = ExportRequest(
        args.out,
        experiment=args.experiment,
        pareto=args.pareto,
        run_id=args.run_id,
        episode=args.episode,
        max_flops_ratio=args.max_flops_ratio,
        every=args.every,
        min_top1=args.min_top1,
        format=args.format,
        tracking_uri=args.tracking_uri,
        policy=args.policy,
        checkpoint=args.checkpoint,
        data=data,
        seed=args.seed,
    )
    result = export_policies(request)
    for e in result.policies:
        print(f"{e.item.label} -> " + ", ".join(str(f) for f in e.files))
    print(f"manifest: {result.manifest}")
    if args.format == "amc":
        first = result.policies[0]
        dense = first.item.origin.get("checkpoint")
        dense = shlex.quote(str(dense)) if dense else "<dense model.pt>"
        policy = shlex.quote(str(first.files[0].resolve()))
        print(f"apply with: amc prune --checkpoint {dense} --policy {policy} --out <dir>")
    return 0


@command("ui", "start the MLflow UI on this project's store (bound to 127.0.0.1) and print its address")
def _ui_args(p: argparse.ArgumentParser) -> None:
    add_tracking_uri(p)
    p.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1 (default: 5000)")
    p.add_argument("--experiment", help="also print the addresses of this experiment's runs and its Pareto front")


@_ui_args.run
def _ui(args: argparse.Namespace) -> int:
    from amc.service.tracking import resolve_tracking_uri
    from amc.service.ui import check_port_free, check_store, has_pareto_front, serve, ui_command, ui_lines

    uri = resolve_tracking_uri(args.tracking_uri)
    check_store(uri)
    check_port_free(args.port)
    experiment_id, front, pareto_run = None, True, None
    if args.experiment:
        from amc.service.candidates import find_experiment, mlflow_client
        from amc.service.pareto import find_pareto_run

        client = mlflow_client(uri)
        experiment_id = find_experiment(client, args.experiment).experiment_id
        front = has_pareto_front(client, experiment_id)
        pareto_run = find_pareto_run(client, experiment_id) if front else None
    print(f"MLflow UI for {uri} (starting, about 20 s; Ctrl-C stops it):")
    for line in ui_lines(args.port, args.experiment, experiment_id, front, args.tracking_uri, pareto_run):
        print(line)
    sys.stdout.flush()
    return serve(ui_command(uri, args.port))
