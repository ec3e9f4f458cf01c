"""Where commands write: the user cache directory, MLflow artifacts beside the store, nothing in the working
directory; and ``--device`` honoured (or refused with a one-line error) by sensitivity and fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from amc import baseline
from amc.baseline import baseline_dir, cached_baseline, default_cache_dir, train_baseline
from amc.cli import main
from amc.data import DataConfig
from amc.errors import ConfigError
from amc.service.tracking import experiment_artifact_location
from amc.train import TrainConfig


# --------------------------------------------------------------------------- the baseline cache
def test_default_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("AMC_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "amc"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec ignores relative paths
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "amc"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "amc"
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "amc-cache"))
    assert default_cache_dir() == tmp_path / "amc-cache"


def _fake_training(calls: list[Path], before_return=None):
    def fake(
        model_name: str,
        data_config: DataConfig,
        config: TrainConfig,
        out: Path,
        device: str = "cpu",
        progress: bool = True,
    ) -> dict:
        calls.append(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.pt").write_text(f"trained in {out.name}")
        if before_return is not None:
            before_return()
        return {"top1": 0.5}  # the report train_baseline returns (test top-1)

    return fake


def test_cached_baseline_trains_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(baseline, "train_baseline", _fake_training(calls))
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    settings = ("resnet20", DataConfig("digits"), TrainConfig(epochs=1))
    first = cached_baseline(*settings)
    assert first == baseline_dir(*settings) / "model.pt" and first.is_file()
    assert first.parent.parent == tmp_path / "cache" / "baselines"
    assert cached_baseline(*settings) == first and len(calls) == 1, "the second search reuses the cached baseline"
    assert calls[0].parent == first.parent.parent and calls[0].name.startswith(".tmp-"), "trained beside, then renamed"
    assert sorted(p.name for p in first.parent.parent.iterdir()) == [first.parent.name], "no temporary directory left"


def test_concurrent_training_of_one_baseline_keeps_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ("resnet20", DataConfig("digits"), TrainConfig(epochs=1))
    final = baseline_dir(*settings, cache_dir=tmp_path)

    def another_process_finishes_first() -> None:
        final.mkdir(parents=True)
        (final / "model.pt").write_text("the winner's model")

    monkeypatch.setattr(baseline, "train_baseline", _fake_training([], another_process_finishes_first))
    assert cached_baseline(*settings, cache_dir=tmp_path) == final / "model.pt"
    assert (final / "model.pt").read_text() == "the winner's model", "the published baseline is never overwritten"
    assert [p.name for p in final.parent.iterdir()] == [final.name]


def test_a_half_written_baseline_is_trained_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = ("resnet20", DataConfig("digits"), TrainConfig(epochs=1))
    final = baseline_dir(*settings, cache_dir=tmp_path)
    final.mkdir(parents=True)
    (final / "report.json").write_text("{}")  # an older version trained in place and was interrupted
    calls: list[Path] = []
    monkeypatch.setattr(baseline, "train_baseline", _fake_training(calls))
    assert cached_baseline(*settings, cache_dir=tmp_path).read_text().startswith("trained in .tmp-")
    assert len(calls) == 1


# --------------------------------------------------------------------------- artifact locations
def test_experiment_artifact_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AMC_ARTIFACT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "db" / "mlflow.db"
    assert experiment_artifact_location(f"sqlite:///{db}", "my exp/1") == str(
        tmp_path / "db" / "mlartifacts" / "my_exp_1"
    )
    assert experiment_artifact_location("sqlite:///rel/m.db", "e") == str(tmp_path / "rel" / "mlartifacts" / "e")
    assert experiment_artifact_location(f"sqlite:///{db}", "e", tmp_path / "art") == str(tmp_path / "art" / "e")
    assert experiment_artifact_location(f"sqlite:///{db}", "e", "s3://bucket/amc/") == "s3://bucket/amc/e"
    assert experiment_artifact_location("http://mlflow:5000", "e") is None, "a server keeps its own artifact handling"
    assert experiment_artifact_location(str(tmp_path / "mlruns"), "e") is None, "a file store keeps artifacts inside"
    monkeypatch.setenv("AMC_ARTIFACT_ROOT", str(tmp_path / "env-root"))
    assert experiment_artifact_location(f"sqlite:///{db}", "e") == str(tmp_path / "env-root" / "e")
    assert experiment_artifact_location("https://mlflow.example", "e") is None
    with pytest.raises(ConfigError, match="drop --artifact-root"):
        experiment_artifact_location("http://mlflow:5000", "e", tmp_path)
    monkeypatch.delenv("AMC_ARTIFACT_ROOT")
    for uri in ("postgresql://u@host/db", "mysql+pymysql://u@host/db", "sqlite://"):
        with pytest.raises(ConfigError, match="AMC_ARTIFACT_ROOT"):
            experiment_artifact_location(uri, "e")


# --------------------------------------------------------------------------- a search writes nowhere else
def _tiny_search_yaml(path: Path) -> Path:
    """A search that trains (0 epochs) and caches its baseline, with the tests' tiny evaluation settings."""
    config = {
        "experiment": "test-locations",
        "agent": "random",
        "episodes": 2,
        "seed": 0,
        "checkpoint_every": 1,
        "workers": 0,
        "env": {
            "model": "resnet20",
            "data": {"name": "digits"},
            "checkpoint": None,
            "target_ratio": 0.5,
            "bn_batches": 1,
            "bn_batch_size": 16,
            "eval_batch_size": 16,
            "eval_batches": 2,
        },
        "baseline": {"epochs": 0},
    }
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_search_writes_only_its_out_dir_the_store_and_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    cwd, out, cache = tmp_path / "cwd", tmp_path / "out", tmp_path / "cache"
    cwd.mkdir()
    config = _tiny_search_yaml(tmp_path / "cfg" / "search.yaml")
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("AMC_CACHE_DIR", str(cache))
    monkeypatch.delenv("AMC_ARTIFACT_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["search", "--config", str(config), "--out", str(out), "--tracking-uri", uri]) == 0
    assert list(cwd.iterdir()) == [], "nothing lands in the current directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "cfg", "cwd", "db", "out"]
    assert [p.name for p in (cache / "baselines").iterdir()][0].startswith("resnet20-digits-")
    assert len(list((cache / "baselines").glob("*/model.pt"))) == 1
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("test-locations")
    assert Path(experiment.artifact_location) == tmp_path / "db" / "mlartifacts" / "test-locations"
    run_id = json.loads((out / "search.json").read_text())["mlflow_run_id"]
    logged = tmp_path / "db" / "mlartifacts" / "test-locations" / run_id / "artifacts"
    assert {"search.json", "best_policy.json", "config.yaml"} <= {p.name for p in logged.iterdir()}
    assert {a.path for a in client.list_artifacts(run_id)} >= {"search.json", "best_policy.json"}


# --------------------------------------------------------------------------- --device
@pytest.fixture(scope="module")
def untrained_resnet20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained dense ResNet-20 on digits (0 epochs): the device tests check the plumbing, not accuracy."""
    out = tmp_path_factory.mktemp("untrained")
    train_baseline("resnet20", DataConfig("digits"), TrainConfig(epochs=0), out, progress=False)
    return out / "model.pt"


DEVICE_COMMANDS = {
    "sensitivity": ["sensitivity", "--ratios", "0.5"],
    "prune": ["prune", "--uniform", "0.5", "--finetune-epochs", "1", "--bn-batches", "1"],
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("command", sorted(DEVICE_COMMANDS))
def test_device_cuda_without_cuda_is_a_one_line_error(
    command: str, untrained_resnet20: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        *DEVICE_COMMANDS[command],
        "--checkpoint",
        str(untrained_resnet20),
        "--device",
        "cuda",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA device is available; use --device cpu" in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", sorted(DEVICE_COMMANDS))
def test_device_cpu_works(command: str, untrained_resnet20: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert (
        main([*DEVICE_COMMANDS[command], "--checkpoint", str(untrained_resnet20), "--device", "cpu", "--out", str(out)])
        == 0
    )
    assert (out / ("sensitivity.csv" if command == "sensitivity" else "model.pt")).is_file()
