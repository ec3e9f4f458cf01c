"""Episodes per second of a search with 1, 2 (... N) Ray rollout workers on the same machine, same run.

Two phases of the embedded default (ResNet-20 on digits), each run with every worker count:

- random (the warm-up phase): random-action episodes; the clock starts once every worker has finished an
  episode (actor start-up excluded). ``eps_per_s`` and ``speedup_N`` (N workers vs 1).
- DDPG with the learner in the loop: a DDPG search whose learner trains after every episode; measured
  from after warm-up, once the plans made after training started are running (the on-episode hook's
  timestamps). ``ddpg.eps_per_s`` and ``ddpg_speedup_N``, plus utilisation: the fraction of the measured
  wall time each worker was playing an episode (timed inside the worker), and the learner's time per
  episode (learning from it, in the search process). Run with the default staleness bound (workers - 1)
  and, for the largest worker count, a larger bound (default 2 x workers: ``ddpg_stale``) to show how
  queueing plans ahead keeps workers busy while the learner trains.

N workers are Ray actors with (CPUs / N) torch threads each (``--threads``: a fixed number); the search
process (the learner) uses one thread; 0 in ``--workers`` adds the in-process search (all threads) as a
reference. Prints and writes JSON. On a loaded machine, several torch threads per process can run far
slower than one (OpenMP threads wait on each other): measure on a quiet machine, or pass ``--threads 1``.

    .venv/bin/python experiments/bench/ray_scaling.py                    # 1 and 2 workers
    .venv/bin/python experiments/bench/ray_scaling.py --workers 1 2 4 8  # on a 16-core machine
    .venv/bin/python experiments/bench/ray_scaling.py --quick            # a short check (writes *_quick.json)
    .venv/bin/python experiments/bench/ray_scaling.py --payload-memory   # only the payload section (below)
    .venv/bin/python experiments/bench/ray_scaling.py --learner-only     # only the learner section (below), ~2 min

``--payload-memory`` measures what a worker holds on a CIFAR-10-sized data set instead (``synthetic``, 50,000
3x32x32 images of which 10,000 search-val, an untrained ResNet-20: accuracy is meaningless, memory is not):
2 workers play 2 random episodes with the whole workspace as payload (``full``, what workers got before) and
with :func:`agents.parallel.worker_payload` (``slim``), and the worker payload of 64 images (``tiny``: what a worker
holds besides the data); ``payload_mb`` (pickled) and ``worker_peak_mb`` (each worker's peak resident memory) go
into the JSON's ``payload_memory``, the other sections left as they are.

``--learner-only`` measures the learner alone, in this process with one torch thread (a worker's): for each network
shape it plays the warm-up and ``--learner-episodes`` learning episodes of the default search in-process to fill the
replay with real transitions, then learns from the learning episodes again from the same saved agent under each
setting, the settings alternating over ``--learner-rounds`` rounds: ``sb3`` (the gradient step as SB3's modules
compute it, :meth:`agents.ddpg.AMCDDPG._sb3_gradient_step`, with torch's default Adam: the learner before it was made
cheaper), ``default`` (the default agent: AMC's schedule, one step per transition), ``hidden_128`` (the same with
``ddpg.hidden: [128, 128]`` instead of AMC's 300, 300), ``default_uK`` (``ddpg.updates_per_episode``
K, for each K of ``--learner-steps``) and ``default_u1_x_groups`` (one step per episode of AMC's samples per
episode: the batch times the groups). Per setting, ``learner_ms_per_episode`` is ``end_episode``'s time per learning
episode broken down (``store``: into the replay; ``sample``; ``critic_forward_backward`` / ``critic_adam``;
``actor_forward_backward`` / ``actor_adam``; ``polyak``; ``other``) plus ``publish`` (``get_actor_state``, the
weights an ``actor`` plan ships; not needed by the default's proposals), and ``learner_ceiling_workers`` is
``episode_ms`` (one worker's episode, timed between the rounds) over the learner's time: the worker count at which
the learner becomes the limit. ``plan_ms`` (the critic-ranked proposals of a learning episode, also made in the
search process, for that network shape) and ``search_process_ceiling_workers`` (episode over learner plus plan) show
the other serial cost. Goes into the JSON's ``learner`` section and the top-level ``learner_ms_per_episode`` and
``learner_ceiling_workers`` (per setting) and ``episode_ms``, the other sections left as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from agents.parallel import local_cpus
from agents.search import Search, SearchConfig, resolve_checkpoint, save_yaml
from amc.files import write_json_atomic

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "digits-resnet20-flops50.yaml"
RESULTS = Path(__file__).parent / "results"


def _run(config: SearchConfig, out: Path) -> tuple[Search, dict[int, float], dict[int, float]]:
    """Runs ``config``; the search, the wall-clock time each episode was learned from and the learner's time on it."""
    out.mkdir(parents=True)
    save_yaml(config, out / "config.yaml")
    torch.set_num_threads(local_cpus() if config.workers == 0 else 1)
    search = Search(config, out, progress=False)
    marks: dict[int, float] = {}
    learn: dict[int, float] = {}
    end_episode = search.agent.end_episode

    def timed_end_episode(*args: Any) -> dict[str, float]:
        started = time.perf_counter()
        stats = end_episode(*args)
        learn[len(learn)] = time.perf_counter() - started  # called once per episode, in episode order
        return stats

    search.agent.end_episode = timed_end_episode  # type: ignore[method-assign]
    search.run(lambda record, stats: marks.setdefault(record.episode, time.time()))
    return search, marks, learn


