"""Every export reproduces what `amc prune` makes from the same policy, or says plainly that it cannot.

`amc export --policy FILE` converts a local policy file; the torch-pruning snippet, applied to a fresh dense
model, must give `amc prune`'s model (before BatchNorm recalibration and fine-tuning) for every criterion;
the NNI config list (NNI cannot run here) is checked against the policy; bad input exits 2 and writes nothing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
from pathlib import Path
from types import ModuleType

import pytest
import torch

from amc.checkpoint import load_model
from amc.cli import main
from amc.data import DataConfig, load_data
from amc.groups import ModelGraph
from amc.policy import Policy, load_policy
from amc.pruning import CRITERIA, kept_channels
from amc.service.export import DenseSource, select_channels

RATIOS = (0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75)


def _policy(ckpt: Path, criterion: str, out: Path, seed: int = 0) -> Path:
    """A non-uniform policy file for the dense checkpoint, written by hand (as a user would)."""
    template = load_policy_of_checkpoint(ckpt)
    rng = random.Random(seed)
    ratios = {name: rng.choice(RATIOS) for name in template.ratios}
    return dataclasses.replace(template, ratios=ratios, criterion=criterion).save(out)


def load_policy_of_checkpoint(ckpt: Path) -> Policy:
    from amc.engine import make_policy

    saved = load_model(ckpt)
    return make_policy(saved.model, saved.spec.example_inputs(), 0.5, saved.spec.name)


def _snippet(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _test_images(count: int = 64) -> torch.Tensor:
    inputs, _ = next(iter(load_data(DataConfig("digits")).loader("test", count)))
    return inputs


def _exported_and_pruned(
    ckpt: Path, policy: Path, tmp_path: Path, size: int, name: str
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``amc export --format torch-pruning`` applied to a fresh dense model, and ``amc prune``'s model (both eval)."""
    export = ["export", "--policy", str(policy), "--checkpoint", str(ckpt), "--format", "torch-pruning"]
    assert main([*export, "--out", str(tmp_path / "tp")]) == 0
    prune = ["prune", "--checkpoint", str(ckpt), "--policy", str(policy), "--input-size", str(size)]
    no_recovery = ["--finetune-epochs", "0", "--bn-batches", "0", "--latency-batch", "1"]
    assert main([*prune, *no_recovery, "--out", str(tmp_path / "pruned")]) == 0
    reference = load_model(tmp_path / "pruned" / "model.pt").model.eval()
    fresh = load_model(ckpt).model  # a fresh dense model, pruned by the exported snippet alone
    _snippet(tmp_path / "tp" / "apply_torch_pruning.py", name).prune(fresh, torch.zeros(1, 1, size, size))
    return fresh.eval(), reference


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_torch_pruning_export_equals_amc_prune(criterion: str, trained_resnet20: Path, tmp_path: Path) -> None:
    ckpt = trained_resnet20 / "model.pt"
    policy = _policy(ckpt, criterion, tmp_path / "best_policy.json")
    fresh, reference = _exported_and_pruned(ckpt, policy, tmp_path, 16, f"apply_{criterion}")

    ours, theirs = fresh.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert ours[name].shape == theirs[name].shape, name
        assert torch.equal(ours[name], theirs[name]), f"{name} differs: not the channels `amc prune` kept"
    images = _test_images()
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), reference(images), atol=1e-5, rtol=0)
    manifest = json.loads((tmp_path / "tp" / "export.json").read_text())
    assert manifest["exact_channels"] is True and manifest["selection"] == {"policy": str(policy)}
    assert manifest["policies"][0]["channel_selection"]["criterion"] == criterion


def test_taylor_export_uses_gradients_not_l1(trained_resnet20: Path, tmp_path: Path) -> None:
    """The old snippet silently used L1 for taylor; the recorded channels must be taylor's own."""
    ckpt = trained_resnet20 / "model.pt"
    taylor = load_policy(_policy(ckpt, "taylor", tmp_path / "taylor.json"))
    chosen = {c: select_channels(dataclasses.replace(taylor, criterion=c), DenseSource(ckpt)) for c in ("taylor", "l1")}
    kept = {c: {g.name: g.kept_indices for g in sel.groups} for c, sel in chosen.items()}
    assert kept["taylor"].keys() == kept["l1"].keys()
    assert kept["taylor"] != kept["l1"]
    assert chosen["taylor"].calibration is not None and chosen["l1"].calibration is None
    for g in chosen["taylor"].groups:
        assert len(g.kept_indices) == kept_channels(g.channels, taylor.ratios[g.name])
        assert sorted(g.kept_indices + g.removed_indices) == list(range(g.channels))


