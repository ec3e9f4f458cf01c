"""Policy and saved-model round trips; mismatched and malformed inputs are rejected."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import amc
from amc.checkpoint import load_model, save_model
from amc.cli import main
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
    result = amc.prune_with_policy(dense, policy, SPEC.example_inputs())
    pruned = result.model
    with pytest.raises(amc.AmcError, match="pass the pruning history"):
        save_model(tmp_path / "m.pt", pruned, SPEC, policy)  # without it the file could not be loaded
    assert not (tmp_path / "m.pt").exists()
    save_model(tmp_path / "m.pt", pruned, SPEC, policy, result.history)
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
        (lambda d: d.pop("model"), "policy field model is missing"),
        (lambda d: d["ratios"].update({"conv1": False}), r"ratios\['conv1'\] is false; ratios must be numbers"),
        (lambda d: d["ratios"].update({"conv1": "0.5"}), r"ratios\['conv1'\] is '0.5'"),
        (lambda d: d.update(round_to="2"), "round_to must be an integer >= 1, got '2'"),
        (lambda d: d.update(round_to=True), "round_to must be an integer >= 1, got true"),
        (lambda d: d["model"].update(input_shape=["1", 16, 16]), r"model.input_shape\[0\] must be an integer"),
        (lambda d: d["model"].update(num_classes=10.5), "model.num_classes must be an integer"),
        (lambda d: d.update(schema_version=True), "schema version true is not supported"),
        (
            lambda d: d.update(target={"metric": "flops", "ratio": True}),
            "target.ratio must be a finite number, got true",
        ),
        (lambda d: d.update(ratios={}), "ratios is empty"),
        (lambda d: d.update(ratios=[0.5]), "ratios must be an object"),
        (lambda d: d.update(extra=1), "unknown field 'extra' in the policy"),
        (lambda d: d["model"].update(depth=20), "unknown field 'depth' in model"),
        (lambda d: d["measured"].update(top1=None), r"measured\['top1'\] must be a finite number, got null"),
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


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty, expected a policy .json file"),
        (b"  \n", "holds only whitespace"),
        (b'{"a": "\xff"}', "is not UTF-8 text"),
        (b"[1, 2]", "must be a JSON object at the top, got [1, 2]"),
        (b'{"ratios": {"a": NaN}}', "NaN is not a number JSON allows"),
        (b'{"ratios": {"a": 1e999}}', "1e999 is too large to be finite"),
        (b'{"n": ' + b"9" * 5000 + b"}", "is too large"),
        (b'{"a": 1, "a": 2}', "key 'a' appears twice"),
        (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (b'{"a":' * 100 + b"1" + b"}" * 100, "nests more than 64 levels"),
    ],
)
def test_unreadable_policy_content(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "p.json").write_bytes(content)
    with pytest.raises(PolicyError, match=re.escape(message)) as info:
        amc.load_policy(tmp_path / "p.json")
    assert "\n" not in str(info.value)


def test_policy_path_that_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="is a directory, expected a policy .json file"):
        amc.load_policy(tmp_path)
    (tmp_path / "link.json").symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(PolicyError, match="is a symbolic link to .*nowhere.json, which does not resolve"):
        amc.load_policy(tmp_path / "link.json")
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(PolicyError, match="is not a regular file"):
        amc.load_policy(tmp_path / "fifo.json")


def test_partial_policy_is_refused_unless_allowed(dense: torch.nn.Module) -> None:
    graph = ModelGraph(dense, SPEC.example_inputs())
    names = list(graph.names)
    partial = replace(_policy(dense, graph), ratios={n: 0.3 for n in names[:3]})
    with pytest.raises(PolicyError, match=f"leaves out {len(names) - 3} of the model's {len(names)} groups"):
        partial.check_complete(names)
    assert partial.check_complete(names, allow_partial=True) == tuple(names[3:])
    complete = partial.completed(names)
    assert list(complete.ratios) == names and complete.check_complete(names) == ()
    assert all(complete.ratios[n] == 0.0 for n in names[3:]) and complete.ratios[names[0]] == 0.3


def test_cli_refuses_a_partial_policy_and_allow_partial_keeps_groups_dense(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = ModelSpec("resnet20", 3, 10, 8)  # the synthetic data set: 3 channels, 8x8 with --input-size 8
    model = create_model(spec)
    names = list(ModelGraph(model, spec.example_inputs()).names)
    amc.Policy(identity_of(spec, model), {n: 0.25 for n in names[:2]}).save(tmp_path / "p.json")
    args = [
        "prune",
        "--model",
        "resnet20",
        "--data",
        "synthetic",
        "--input-size",
        "8",
        "--policy",
        str(tmp_path / "p.json"),
        "--finetune-epochs",
        "0",
        "--bn-batches",
        "0",
    ]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        [line for line in err if "error" in line] == [err[-1]]
        and "leaves out" in err[-1]
        and "--allow-partial" in err[-1]
    )
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--allow-partial", "--out", str(tmp_path / "o")]) == 0
    assert f"{len(names) - 2} group(s) not in the policy stay dense: {', '.join(names[2:])}" in capsys.readouterr().out
    saved = amc.load_policy(tmp_path / "o" / "policy.json")
    assert list(saved.ratios) == names and [saved.ratios[n] for n in names[2:]] == [0.0] * (len(names) - 2)
    assert (
        main(["prune", "--model", "resnet20", "--uniform", "0.2", "--allow-partial", "--out", str(tmp_path / "u")]) == 2
    )
    assert "--allow-partial only applies to --policy" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format_version=2), "format version 2 is not supported"),
        (lambda d: d.update(format_version=True), "format version true is not supported"),
        (
            lambda d: d["spec"].update(in_channels="1"),
            "field spec.in_channels must be an integer in [1, 4096], got '1'",
        ),
        (lambda d: d["spec"].update(input_size=10**12), "field spec.input_size must be an integer in [1, 8192]"),
        (lambda d: d["spec"].update(num_classes=False), "field spec.num_classes must be an integer"),
        (lambda d: d.update(spec=[1]), "field spec must be a mapping"),
        (lambda d: d.update(history=[["conv1", True, [-1]]]), "field history[0] must be"),
        (lambda d: d.update(history=[["nope", True, [0]]]), "pruning history does not fit model 'resnet20'"),
        (lambda d: d.update(state_dict=[1]), "field state_dict must be a mapping"),
        (lambda d: d.update(extra=1), "unknown field 'extra'"),
        (
            lambda d: d.update(policy={"kind": "amc-policy", "schema_version": 1}),
            "the policy inside is invalid: policy field model is missing",
        ),
    ],
)
def test_malformed_model_file_is_rejected(dense: torch.nn.Module, tmp_path: Path, edit, message: str) -> None:
    save_model(tmp_path / "m.pt", dense, SPEC)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    edit(payload)
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(ModelFileError, match=re.escape(message)):
        load_model(tmp_path / "m.pt")


def test_model_path_that_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="is a directory, expected a model .pt file"):
        load_model(tmp_path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelFileError, match="is empty"):
        load_model(tmp_path / "empty.pt")
    (tmp_path / "link.pt").symlink_to(tmp_path / "nowhere.pt")
    with pytest.raises(ModelFileError, match="symbolic link"):
        load_model(tmp_path / "link.pt")


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
