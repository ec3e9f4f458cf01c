"""The Pareto front across searches (moocore), its MLflow run and tags, and `amc export` of MLflow runs in every format.

Local policy files and the exact-channel equivalence with `amc prune` are in test_export_equivalence.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.ddpg import DDPGConfig
from agents.search import SearchConfig, run_search
from amc.checkpoint import load_model
from amc.cli import main
from amc.cost import count_cost
from amc.errors import ConfigError
from amc.files import write_json_atomic
from amc.groups import ModelGraph
from amc.policy import load_policy
from amc.pruning import kept_channels, replay_history
from amc.service.export import load_ratio_mapping, removed_fraction, torch_pruning_ratio
from amc.service.front import Candidate, ParetoFront, pareto_front, read_front_csv
from amc.service.pareto import update_pareto
from amc.service.ui import check_port_free, check_store, has_pareto_front, ui_command, ui_lines, ui_urls
from envs import EnvConfig

EXPERIMENT = "test-pareto"
DOMINATED = {
    "episode": 0,
    "reward": 0.05,
    "top1": 0.05,
    "flops_ratio": 0.99,
    "params_ratio": 0.99,
    "ratios": {"conv1": 0.01},
}


def _dominates(
    a: Candidate, b: Candidate, objectives: tuple[str, ...] = ("top1", "flops_ratio", "params_ratio")
) -> bool:
    """Brute force, independent of moocore: a is at least as good everywhere and better somewhere."""
    sign = {"top1": 1.0, "flops_ratio": -1.0, "params_ratio": -1.0, "latency_ratio": -1.0}
    av = [sign[n] * a.objective(n) for n in objectives]
    bv = [sign[n] * b.objective(n) for n in objectives]
    return all(x >= y for x, y in zip(av, bv)) and any(x > y for x, y in zip(av, bv))


def _same(a: Candidate, b: Candidate) -> bool:
    fields = ("top1", "flops_ratio", "params_ratio", "latency_ratio")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def _random_candidates(n: int, seed: int, latency: bool = False) -> list[Candidate]:
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.05, 0.95, size=(n, 4)).round(2)  # rounding makes ties and duplicates
    return [
        Candidate("run", "run", i, *map(float, v[:3]), float(v[3]) if latency else None) for i, v in enumerate(values)
    ]


# --------------------------------------------------------------------------- the front (pure)
def test_small_front_and_hypervolume_by_hand() -> None:
    a = Candidate("r", "r", 0, top1=0.9, flops_ratio=0.5, params_ratio=0.5)
    b = Candidate("r", "r", 1, top1=0.8, flops_ratio=0.3, params_ratio=0.6)
    c = Candidate("r", "r", 2, top1=0.7, flops_ratio=0.6, params_ratio=0.6)  # dominated by a
    front = pareto_front([a, b, c])
    assert [x.episode for x in front.front] == [1, 0], "ordered by FLOPs; the dominated c is left out"
    assert front.objectives == ("top1", "flops_ratio", "params_ratio") and front.reference == (0.0, 1.0, 1.0)
    # boxes up to (error 1, ratio 1, ratio 1): a 0.9*0.5*0.5 + b 0.8*0.7*0.4 - overlap 0.8*0.5*0.4
    assert front.hypervolume == pytest.approx(0.225 + 0.224 - 0.16)
    assert front.best().episode == 0 and front.best(max_flops_ratio=0.4).episode == 1
    with pytest.raises(ConfigError, match="raise --max-flops-ratio"):
        front.best(max_flops_ratio=0.2)


@pytest.mark.parametrize("latency", [False, True])
def test_front_is_exactly_the_non_dominated_set(latency: bool) -> None:
    pool = _random_candidates(300, seed=int(latency), latency=latency)
    front = pareto_front(pool)
    assert front.objectives[-1] == ("latency_ratio" if latency else "params_ratio")
    expected: list[Candidate] = []
    for c in pool:  # non-dominated, and the first of exact duplicates
        if not any(_dominates(o, c, front.objectives) for o in pool) and not any(_same(o, c) for o in expected):
            expected.append(c)
    assert front.keys == {c.key for c in expected}
    assert len(front.front) < len(pool) and 0.0 < front.hypervolume < 1.0


def test_latency_left_out_when_only_some_candidates_have_it() -> None:
    pool = _random_candidates(5, seed=2, latency=True) + _random_candidates(5, seed=3)
    with pytest.warns(UserWarning, match="latency"):
        assert "latency_ratio" not in pareto_front(pool).objectives
    with pytest.raises(ConfigError, match="amc search"):
        pareto_front([])


def test_torch_pruning_ratio_keeps_exactly_amcs_channels() -> None:
    for channels in range(1, 257):
        for kept in range(1, channels + 1):
            ratio = torch_pruning_ratio(channels, kept)
            assert 0.0 <= ratio < 1.0 and int(channels * (1 - ratio)) == kept


def test_nni_ratio_is_the_removed_fraction_and_counts_back() -> None:
    for channels in range(1, 513):
        for kept in range(1, channels + 1):
            ratio, removed = removed_fraction(channels, kept), channels - kept
            assert ratio == pytest.approx(removed / channels, abs=1e-15)
            assert int(ratio * channels) == removed == round(ratio * channels)


# --------------------------------------------------------------------------- an experiment with searches
def _search(ckpt: Path, out: Path, uri: str, seed: int, target: float) -> str:
    env = EnvConfig(model="resnet20", checkpoint=str(ckpt), target_ratio=target, eval_batches=1, bn_batches=2)
    config = SearchConfig(
        env=env,
        agent="random",
        episodes=6,
        seed=seed,
        ddpg=DDPGConfig(hidden=(32, 32)),
        checkpoint_every=3,
        experiment=EXPERIMENT,
        workers=0,
    )
    return run_search(config, out, tracking_uri=uri, progress=False).run_id


@pytest.fixture(scope="module")
def store(trained_resnet20: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two tiny random searches, a hand-made run with one dominated policy, and a run that is no search."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("pareto")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    runs = [_search(trained_resnet20 / "model.pt", root / f"s{i}", uri, i, t) for i, t in enumerate((0.5, 0.6))]
    fake = client.create_run(exp_id, run_name="hand-made").info.run_id
    summary = write_json_atomic(root / "fake" / "search.json", {"episodes": [DOMINATED], "best": {"episode": 0}})
    client.log_artifact(fake, str(summary))
    client.set_terminated(fake)
    client.set_terminated(client.create_run(exp_id, run_name="not-a-search").info.run_id)
    return {"uri": uri, "root": root, "runs": runs, "fake": fake, "ckpt": trained_resnet20 / "model.pt"}


def test_update_pareto_logs_front_and_tags_runs(store: dict, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    update_pareto(EXPERIMENT, store["uri"])  # a second call must reuse the Pareto run, not add one
    report = update_pareto(EXPERIMENT, store["uri"], out=tmp_path)
    front, client = report.front, MlflowClient(store["uri"])
    assert len(report.runs) == 3 and len(front.candidates) == 13, (
        "every episode of every search, the no-search run skipped"
    )
    assert f"{store['fake']}:0" not in front.keys, "the known dominated policy is not on the front"
    for c in front.front:
        assert not any(_dominates(o, c) for o in front.candidates)
    for c in front.candidates:
        if c.key not in front.keys:
            assert any(_dominates(o, c) or _same(o, c) for o in front.front)
    assert [(r["run_id"], r["episode"]) for r in read_front_csv(tmp_path / "pareto_front.csv")] == [
        (c.run_id, c.episode) for c in front.front
    ]
    for run_id in [*store["runs"], store["fake"]]:
        tags = client.get_run(run_id).data.tags
        episodes = front.episodes_of(run_id)
        assert tags["amc.pareto"] == ("true" if episodes else "false")
        assert tags["amc.pareto.episodes"] == ",".join(map(str, episodes))
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    pareto_runs = client.search_runs([exp_id], "tags.amc.kind = 'pareto'")
    assert [r.info.run_id for r in pareto_runs] == [report.pareto_run_id]
    pareto_run = pareto_runs[0]
    assert pareto_run.data.metrics["hypervolume"] == pytest.approx(front.hypervolume)
    assert pareto_run.data.metrics["front_size"] == len(front.front)
    assert {a.path for a in client.list_artifacts(report.pareto_run_id)} >= {
        "pareto_front.csv",
        "pareto_candidates.csv",
        "pareto_front.json",
        "pareto_front.png",
        "pareto_best_policy.png",
    }
    on_front = client.search_runs([exp_id], 'tags.amc.pareto = "true"')
    assert {r.info.run_id for r in on_front} == {c.run_id for c in front.front}, "the filter the docs give works"


def test_pareto_command(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["pareto", "--experiment", EXPERIMENT, "--tracking-uri", store["uri"], "--out", str(tmp_path), "--no-log"])
        == 0
    )
    out = capsys.readouterr().out
    assert "hypervolume" in out and (tmp_path / "pareto_front.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "pareto_front.json").read_text())
    assert summary["reference_point"] == {"top1": 0.0, "flops_ratio": 1.0, "params_ratio": 1.0}
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert rows[0][:4] == ["run", "run", "id", "episode"]
    front = _front(store).front
    assert [row[:3] for row in rows[1:]] == [[c.run_name, c.run_id[:8], str(c.episode)] for c in front], (
        "each front policy's run is shown by name and run id"
    )
    assert main(["pareto", "--experiment", "nope", "--tracking-uri", store["uri"]]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- export
def _front(store: dict) -> ParetoFront:
    return update_pareto(EXPERIMENT, store["uri"], log_to_mlflow=False).front


def test_export_amc_from_front_applies_with_amc_prune(store: dict, tmp_path: Path) -> None:
    best = _front(store).best(max_flops_ratio=0.5)
    assert (
        main(
            [
                "export",
                "--experiment",
                EXPERIMENT,
                "--pareto",
                "--max-flops-ratio",
                "0.5",
                "--tracking-uri",
                store["uri"],
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 0
    )
    policy = load_policy(tmp_path / "x" / "policy.json")
    assert dict(policy.ratios) == dict(best.ratios) and policy.measured["top1"] == best.top1
    assert policy.model.name == "resnet20" and policy.target is not None
    manifest = json.loads((tmp_path / "x" / "export.json").read_text())
    assert [(p["run_id"], p["episode"]) for p in manifest["policies"]] == [(best.run_id, best.episode)]
    assert (
        main(
            [
                "prune",
                "--checkpoint",
                str(store["ckpt"]),
                "--policy",
                str(tmp_path / "x" / "policy.json"),
                "--finetune-epochs",
                "0",
                "--latency-batch",
                "1",
                "--out",
                str(tmp_path / "pruned"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "pruned" / "report.json").read_text())
    assert report["flops_ratio"] == pytest.approx(best.flops_ratio, abs=1e-9), (
        "the engine reproduces the search's FLOPs"
    )
    assert report["params_ratio"] == pytest.approx(best.params_ratio, abs=1e-9)


def test_export_every_front_policy(store: dict, tmp_path: Path) -> None:
    front = _front(store)
    budget = sorted(c.flops_ratio for c in front.front)[2]
    assert (
        main(
            [
                "export",
                "--experiment",
                EXPERIMENT,
                "--pareto",
                "--all",
                "--max-flops-ratio",
                str(budget),
                "--tracking-uri",
                store["uri"],
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "export.json").read_text())
    expected = {(c.run_id, c.episode) for c in front.front if c.flops_ratio <= budget}
    assert {(p["run_id"], p["episode"]) for p in manifest["policies"]} == expected and len(expected) >= 3
    for p in manifest["policies"]:
        assert load_policy(tmp_path / p["dir"] / "policy.json").measured["flops_ratio"] <= budget


def _groups(ckpt: Path) -> ModelGraph:
    saved = load_model(ckpt)
    return ModelGraph(saved.model, saved.spec.example_inputs())


def test_export_torch_pruning_snippet_reproduces_the_policy(store: dict, tmp_path: Path) -> None:
    run_id = store["runs"][1]
    assert (
        main(
            [
                "export",
                "--experiment",
                EXPERIMENT,
                "--run-id",
                run_id,
                "--episode",
                "3",
                "--format",
                "torch-pruning",
                "--tracking-uri",
                store["uri"],
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    chosen = next(c for c in _front_candidates(store) if c.run_id == run_id and c.episode == 3)
    mapping = load_ratio_mapping(tmp_path / "torch_pruning_ratios.json")
    graph = _groups(store["ckpt"])
    assert set(mapping) == {m for g in graph for m in g.modules}, "every member module of every group"
    # the snippet runs as a script: prunes the dense checkpoint and saves a weights-only file
    out = subprocess.run(
        [sys.executable, str(tmp_path / "apply_torch_pruning.py"), str(store["ckpt"]), str(tmp_path / "tp.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    saved = torch.load(tmp_path / "tp.pt", weights_only=True)
    dense = load_model(store["ckpt"])
    model = replay_history(dense.model, dense.spec.example_inputs(), saved["pruning_history"])
    modules = dict(model.named_modules())
    for g in graph:
        kept = kept_channels(g.channels, chosen.ratios[g.name])
        assert all(modules[m].out_channels == kept for m in g.modules), g.name
    ratio = count_cost(model, dense.spec.example_inputs()).flops / graph.dense_cost.flops
    assert ratio == pytest.approx(chosen.flops_ratio, abs=1e-9)
    spec = json.loads((tmp_path / "torch_pruning_ratios.json").read_text())
    assert spec["checkpoint"] == str(store["ckpt"]), "the dense weights the run searched"
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert manifest["exact_channels"] is True and manifest["policies"][0]["checkpoint"] == str(store["ckpt"])


def test_export_search_out_policy_file_equals_run_export(store: dict, tmp_path: Path) -> None:
    """`--policy best_policy.json` (from `amc search --out`) exports the same channels as the run itself."""
    run_id = store["runs"][0]
    assert (
        main(
            [
                "export",
                "--experiment",
                EXPERIMENT,
                "--run-id",
                run_id,
                "--format",
                "torch-pruning",
                "--tracking-uri",
                store["uri"],
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "export",
                "--policy",
                str(store["root"] / "s0" / "best_policy.json"),
                "--checkpoint",
                str(store["ckpt"]),
                "--format",
                "torch-pruning",
                "--out",
                str(tmp_path / "file"),
            ]
        )
        == 0
    )
    run, local = (json.loads((tmp_path / d / "torch_pruning_ratios.json").read_text()) for d in ("run", "file"))
    assert run["groups"] == local["groups"] and run["dense_weights_sha256"] == local["dense_weights_sha256"]
    assert (
        main(
            [
                "export",
                "--policy",
                str(store["root"] / "s0" / "best_policy.json"),
                "--experiment",
                EXPERIMENT,
                "--run-id",
                run_id,
                "--tracking-uri",
                store["uri"],
                "--out",
                str(tmp_path / "both"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "both").exists()


def _front_candidates(store: dict) -> tuple[Candidate, ...]:
    return _front(store).candidates


def test_export_nni_config_list(store: dict, tmp_path: Path) -> None:
    run_id = store["runs"][0]
    assert (
        main(
            [
                "export",
                "--experiment",
                EXPERIMENT,
                "--run-id",
                run_id,
                "--format",
                "nni",
                "--tracking-uri",
                store["uri"],
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    best = json.loads((store["root"] / "s0" / "search.json").read_text())["best"]
    config_list = json.loads((tmp_path / "nni_config_list.json").read_text())
    graph = _groups(store["ckpt"])
    assert len(config_list) == len(graph)
    for entry, g in zip(config_list, graph):
        assert set(entry) == {"op_names", "sparse_ratio"} and entry["op_names"] == list(g.modules)
        removed = g.channels - kept_channels(g.channels, best["policy"][g.name])
        assert entry["sparse_ratio"] == pytest.approx(removed / g.channels, abs=1e-12)
        assert int(entry["sparse_ratio"] * g.channels) == removed
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert manifest["policies"][0]["episode"] == best["episode"]
    assert manifest["exact_channels"] is False, "NNI picks its own channels; the manifest says so"
    from amc.pruning import DEFAULT_CRITERION  # the searches here use the default criterion

    assert (
        manifest["policies"][0]["channel_selection"]["tool"]
        == {"l1": "L1NormPruner", "l2": "L2NormPruner"}[DEFAULT_CRITERION]
    )


def test_export_takes_the_short_run_id_amc_pareto_shows(store: dict, tmp_path: Path) -> None:
    run_id = store["runs"][1]
    args = ["export", "--experiment", EXPERIMENT, "--run-id", run_id[:8], "--tracking-uri", store["uri"]]
    assert main([*args, "--out", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "export.json").read_text())
    assert manifest["policies"][0]["run_id"] == run_id


def test_export_errors(store: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["--experiment", EXPERIMENT, "--tracking-uri", store["uri"], "--out", str(tmp_path)]
    cases = [
        (["--pareto", "--max-flops-ratio", "0.01"], "raise --max-flops-ratio"),
        (["--run-id", "0" * 32], "no MLflow run"),
        (["--run-id", store["fake"]], "has no best_policy.json"),
        (["--pareto", "--episode", "1"], "--episode picks an episode of --run-id"),
        (["--run-id", store["runs"][0], "--episode", "99"], "has no episode 99"),
        (["--run-id", store["runs"][0], "--all"], "--all exports every Pareto-optimal policy"),
        (["--pareto", "--format", "onnx"], "unknown export format 'onnx'"),
        (["--pareto", "--run-id", store["runs"][0]], "--pareto or --run-id ID (one of them)"),
        (["--pareto", "--policy", str(store["root"] / "s0" / "best_policy.json")], "give one source or the other"),
    ]
    for args, message in cases:
        assert main(["export", *args, *common]) == 2, args
        assert message in capsys.readouterr().err
        assert not tmp_path.exists() or not any(tmp_path.iterdir()), f"{args} wrote files"


# --------------------------------------------------------------------------- read-only commands
def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


READ_ONLY = {
    "pareto": ["pareto", "--experiment", "digits-resnet20"],
    "pareto-out": ["pareto", "--experiment", "digits-resnet20", "--no-log", "--out", "front"],
    "export": ["export", "--experiment", "digits-resnet2", "--pareto", "--out", "export"],
    "ui": ["ui", "--experiment", "digits-resnet20"],
    "ui-no-experiment": ["ui"],
}


@pytest.mark.parametrize("where", ["default", "env", "flag", "file-store"])
@pytest.mark.parametrize("command", sorted(READ_ONLY))
def test_read_only_commands_create_no_store(
    command: str, where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Without a store, pareto / export / ui exit 2 with one line and leave every directory as it was."""
    cwd, elsewhere = tmp_path / "cwd", tmp_path / "elsewhere"
    cwd.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = list(READ_ONLY[command])
    missing = {"default": cwd / "mlflow.db", "file-store": elsewhere / "mlruns"}.get(where, elsewhere / "mlflow.db")
    if where == "env":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    elif where == "flag":
        args += ["--tracking-uri", f"sqlite:///{missing}"]
    elif where == "file-store":
        args += ["--tracking-uri", str(missing)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err
        == f"amc {args[0]}: error: there is no MLflow store at {missing}; run `amc search` first or pass --tracking-uri\n"
    )
    assert not any(cwd.iterdir()) and not any(elsewhere.iterdir()), "nothing was created"


