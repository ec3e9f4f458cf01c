"""Episodes per second of a search with 1, 2 (... N) rollout workers on the same machine, same run.

Each configuration runs the same number of random-action episodes of the embedded default (ResNet-20
on digits); the clock starts once every worker has finished an episode (actor start-up excluded); 1 worker runs in-process with all the machine's threads, N workers
are Ray actors with (CPUs / N) threads each. Prints and writes JSON with ``eps_per_s`` per worker count
and ``speedup_2`` (and ``speedup_N``).

    .venv/bin/python experiments/bench/ray_scaling.py                 # 1 and 2 workers
    .venv/bin/python experiments/bench/ray_scaling.py --workers 1 2 4 8  # on a 16-core machine
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from agents.parallel import local_cpus
from agents.search import Search, SearchConfig, resolve_checkpoint, save_yaml

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits-resnet20-flops50.yaml"


def measure(config: SearchConfig, workers: int, episodes: int, root: Path) -> float:
    cfg = config.replace(
        agent="random",
        episodes=episodes,
        workers=workers,
        threads=max(1, local_cpus() // workers),
        checkpoint_every=10**6,
    )
    out = root / f"w{workers}"
    out.mkdir()
    save_yaml(cfg, out / "config.yaml")
    torch.set_num_threads(local_cpus() if workers == 1 else 1)
    search = Search(cfg, out, progress=False)
    marks: dict[int, float] = {}
    search.run(lambda record, stats: marks.setdefault(record.episode, time.perf_counter()))
    first, last = workers - 1, episodes - 1
    return (last - first) / (marks[last] - marks[first])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--episodes", type=int, default=80)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ray_scaling.json")
    args = parser.parse_args()
    import ray

    config = resolve_checkpoint(SearchConfig.from_yaml(CONFIG), progress=False)
    ray.init(address="local", num_cpus=max(args.workers), include_dashboard=False, log_to_driver=False)
    results: dict = {"cpus": local_cpus(), "episodes": args.episodes, "eps_per_s": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for workers in args.workers:
                eps = measure(config, workers, args.episodes, Path(tmp))
                results["eps_per_s"][str(workers)] = eps
                print(f"{workers} worker(s): {eps:.2f} episodes/s", flush=True)
    finally:
        ray.shutdown()
    base = results["eps_per_s"].get("1")
    for workers in args.workers:
        if base and workers > 1:
            results[f"speedup_{workers}"] = results["eps_per_s"][str(workers)] / base
    print(json.dumps({k: v for k, v in results.items() if k.startswith("speedup")}))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
