"""A CIFAR-10-sized search on Ray workers: what each worker holds, how soon it plays, how fast, and the learner's ceiling.

CIFAR-10-sized data, in memory and on disk: the ``synthetic`` data set at 50,000 images of 3x32x32 (10,000 of them
search-val) in memory, and an image folder of the same size written once as PNG files (50,000 training images,
10,000 of them search-val; random pixels and labels: accuracy is meaningless, memory and time are not). The model
is an untrained ResNet-56 at 50% of its FLOPs. Three ways of getting the data to the rollout workers, each with 1
and 2 workers, measured in the same run:

- ``full`` (in memory): the whole workspace as the payload, every split included (what workers received before
  :func:`agents.parallel.worker_payload`);
- ``object_store`` (in memory): the worker payload, the search-val tensors through Ray's object store (the
  default);
- ``path`` (on disk): no data in the payload, each worker loads the search-val images from the image folder's path
  (``worker_data: path``).

Per mode and worker count: ``first_episode_s`` (the pool started to the first episode back: actor start-up, the
payload's transfer, the data's loading where the worker loads it, and one episode), ``eps_per_s`` (the episodes
after each worker's first, per second of wall time), ``worker_peak_mb`` (each worker's peak resident memory),
``payload_mb`` (pickled) and ``payload_has_train``. The learner: the DDPG learner's time per episode on this model
(``end_episode`` on the transitions of the episodes just played, the default DDPG settings, after warm-up) beside
one worker's episode time, and their ratio, ``learner_ceiling_workers``: the worker count past which the learner,
not the workers, limits a DDPG search.

    .venv/bin/python experiments/bench/scale.py                      # ~20 min on 2 cores
    .venv/bin/python experiments/bench/scale.py --eval-batches 2     # a quicker look: 1,000 search-val images
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.parallel import RolloutPool, build_env, local_cpus, worker_payload
from amc.files import write_json_atomic

RESULTS = Path(__file__).parent / "results"
MODES = ("full", "object_store", "path")


def write_image_folder(root: Path, train: int, test: int, seed: int = 0) -> Path:
    """Random 32x32 RGB PNG files in ``imagefolder``'s layout under ``root`` (10 classes, ``train`` and ``test``)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", test)):
        labels = rng.integers(0, 10, count)
        for label in range(10):
            (root / split / f"class{label}").mkdir(parents=True, exist_ok=True)
        for i, label in enumerate(labels):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / f"class{label}" / f"{i}.png")
    (root / "complete").write_text("")
    return root


def payload_for(mode: str, full: dict, env: Any) -> dict:
    if mode == "full":
        return {**full, "calibration": env.calibration}
    return worker_payload(full, env, mode)


def run_pool(payload: dict, workers: int, rounds: int) -> tuple[dict[str, Any], list[Any]]:
    """``rounds`` random episodes per worker on a fresh pool; timings, memory and the episodes' results."""
    from agents.base import RandomAgent
    from agents.ddpg import DDPGConfig

    agent, results = RandomAgent(0), []
    start = time.perf_counter()
    pool = RolloutPool(payload, workers, DDPGConfig(), threads=1)
    try:
        for episode in range(workers):
            pool.submit(agent.plan(episode))
        first = None
        next_episode = workers
        while len(results) < workers * rounds:
            results.append(pool.next_result())
            now = time.perf_counter()
            if first is None:
                first = now - start
            if len(results) == workers:
                steady = now  # every worker has played once: the steady-state clock starts
            if next_episode < workers * rounds:
                pool.submit(agent.plan(next_episode))
                next_episode += 1
        end = time.perf_counter()
        peaks = pool.peak_rss_mb()
    finally:
        pool.shutdown()
    measured = len(results) - workers
    return {
        "first_episode_s": first,
        "eps_per_s": measured / (end - steady) if measured else None,
        "episode_s": statistics.fmean(r.finished - r.started for r in results[workers:] or results),
        "worker_peak_mb": peaks,
    }, results