@pytest.mark.parametrize("command", ["pareto", "export", "ui"])
def test_a_typo_in_the_experiment_writes_nothing(
    store: dict, command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    client = MlflowClient(store["uri"])
    before = sorted(e.name for e in client.search_experiments())
    typo = EXPERIMENT + "s"
    args = {
        "pareto": ["pareto", "--experiment", typo, "--out", "front"],
        "export": ["export", "--experiment", typo, "--pareto", "--out", "export"],
        "ui": ["ui", "--experiment", typo, "--port", _free_port()],
    }[command]
    assert main([*args, "--tracking-uri", store["uri"]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"amc {command}: error: no MLflow experiment named {typo!r}")
    assert f"it has: {', '.join(before)} " in err, "the store's experiments are listed"
    assert not any(tmp_path.iterdir()), "nothing written here"
    assert sorted(e.name for e in client.search_experiments()) == before, "no experiment created"


def test_read_only_commands_in_a_real_process(store: dict, tmp_path: Path) -> None:
    """The whole stderr of a real `amc` process is the one line (MLflow logs nothing), and nothing is written."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    amc = [sys.executable, "-m", "amc.cli"]
    cases = [
        (["pareto", "--experiment", EXPERIMENT], f"there is no MLflow store at {tmp_path / 'mlflow.db'}"),
        (
            ["export", "--experiment", "typo", "--pareto", "--out", "x", "--tracking-uri", store["uri"]],
            "no MLflow experiment named 'typo'",
        ),
    ]
    for args, message in cases:
        proc = subprocess.run([*amc, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
        assert not any(tmp_path.iterdir()), f"{args[0]} wrote {sorted(p.name for p in tmp_path.iterdir())}"


# --------------------------------------------------------------------------- ui helpers
def test_ui_command_and_checks(tmp_path: Path) -> None:
    cmd = ui_command("sqlite:////x/mlflow.db", 5123)
    assert cmd[1:4] == ["-m", "mlflow", "server"] and cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "127.0.0.1:5123" in cmd[cmd.index("--allowed-hosts") + 1].split(",")
    assert "searchFilter=tags.amc.pareto%20%3D%20%22true%22" in ui_urls(5123, "7")[2]
    with pytest.raises(ConfigError, match="already an MLflow server"):
        check_store("http://127.0.0.1:5000")
    with pytest.raises(ConfigError, match="no MLflow store"):
        check_store(f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(ConfigError, match="no MLflow store"):
        check_store(str(tmp_path / "mlruns"))
    assert not any(tmp_path.iterdir())


def test_ui_lines_say_to_run_amc_pareto_when_there_is_no_front() -> None:
    base = "http://127.0.0.1:5123/"
    assert ui_lines(5123) == [f"  {base}"]
    with_front = ui_lines(5123, "my exp", "7")
    assert with_front == [
        f"  {base}",
        f"  {base}#/experiments/7/runs   runs of 'my exp'",
        f'  {ui_urls(5123, "7")[2]}   its runs owning a Pareto-front point (tags.amc.pareto = "true")',
    ]
    with_run = ui_lines(5123, "my exp", "7", pareto_run_id="abc")
    assert with_run[:3] == with_front and with_run[3] == (
        f"  {base}#/experiments/7/runs/abc/artifacts   its Pareto front: pareto_front.png and the tables (run "
        "pareto-front)"
    ), "the front plot's page, not per-step charts"
    without = ui_lines(5123, "my exp", "7", front=False, tracking_uri="sqlite:///a b.db")
    assert without[:2] == with_front[:2] and len(without) == 3
    assert without[2] == (
        "  no Pareto front yet in experiment 'my exp': run `amc pareto --experiment 'my exp' --tracking-uri "
        f"'sqlite:///a b.db'` first, then open {ui_urls(5123, '7')[2]}"
    )
    assert not without[2].strip().startswith("http"), "no address that would land on a filter matching nothing"


def test_ui_command_without_a_pareto_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`amc ui --experiment` (the server replaced) on an experiment before and after `amc pareto`."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("no-front", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(exp_id, run_name="hand-made").info.run_id
    client.log_artifact(run, str(write_json_atomic(tmp_path / "s" / "search.json", {"episodes": [DOMINATED]})))
    client.set_terminated(run)
    served: list[list[str]] = []
    monkeypatch.setattr("amc.service.ui.serve", lambda cmd: served.append(cmd) or 0)
    args = ["ui", "--experiment", "no-front", "--tracking-uri", uri, "--port", _free_port()]

    assert not has_pareto_front(client, exp_id)
    assert main(args) == 0 and len(served) == 1
    out = capsys.readouterr().out
    assert (
        f"no Pareto front yet in experiment 'no-front': run `amc pareto --experiment no-front --tracking-uri {uri}` first"
        in out
    )
    assert "searchFilter" not in "".join(line for line in out.splitlines() if line.strip().startswith("http"))

    update_pareto("no-front", uri)
    assert has_pareto_front(client, exp_id)
    assert main(args) == 0 and len(served) == 2
    out = capsys.readouterr().out
    pareto_run = client.search_runs([exp_id], "tags.amc.kind = 'pareto'")[0].info.run_id
    urls = ui_urls(int(args[-1]), exp_id, pareto_run)
    assert "no Pareto front yet" not in out and f"  {urls[2]}   its runs owning a Pareto-front point" in out
    assert f"  {urls[3]}   its Pareto front: pareto_front.png" in out and urls[3].endswith(f"/{pareto_run}/artifacts")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(ConfigError, match="in use"):
            check_port_free(sock.getsockname()[1])


def test_snippet_imports_without_amc_main(store: dict, tmp_path: Path) -> None:
    """``prune()`` of the snippet works on a plain model instance (what a user without amc does)."""
    assert (
        main(
            [
                "export",
                "--experiment",
                EXPERIMENT,
                "--run-id",
                store["runs"][0],
                "--format",
                "torch-pruning",
                "--tracking-uri",
                store["uri"],
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    spec = importlib.util.spec_from_file_location("apply_torch_pruning", tmp_path / "apply_torch_pruning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dense = load_model(store["ckpt"])
    module.prune(dense.model, dense.spec.example_inputs())
    best = json.loads((store["root"] / "s0" / "search.json").read_text())["best"]
    ratio = count_cost(dense.model, dense.spec.example_inputs()).flops / _groups(store["ckpt"]).dense_cost.flops
    assert ratio == pytest.approx(best["flops_ratio"], abs=1e-9)
