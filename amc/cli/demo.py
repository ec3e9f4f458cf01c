"""`make demo`: why the search matters, on the embedded default (digits, ResNet-20, keep 20% of the FLOPs).

1. trains (or reuses the cached) dense baseline, and says so;
2. searches per-group ratios with the AMC-style DDPG agent (300 episodes) and runs the two baselines a user
   would otherwise try, in the same harness: uniform (one ratio everywhere) and global (Torch-Pruning's one
   importance threshold); every search is an MLflow run;
3. applies each policy to the dense model, fine-tunes each the same way, measures latency (median and
   spread over repeated blocked runs), prints a before/after table and writes it to ``demo.json``.

At 20% of the FLOPs uniform pruning falls far behind before fine-tuning; at 50% (``--target-ratio 0.5``)
the embedded problem is nearly saturated and every method ends close to the dense model.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
from pathlib import Path

from amc.cli.options import add_tracking_uri, non_negative_int

CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "digits-resnet20-flops50.yaml"
METHODS = (("uniform", "uniform"), ("global", "global (Torch-Pruning)"), ("ddpg", "searched (DDPG)"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amc.cli.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=CONFIG, help="search config (default: the embedded default)")
    parser.add_argument(
        "--target-ratio",
        type=float,
        default=0.2,
        help="fraction of the dense FLOPs kept, in (0, 1] (default: 0.2, where uniform pruning falls behind)",
    )
    parser.add_argument(
        "--episodes", type=non_negative_int, default=None, help="override the config's episodes: the search's budget"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="dense model.pt to search (default: the config's, else the cached baseline, trained on first use)",
    )
    parser.add_argument(
        "--finetune-epochs",
        type=non_negative_int,
        default=3,
        help="fine-tuning epochs of every policy, each (default: 3)",
    )
    add_tracking_uri(parser)
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: runs/demo/<time>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the demo; bad input exits 2 with one line (nothing is written)."""
    from amc.errors import AmcError
    from amc.threads import choose_threads

    args = build_parser().parse_args(argv)
    choose_threads()  # on a busy machine, fewer torch threads (amc.threads); its note is for `amc -v` only
    try:
        return _demo(args)
    except AmcError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    started, cpu_started = time.monotonic(), time.process_time()

    from agents.search import SearchConfig, resolve_checkpoint, run_search
    from amc.engine import build_workspace
    from amc.files import write_json_atomic
    from amc.policy import load_policy

    config = SearchConfig.from_yaml(args.config)
    # its own experiment, so that `amc pareto` on the README's searches does not mix the demo's in
    config = config.replace(env=config.env.replace(target_ratio=args.target_ratio), experiment=demo_experiment(config))
    if args.episodes:
        config = config.replace(episodes=args.episodes)
    if args.checkpoint is not None:
        config = config.replace(env=config.env.replace(checkpoint=str(args.checkpoint)))
    out = args.out or Path("runs") / "demo" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = f"{config.env.target_metric} <= {config.env.target_ratio:g}"
    print(f"[1/4] dense baseline: {config.env.checkpoint or 'the cached one (trained now if missing)'}", flush=True)
    config = resolve_checkpoint(config, None, progress=True)
    ws = build_workspace(config.env.model, config.env.data, config.env.checkpoint)

    print(f"[2/4] searches at {target}: uniform, global, then DDPG ({config.episodes} episodes) -> {out}", flush=True)
    policies, searches = {}, {}
    for agent, _ in METHODS:
        result = run_search(config.replace(agent=agent), out / agent, tracking_uri=args.tracking_uri)
        policies[agent], searches[agent] = load_policy(out / agent / "best_policy.json"), result

    print(f"[3/4] fine-tune every policy the same way ({args.finetune_epochs} epochs each)", flush=True)
    rows = [_row(ws, label, policies[agent], args.finetune_epochs, out / agent) for agent, label in METHODS]
    dense = _dense_row(ws)
    print("[4/4] results (test split; latency: median ± half the IQR over blocked runs, batch 1, 1 thread)\n")
    _table(dense, rows)
    caveat = _print_caveat(dense, rows, started, cpu_started)
    summary = {
        "target": {"metric": config.env.target_metric, "ratio": config.env.target_ratio},
        "episodes": config.episodes,
        "finetune_epochs": args.finetune_epochs,
        "dense": dense,
        "methods": {agent: row for (agent, _), row in zip(METHODS, rows)},
        "mlflow_run_ids": {agent: searches[agent].run_id for agent, _ in METHODS},
        "latency_caveat": caveat,
        "seconds": time.monotonic() - started,
    }
    write_json_atomic(out / "demo.json", summary)
    print(f"\nwritten: {out / 'demo.json'}; search outputs and pruned models: {out}/<method>/")
    for line in next_commands(args.tracking_uri, config.experiment):
        print(line)
    print(f"demo finished in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


def demo_experiment(config) -> str:
    """The demo's MLflow experiment: ``demo-<the config's experiment>``, apart from the searches users run."""
    return f"demo-{config.experiment}"


def next_commands(tracking_uri: str | None, experiment: str) -> list[str]:
    """The demo's last lines: the commands that show its searches, runnable as printed from any directory."""
    from amc.service.tracking import resolve_tracking_uri

    venv_amc = Path(sys.executable).parent / "amc"
    amc = shlex.quote(str(venv_amc)) if venv_amc.is_file() else "amc"
    store = f"--tracking-uri {shlex.quote(resolve_tracking_uri(tracking_uri))}"  # absolute: resolve_tracking_uri
    where = f"{store} --experiment {shlex.quote(experiment)}"
    return [
        f"browse the searches in MLflow: {amc} ui {where}",
        f"their Pareto front: {amc} pareto {where}",
    ]


def latency_caveat(dense: dict, rows: list[dict], load: float, cores: int) -> str | None:
    """A footnote when the latency column cannot be trusted: a 1-min load average above the core count, or a pruned
    model whose spread (median ± half the IQR) overlaps the dense model's; None when neither."""
    reasons = []
    if load > cores:
        reasons.append(f"other work keeps a 1-min load average of {load:.1f} on {cores} cores")

    def span(r: dict) -> tuple[float, float]:
        return r["latency_ms"] - r["latency_iqr_ms"] / 2, r["latency_ms"] + r["latency_iqr_ms"] / 2

    low, high = span(dense)
    overlap = [r["name"] for r in rows if span(r)[0] <= high and span(r)[1] >= low]
    if overlap:
        reasons.append(f"the spread of {', '.join(overlap)} overlaps the dense model's")
    if not reasons:
        return None
    return f"latency is not reliable here: {'; '.join(reasons)}. Measure again on an idle machine."


def others_load(started: float, cpu_started: float) -> float:
    """The 1-min load average less the demo's own share of it: the CPU time this process used since ``started``
    (wall clock) over the wall time. The demo keeps about one to two cores busy itself, which alone put an idle
    2-core machine's load average above 2 by the end of the run."""
    wall = max(time.monotonic() - started, 1e-9)
    own = (time.process_time() - cpu_started) / wall
    return max(os.getloadavg()[0] - own, 0.0)


def _print_caveat(dense: dict, rows: list[dict], started: float, cpu_started: float) -> str | None:
    """Prints (and returns) the footnote of :func:`latency_caveat` under the table, for the load other work puts on
    this machine now (:func:`others_load`)."""
    caveat = latency_caveat(dense, rows, others_load(started, cpu_started), os.cpu_count() or 1)
    if caveat:
        print(f"* {caveat}")
    return caveat


def _latency(model, ws) -> dict[str, float]:
    from amc.cost import LatencyConfig, latency_stats

    stats = latency_stats(model, ws.spec.input_shape, LatencyConfig(min_run_time=0.5))
    return {"latency_ms": stats.median_ms, "latency_iqr_ms": stats.iqr_ms, "latency_blocks": stats.blocks}


def _dense_row(ws) -> dict:
    from amc.train import evaluate

    return {"name": "dense", "top1": evaluate(ws.model, ws.data.loader("test", 256)), **_latency(ws.model, ws)}


def _row(ws, name: str, policy, epochs: int, out: Path) -> dict:
    from amc.checkpoint import save_model
    from amc.engine import FinetuneSchedule, cost_report, prune_and_finetune

    result, acc = prune_and_finetune(ws, policy, FinetuneSchedule(epochs=epochs), label=f"fine-tune {name}")
    report = cost_report(ws, result.model, None)
    save_model(out / "model.pt", result.model, ws.spec, policy, result.history)
    return {"name": name, **acc, **report, **_latency(result.model, ws)}


def _latency_text(row: dict) -> str:
    return f"{row['latency_ms']:.3f} ± {row['latency_iqr_ms'] / 2:.3f}"


def _table(dense: dict, rows: list[dict]) -> None:
    print(f"{'':<24}{'no fine-tune':>13}{'fine-tuned':>12}{'FLOPs':>8}{'params':>8}{'latency ms':>18}")
    print(f"{'dense':<24}{dense['top1']:>13.2%}{'':>12}{'100%':>8}{'100%':>8}{_latency_text(dense):>18}")
    for r in rows:
        print(
            f"{r['name']:<24}{r['top1_before_finetune']:>13.2%}{r['top1']:>12.2%}{r['flops_ratio']:>8.1%}"
            f"{r['params_ratio']:>8.1%}{_latency_text(r):>18}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
