"""Parallel searches and sweeps on a real local Ray runtime (2 CPUs, started once for this module)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import ray

from agents.base import RandomAgent
from agents.ddpg import AMC_STYLE, DDPGConfig
from agents.parallel import build_env
from agents.rollout import EpisodeRunner
from agents.search import EpisodeRecord, Search, SearchConfig, run_search, save_yaml
from amc.engine import build_workspace
from envs import EnvConfig

pytestmark = pytest.mark.slow
SEED = 1


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _config(
    checkpoint: Path, workers: int, episodes: int = 8, agent: str = "ddpg", ddpg: dict | None = None
) -> SearchConfig:
    env = EnvConfig(model="resnet20", checkpoint=str(checkpoint), target_ratio=0.4, eval_batches=1, bn_batches=2)
    ddpg = DDPGConfig(hidden=(32, 32), warmup_episodes=3, batch_size=8, **(AMC_STYLE if ddpg is None else ddpg))
    return SearchConfig(
        env=env,
        agent=agent,
        episodes=episodes,
        seed=SEED,
        ddpg=ddpg,
        checkpoint_every=2,
        experiment="test-ray",
        workers=workers,
        threads=1,
        uniform_first=False,  # episodes compared with the agent's own plans, played outside a search
    )


@pytest.fixture(scope="module")
def in_process(trained_resnet20: Path):
    """Runs the random plan of an episode (seeded per episode, as a Ray worker gets it) in this process."""
    config = _config(trained_resnet20 / "model.pt", 0)
    ws = build_workspace(config.env.model, config.env.data, config.env.checkpoint)
    runner, agent, cache = (
        EpisodeRunner(build_env({"ws": ws, "env_config": config.env}), config.ddpg),
        RandomAgent(SEED),
        {},
    )

    def run(episode: int) -> EpisodeRecord:
        if episode not in cache:
            cache[episode] = runner.run(agent.plan(episode)).record
        return cache[episode]

    return run


@pytest.mark.parametrize("criterion", ["l2", "taylor"])
def test_workers_get_only_what_episodes_read(trained_resnet20: Path, criterion: str) -> None:
    """The worker payload holds no training, test or selection split, and plays exactly the learner's episodes."""
    import pickle

    from agents.parallel import worker_payload
    from amc.data import DataConfig

    config = _config(trained_resnet20 / "model.pt", 2)
    env_config = config.env.replace(criterion=criterion, data=DataConfig("digits", selection_size=50))
    ws = build_workspace(env_config.model, env_config.data, env_config.checkpoint)
    full = {"ws": ws, "env_config": env_config}
    learner = build_env(full)
    payload = worker_payload(full, learner)
    data = payload["ws"].data
    assert data.train is None and data.test is None and data.selection is None
    assert len(data.val) == 64, "search-val as evaluated: eval_batches 1 of 64 images"
    assert len(pickle.dumps(payload)) < len(pickle.dumps(full)) - 1000 * 16 * 16 * 4, "the splits stay home"
    worker = build_env(pickle.loads(pickle.dumps(payload)))
    assert worker.fingerprint() == learner.fingerprint(), "the same calibration, gradient batch and search-val"
    agent = RandomAgent(SEED)
    for episode in range(3):
        assert (
            EpisodeRunner(worker).run(agent.plan(episode)).record
            == EpisodeRunner(learner).run(agent.plan(episode)).record
        )


def test_a_worker_reading_the_data_from_disk_plays_the_same_episodes(tmp_path: Path) -> None:
    """worker_data path on an image folder on disk: the payload holds no data, the worker loads the same search-val
    images from the same path, and its episodes equal the learner's and those of a worker fed through the object
    store."""
    import pickle

    import numpy as np
    from PIL import Image

    from agents.parallel import worker_payload
    from amc.data import DataConfig

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 2)):
        for label in range(4):
            folder = tmp_path / "images" / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) // (label + 1)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    data = DataConfig("imagefolder", root=str(tmp_path / "images"), input_size=16, val_size=16)
    env_config = EnvConfig(model="resnet20", data=data, target_ratio=0.5, bn_batches=1, bn_batch_size=8)
    ws = build_workspace(env_config.model, env_config.data)
    full = {"ws": ws, "env_config": env_config}
    learner = build_env(full)
    by_path, shipped = worker_payload(full, learner, "path"), worker_payload(full, learner)
    assert by_path["ws"].data is None, "no image travels"
    assert len(pickle.dumps(by_path)) < len(pickle.dumps(shipped)) - 16 * 3 * 16 * 16 * 4
    workers = [build_env(pickle.loads(pickle.dumps(payload))) for payload in (by_path, shipped)]
    assert {w.fingerprint() for w in workers} == {learner.fingerprint()}, "the same search-val images and calibration"
    agent = RandomAgent(SEED)
    for episode in range(2):
        want = EpisodeRunner(learner).run(agent.plan(episode)).record
        assert [EpisodeRunner(w).run(agent.plan(episode)).record for w in workers] == [want, want]


