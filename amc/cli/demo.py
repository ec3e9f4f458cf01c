"""`make demo`: the main job on the embedded default (digits, ResNet-20, keep 50% of the FLOPs).

1. trains (or reuses the cached) dense baseline;
2. runs the AMC-style DDPG search (300 episodes, tracked in MLflow);
3. applies the uniform baseline policy and the searched policy to the dense model, fine-tunes both
   the same way, and prints a before/after table.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from amc.cli.options import add_tracking_uri, non_negative_int
from amc.cost import LatencyConfig
from amc.engine import FinetuneSchedule, Workspace, build_workspace, cost_report, prune_and_finetune, uniform_policy
from amc.policy import Policy, load_policy
from amc.train import evaluate

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "digits-resnet20-flops50.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m amc.cli.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=CONFIG, help="search config (default: the embedded default)")
    parser.add_argument(
        "--episodes", type=int, default=None, help="override the config's episodes: the search's budget"
    )
    parser.add_argument(
        "--finetune-epochs",
        type=non_negative_int,
        default=5,
        help="fine-tuning epochs of the uniform and the searched policy, each (default: 5)",
    )
    add_tracking_uri(parser)
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: runs/demo/<time>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from agents.search import SearchConfig, run_search

    config = SearchConfig.from_yaml(args.config)
    if args.episodes:
        config = config.replace(episodes=args.episodes)
    out = args.out or Path("runs") / "demo" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    print(
        f"[1/3] search: {config.agent}, {config.episodes} episodes, {config.env.target_metric} <= {config.env.target_ratio:g} -> {out}"
    )
    result = run_search(config, out / "search", tracking_uri=args.tracking_uri)
    searched = load_policy(out / "search" / "best_policy.json")
    stored = SearchConfig.from_yaml(out / "search" / "config.yaml")
    ws = build_workspace(stored.env.model, stored.env.data, stored.env.checkpoint)
    uniform = uniform_policy(ws.graph, ws.identity, result.uniform["ratio"], searched.criterion)
    print(f"[2/3] fine-tune the uniform and the searched policy ({args.finetune_epochs} epochs each)")
    rows = [
        _row(ws, "uniform", uniform, args.finetune_epochs, out),
        _row(ws, "searched (DDPG)", searched, args.finetune_epochs, out),
    ]
    print("[3/3] results (test split)\n")
    _table(ws, rows, result)
    print(f"\nsearch outputs: {out / 'search'}; pruned models: {out}/<name>/model.pt")
    print(
        "browse the search in MLflow: .venv/bin/amc ui   (the Pareto front: .venv/bin/amc pareto --experiment "
        + stored.experiment
        + ")"
    )
    return 0


def _row(ws: Workspace, name: str, policy: Policy, epochs: int, out: Path) -> dict:
    from amc.checkpoint import save_model

    result, acc = prune_and_finetune(ws, policy, FinetuneSchedule(epochs=epochs))
    report = cost_report(ws, result.model, LatencyConfig())
    slug = name.split()[0]
    save_model(out / slug / "model.pt", result.model, ws.spec, policy, result.history)
    return {"name": name, **acc, **report}


def _table(ws: Workspace, rows: list[dict], result) -> None:
    dense_top1 = evaluate(ws.model, ws.data.loader("test", 256))
    header = f"{'':<17}{'no fine-tune':>13}{'fine-tuned':>12}{'FLOPs':>9}{'params':>9}{'latency ms':>12}"
    print(header)
    print(f"{'dense':<17}{dense_top1:>13.2%}{'':>12}{'100%':>9}{'100%':>9}{rows[0]['dense_latency_ms']:>12.3f}")
    for r in rows:
        print(
            f"{r['name']:<17}{r['top1_before_finetune']:>13.2%}{r['top1']:>12.2%}{r['flops_ratio']:>9.1%}"
            f"{r['params_ratio']:>9.1%}{r['latency_ms']:>12.3f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
