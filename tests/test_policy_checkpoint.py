"""Policy and saved-model round trips; mismatched and malformed inputs are rejected."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import amc
from amc.checkpoint import load_model, save_model
from amc.engine import identity_of
from amc.errors import ModelFileError, PolicyError, PolicyMismatchError
from amc.groups import ModelGraph
from amc.models import ModelSpec, create_model
from amc.policy import SCHEMA_VERSION, Target

SPEC = ModelSpec("resnet20", 1, 10, 16)


@pytest.fixture()
def dense() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(SPEC).eval()


def _policy(model: torch.nn.Module, graph: ModelGraph, granularity: str = "channel") -> amc.Policy:
    ratios = {g.name: round(0.1 + 0.05 * i, 2) for i, g in enumerate(graph)}
    return amc.Policy(identity_of(SPEC, model), ratios, granularity, "l2", 1, Target("flops", 0.5), {"top1": 0.9})


def test_policy_json_round_trip(dense: torch.nn.Module, tmp_path: Path) -> None:
    graph = ModelGraph(dense, SPEC.example_inputs())
    policy = _policy(dense, graph)
    path = policy.save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["kind"] == "amc-policy"
    assert data["model"]["arch_hash"] == amc.policy.architecture_hash(dense)
    assert set(data["versions"]) >= {"torch", "torch-pruning", "amc-search"}
    assert amc.load_policy(path) == policy


def test_pruned_model_reloads_exactly(dense: torch.nn.Module, tmp_path: Path) -> None:
    graph = ModelGraph(dense, SPEC.example_inputs())
    policy = _policy(dense, graph)
    pruned = amc.apply_policy(dense, policy, SPEC.example_inputs())
    save_model(tmp_path / "m.pt", pruned, SPEC, policy)
    saved = amc.load_model(tmp_path / "m.pt")
    x = torch.randn(4, *SPEC.input_shape)
    assert torch.equal(saved.model(x), pruned(x))
    assert saved.policy == policy and saved.spec == SPEC
    assert amc.count_cost(saved.model, x) == amc.count_cost(pruned, x)


def test_saved_file_holds_no_arbitrary_pickles(dense: torch.nn.Module, tmp_path: Path) -> None:
    save_model(tmp_path / "m.pt", dense, SPEC)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)  # raises if any non-allowlisted object is inside
    assert payload["format"] == "amc-model" and payload["history"] == []


def test_policy_for_another_model_is_rejected(dense: torch.nn.Module) -> None:
    graph = ModelGraph(dense, SPEC.example_inputs())
    policy = _policy(dense, graph)
    other_spec = ModelSpec("resnet56", 1, 10, 16)
    other = create_model(other_spec)
    with pytest.raises(PolicyMismatchError, match="made for model 'resnet20'"):
        amc.apply_policy(other, policy, other_spec.example_inputs())
    vgg_spec = ModelSpec("vgg_small", 1, 10, 16)
    bad_names = replace(policy, model=identity_of(vgg_spec, create_model(vgg_spec)))
    with pytest.raises(PolicyMismatchError, match="groups this model does not have"):
        amc.apply_policy(create_model(vgg_spec), bad_names, vgg_spec.example_inputs())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema_version=99), "schema version 99"),
        (lambda d: d.update(kind="other"), "not an amc policy"),
        (lambda d: d["ratios"].update({"conv1": 1.5}), "ratios must be numbers in"),
        (lambda d: d.pop("model"), "missing or has a malformed field"),
        (lambda d: d.update(criterion="magic"), "criterion 'magic' is unknown"),
        (lambda d: d.update(target={"metric": "energy", "ratio": 0.5}), "target metric"),
    ],
)
def test_malformed_policy_is_rejected(dense: torch.nn.Module, tmp_path: Path, edit, message: str) -> None:
    graph = ModelGraph(dense, SPEC.example_inputs())
    data = _policy(dense, graph).to_dict()
    edit(data)
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(PolicyError, match=message):
        amc.load_policy(tmp_path / "p.json")


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(PolicyError, match="not valid JSON"):
        amc.load_policy(tmp_path / "p.json")
    with pytest.raises(PolicyError, match="does not exist"):
        amc.load_policy(tmp_path / "missing.json")


def test_bad_model_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="not a readable model file"):
        load_model(tmp_path / "junk.pt")
    torch.save(create_model(SPEC).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ModelFileError, match="bare state_dict"):
        load_model(tmp_path / "bare.pt")
    assert load_model(tmp_path / "bare.pt", spec=SPEC).spec == SPEC
    with pytest.raises(ModelFileError, match="does not fit"):
        load_model(tmp_path / "bare.pt", spec=ModelSpec("resnet20", 3, 10, 16))


@pytest.mark.parametrize("granularity", ["unstructured", "nm"])
def test_sparse_granularities(dense: torch.nn.Module, granularity: str) -> None:
    graph = ModelGraph(dense, SPEC.example_inputs())
    policy = replace(_policy(dense, graph), granularity=granularity, ratios={g.name: 0.5 for g in graph})
    sparse = amc.apply_policy(dense, policy, SPEC.example_inputs())
    assert amc.cost.count_params(sparse) == amc.cost.count_params(dense)  # same shapes
    weights = [sparse.get_submodule(m).weight for g in graph for m in g.modules]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert 0.45 <= zeros / total <= 0.55
    if granularity == "nm":
        w = sparse.get_submodule("layer1.0.conv2").weight.reshape(16, -1)
        blocks = w[:, : (w.shape[1] // 4) * 4].reshape(16, -1, 4)
        assert int((blocks != 0).sum(-1).max()) <= 2