def test_snippet_refuses_other_weights(trained_resnet20: Path, tmp_path: Path) -> None:
    ckpt = trained_resnet20 / "model.pt"
    policy = _policy(ckpt, "l1", tmp_path / "p.json")
    assert (
        main(
            [
                "export",
                "--policy",
                str(policy),
                "--checkpoint",
                str(ckpt),
                "--format",
                "torch-pruning",
                "--out",
                str(tmp_path / "tp"),
            ]
        )
        == 0
    )
    snippet = _snippet(tmp_path / "tp" / "apply_torch_pruning.py", "apply_other")
    other = load_model(ckpt).model
    with torch.no_grad():
        other.conv1.weight.mul_(1.01)
    with pytest.raises(ValueError, match="not the dense weights"):
        snippet.prune(other, torch.zeros(1, 1, 16, 16))
    assert other.conv1.out_channels == 16, "nothing pruned after the refusal"
    snippet.prune(other, torch.zeros(1, 1, 16, 16), check_weights=False)  # the user's explicit choice
    assert other.conv1.out_channels == kept_channels(16, load_policy(policy).ratios["conv1"])


@pytest.mark.parametrize("criterion", ["l1", "l2", "taylor"])
def test_nni_config_matches_the_policy(criterion: str, trained_resnet20: Path, tmp_path: Path) -> None:
    ckpt = trained_resnet20 / "model.pt"
    policy_path = _policy(ckpt, criterion, tmp_path / "p.json", seed=3)
    policy = load_policy(policy_path)
    assert main(["export", "--policy", str(policy_path), "--format", "nni", "--out", str(tmp_path / "nni")]) == 0
    config_list = json.loads((tmp_path / "nni" / "nni_config_list.json").read_text())
    saved = load_model(ckpt)
    graph = ModelGraph(saved.model, saved.spec.example_inputs())
    assert len(config_list) == len(graph)
    listed = [m for entry in config_list for m in entry["op_names"]]
    assert sorted(listed) == sorted(m for g in graph for m in g.modules), "every group's modules, each once"
    for entry, g in zip(config_list, graph):
        assert set(entry) == {"op_names", "sparse_ratio"} and entry["op_names"] == list(g.modules)
        removed = g.channels - kept_channels(g.channels, policy.ratios[g.name])
        assert entry["sparse_ratio"] == pytest.approx(removed / g.channels, abs=1e-12)
        assert int(entry["sparse_ratio"] * g.channels) == removed == round(entry["sparse_ratio"] * g.channels)
    manifest = json.loads((tmp_path / "nni" / "export.json").read_text())
    selection = manifest["policies"][0]["channel_selection"]
    assert manifest["exact_channels"] is False and selection["exact_channels"] is False
    assert selection["tool"] == {"l1": "L1NormPruner", "l2": "L2NormPruner", "taylor": "TaylorPruner"}[criterion]
    assert "channels kept differ" in selection["note"]