def test_the_pool_reports_a_wait_after_three_of_its_longest_episodes() -> None:
    from agents.parallel import STALL_REPORT_S, RolloutPool

    pool = RolloutPool.__new__(RolloutPool)  # no actors needed: the threshold depends on the timeline only
    pool.timeline = []
    assert pool.report_after() == 5 * STALL_REPORT_S, "workers are starting"
    pool.timeline = [(0, 0, 100.0, 105.0)]
    assert pool.report_after() == STALL_REPORT_S
    pool.timeline.append((1, 1, 100.0, 150.0))
    assert pool.report_after() == 150.0, "three times the longest episode"


def _assert_same_episodes(records: list[dict], in_process) -> None:
    for got in records:
        want = in_process(got["episode"])
        assert got["ratios"] == want.ratios, f"episode {want.episode}: other ratios than in-process"
        for key in ("reward", "top1", "flops_ratio", "params_ratio"):
            assert got[key] == pytest.approx(getattr(want, key), rel=1e-9, abs=1e-12), f"episode {want.episode}: {key}"


@pytest.fixture(scope="module")
def ray_random(trained_resnet20: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The episode records of a 4-episode random search on 2 Ray workers."""
    out = tmp_path_factory.mktemp("ray-random") / "s"
    # the workers load the data themselves: test_resume_with_workers_and_more_episodes gets the same episodes with
    # the search-val tensors shipped through the object store
    config = _config(trained_resnet20 / "model.pt", 2, 4, "random").replace(worker_data="path")
    run_search(config, out, track=False, progress=False)
    return json.loads((out / "search.json").read_text())["episodes"]


def test_parallel_search_matches_in_process(ray_random: list[dict], in_process) -> None:
    assert [e["episode"] for e in ray_random] == list(range(4))
    assert all(e["flops_ratio"] <= 0.4 for e in ray_random), "the budget holds on every worker"
    assert len({tuple(e["ratios"].values()) for e in ray_random}) == 4, "workers explore different policies"
    _assert_same_episodes(ray_random, in_process)


def _search(config: SearchConfig, out: Path, ray: bool | None) -> list[dict]:
    """The episode records of ``config`` searched on Ray actors or in this process (planned as its workers would;
    None: on Ray unless ``config.workers`` is 0)."""
    out.mkdir(parents=True)
    save_yaml(config, out / "config.yaml")
    search = Search(config, out, progress=False, ray=ray)
    search.run()
    assert search.uses_ray == (config.workers != 0 if ray is None else ray)
    return json.loads((out / "search.json").read_text())["episodes"]


def _assert_identical(got: list[dict], want: list[dict]) -> None:
    assert [e["episode"] for e in got] == [e["episode"] for e in want]
    for a, b in zip(got, want, strict=True):
        assert a["ratios"] == b["ratios"], f"episode {b['episode']}: other ratios"
        assert a["planned_after"] == b["planned_after"], f"episode {b['episode']}: planned at another point"
        for key in ("reward", "top1", "flops_ratio", "params_ratio"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), f"episode {b['episode']}: {key}"


# random plans on workers equal in-process ones in test_parallel_search_matches_in_process
@pytest.mark.parametrize("agent", ["ddpg", "ddpg-proposals", "tpe"])
def test_one_ray_worker_gives_the_in_process_episodes(trained_resnet20: Path, tmp_path: Path, agent: str) -> None:
    proposals = agent == "ddpg-proposals"  # the default DDPG: plans are the actions of the proposal chosen
    agent = "ddpg" if proposals else agent
    config = _config(trained_resnet20 / "model.pt", 1, episodes=6, agent=agent, ddpg={} if proposals else None)
    want = _search(config.replace(workers=0), tmp_path / "local", ray=None)  # workers 0: in-process, no Ray
    _assert_identical(_search(config, tmp_path / "ray", ray=None), want)  # workers 1: one Ray actor
    if agent == "ddpg":  # 3 warm-up episodes, then each plan comes from an actor that learned from every episode before
        assert [e["planned_after"] for e in want] == [None, None, None, 3, 4, 5]


def test_parallel_ddpg_search(trained_resnet20: Path, tmp_path: Path, in_process) -> None:
    config = _config(trained_resnet20 / "model.pt", 2, episodes=6)
    result = run_search(config, tmp_path / "par", track=False, progress=False)
    b = json.loads((tmp_path / "par" / "search.json").read_text())
    assert [e["episode"] for e in b["episodes"]] == list(range(6))
    assert all(e["flops_ratio"] <= 0.4 for e in b["episodes"]), "the budget holds on every worker"
    assert len({tuple(e["ratios"].values()) for e in b["episodes"]}) == 6, "workers explore different policies"
    # warm-up plans are random plans seeded per episode with the search seed: the same episodes as in-process
    _assert_same_episodes(b["episodes"][:3], in_process)
    assert result.best.flops_ratio <= 0.4 and result.best.reward == max(e["reward"] for e in b["episodes"])
    # after warm-up each episode is planned one episode behind the learner, whichever worker finishes first:
    # the same episodes as the two-worker schedule played one episode at a time in this process
    assert [e["planned_after"] for e in b["episodes"]] == [None, None, None, 2, 3, 4]
    assert b["staleness"] == {"bound": 1, "max": 1, "mean": 1.0, "episodes": 3}
    _assert_identical(b["episodes"], _search(config, tmp_path / "local", ray=False))


def test_parallel_proposal_search_plans_in_the_learner(trained_resnet20: Path, tmp_path: Path) -> None:
    """Default DDPG on 2 workers: the learner walks and chooses every learning episode; the workers only play it."""
    config = _config(trained_resnet20 / "model.pt", 2, episodes=7, ddpg={"proposals": 8, "critics": 2})
    out = tmp_path / "ray"
    out.mkdir()
    save_yaml(config, out / "config.yaml")
    search = Search(config, out, progress=False)
    search.run()
    episodes = json.loads((out / "search.json").read_text())["episodes"]
    assert all(e["flops_ratio"] <= 0.4 for e in episodes), "the budget holds on every worker"
    assert [e["planned_after"] for e in episodes] == [None, None, None, 2, 3, 4, 5]
    assert search.pool.published == 0, "no actor weights travel: the plans carry the chosen actions"
    _assert_identical(episodes, _search(config, tmp_path / "local", ray=False))


def test_multi_target_search_on_workers_meets_each_episodes_target(trained_resnet20: Path, tmp_path: Path) -> None:
    """Several targets on 2 workers: each worker resets to the plan's target, as in-process."""
    config = _config(trained_resnet20 / "model.pt", 2, episodes=7, ddpg={"proposals": 4, "critics": 2})
    config = config.replace(env=config.env.replace(targets=(0.3, 0.6)), uniform_first=True)
    episodes = _search(config, tmp_path / "two", ray=None)
    assert {e["target"] for e in episodes} == {0.3, 0.6}
    assert all(e["flops_ratio"] <= e["target"] for e in episodes), "each episode meets its own target on every worker"
    _assert_identical(episodes, _search(config, tmp_path / "local", ray=False))


@pytest.mark.parametrize("bound", [0, 3])  # 1, the default with 2 workers: test_parallel_ddpg_search
def test_staleness_bound(trained_resnet20: Path, tmp_path: Path, bound: int) -> None:
    """Two workers with bound k: every learning episode is planned exactly k episodes behind the learner."""
    config = _config(trained_resnet20 / "model.pt", 2, episodes=8).replace(max_staleness=bound)
    out = tmp_path / "ray"
    out.mkdir()
    save_yaml(config, out / "config.yaml")
    search = Search(config, out, progress=False)
    search.run()
    summary = json.loads((out / "search.json").read_text())
    learning = [e for e in summary["episodes"] if e["planned_after"] is not None]
    assert [e["episode"] for e in learning] == [3, 4, 5, 6, 7], "3 warm-up episodes, then the actor's"
    stale = [e["episode"] - e["planned_after"] for e in learning]
    assert max(stale) <= bound and stale == [bound] * 5, "the bound holds and is reached"
    assert summary["staleness"] == {"bound": bound, "max": bound, "mean": float(bound), "episodes": 5}
    # one object-store put per weights version: warm-up trains nothing, then every episode learned from does
    versions = {max(0, e["planned_after"] - 3) for e in learning}
    assert search.pool.published == len(versions)
    assert bound == 0 or len(versions) < len(learning), "plans made between two gradient steps share one put"
    # the same seed, worker count and bound give the same episodes, whatever the timing of the workers
    _assert_identical(summary["episodes"], _search(config, tmp_path / "local", ray=False))


class Interrupt(Exception):
    pass


def test_resume_with_workers_and_more_episodes(
    trained_resnet20: Path, tmp_path: Path, ray_random: list[dict], in_process
) -> None:
    from mlflow.tracking import MlflowClient

    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "cut"
    config = _config(trained_resnet20 / "model.pt", 2, 4, "random")

    def interrupt_in_episode_2(record, stats) -> None:
        if record.episode == 2:  # after the checkpoint at 2 episodes
            raise Interrupt

    with pytest.raises(Interrupt):
        run_search(config, out, tracking_uri=uri, progress=False, on_episode=interrupt_in_episode_2)
    run_id = json.loads(next((out / "checkpoint").glob("ep-*/state.json")).read_text())["run_id"]
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"
    resumed = run_search(config.replace(episodes=6), out, resume=True, tracking_uri=uri, progress=False)
    assert resumed.run_id == run_id and resumed.episodes == 6
    assert client.get_run(run_id).info.status == "FINISHED"
    records = json.loads((out / "search.json").read_text())["episodes"]
    assert [e["episode"] for e in records] == list(range(6)), "nothing duplicated, nothing missing"
    assert records[:4] == ray_random, "the resumed search continues exactly as an uninterrupted one"
    _assert_same_episodes(records[4:], in_process)
    steps = sorted(m.step for m in client.get_metric_history(run_id, "reward"))
    assert steps == list(range(6)), "each episode logged to MLflow once"


def test_worker_killed_with_sigkill_is_survived(trained_resnet20: Path, tmp_path: Path) -> None:
    """kill -9 of a rollout worker's process mid-episode: the episode runs again; search.json and MLflow hold
    every episode exactly once."""
    import ray
    from mlflow.tracking import MlflowClient

    from agents.search import start_tracker

    # random plans are handed to a worker as soon as it is idle, so when an episode is consumed the other
    # worker is usually playing one (with learning plans both may be idle, waiting for the learner); on a busy
    # machine it may have finished too, so the hook tries again at every episode until it finds one still playing
    episodes = 16
    config = _config(trained_resnet20 / "model.pt", 2, episodes=episodes, agent="random")
    uri, out = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "kill"
    out.mkdir()
    save_yaml(config, out / "config.yaml")
    search = Search(config, out, progress=False)
    search.tracker = start_tracker(config, search.state, uri, out, staleness_bound=search.max_staleness)
    killed: list[tuple[int, int]] = []  # (worker, episode it was playing)

    def kill_one(record, stats) -> None:
        if killed or record.episode < 2:
            return
        in_flight = list(search.pool._pending)
        done, _ = ray.wait(in_flight, num_returns=len(in_flight), timeout=0) if in_flight else ([], [])
        playing = [search.pool._pending[ref] for ref in in_flight if ref not in done]
        if not playing:
            return
        index, plan = playing[0]
        episode = plan.episode
        pid = search.pool.pid(index)
        os.kill(pid, signal.SIGKILL)
        killed.append((index, episode))

    result = search.run(kill_one)
    assert killed, "a worker was killed while playing an episode"
    index, episode = killed[0]
    assert search.pool.restarts == 1, "a replacement worker was asked for"
    assert [(lost["worker"], lost["episode"]) for lost in search.pool.lost] == [(index, episode)]
    assert sum(1 for _, e, _, _ in search.pool.timeline if e == episode) == 1, "the lost episode ran again, once"
    records = json.loads((out / "search.json").read_text())["episodes"]
    assert [r["episode"] for r in records] == list(range(episodes)), "nothing missing, nothing duplicated"
    assert result.episodes == episodes
    client = MlflowClient(uri)
    assert client.get_run(result.run_id).info.status == "FINISHED"
    for metric in ("reward", "top1"):
        history = client.get_metric_history(result.run_id, metric)
        assert sorted(m.step for m in history) == list(range(episodes)), f"{metric}: each episode logged once"
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [r["top1"] for r in records]
