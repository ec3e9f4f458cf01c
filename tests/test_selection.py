"""Selection on a held-out split: the search's best policies re-ranked on images the search never saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agents.ddpg import DDPGConfig
from agents.search import SearchConfig, run_search
from agents.selection import top_distinct
from amc.data import DataConfig, load_data
from amc.errors import ConfigError
from amc.policy import load_policy
from envs import ChannelPruningEnv, EnvConfig


def _rows(dataset) -> set[bytes]:
    return {x.numpy().tobytes() for x, _ in dataset}


def test_selection_split_is_disjoint_and_leaves_search_val_and_test_alone() -> None:
    plain = load_data(DataConfig("digits"))
    carved = load_data(DataConfig("digits", selection_size=200))
    assert plain.selection is None and len(carved.selection) == 200
    assert len(carved.train) == len(plain.train) - 200
    for split in ("val", "test"):  # the same images as without a selection split
        assert torch.equal(getattr(carved, split).tensors[0], getattr(plain, split).tensors[0])
    selection = _rows(carved.selection)
    assert selection <= _rows(plain.train)  # carved from the training part ...
    assert not selection & (_rows(carved.train) | _rows(carved.val) | _rows(carved.test))  # ... and held out
    for bad in (-1, 1100, 2.5):
        with pytest.raises(ConfigError, match="selection_size"):
            load_data(DataConfig("digits", selection_size=bad))
    with pytest.raises(ConfigError, match="selection_size"):
        plain.loader("selection")


def test_top_distinct_skips_repeated_policies() -> None:
    from agents.records import EpisodeRecord

    records = [
        EpisodeRecord(i, r, r, 0.5, 0.5, {"a": p})
        for i, (r, p) in enumerate([(0.5, 0.1), (0.9, 0.2), (0.9, 0.2), (0.7, 0.3)])
    ]
    assert [r.episode for r in top_distinct(records, 3)] == [1, 3, 0]


@pytest.mark.slow
@pytest.mark.parametrize("agent", ["random", "ddpg"])  # tpe's best goes through the same code as random's
def test_search_returns_the_best_on_the_selection_split(agent: str, trained_resnet20: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    data = DataConfig("digits", selection_size=150)
    env = EnvConfig(checkpoint=str(trained_resnet20 / "model.pt"), data=data, target_ratio=0.3, bn_batches=2)
    config = SearchConfig(
        env=env,
        agent=agent,
        episodes=10,
        seed=4,
        ddpg=DDPGConfig(hidden=(32, 32), warmup_episodes=3, batch_size=8, proposals=4),
        workers=0,
        selection_top_k=4,
        experiment="test-selection",
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_search(config, tmp_path / "s", tracking_uri=uri, progress=False)
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    episodes = {e["episode"]: e for e in summary["episodes"]}
    selection = summary["selection"]
    assert selection["split_size"] == 150 and selection["top_k"] == 4
    candidates = selection["candidates"]
    expected = sorted(episodes.values(), key=lambda e: (-e["reward"], e["episode"]))
    assert candidates[0]["episode"] == expected[0]["episode"] == selection["best_reward_episode"]
    assert len({tuple(sorted(episodes[c["episode"]]["ratios"].items())) for c in candidates}) == len(candidates)
    chosen = max(candidates, key=lambda c: (c["selection_top1"], c["reward"]))
    assert selection["chosen_episode"] == chosen["episode"] == result.best.episode
    best = summary["best"]
    assert (
        best["selection_top1"] == chosen["selection_top1"] and best["policy"] == episodes[chosen["episode"]]["ratios"]
    )
    assert all(episodes[c["episode"]]["flops_ratio"] <= 0.3 for c in candidates)  # never over budget
    assert load_policy(tmp_path / "s" / "best_policy.json").ratios == best["policy"]
    # the figure is the chosen policy's top-1 on those 150 images, measured again by a fresh env
    fresh = ChannelPruningEnv.from_config(env)
    assert fresh.evaluate_ratios(best["policy"], "selection")["top1"] == pytest.approx(best["selection_top1"])
    run = MlflowClient(uri).get_run(result.run_id)
    assert run.data.metrics["best_selection_top1"] == pytest.approx(best["selection_top1"])


@pytest.mark.slow
def test_without_a_selection_split_the_best_is_the_best_reward(trained_resnet20: Path, tmp_path: Path) -> None:
    env = EnvConfig(checkpoint=str(trained_resnet20 / "model.pt"), target_ratio=0.3, bn_batches=2)
    run_search(
        SearchConfig(env=env, agent="random", episodes=4, workers=0), tmp_path / "s", track=False, progress=False
    )
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    assert summary["selection"] is None and "selection_top1" not in summary["best"]
    assert summary["best"]["reward"] == max(e["reward"] for e in summary["episodes"])


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_selection_top_k_is_refused(bad) -> None:
    with pytest.raises(ConfigError, match="selection_top_k"):
        SearchConfig(selection_top_k=bad)


def test_baselines_cached_before_the_selection_split_keep_their_key() -> None:
    import hashlib
    import json
    from dataclasses import asdict

    from amc.baseline import BASELINE_VERSION, baseline_key
    from amc.train import TrainConfig

    data, train = DataConfig("digits"), TrainConfig(epochs=15)
    before = ("name", "root", "input_size", "val_size", "seed", "num_classes", "num_samples")
    older = {k: v for k, v in asdict(data).items() if k in before}  # DataConfig before the later fields
    blob = json.dumps(
        {"model": "resnet20", "data": older, "train": asdict(train), "version": BASELINE_VERSION}, sort_keys=True
    )
    assert baseline_key("resnet20", data, train) == hashlib.sha256(blob.encode()).hexdigest()[:12]
    for later in ({"selection_size": 200}, {"train_size": 500}, {"test_size": 300}):
        assert baseline_key("resnet20", DataConfig("digits", **later), train) != baseline_key("resnet20", data, train)
