"""Progress of the long loops: a tqdm bar on a terminal, plain lines every few seconds elsewhere (logs, CI)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from amc.progress import DEFAULT_INTERVAL, INTERVAL_ENV, Progress, default_interval, format_duration


class FakeClock:
    """A clock that moves only when told (``step`` seconds per reading, or ``advance``)."""

    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_interval_zero_writes_one_line_per_update() -> None:
    out, clock = io.StringIO(), FakeClock()
    bar = Progress(5, "search ddpg", "episode", stream=out, interval=0, clock=clock)
    for _ in range(3):
        clock.now += 2.0
        bar.update()
    assert _lines(out) == [
        "search ddpg: 1/5 episodes, 2.0 s/episode, ETA 8s",
        "search ddpg: 2/5 episodes, 2.0 s/episode, ETA 6s",
        "search ddpg: 3/5 episodes, 2.0 s/episode, ETA 4s",
    ]


def test_lines_wait_for_the_interval() -> None:
    out, clock = io.StringIO(), FakeClock()
    bar = Progress(300, "search ddpg", "episode", stream=out, interval=10, clock=clock)
    for _ in range(12):
        clock.now += 3.0  # an update every 3 s: lines at 12 s, 24 s and 36 s (10 s apart at least)
        bar.update()
    assert [line.split(",")[0] for line in _lines(out)] == [f"search ddpg: {n}/300 episodes" for n in (4, 8, 12)]
    assert _lines(out)[0] == "search ddpg: 4/300 episodes, 3.0 s/episode, ETA 14m48s"


def test_the_eta_follows_the_recent_rate_not_the_warm_up() -> None:
    out, clock = io.StringIO(), FakeClock()
    bar = Progress(40, "search ddpg", "episode", stream=out, interval=10, clock=clock)
    for _ in range(10):  # the warm-up: 1 s per episode
        clock.now += 1.0
        bar.update()
    for _ in range(10):  # the learner joins: 4 s per episode
        clock.now += 4.0
        bar.update()
    # lines at 10 s (10 done), then every 12 s in the slow phase: the last at 46 s with 19 done
    assert _lines(out)[-1] == "search ddpg: 19/40 episodes, 2.4 s/episode, ETA 1m24s"  # 21 left at the recent 4 s
    # (the average since the start, 46 s / 19, would have said 51s)


def test_close_writes_the_last_count_and_the_time_taken() -> None:
    out, clock = io.StringIO(), FakeClock()
    bar = Progress(4, "train resnet20", "step", stream=out, interval=60, clock=clock)
    for _ in range(4):
        clock.now += 0.25
        bar.update()
    assert _lines(out) == []
    bar.close()
    bar.close()  # a second close writes nothing
    assert _lines(out) == ["train resnet20: 4/4 steps, 4.0 steps/s, took 1s"]


def test_close_after_a_line_with_the_same_count_repeats_nothing() -> None:
    out, clock = io.StringIO(), FakeClock(step=1.0)
    with Progress(2, "fine-tune", stream=out, interval=0, clock=clock) as bar:
        bar.update(2)
    assert len(_lines(out)) == 1 and _lines(out)[0].startswith("fine-tune: 2/2 steps")


def test_postfix_and_a_resumed_start() -> None:
    out, clock = io.StringIO(), FakeClock()
    bar = Progress(300, "search ddpg", "episode", initial=120, stream=out, interval=0, clock=clock)
    bar.set_postfix(best_top1="97.30%", noise="0.412", refresh=False)
    clock.now += 2.1
    bar.update()
    # the rate counts only the episodes run here, not the 120 before the resume
    assert _lines(out) == ["search ddpg: 121/300 episodes, 2.1 s/episode, ETA 6m16s, best_top1=97.30%, noise=0.412"]


def test_plural_and_singular_units() -> None:
    out, clock = io.StringIO(), FakeClock(step=1.0)
    Progress(1, "search uniform", "episode", stream=out, interval=0, clock=clock).update()
    Progress(3, "sensitivity", "pruned model", stream=out, interval=0, clock=clock).update()
    assert [line.split(",")[0] for line in _lines(out)] == [
        "search uniform: 1/1 episode",
        "sensitivity: 1/3 pruned models",
    ]


def test_disabled_writes_nothing() -> None:
    out = io.StringIO()
    bar = Progress(3, "x", stream=out, interval=0, enabled=False, clock=FakeClock(1.0))
    bar.set_postfix(a=1)
    bar.update()
    bar.close()
    assert out.getvalue() == "" and bar.n == 1


def test_a_terminal_gets_a_tqdm_bar() -> None:
    from tqdm import tqdm

    out = FakeTTY()
    bar = Progress(5, "search ddpg", "episode", stream=out, interval=0, clock=FakeClock(1.0))
    assert bar.tty and not bar.lines and isinstance(bar._bar, tqdm)
    bar.update(3)
    bar.close()
    text = out.getvalue()
    assert "\r" in text and "3/5" in text and "search ddpg" in text
    assert not re.search(r"^search ddpg: \d+/5 episodes", text, flags=re.M), "no plain lines on a terminal"


def test_a_file_is_not_a_terminal(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w") as fh:
        bar = Progress(2, "x", stream=fh, interval=0, clock=FakeClock(1.0))
        assert bar.lines and bar._bar is None
        bar.update()
    assert (tmp_path / "log").read_text().startswith("x: 1/2 steps")


def test_default_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert default_interval() == DEFAULT_INTERVAL
    for text, expected in [
        ("2.5", 2.5),
        ("0", 0.0),
        ("-1", DEFAULT_INTERVAL),
        ("nan", DEFAULT_INTERVAL),
        ("x", DEFAULT_INTERVAL),
    ]:
        monkeypatch.setenv(INTERVAL_ENV, text)
        assert default_interval() == expected, text
    monkeypatch.setenv(INTERVAL_ENV, "0")
    assert Progress(1, "x", stream=io.StringIO()).interval == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.4, "42s"), (378, "6m18s"), (3600, "1h00m"), (3725, "1h02m"), (float("inf"), "?")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# --------------------------------------------------------------------------- the loops use it
def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 2, (32,), generator=g))
    return DataLoader(data, batch_size=8)


def test_training_and_fine_tuning_write_lines_when_stderr_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from amc.train import TrainConfig, finetune, train

    monkeypatch.setenv(INTERVAL_ENV, "0")
    train(torch.nn.Linear(4, 2), _loader(), TrainConfig(epochs=2, lr=0.01), desc="train tiny")
    finetune(torch.nn.Linear(4, 2), _loader(), epochs=1)
    err = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in err if line.startswith("train tiny")] == [
        f"train tiny: {i}/8 steps" for i in range(1, 9)
    ]
    assert [line.split(",")[0] for line in err if line.startswith("fine-tune")] == [
        f"fine-tune: {i}/4 steps" for i in range(1, 5)
    ]
    assert any("epoch=2" in line and "loss=" in line for line in err)
    train(torch.nn.Linear(4, 2), _loader(), TrainConfig(epochs=1, lr=0.01), progress=False)
    assert capsys.readouterr().err == ""


def test_a_missing_baseline_is_announced_and_timed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from amc.baseline import baseline_dir, cached_baseline
    from amc.data import DataConfig
    from amc.train import TrainConfig

    monkeypatch.setenv(INTERVAL_ENV, "3600")
    data, config = DataConfig("synthetic", num_samples=48), TrainConfig(epochs=1, batch_size=16)
    ckpt = cached_baseline("plain20", data, config, tmp_path)
    err = capsys.readouterr().err.splitlines()
    where = baseline_dir("plain20", data, config, tmp_path)
    assert err[0] == f"training the dense baseline plain20 on synthetic (1 epoch), cached in {where}"
    assert err[-1].startswith("dense baseline plain20 on synthetic trained in ")
    assert err[-1].endswith(f"-> {ckpt}") and "test top-1" in err[-1]
    assert cached_baseline("plain20", data, config, tmp_path) == ckpt
    assert capsys.readouterr().err == "", "a cached baseline is reused silently"


def test_sensitivity_writes_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from amc.baseline import train_baseline
    from amc.data import DataConfig
    from amc.engine import build_workspace
    from amc.sensitivity import sensitivity
    from amc.train import TrainConfig

    data = DataConfig("synthetic", num_samples=48)
    train_baseline("plain20", data, TrainConfig(epochs=0), tmp_path, progress=False)
    ws = build_workspace("plain20", data, tmp_path / "model.pt")
    monkeypatch.setenv(INTERVAL_ENV, "0")
    _, rows = sensitivity(ws, (0.5,), bn_batches=1)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sensitivity")]
    assert len(err) == len(rows) == len(ws.graph)
    assert err[-1].startswith(f"sensitivity: {len(rows)}/{len(rows)} pruned models")


def test_search_episodes_write_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agents.search import SearchConfig, run_search
    from amc.baseline import train_baseline
    from amc.data import DataConfig
    from amc.train import TrainConfig
    from envs import EnvConfig

    train_baseline("resnet20", DataConfig("digits"), TrainConfig(epochs=0), tmp_path / "dense", progress=False)
    env = EnvConfig(checkpoint=str(tmp_path / "dense" / "model.pt"), target_ratio=0.5, eval_batches=1, bn_batches=1)
    monkeypatch.setenv(INTERVAL_ENV, "0")
    run_search(SearchConfig(env=env, agent="random", episodes=3, workers=0), tmp_path / "s", track=False)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("search random")]
    assert [line.split(",")[0] for line in err] == [f"search random: {i}/3 episodes" for i in (1, 2, 3)]
    assert all("best_top1=" in line for line in err)
