"""Warm start: the episodes a search started from another one (``init_from``) saves against a cold start.

For each dense model (``--dense-seeds``) and search seed (``--search-seeds``), all DDPG, ``--episodes`` E each:

- ``cold``: a search at ``--target`` T from scratch;
- for each ``--from-targets`` S: a source search at S on the same dense model, then ``target_S``: a search at T
  started from it (same evaluation: its episodes that meet T are relabelled into the replay);
- ``retrained``: a search at T started from the cold search of the next dense seed (another dense model of the
  same architecture, trained from another seed: only the networks and the fitted best policies carry over).

Reported per scenario: the best-so-far search-val top-1 after 10 / 30 / 100 episodes (``val_at``), and
``episodes_to_cold_at``: per run, the episodes a search took to reach the cold search's best after 30 / 100
episodes (None where it did not within E); the episodes saved at N are N minus that. The sources' own episodes
are not counted (they were spent already, by the search being reused). Prints and writes JSON.

    .venv/bin/python experiments/bench/warm_start.py                              # resnet20, 3 x 2 seeds, E=100
    .venv/bin/python experiments/bench/warm_start.py --episodes 20 --dense-seeds 2 --search-seeds 1 --out /tmp/w.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from front_quality import MODELS, dense_config  # the same cached dense models (this directory is on sys.path)

from agents.search import SearchConfig, run_search
from amc.files import write_json_atomic

RESULTS = Path(__file__).parent / "results"
CHECKPOINTS = (10, 30, 100, 300)


def _search(config: SearchConfig, out: Path) -> list[float]:
    """Runs one search into ``out``; returns its best-so-far search-val top-1 after each episode."""
    run_search(config, out, track=False, progress=False)
    best, curve = 0.0, []
    for record in json.loads((out / "search.json").read_text())["episodes"]:
        best = max(best, record["top1"])
        curve.append(best)
    return curve


def run_pair(job: tuple) -> list[dict]:
    """Every scenario for one dense seed and one search seed (sources first, in one process and thread)."""
    model, dense, seed, target, sources, episodes, dense_seeds, cache = job
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)

        def search(name: str, dense_seed: int, ratio: float, init_from: Path | None = None) -> list[float]:
            config = dense_config(model, dense_seed, cache)
            config = config.replace(seed=seed, episodes=episodes, env=config.env.replace(target_ratio=ratio))
            if init_from is not None:
                config = config.replace(init_from=str(init_from))
            started = time.perf_counter()
            curve = _search(config, root / name)
            rows.append(
                {
                    "model": model,
                    "dense_seed": dense,
                    "search_seed": seed,
                    "scenario": name,
                    "curve": curve,
                    "seconds": time.perf_counter() - started,
                }
            )
            return curve

        search("cold", dense, target)
        for source in sources:
            search(f"source_{source:g}", dense, source)
            search(f"target_{source:g}", dense, target, root / f"source_{source:g}")
        other = (dense + 1) % dense_seeds
        if other != dense:
            search("cold_other_dense", other, target)
            search("retrained", dense, target, root / "cold_other_dense")
    return [r for r in rows if not r["scenario"].startswith(("source_", "cold_other"))]


def episodes_to(curve: list[float], level: float) -> int | None:
    """Episodes until the best-so-far reaches ``level`` (None: never)."""
    return next((i + 1 for i, v in enumerate(curve) if v >= level - 1e-12), None)


def summarise(rows: list[dict], episodes: int) -> dict:
    """Per model and scenario: ``val_at`` (mean best-so-far after N episodes) and ``episodes_to_cold_at`` (per run,
    the episodes until its best-so-far reached the cold search's best after N episodes; None: not within
    ``episodes``), with their medians (a run that did not get there counts as ``episodes + 1``)."""
    cold = {(r["model"], r["dense_seed"], r["search_seed"]): r["curve"] for r in rows if r["scenario"] == "cold"}
    grouped: dict = {}
    for row in rows:
        grouped.setdefault(row["model"], {}).setdefault(row["scenario"], []).append(row)
    at = [n for n in CHECKPOINTS if n <= episodes]
    summary: dict = {}
    for model, scenarios in grouped.items():
        for name, runs in scenarios.items():
            reached = {
                str(n): [episodes_to(r["curve"], cold[(model, r["dense_seed"], r["search_seed"])][n - 1]) for r in runs]
                for n in at
            }
            summary.setdefault(model, {})[name] = {
                "runs": len(runs),
                "val_at": {str(n): statistics.fmean(r["curve"][n - 1] for r in runs) for n in at},
                "val_at_per_run": {str(n): [r["curve"][n - 1] for r in runs] for n in at},
                "episodes_to_cold_at": reached,
                "median_episodes_to_cold_at": {
                    n: statistics.median(v if v is not None else episodes + 1 for v in values)
                    for n, values in reached.items()
                },
                "seconds": statistics.fmean(r["seconds"] for r in runs),
            }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20"], choices=list(MODELS))
    parser.add_argument("--target", type=float, default=0.2, help="the budget every compared search meets")
    parser.add_argument("--from-targets", type=float, nargs="*", default=[0.5, 0.3], help="the sources' budgets")
    parser.add_argument("--dense-seeds", type=int, default=3, help="dense models per model (seeds 0..N-1)")
    parser.add_argument("--search-seeds", type=int, default=2, help="search seeds per dense model (0..N-1)")
    parser.add_argument("--episodes", type=int, default=100, help="episodes of every search (sources included)")
    parser.add_argument("--jobs", type=int, default=2, help="seed pairs side by side, one process and thread each")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "amc-bench-baselines")
    parser.add_argument("--out", type=Path, default=RESULTS / "warm_start.json")
    args = parser.parse_args()
    for model in args.models:
        for seed in range(args.dense_seeds):
            dense_config(model, seed, args.cache)
    jobs = [
        (model, dense, seed, args.target, args.from_targets, args.episodes, args.dense_seeds, args.cache)
        for model in args.models
        for dense in range(args.dense_seeds)
        for seed in range(args.search_seeds)
    ]
    rows: list[dict] = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for pair in pool.map(run_pair, jobs):
            rows += pair
            cold = next(r for r in pair if r["scenario"] == "cold")["curve"]
            for row in pair:
                reach = episodes_to(row["curve"], cold[-1])
                at = "  ".join(f"@{n} {100 * row['curve'][n - 1]:.1f}" for n in CHECKPOINTS if n <= args.episodes)
                print(
                    f"{row['model']} dense {row['dense_seed']} seed {row['search_seed']} {row['scenario']:>11}: {at}  "
                    f"cold's final best after {reach if reach is not None else '-'} episodes ({row['seconds']:.0f} s)",
                    flush=True,
                )
    summary = summarise(rows, args.episodes)
    for model, scenarios in summary.items():
        for name, entry in scenarios.items():
            at = "  ".join(f"@{n} {100 * v:.1f}" for n, v in entry["val_at"].items())
            reach = "  ".join(
                f"@{n} in {sum(v is not None for v in values)}/{entry['runs']} runs, median "
                f"{entry['median_episodes_to_cold_at'][n]:g} episodes"
                for n, values in entry["episodes_to_cold_at"].items()
            )
            print(f"{model} {name:>11}: {at}  reached cold's best {reach}")
    settings = {k: getattr(args, k) for k in ("target", "from_targets", "dense_seeds", "search_seeds", "episodes")}
    write_json_atomic(args.out, {**settings, "models": summary, "runs": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