def learner_s_per_episode(env: Any, results: list[Any], repeats: int) -> float:
    """Seconds the default DDPG learner spends on one episode (past warm-up) of this model's transitions."""
    from agents.ddpg import AMCDDPG, DDPGConfig

    learner = AMCDDPG(env, DDPGConfig(warmup_episodes=0), seed=0)
    for r in results:  # a replay that holds real episodes (the first learned from count too)
        learner.store_episode(r.observations, r.actions, r.reward)
    times = []
    for i in range(repeats):
        r = results[i % len(results)]
        t = time.perf_counter()
        learner.end_episode(r.observations, r.actions, r.reward)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts")
    parser.add_argument("--rounds", type=int, default=3, help="episodes per worker (the first is not in eps_per_s)")
    parser.add_argument("--model", default="resnet56")
    parser.add_argument("--train", type=int, default=50_000, help="training images written (search-val included)")
    parser.add_argument("--val-size", type=int, default=10_000, help="search-val images")
    parser.add_argument("--eval-batches", type=int, default=0, help="evaluate on this many batches of 500 (0: all)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--learner-repeats", type=int, default=20)
    parser.add_argument("--data-dir", type=Path, default=None, help="where the data set goes (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()

    import ray

    from amc.data import DataConfig
    from amc.engine import build_workspace
    from envs import EnvConfig

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="amc-scale-") as tmp:
        root = args.data_dir or Path(tmp)
        if not (root / "complete").is_file():
            print(f"writing a CIFAR-10-sized image folder ({args.train} + 1000 PNG files) to {root}", flush=True)
            write_image_folder(root, args.train, 1000)
        in_memory = DataConfig("synthetic", num_samples=args.train, val_size=args.val_size, input_size=32)
        on_disk = DataConfig("imagefolder", root=str(root), val_size=args.val_size, input_size=32)
        fulls, envs = {}, {}
        for name, data in (("memory", in_memory), ("disk", on_disk)):
            env_config = EnvConfig(
                model=args.model, data=data, target_ratio=0.5, eval_batch_size=500, eval_batches=args.eval_batches
            )
            ws = build_workspace(args.model, data)
            fulls[name] = {"ws": ws, "env_config": env_config, "progress": False}
            envs[name] = build_env(fulls[name])
        env = envs["memory"]
        evaluated = len(env.split_tensors("val")[0])
        results: dict[str, Any] = {
            "model": args.model,
            "train_images": args.train,
            "val_size": args.val_size,
            "evaluated_images": evaluated,
            "cpus": local_cpus(),
            "rounds": args.rounds,
            "modes": {},
        }
        ray.init(address="local", num_cpus=max(local_cpus(), *args.workers), include_dashboard=False)
        played: list[Any] = []
        try:
            for mode in args.modes:
                where = "disk" if mode == "path" else "memory"
                payload = payload_for(mode, fulls[where], envs[where])
                entry = {
                    "data": fulls[where]["env_config"].data.name,
                    "payload_mb": len(pickle.dumps(payload)) / 2**20,
                    "payload_has_train": (payload["ws"].data is not None and payload["ws"].data.train is not None),
                    "by_workers": {},
                }
                for workers in args.workers:
                    measured, episodes = run_pool(payload, workers, args.rounds)
                    entry["by_workers"][str(workers)] = measured
                    played = played or episodes
                    print(
                        f"{mode}, {workers} worker(s): first episode after {measured['first_episode_s']:.1f} s, "
                        f"{measured['eps_per_s'] or 0:.3f} episodes/s, episode {measured['episode_s']:.1f} s, "
                        f"worker peak {[round(m) for m in measured['worker_peak_mb']]} MiB "
                        f"(payload {entry['payload_mb']:.0f} MiB)",
                        flush=True,
                    )
                results["modes"][mode] = entry
        finally:
            ray.shutdown()
        learner = learner_s_per_episode(env, played, args.learner_repeats)
    one = [m["by_workers"]["1"]["episode_s"] for m in results["modes"].values() if "1" in m["by_workers"]]
    episode_s = statistics.median(one) if one else statistics.fmean(r.finished - r.started for r in played)
    results.update(
        learner_s_per_episode=learner,
        episode_s=episode_s,
        learner_ceiling_workers=episode_s / learner,
        measured=time.strftime("%Y-%m-%d"),
    )
    first = {m: e["by_workers"] for m, e in results["modes"].items()}
    results["summary"] = {
        "eps_per_s": {m: {w: v["eps_per_s"] for w, v in b.items()} for m, b in first.items()},
        "first_episode_s": {m: {w: v["first_episode_s"] for w, v in b.items()} for m, b in first.items()},
        "worker_peak_mb": {m: {w: max(v["worker_peak_mb"]) for w, v in b.items()} for m, b in first.items()},
        "payload_has_train": {m: e["payload_has_train"] for m, e in results["modes"].items()},
    }
    print(
        f"learner {1000 * learner:.0f} ms/episode, one worker's episode {episode_s:.1f} s: "
        f"ceiling {results['learner_ceiling_workers']:.0f} workers"
    )
    print(json.dumps(results["summary"], indent=1))
    write_json_atomic(args.out, results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
