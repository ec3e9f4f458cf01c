"""AMC's compression mode: per-layer sparsity searched under a non-zero-parameter budget, against uniform and global
magnitude pruning, before and after fine-tuning.

For each dense ResNet-20 (``--dense-seeds``, the cached baselines of the embedded default) and budget
(``--targets``: fractions of the dense parameters left non-zero), three unstructured magnitude policies:

- ``uniform``: the same sparsity in every group's layers, the least that meets the budget;
- ``global``: one magnitude threshold over every prunable layer's weights (``torch.nn.utils.prune.
  global_unstructured``), removing as many weights as the uniform policy removes;
- ``searched``: the best policy of a ``--episodes``-episode DDPG search with ``env.granularity: unstructured`` and
  ``target_metric: params`` (``--search-seeds`` per dense model).

Each is measured on test without fine-tuning (BatchNorm re-estimated, as in the search) and after
``--finetune-epochs`` of fine-tuning that keeps the zeros (:func:`amc.engine.finetune_sparse`, best epoch on
search-val). Prints and writes JSON (``results/sparsity_search.json``).

    .venv/bin/python experiments/bench/sparsity_search.py
    .venv/bin/python experiments/bench/sparsity_search.py --dense-seeds 1 --targets 0.2 --episodes 20 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch
from front_quality import dense_config  # the cached dense models (this directory is on sys.path)
from torch.nn.utils import prune

from agents.search import run_search
from amc.cost import count_nonzero_params
from amc.engine import finetune_sparse
from amc.files import write_json_atomic
from amc.policy import load_policy
from amc.pruning import sparsify
from amc.train import evaluate, recalibrate_bn
from envs import ChannelPruningEnv

RESULTS = Path(__file__).parent / "results"


def _global(env: ChannelPruningEnv, removed: int) -> torch.nn.Module:
    """One magnitude threshold over every prunable layer's weights, ``removed`` weights zeroed."""
    model = copy.deepcopy(env.model)
    layers = [(model.get_submodule(m), "weight") for g in env.graph for m in g.modules]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=removed)
    for module, name in layers:
        prune.remove(module, name)
    return model


def _measure(model: torch.nn.Module, env: ChannelPruningEnv, ws_data, epochs: int, seed: int) -> dict:
    recalibrate_bn(model, env.calibration[0])
    before = evaluate(model, ws_data.loader("test", 256))
    report = finetune_sparse(
        model,
        ws_data.loader("train", 64, shuffle=True, seed=seed),
        epochs,
        0.01,
        seed,
        False,
        val_loader=ws_data.loader("val", 256),
    )
    return {
        "test_before": before,
        "test_after": evaluate(model, ws_data.loader("test", 256)),
        "val_after": report.best_top1,
        "nonzero_ratio": count_nonzero_params(model) / env.graph.dense_cost.params,
    }


def run_cell(seed: int, target: float, args: argparse.Namespace) -> list[dict]:
    from amc.engine import build_workspace

    base = dense_config("resnet20", seed, args.cache)
    env_config = base.env.replace(
        target_metric="params", target_ratio=target, granularity="unstructured", max_ratio=0.98
    )
    ws = build_workspace("resnet20", env_config.data, env_config.checkpoint)
    env = ChannelPruningEnv.from_workspace(ws, env_config, progress=False)
    uniform = env.to_policy(env.uniform_ratios())
    uniform_model = sparsify(env.model, env.graph, uniform.ratios, "unstructured")
    removed = env.graph.dense_cost.params - count_nonzero_params(uniform_model)
    models = {"uniform": uniform_model, "global": _global(env, removed)}
    for s in range(args.search_seeds):
        config = base.replace(env=env_config, episodes=args.episodes, seed=s, workers=0)
        with tempfile.TemporaryDirectory() as tmp:
            run_search(config, Path(tmp) / "s", track=False, progress=False)
            policy = load_policy(Path(tmp) / "s" / "best_policy.json")
        models[f"searched_s{s}"] = sparsify(env.model, env.graph, policy.ratios, "unstructured")
    rows = []
    for name, model in models.items():
        row = {"seed": seed, "target": target, "method": name.split("_s")[0], "search_seed": name}
        row.update(_measure(model, env, ws.data, args.finetune_epochs, seed))
        rows.append(row)
        print(
            f"seed {seed} params {target:.0%} {name:>12}: test {row['test_before']:.2%} -> {row['test_after']:.2%} "
            f"(non-zero {row['nonzero_ratio']:.3f})",
            flush=True,
        )
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for target in sorted({r["target"] for r in rows}):
        for method in ("uniform", "global", "searched"):
            mine = [r for r in rows if r["target"] == target and r["method"] == method]
            out.append(
                {
                    "target": target,
                    "method": method,
                    "test_before_mean": 100 * statistics.mean(r["test_before"] for r in mine),
                    "test_before_per_run": [round(100 * r["test_before"], 2) for r in mine],
                    "test_after_mean": 100 * statistics.mean(r["test_after"] for r in mine),
                    "test_after_per_run": [round(100 * r["test_after"], 2) for r in mine],
                    "nonzero_ratio_max": max(r["nonzero_ratio"] for r in mine),
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense-seeds", type=int, default=3)
    parser.add_argument("--search-seeds", type=int, default=2)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/amc-bench-baselines"))
    parser.add_argument("--out", type=Path, default=RESULTS / "sparsity_search.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [r for seed in range(args.dense_seeds) for target in args.targets for r in run_cell(seed, target, args)]
    result = {
        "model": "resnet20",
        "data": "digits",
        "granularity": "unstructured",
        "episodes": args.episodes,
        "finetune_epochs": args.finetune_epochs,
        "summary": summary(rows),
        "runs": rows,
    }
    write_json_atomic(args.out, result)
    for s in result["summary"]:
        print(
            f"params {s['target']:.0%} {s['method']:>9}: test {s['test_before_mean']:.2f} -> {s['test_after_mean']:.2f}"
            f" (max non-zero {s['nonzero_ratio_max']:.3f})"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