THREADS = 0
"""torch threads per worker (0: CPUs / workers); set from ``--threads``."""


def _threads(workers: int) -> int:
    return THREADS or max(1, local_cpus() // max(1, workers))


def random_phase(config: SearchConfig, workers: int, episodes: int, root: Path) -> float:
    """Episodes/s of random-action episodes, from the episode by which every worker has finished one."""
    cfg = config.replace(agent="random", episodes=episodes, workers=workers, threads=_threads(workers))
    _, marks, _ = _run(cfg, root / f"random-w{workers}")
    first, last = max(1, workers) - 1, episodes - 1
    return (last - first) / (marks[last] - marks[first])


def busy_fraction(timeline: list[tuple[int, int, float, float]], workers: int, t0: float, t1: float) -> list[float]:
    """Per worker, the fraction of [t0, t1] it spent playing episodes."""
    busy = [0.0] * max(1, workers)
    for worker, _, started, finished in timeline:
        busy[worker] += max(0.0, min(finished, t1) - max(started, t0))
    return [b / (t1 - t0) for b in busy]


def ddpg_phase(
    config: SearchConfig, workers: int, warmup: int, episodes: int, root: Path, bound: int | str = "auto"
) -> dict[str, Any]:
    """Episodes/s and utilisation of a DDPG search after warm-up, the learner training after every episode."""
    cfg = config.replace(
        agent="ddpg",
        episodes=warmup + episodes,
        workers=workers,
        threads=_threads(workers),
        max_staleness=bound,
        ddpg=dataclasses.replace(config.ddpg, warmup_episodes=warmup),
    )
    search, marks, learn = _run(cfg, root / f"ddpg-w{workers}-b{bound}")
    # from the episode by which plans made after training started fill every worker
    first, last = warmup + max(search.max_staleness, workers, 1), cfg.episodes - 1
    t0, t1 = marks[first], marks[last]
    learner = [learn[e] for e in range(first + 1, last + 1)]
    stale = [r.episode - r.planned_after for r in search.state.records if r.planned_after is not None]
    return {
        "workers": workers,
        "bound": search.max_staleness,
        "eps_per_s": (last - first) / (t1 - t0),
        "measured_episodes": last - first,
        "workers_busy": busy_fraction(search.pool.timeline, workers, t0, t1),
        "learner_s_per_episode": statistics.fmean(learner),
        "learner_busy": sum(learner) / (t1 - t0),
        "staleness_mean": statistics.fmean(stale),
    }


def _print_ddpg(label: str, r: dict[str, Any]) -> None:
    busy = ", ".join(f"{b:.0%}" for b in r["workers_busy"])
    print(
        f"ddpg {label}: {r['eps_per_s']:.2f} episodes/s, workers busy {busy}, learner "
        f"{1000 * r['learner_s_per_episode']:.0f} ms/episode ({r['learner_busy']:.0%} of the time), "
        f"staleness bound {r['bound']}",
        flush=True,
    )


def payload_memory(workers: int, samples: int, val_size: int) -> dict[str, Any]:
    """Pickled payload size and each worker's peak memory with the full workspace and with the worker payload."""
    import pickle

    from agents.base import RandomAgent
    from agents.ddpg import DDPGConfig
    from agents.parallel import RolloutPool, build_env, worker_payload
    from amc.data import DataConfig
    from amc.engine import build_workspace
    from envs import EnvConfig

    def payloads(samples: int, val_size: int) -> tuple[dict, dict]:
        data = DataConfig("synthetic", num_samples=samples, val_size=val_size, input_size=32)
        env_config = EnvConfig(model="resnet20", data=data, target_ratio=0.5)
        full = {"ws": build_workspace("resnet20", data), "env_config": env_config, "progress": False}
        return full, worker_payload(full, build_env(full))

    full, slim = payloads(samples, val_size)
    result: dict[str, Any] = {"samples": samples, "val_size": val_size, "workers": workers}
    # tiny: 64 images in all, the same model and code: what a worker holds besides the data
    for name, payload in (("full", full), ("slim", slim), ("tiny", payloads(64, 16)[1])):
        pool = RolloutPool(payload, workers, DDPGConfig(), threads=1)
        try:
            for episode in range(workers):
                pool.submit(RandomAgent(0).plan(episode))
            for _ in range(workers):
                pool.next_result()
            peaks = pool.peak_rss_mb()
        finally:
            pool.shutdown()
        result[name] = {"payload_mb": len(pickle.dumps(payload)) / 2**20, "worker_peak_mb": peaks}
        print(f"{name} payload: {result[name]['payload_mb']:.0f} MiB pickled, worker peak {peaks} MiB", flush=True)
    result["payload_has_train"] = {"full": True, "slim": False}
    return result


LEARNER_PARTS = (
    "store",
    "sample",
    "critic_forward_backward",
    "critic_adam",
    "actor_forward_backward",
    "actor_adam",
    "polyak",
)


class _StepClock:
    """Times the parts of ``end_episode`` by wrapping what a gradient step calls (both steps call the same things).

    The forward and backward passes are the time between the wrapped calls: from the sample to the critic's Adam
    step (the critic's), and from there to the actor's Adam step (the actor's forward and backward through the
    critics).
    """

    def __init__(self, impl: Any, reference: bool) -> None:
        import stable_baselines3.common.utils as sb3_utils

        import agents.ddpg as ddpg

        self.parts = dict.fromkeys(LEARNER_PARTS, 0.0)
        self._mark = time.perf_counter()
        buffer, model = impl.replay_buffer, impl.model
        impl.store_episode = self._timed(impl.store_episode, "store")
        buffer.sample = self._timed(buffer.sample, "sample")
        model.critic.optimizer.step = self._timed(model.critic.optimizer.step, "critic_adam", "critic_forward_backward")
        model.actor.optimizer.step = self._timed(model.actor.optimizer.step, "actor_adam", "actor_forward_backward")
        self._module, self._name = (sb3_utils, "polyak_update") if reference else (ddpg, "fused_polyak")
        self._original = getattr(self._module, self._name)
        setattr(self._module, self._name, self._timed(self._original, "polyak"))

    def _timed(self, fn: Any, part: str, since_mark: str | None = None) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            if since_mark is not None:
                self.parts[since_mark] += started - self._mark
            result = fn(*args, **kwargs)
            self._mark = time.perf_counter()
            self.parts[part] += self._mark - started
            return result

        return timed

    def close(self) -> None:
        setattr(self._module, self._name, self._original)


OTHER_SECTIONS = ("payload_memory", "learner", "learner_ms_per_episode", "episode_ms", "learner_ceiling_workers")
"""The JSON keys that ``--payload-memory`` and ``--learner-only`` write; a run of the Ray phases keeps them."""
LEARNER_HIDDEN_SMALL = (128, 128)
"""Smaller hidden widths than the default's (AMC's 300, 300): a cheaper learner, timed beside the default."""


def _learner_setting(saved: Path, reference: bool, steps: int, batch: int) -> Any:
    """The agent saved in ``saved`` with ``steps`` per episode (0: AMC's schedule) of ``batch`` samples; with
    ``reference`` its gradient step as SB3's modules compute it, with torch's default Adam."""
    from agents.ddpg import AMCDDPG

    impl = AMCDDPG.load(saved)
    impl.config = dataclasses.replace(impl.config, updates_per_episode=steps, batch_size=batch)
    if reference:
        impl._gradient_step = impl._sb3_gradient_step  # type: ignore[method-assign]
        for optimizer in (impl.model.actor.optimizer, impl.model.critic.optimizer):
            for group in optimizer.param_groups:
                group["fused"] = None
    return impl


def _time_learner(saved: Path, reference: bool, steps: int, batch: int, episodes: list[Any]) -> dict[str, float]:
    """Milliseconds per learning episode of ``end_episode`` (and its parts) and ``get_actor_state`` under a setting."""
    impl = _learner_setting(saved, reference, steps, batch)
    clock = _StepClock(impl, reference=reference)
    total = publish = 0.0
    try:
        for result in episodes:
            started = time.perf_counter()
            impl.end_episode(result.observations, result.actions, result.reward)
            middle = time.perf_counter()
            impl.get_actor_state()
            publish += time.perf_counter() - middle
            total += middle - started
    finally:
        clock.close()
    parts = {**clock.parts, "other": total - sum(clock.parts.values()), "publish": publish}
    per_episode = {k: 1000 * v / len(episodes) for k, v in parts.items()}
    return {"total": 1000 * total / len(episodes), **per_episode}


def _fill_replay(config: SearchConfig, episodes: int) -> tuple[Any, Any, list[Any], list[float], list[float]]:
    """Plays the warm-up and ``episodes`` learning episodes in-process; the agent, the runner, the learning episodes'
    results, the episodes' times and the learning episodes' planning times (seconds)."""
    from agents.base import create_agent
    from agents.parallel import build_env
    from agents.rollout import EpisodeRunner
    from amc.engine import build_workspace

    ws = build_workspace(config.env.model, config.env.data, config.env.checkpoint)
    env = build_env({"ws": ws, "env_config": config.env, "progress": False})
    agent = create_agent("ddpg", env, config.ddpg, config.seed)
    runner = EpisodeRunner(env, config.ddpg)
    learning, episode_s, plan_s = [], [], []
    for episode in range(config.ddpg.warmup_episodes + episodes):
        started = time.perf_counter()
        plan = agent.plan(episode)
        planned = time.perf_counter()
        result = runner.run(plan)
        episode_s.append(time.perf_counter() - planned)
        if not agent.impl.in_warmup:
            plan_s.append(planned - started)
            learning.append(result)
        agent.end_episode(result.observations, result.actions, result.reward)
    return agent, runner, learning, episode_s, plan_s


def learner_settings(config: SearchConfig, steps: list[int]) -> dict[str, tuple[tuple[int, ...], bool, int, int]]:
    """The learner settings timed: name -> (hidden widths, SB3's reference step, steps per episode, batch)."""
    default, batch = tuple(config.ddpg.hidden), config.ddpg.batch_size
    settings = {
        "sb3": (default, True, 0, batch),
        "default": (default, False, 0, batch),
        "hidden_128": (LEARNER_HIDDEN_SMALL, False, 0, batch),
        **{f"default_u{k}": (default, False, k, batch) for k in steps},
    }
    return settings


def learner_phase(config: SearchConfig, episodes: int, rounds: int, steps: list[int]) -> dict[str, Any]:
    """The learner's time per episode under each setting, and the ceilings (see the module docstring)."""
    torch.set_num_threads(1)
    load = os.getloadavg()[0]  # other processes on the machine slow every setting alike (they alternate)
    settings = learner_settings(config, steps)
    filled: dict[tuple[int, ...], tuple[Any, list[Any], list[float]]] = {}
    episode_s: list[float] = []
    runner = None
    for hidden in dict.fromkeys(h for h, *_ in settings.values()):  # one replay of real transitions per network shape
        ddpg = dataclasses.replace(config.ddpg, hidden=hidden)
        agent, runner, learning, played_s, plan_s = _fill_replay(config.replace(ddpg=ddpg), episodes)
        filled[hidden] = (agent, learning, plan_s)
        episode_s += played_s
    groups = len(agent.env.group_names)
    settings["default_u1_x_groups"] = (tuple(config.ddpg.hidden), False, 1, groups * config.ddpg.batch_size)
    timed: dict[str, list[dict[str, float]]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        saved = {}
        for i, (hidden, (agent, _, _)) in enumerate(filled.items()):
            saved[hidden] = Path(tmp) / f"agent{i}"
            agent.impl.save(saved[hidden])  # the state before learning from its learning episodes a second time
        for _ in range(rounds):
            for name, (hidden, reference, k, b) in settings.items():
                timed[name].append(_time_learner(saved[hidden], reference, k, b, filled[hidden][1]))
            for result in filled[tuple(config.ddpg.hidden)][1][:3]:  # episodes timed between the rounds, same load
                started = time.perf_counter()
                runner.run(result.plan)
                episode_s.append(time.perf_counter() - started)
    episode_ms = 1000 * statistics.median(episode_s)
    by_setting = {}
    for name, (hidden, reference, k, b) in settings.items():
        parts = {part: statistics.fmean(t[part] for t in timed[name]) for part in timed[name][0]}
        learner_ms, plan_ms = parts["total"], 1000 * statistics.median(filled[hidden][2])
        by_setting[name] = {
            "hidden": list(hidden),
            "sb3_step": reference,
            "steps_per_episode": k or groups * config.ddpg.updates_per_transition,
            "batch_size": b,
            "learner_ms_per_episode": parts,
            "learner_ms_per_round": [t["total"] for t in timed[name]],
            "plan_ms": plan_ms,
            "learner_ceiling_workers": episode_ms / learner_ms,
            "search_process_ceiling_workers": episode_ms / (learner_ms + plan_ms),
        }
        print(
            f"learner {name}: {learner_ms:.1f} ms/episode ({by_setting[name]['steps_per_episode']} steps; "
            + ", ".join(f"{part} {parts[part]:.1f}" for part in (*LEARNER_PARTS, "other", "publish"))
            + f"), ceiling {episode_ms / learner_ms:.1f} workers; plan {plan_ms:.0f} ms",
            flush=True,
        )
    print(f"episode {episode_ms:.0f} ms (one thread)", flush=True)
    return {
        "measured": time.strftime("%Y-%m-%d"),
        "threads": 1,
        "load_average": load,
        "groups": groups,
        "learning_episodes": episodes,
        "rounds": rounds,
        "episode_ms": episode_ms,
        "plan_ms": by_setting["default"]["plan_ms"],
        "by_setting": by_setting,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (0: in-process)")
    parser.add_argument("--episodes", type=int, default=80, help="random-phase episodes per worker count")
    parser.add_argument("--ddpg-warmup", type=int, default=10, help="DDPG warm-up episodes (not measured)")
    parser.add_argument("--ddpg-episodes", type=int, default=60, help="DDPG episodes after warm-up")
    parser.add_argument("--stale-bound", type=int, default=None, help="the larger bound (default: 2 x max workers)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: CPUs / workers)")
    parser.add_argument("--quick", action="store_true", help="a short check: few episodes of each phase")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: results/ray_scaling.json)")
    parser.add_argument("--payload-memory", action="store_true", help="only measure worker memory (see above)")
    parser.add_argument("--learner-only", action="store_true", help="only measure the learner (see above)")
    parser.add_argument("--learner-episodes", type=int, default=20, help="learning episodes timed per setting")
    parser.add_argument("--learner-rounds", type=int, default=3, help="rounds over the settings, alternating")
    parser.add_argument(
        "--learner-steps", type=int, nargs="*", default=[1, 2], help="ddpg.updates_per_episode settings timed"
    )
    args = parser.parse_args()
    if args.learner_only:
        out = args.out or RESULTS / "ray_scaling.json"
        config = resolve_checkpoint(SearchConfig.from_yaml(CONFIG), progress=False)
        section = learner_phase(config, args.learner_episodes, args.learner_rounds, args.learner_steps)
        by_setting = section["by_setting"]
        results = json.loads(out.read_text()) if out.is_file() else {}
        results.update(
            learner=section,
            learner_ms_per_episode={name: r["learner_ms_per_episode"] for name, r in by_setting.items()},
            episode_ms=section["episode_ms"],
            learner_ceiling_workers={name: r["learner_ceiling_workers"] for name, r in by_setting.items()},
        )
        write_json_atomic(out, results)
        print(f"wrote {out}")
        return 0
    if args.payload_memory:
        import ray

        out = args.out or RESULTS / "ray_scaling.json"
        ray.init(address="local", num_cpus=max(local_cpus(), 2), include_dashboard=False, log_to_driver=False)
        try:
            section = {**payload_memory(2, 50_000, 10_000), "measured": time.strftime("%Y-%m-%d")}
        finally:
            ray.shutdown()
        results = json.loads(out.read_text()) if out.is_file() else {}
        write_json_atomic(out, {**results, "payload_memory": section})
        print(f"wrote {out}")
        return 0
    global THREADS
    THREADS = args.threads
    if args.quick:
        args.episodes, args.ddpg_warmup, args.ddpg_episodes = 8, 3, 10
    out = args.out or RESULTS / ("ray_scaling_quick.json" if args.quick else "ray_scaling.json")
    most = max(args.workers)
    stale_bound = 2 * most if args.stale_bound is None else args.stale_bound
    import ray

    config = resolve_checkpoint(SearchConfig.from_yaml(CONFIG), progress=False).replace(checkpoint_every=10**6)
    ray.init(address="local", num_cpus=max(local_cpus(), most), include_dashboard=False, log_to_driver=False)
    results: dict[str, Any] = {
        "cpus": local_cpus(),
        "threads_per_worker": {str(w): _threads(w) for w in args.workers},
        "episodes": args.episodes,
        "eps_per_s": {},
        "ddpg": {"warmup": args.ddpg_warmup, "episodes": args.ddpg_episodes, "by_workers": {}},
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for workers in args.workers:
                eps = random_phase(config, workers, args.episodes, root)
                results["eps_per_s"][str(workers)] = eps
                print(f"random, {workers} worker(s): {eps:.2f} episodes/s", flush=True)
            for workers in args.workers:
                r = ddpg_phase(config, workers, args.ddpg_warmup, args.ddpg_episodes, root)
                results["ddpg"]["by_workers"][str(workers)] = r
                _print_ddpg(f"{workers} worker(s)", r)
            if most > 1:
                r = ddpg_phase(config, most, args.ddpg_warmup, args.ddpg_episodes, root, stale_bound)
                results["ddpg_stale"] = r
                _print_ddpg(f"{most} worker(s), bound {stale_bound}", r)
    finally:
        ray.shutdown()
    base, ddpg_base = results["eps_per_s"].get("1"), results["ddpg"]["by_workers"].get("1")
    for workers in args.workers:
        if base and workers > 1:
            results[f"speedup_{workers}"] = results["eps_per_s"][str(workers)] / base
        if ddpg_base and workers > 1:
            eps = results["ddpg"]["by_workers"][str(workers)]["eps_per_s"]
            results[f"ddpg_speedup_{workers}"] = eps / ddpg_base["eps_per_s"]
    if ddpg_base and "ddpg_stale" in results:
        results["ddpg_stale"]["speedup_vs_1"] = results["ddpg_stale"]["eps_per_s"] / ddpg_base["eps_per_s"]
    print(json.dumps({k: v for k, v in results.items() if "speedup" in k}))
    previous = json.loads(out.read_text()) if out.is_file() else {}
    kept = {k: previous[k] for k in OTHER_SECTIONS if k in previous}  # --payload-memory's and --learner-only's
    write_json_atomic(out, {**results, **kept})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