def _fails(args: list[str], message: str, out: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", *args, "--out", str(out)]) == 2, args
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists(), f"{args} wrote {sorted(p.name for p in out.iterdir())}"


def test_export_policy_file_bad_input_writes_nothing(
    trained_resnet20: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ckpt = trained_resnet20 / "model.pt"
    policy = str(_policy(ckpt, "l1", tmp_path / "p.json"))
    bn_scale = str(_policy(ckpt, "bn_scale", tmp_path / "bn.json"))
    sparse = dataclasses.replace(load_policy(policy), granularity="unstructured").save(tmp_path / "sparse.json")
    (tmp_path / "broken.json").write_text("{not json")
    assert (
        main(
            [
                "prune",
                "--checkpoint",
                str(ckpt),
                "--policy",
                policy,
                "--finetune-epochs",
                "0",
                "--bn-batches",
                "0",
                "--out",
                str(tmp_path / "pruned"),
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    cases = [
        (["--policy", policy, "--experiment", "digits-resnet20"], "--experiment choose from MLflow"),
        (["--policy", policy, "--run-id", "0" * 32], "give one source or the other"),
        (["--policy", policy, "--pareto"], "--policy exports a local policy file"),
        (["--experiment", "x"], "--pareto or --run-id ID"),
        ([], "--policy FILE, or --experiment NAME"),
        (["--policy", str(tmp_path / "missing.json")], "does not exist"),
        (["--policy", str(tmp_path / "broken.json")], "not valid JSON"),
        (["--policy", policy, "--format", "onnx"], "unknown export format 'onnx'"),
        (["--policy", policy, "--format", "torch-pruning"], "pass --checkpoint"),
        (
            ["--policy", policy, "--format", "torch-pruning", "--checkpoint", str(tmp_path / "nope.pt")],
            "does not exist",
        ),
        (
            ["--policy", policy, "--format", "torch-pruning", "--checkpoint", str(tmp_path / "pruned" / "model.pt")],
            "holds a pruned model",
        ),
        (["--policy", str(sparse), "--format", "torch-pruning", "--checkpoint", str(ckpt)], "only channel policies"),
        (["--policy", bn_scale, "--format", "nni"], "cannot express criterion 'bn_scale'"),
        (["--policy", policy, "--data-dir", "/data"], "pass --data NAME too"),
    ]
    for args, message in cases:
        _fails(args, message, out, capsys)
    assert main(["check", "--checkpoint", str(tmp_path / "pruned" / "model.pt")]) == 2
    assert "holds a pruned model; `amc check` reports on the dense model" in capsys.readouterr().err


def test_export_policy_file_as_amc(trained_resnet20: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    policy = _policy(trained_resnet20 / "model.pt", "l2", tmp_path / "best_policy.json")
    assert main(["export", "--policy", str(policy), "--out", str(tmp_path / "x")]) == 0
    assert "apply with: amc prune" in capsys.readouterr().out
    assert load_policy(tmp_path / "x" / "policy.json").to_dict() == load_policy(policy).to_dict()
    manifest = json.loads((tmp_path / "x" / "export.json").read_text())
    assert manifest["format"] == "amc" and manifest["exact_channels"] is True and manifest["experiment"] is None
    assert manifest["policies"][0]["files"] == ["policy.json", "policy.png"]


def test_torch_pruning_export_of_grouped_convs_equals_amc_prune(tmp_path: Path) -> None:
    """RegNet's grouped convs keep a multiple of their groups; the export must keep the same channels."""
    from amc.checkpoint import save_model
    from amc.engine import make_policy
    from amc.models import ModelSpec, create_model

    spec = ModelSpec("torchvision:regnet_x_400mf", 1, 10, 32)
    torch.manual_seed(0)
    dense = create_model(spec).eval()
    graph = ModelGraph(dense, spec.example_inputs())
    assert max(g.multiple for g in graph) > 1, "the model must have grouped (non-depthwise) convs"
    rng = random.Random(0)
    ckpt = save_model(tmp_path / "model.pt", dense, spec)
    policy = make_policy(dense, spec.example_inputs(), {g.name: rng.choice((0.0, 0.3, 0.5)) for g in graph}, spec.name)
    policy_file = policy.save(tmp_path / "policy.json")
    fresh, reference = _exported_and_pruned(ckpt, policy_file, tmp_path, 32, "apply_grouped")
    ours, theirs = fresh.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert sum(t.numel() for t in theirs.values()) < sum(t.numel() for t in dense.state_dict().values())
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), f"{name} differs from amc prune's model"

    # NNI's config list holds ratios only; they must give the channel counts amc prune kept (grouped multiples)
    assert (
        main(
            [
                "export",
                "--policy",
                str(policy_file),
                "--checkpoint",
                str(ckpt),
                "--format",
                "nni",
                "--out",
                str(tmp_path / "nni"),
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "nni" / "nni_config_list.json").read_text())
    pruned_modules = dict(reference.named_modules())
    checked = 0
    for entry in config:
        for name in entry["op_names"]:
            module = dict(dense.named_modules())[name]
            channels = module.out_channels if hasattr(module, "out_channels") else module.out_features
            kept = getattr(pruned_modules[name], "out_channels", getattr(pruned_modules[name], "out_features", None))
            assert channels - int(entry["sparse_ratio"] * channels) == kept, name
            checked += 1
    assert checked >= len(graph)
