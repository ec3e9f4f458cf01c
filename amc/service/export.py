"""Export a policy: the engine's policy JSON, a Torch-Pruning snippet with amc's exact channels, or an NNI config list.

Where the policy comes from: an experiment's Pareto front (the highest search-val top-1 within a FLOPs
budget, or every front policy within it), one search run (its best episode, a given episode, or its
highest top-1 within the budget), or a local policy file (``best_policy.json`` from ``amc search --out``,
``policy.json`` from ``amc prune``, or one written by hand): ``amc export --experiment NAME --pareto | --run-id ID``
or ``amc export --policy FILE [--checkpoint DENSE.pt]``. Formats (registered in :data:`EXPORT_FORMATS`):

- ``amc``: ``policy.json``, the engine's format; ``amc prune --policy`` applies it. Exact for every criterion.
- ``torch-pruning``: ``torch_pruning_ratios.json`` and ``apply_torch_pruning.py``. The export runs amc's
  own channel selection (:func:`amc.pruning.prune_channels`: Torch-Pruning's dependency groups, the
  criterion's importance over each whole group, the lowest-ranked channels removed) on the dense weights
  (``--checkpoint``, else the checkpoint the search run recorded) and records each group's kept channel
  indices; the snippet removes the other channels with Torch-Pruning, group by group in amc's order. The
  result equals ``amc prune``'s model (before BatchNorm recalibration and fine-tuning) for every criterion:
  for ``taylor`` the gradients come from the batch ``amc prune`` draws (``--data`` / ``--seed``, or the
  search run's data). The snippet refuses a model whose weights differ from the ones the channels were
  chosen on (SHA-256 of the state_dict), since the same indices would then not be amc's choice.
- ``nni``: ``nni_config_list.json``, NNI 3.x's ``config_list``: one ``{"op_names": [...], "sparse_ratio": r}``
  entry per group, r = the fraction of the group's channels amc removes (``int(r * channels)`` is that
  count). A config list carries no channel indices: NNI's pruner ranks each layer's channels by its own
  metric, so the channel counts (FLOPs, params) match amc's but the channels kept differ, for every
  criterion; ``export.json`` says so and names the NNI pruner to use (``l1``: ``L1NormPruner``, ``l2``:
  ``L2NormPruner``, ``taylor``: ``TaylorPruner``). ``bn_scale`` has no NNI pruner that takes this config
  list (NNI's ``SlimPruner`` targets BatchNorm layers and trains with a sparsity penalty first) and is
  refused. For NNI 2.x, rename ``sparse_ratio`` to ``sparsity_per_layer``.

Every export also writes ``policy.png`` (per-group ratios, against the run's uniform baseline when known)
and a manifest ``export.json`` (where each policy came from, its figures, its files, and whether the format
reproduces amc's channels exactly). Nothing is written until every chosen policy has been rendered, so bad
input leaves the output directory untouched.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from amc.data import DataConfig
from amc.errors import ConfigError
from amc.files import write_json_atomic, write_text_atomic
from amc.policy import Policy, load_policy
from amc.policy_source import MANIFEST, recorded_dense_model
from amc.registry import Registry
from amc.service.candidates import find_experiment, load_search_runs, mlflow_client, read_json_artifact
from amc.service.front import Candidate, SearchRun, best_within, front_of_runs

if TYPE_CHECKING:
    from amc.engine import Workspace
    from amc.groups import ModelGraph
    from amc.models import ModelSpec

Batch = tuple[torch.Tensor, torch.Tensor]

POLICY_ARTIFACT = "best_policy.json"
TP_SPEC = "torch_pruning_ratios.json"
TP_SNIPPET_FILE = "apply_torch_pruning.py"
NNI_CONFIG = "nni_config_list.json"


# --------------------------------------------------------------------------- what is exported
@dataclass(frozen=True)
class DenseSource:
    """The dense model a policy is applied to, and the data ``amc prune`` would draw a gradient batch from.

    Attributes:
        checkpoint: Dense model file (``model.pt`` from ``amc train``, or a state_dict of a registry model).
        data: Data set of ``amc prune --data``; used only by gradient-based criteria.
        seed: ``amc prune --seed``; picks the gradient batch of gradient-based criteria.
    """

    checkpoint: Path
    data: DataConfig = field(default_factory=DataConfig)
    seed: int = 0


@dataclass(frozen=True)
class ExportItem:
    """One policy to export.

    Attributes:
        policy: The policy in the engine's format.
        origin: Where it came from and its figures (JSON-able; copied into the manifest).
        label: One line naming it (plot titles, the CLI's summary, the snippet's header).
        uniform_ratio: Its search's uniform baseline ratio, drawn in ``policy.png`` when known.
        dense: The dense model, for formats that read the weights.
        candidate: The search episode it came from (None for a local policy file).
    """

    policy: Policy
    origin: Mapping[str, Any]
    label: str
    uniform_ratio: float | None = None
    dense: DenseSource | None = None
    candidate: Candidate | None = None


@dataclass(frozen=True)
class ExportedPolicy:
    """Where one exported policy went."""

    item: ExportItem
    directory: Path
    files: tuple[Path, ...]

    @property
    def candidate(self) -> Candidate | None:
        return self.item.candidate


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_policies` wrote."""

    out: Path
    format: str
    policies: tuple[ExportedPolicy, ...]
    manifest: Path


Rendered = dict[str, Any]  # file name -> JSON body (dict / list) or text (str)


@dataclass(frozen=True)
class ExportFormat:
    """An export format: how it renders a policy and what it can express.

    Attributes:
        render: Builds the format's files for one policy (file name -> JSON body or text); writes nothing.
        exact_channels: Whether applying the files removes exactly the channels ``amc prune`` removes.
        channel_note: How the format's tool picks channels (``{criterion}`` and ``{tool}`` are filled in);
            copied into ``export.json``.
        criteria: The criteria it can express; any other is refused (None: every criterion).
        tools: The tool's own name for each criterion (e.g. NNI's pruner class), recorded in ``export.json``.
        needs_dense_model: Whether rendering reads the dense weights (``--checkpoint``).
    """

    render: Callable[[ExportItem], Rendered]
    exact_channels: bool
    channel_note: str
    criteria: tuple[str, ...] | None = None
    tools: Mapping[str, str] = field(default_factory=dict)
    needs_dense_model: bool = False

    def check(self, name: str, policy: Policy) -> None:
        """Raises ConfigError when this format cannot express ``policy``'s criterion."""
        if self.criteria is not None and policy.criterion not in self.criteria:
            raise ConfigError(
                f"the {name} format cannot express criterion {policy.criterion!r} (it can: "
                f"{', '.join(self.criteria)}); export with --format torch-pruning or --format amc, which keep amc's exact channels"
            )

    def describe(self, policy: Policy) -> dict[str, Any]:
        """The manifest's account of how the exported files choose channels for ``policy``."""
        tool = self.tools.get(policy.criterion)
        out: dict[str, Any] = {
            "criterion": policy.criterion,
            "exact_channels": self.exact_channels,
            "note": self.channel_note.format(criterion=policy.criterion, tool=tool),
        }
        if tool is not None:
            out["tool"] = tool
        return out


EXPORT_FORMATS: Registry[ExportFormat] = Registry("export format")


# --------------------------------------------------------------------------- choosing policies
def from_front(
    runs: Sequence[SearchRun], max_flops_ratio: float | None, every: bool, min_top1: float | None = None
) -> list[Candidate]:
    """The front's best policy within the FLOPs budget, or (``every``) all front policies within it; with
    ``min_top1``, the front of the policies reaching that search-val top-1 (raises when none does)."""
    front = front_of_runs(runs, min_top1)
    best = front.best(max_flops_ratio)  # raises when nothing is within the budget
    if not every:
        return [best]
    return [c for c in front.front if max_flops_ratio is None or c.flops_ratio <= max_flops_ratio]


def from_run(run: SearchRun, episode: int | None, max_flops_ratio: float | None) -> Candidate:
    """A given episode of ``run``; else its best top-1 within the budget; else the search's own best."""
    by_episode = {c.episode: c for c in run.candidates}
    if episode is not None:
        if episode not in by_episode:
            raise ConfigError(
                f"run {run.run_id} has no episode {episode}; it has episodes {min(by_episode)}..{max(by_episode)}"
            )
        return by_episode[episode]
    if max_flops_ratio is None and run.best_episode in by_episode:
        return by_episode[run.best_episode]
    return best_within(run.candidates, max_flops_ratio, f"of run {run.run_id}")


def _run_in_experiment(client: Any, runs: Sequence[SearchRun], run_id: str, experiment: str) -> SearchRun:
    """The search run ``run_id`` (a full id, or a unique prefix such as the 8 characters `amc pareto` shows)."""
    for run in runs:
        if run.run_id == run_id:
            return run
    matches = [run for run in runs if run_id and run.run_id.startswith(run_id)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(
            f"--run-id {run_id} matches {len(matches)} search runs of {experiment!r} "
            f"({', '.join(r.run_id for r in matches[:5])}); give more of the id"
        )
    try:
        other = client.get_run(run_id)
    except Exception:  # MlflowException: no such run
        raise ConfigError(f"there is no MLflow run {run_id!r} in {client.tracking_uri}") from None
    if other.info.experiment_id != find_experiment(client, experiment).experiment_id:
        raise ConfigError(
            f"run {run_id} belongs to another experiment (id {other.info.experiment_id}), not {experiment!r}"
        )
    raise ConfigError(f"run {run_id} is not a finished search (no search.json artifact); pick another --run-id")


# --------------------------------------------------------------------------- the policy in the engine's format
def policy_for(client: Any, candidate: Candidate) -> Policy:
    """The candidate's ratios in the engine's format, with its run's model identity, target and settings."""
    data = read_json_artifact(client, candidate.run_id, POLICY_ARTIFACT)
    if data is None:
        raise ConfigError(
            f"run {candidate.run_id} has no {POLICY_ARTIFACT} artifact, so the model it searched "
            "is unknown; export from a finished `amc search` run"
        )
    template = Policy.from_dict(data)
    measured = {"top1": candidate.top1, "flops_ratio": candidate.flops_ratio, "params_ratio": candidate.params_ratio}
    for key in ("latency_ratio", "latency_ms", "latency_ms_measured"):  # the ratio and ms: the search's estimate
        if getattr(candidate, key) is not None:
            measured[key] = getattr(candidate, key)
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return dataclasses.replace(template, ratios=dict(candidate.ratios), measured=measured, created=now)


# --------------------------------------------------------------------------- groups as other tools see them
@dataclass(frozen=True)
class GroupExport:
    """One group as other tools see it: its member modules, channels, kept channels and removed fraction."""

    name: str
    modules: tuple[str, ...]
    channels: int
    kept: int
    ratio: float


def _spec_of(policy: Policy) -> ModelSpec:
    """The registry :class:`~amc.models.ModelSpec` of the dense model a policy was made for."""
    from amc.models import ModelSpec

    identity = policy.model
    channels, *spatial = identity.input_shape
    if identity.name.startswith("python:") or not spatial:
        raise ConfigError(
            f"model {identity.name!r} (input {list(identity.input_shape)}) cannot be rebuilt from the "
            "model registry; export with --format amc and apply it in Python with amc.apply_policy"
        )
    square = len(spatial) == 2 and spatial[0] == spatial[1]
    return ModelSpec(identity.name, channels, identity.num_classes, spatial[0] if square else tuple(spatial))


def dense_graph(policy: Policy) -> ModelGraph:
    """The dependency groups of the dense architecture a policy was made for (built without weights)."""
    from amc.models import create_model
    from amc.policy import architecture_hash
    from amc.pruning import build_graph

    spec = _spec_of(policy)
    model = create_model(spec).eval()
    if architecture_hash(model) != policy.model.arch_hash:
        raise ConfigError(
            f"the registry's {spec.name!r} is not the architecture the policy was made for (hash "
            f"{architecture_hash(model)} vs {policy.model.arch_hash}); export with --format amc"
        )
    return build_graph(model, spec.example_inputs())


def _require_channel(policy: Policy) -> None:
    if policy.granularity != "channel":
        raise ConfigError(
            f"the policy prunes {policy.granularity} weights, not channels; only channel policies "
            "export to torch-pruning / nni (use --format amc)"
        )


def group_exports(policy: Policy) -> tuple[list[GroupExport], str]:
    """Each group's member modules with the fraction of channels amc removes, and the classifier's name."""
    from amc.pruning import widths_for

    _require_channel(policy)
    graph = dense_graph(policy)
    widths = widths_for(graph, policy.ratios, policy.round_to)  # the engine's rounding, grouped convs included
    groups = []
    for g in graph:
        kept = widths[g.name]
        groups.append(GroupExport(g.name, tuple(g.modules), g.channels, kept, removed_fraction(g.channels, kept)))
    return groups, graph.classifier


def removed_fraction(channels: int, kept: int) -> float:
    """The fraction of ``channels`` removed when ``kept`` remain, as the float nearest above ``removed / channels``
    for which ``int(ratio * channels)`` and ``round(ratio * channels)`` both give the removed count."""
    if not 1 <= kept <= channels:
        raise ConfigError(f"cannot keep {kept} of {channels} channels")
    removed = channels - kept
    ratio = removed / channels
    while int(ratio * channels) < removed:  # e.g. 15/22 * 22 == 14.999999999999998
        ratio = math.nextafter(ratio, 1.0)
    return ratio


def torch_pruning_ratio(channels: int, kept: int) -> float:
    """A ratio for which Torch-Pruning (keeping ``int(channels * (1 - ratio))``) keeps exactly ``kept``."""
    if not 1 <= kept <= channels:
        raise ConfigError(f"cannot keep {kept} of {channels} channels")
    for ratio in (round(1.0 - kept / channels, 6), (channels - kept - 0.5) / channels):
        ratio = max(0.0, ratio)
        if int(channels * (1.0 - ratio)) == kept:
            return ratio
    raise AssertionError(f"no Torch-Pruning ratio keeps {kept} of {channels}")  # pragma: no cover


# --------------------------------------------------------------------------- amc's exact channel choice
# Copied verbatim into apply_torch_pruning.py (inspect.getsource): use plain torch names only.
def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state_dict: every tensor's name, dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class GroupSelection:
    """The channels amc keeps in one group, as Torch-Pruning removes them.

    Attributes:
        name: The group's amc name.
        modules: Conv / linear modules whose output channels the group removes.
        channels: Dense channel count.
        root: The module Torch-Pruning's pruning group is rooted at (whose indices these are).
        root_dim: ``out`` (the root's output channels) or ``in``.
        kept_indices: Indices of the root's dense channels kept, ascending.
        removed_indices: The other indices, ascending (what the snippet removes).
    """

    name: str
    modules: tuple[str, ...]
    channels: int
    root: str
    root_dim: str
    kept_indices: tuple[int, ...]
    removed_indices: tuple[int, ...]


@dataclass(frozen=True)
class ChannelSelection:
    """What :func:`amc.pruning.prune_channels` removes from one dense model for one policy.

    Attributes:
        groups: Every group, in the order amc prunes them (unpruned groups last).
        classifier: The output layer (never pruned).
        weights_sha256: :func:`weights_digest` of the dense model the channels were chosen on.
        calibration: For gradient-based criteria: the data and seed of the gradient batch; else None.
    """

    groups: tuple[GroupSelection, ...]
    classifier: str
    weights_sha256: str
    calibration: Mapping[str, Any] | None


def select_channels(policy: Policy, dense: DenseSource) -> ChannelSelection:
    """Runs amc's own channel selection for ``policy`` on the dense weights, as ``amc prune`` does.

    Raises:
        ConfigError: when the checkpoint is not the dense model the policy was made for.
    """
    from amc.pruning import CRITERIA, prune_channels, widths_for

    _require_channel(policy)
    model, graph, calib_batch, calibration = _dense_for(policy, dense, CRITERIA.get(policy.criterion).needs_batch)
    digest = weights_digest(model)
    widths = widths_for(graph, policy.ratios, policy.round_to)
    result = prune_channels(model, graph, widths, policy.criterion, calib_batch)
    by_module = {m: g for g in graph for m in g.modules}
    groups: list[GroupSelection] = []
    for root, is_out, removed in result.history:
        g = by_module.get(root)
        if g is None or not is_out:  # pragma: no cover - amc roots every group at an output-pruned conv / linear
            raise ConfigError(
                f"amc pruned group rooted at {root!r}, which is not a traced group's output layer; "
                "this model cannot be exported to torch-pruning, use --format amc"
            )
        gone = sorted({int(i) for i in removed})
        kept = tuple(sorted(set(range(g.channels)) - set(gone)))
        if len(kept) != widths[g.name]:  # pragma: no cover - a guard on Torch-Pruning's bookkeeping
            raise ConfigError(f"group {g.name}: amc kept {len(kept)} channels, not {widths[g.name]}; use --format amc")
        groups.append(GroupSelection(g.name, tuple(g.modules), g.channels, root, "out", kept, tuple(gone)))
    done = {s.name for s in groups}
    for g in graph:
        if g.name not in done:
            everything = tuple(range(g.channels))
            groups.append(GroupSelection(g.name, tuple(g.modules), g.channels, g.name, "out", everything, ()))
    return ChannelSelection(tuple(groups), graph.classifier, digest, calibration)


def _dense_for(
    policy: Policy,
    dense: DenseSource,
    needs_batch: bool,
) -> tuple[nn.Module, ModelGraph, Batch | None, dict[str, Any] | None]:
    """The dense model and its groups (built as ``amc prune`` builds them), the gradient batch and its record."""
    from amc.engine import build_workspace, identity_of
    from amc.pruning import build_graph

    spec = _spec_of(policy)
    if needs_batch:  # exactly `amc prune`'s workspace and batch
        ws = build_workspace(spec.name, dense.data, str(dense.checkpoint))
        model, graph, identity = ws.model, ws.graph, ws.identity
        batch = _gradient_batch(ws, dense.seed)
        calibration = {
            "data": dataclasses.asdict(dense.data),
            "seed": dense.seed,
            "batch": f"the gradient batch `amc prune --seed {dense.seed}` draws from the training split",
        }
    else:
        model, batch, calibration = _load_dense(spec, dense.checkpoint), None, None
        graph = build_graph(model, spec.example_inputs())
        identity = identity_of(spec, model)
    policy.check_matches(identity, graph.names)
    return model, graph, batch, calibration


def _load_dense(spec: ModelSpec, checkpoint: Path) -> nn.Module:
    from amc.checkpoint import load_model

    saved = load_model(checkpoint, spec=spec)
    if saved.history:
        raise ConfigError(f"{checkpoint} holds a pruned model; pass the dense checkpoint the policy was made for")
    return saved.model.eval()


def _gradient_batch(ws: Workspace, seed: int) -> Batch:
    """The (inputs, targets) batch ``amc prune --seed SEED`` gives gradient-based criteria."""
    from amc.engine import _Splits  # one definition of the batch: the engine's

    return _Splits.of(ws, seed, 0).calib_batch


# --------------------------------------------------------------------------- formats
def render_amc(item: ExportItem) -> Rendered:
    """``policy.json`` in the engine's format."""
    return {"policy.json": item.policy.to_dict()}


TP_SNIPPET = '''"""Removes the channels `amc prune` removes, with Torch-Pruning (exported by `amc export`).

Policy: @LABEL@
Model: @MODEL@ (input @SHAPE@), criterion @CRITERION@.

torch_pruning_ratios.json lists, for every dependency group, the channel indices amc keeps: amc chose them
on the dense weights (amc.pruning.prune_channels, the criterion's importance over the whole group, the
lowest-ranked removed). `prune` removes the other channels with Torch-Pruning, group by group in amc's order,
so the model equals `amc prune`'s (before BatchNorm recalibration and fine-tuning). It refuses a model whose
weights differ from the dense weights the channels were chosen on.

    python apply_torch_pruning.py DENSE_MODEL.pt [OUT.pt]   # an amc model file; needs amc-search

or, with your own instance of the dense model (needs only torch and torch-pruning):

    from apply_torch_pruning import prune
    prune(model, torch.zeros(1, @SHAPE_ARGS@))
"""

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch_pruning as tp

SPEC = Path(__file__).with_name("torch_pruning_ratios.json")


@DIGEST@

def prune(model: torch.nn.Module, example_inputs: torch.Tensor, spec_path: Path = SPEC,
          check_weights: bool = True) -> tp.DependencyGraph:
    """Removes amc's channels from the dense ``model`` in place.

    Args:
        model: The dense model, with the weights the export chose channels on.
        example_inputs: Example inputs for tracing (one image is enough).
        spec_path: The exported torch_pruning_ratios.json.
        check_weights: Refuse a model whose weights are not the exported dense weights.

    Returns:
        The dependency graph; ``graph.pruning_history()`` replays the pruning onto another dense copy.
    """
    spec = json.loads(Path(spec_path).read_text())
    if check_weights and weights_digest(model) != spec["dense_weights_sha256"]:
        raise ValueError(f"the model's weights are not the dense weights the channels were chosen on "
                         f"({spec['checkpoint']}); load those, or pass check_weights=False to remove the same "
                         "channel indices anyway (then they are not what amc would choose for your weights)")
    modules = dict(model.named_modules())
    missing = sorted({g["root"] for g in spec["groups"]} - set(modules))
    if missing:
        raise ValueError(f"the model has no module {missing[0]!r}; it is not the {spec['model']} this was exported for")
    was_training = model.training
    model.eval()  # tracing runs a forward pass: leave BatchNorm statistics alone
    graph = tp.DependencyGraph().build_dependency(model, example_inputs, verbose=False)
    for group in spec["groups"]:
        if group["removed_indices"]:
            module = modules[group["root"]]
            pruner = graph.get_pruner_of_module(module)
            fn = pruner.prune_out_channels if group["root_dim"] == "out" else pruner.prune_in_channels
            graph.get_pruning_group(module, fn, list(group["removed_indices"])).prune()
    model.train(was_training)
    return graph


if __name__ == "__main__":
    from amc.checkpoint import load_model

    model = load_model(sys.argv[1]).model.eval()
    example = torch.zeros(1, *json.loads(SPEC.read_text())["input_shape"])
    before = tp.utils.count_ops_and_params(model, example)
    graph = prune(model, example)
    after = tp.utils.count_ops_and_params(model, example)
    print(  # Torch-Pruning counts multiply-adds (BatchNorm and pooling too); amc counts 2 FLOPs per conv/linear one
        f"MACs {before[0]:,.0f} -> {after[0]:,.0f} (Torch-Pruning's count of multiply-adds: about half of amc's "
        f"FLOPs), params {before[1]:,.0f} -> {after[1]:,.0f}"
    )
    if len(sys.argv) > 2:  # tensors and lists only: loads with torch.load(..., weights_only=True)
        torch.save({"state_dict": model.state_dict(), "pruning_history": graph.pruning_history()}, sys.argv[2])
'''


def torch_pruning_snippet(item: ExportItem) -> str:
    """The ``apply_torch_pruning.py`` text for one policy."""
    identity = item.policy.model
    shape = ", ".join(str(s) for s in identity.input_shape)
    fills = {
        "@LABEL@": item.label,
        "@MODEL@": identity.name,
        "@SHAPE@": f"({shape})",
        "@SHAPE_ARGS@": shape,
        "@CRITERION@": item.policy.criterion,
        "@DIGEST@": inspect.getsource(weights_digest),
    }
    text = TP_SNIPPET
    for key, value in fills.items():
        text = text.replace(key, value)
    return text


def render_torch_pruning(item: ExportItem) -> Rendered:
    """``torch_pruning_ratios.json`` (amc's kept channels per group) and the ``apply_torch_pruning.py`` snippet."""
    if item.dense is None:
        raise ConfigError(
            "the torch-pruning export records the exact channels amc keeps, which it reads off the "
            "dense weights: pass --checkpoint DENSE_MODEL.pt (the model the policy was made for)"
        )
    p, sel = item.policy, select_channels(item.policy, item.dense)
    body = {
        "schema_version": 2,
        "kind": "amc-torch-pruning-ratios",
        "model": p.model.name,
        "input_shape": list(p.model.input_shape),
        "num_classes": p.model.num_classes,
        "arch_hash": p.model.arch_hash,
        "criterion": p.criterion,
        "checkpoint": str(item.dense.checkpoint),
        "dense_weights_sha256": sel.weights_sha256,
        "calibration": sel.calibration,
        "ignored_layers": [sel.classifier],
        "groups": [
            {
                "name": g.name,
                "modules": list(g.modules),
                "channels": g.channels,
                "kept": len(g.kept_indices),
                "root": g.root,
                "root_dim": g.root_dim,
                "kept_indices": list(g.kept_indices),
                "removed_indices": list(g.removed_indices),
            }
            for g in sel.groups
        ],
        "pruning_ratio_dict_note": "ratios only, for a Torch-Pruning pruner of your own: it keeps the same channel "
        "counts but ranks channels itself; apply_torch_pruning.py keeps amc's exact channels",
        "pruning_ratio_dict": {
            m: torch_pruning_ratio(g.channels, len(g.kept_indices)) for g in sel.groups for m in g.modules
        },
        "kept_channels": {m: len(g.kept_indices) for g in sel.groups for m in g.modules},
    }
    return {TP_SPEC: body, TP_SNIPPET_FILE: torch_pruning_snippet(item)}


def render_nni(item: ExportItem) -> Rendered:
    """``nni_config_list.json``: NNI 3.x's config_list, one entry per group (channel counts only)."""
    groups, _ = group_exports(item.policy)
    return {NNI_CONFIG: [{"op_names": list(g.modules), "sparse_ratio": g.ratio} for g in groups]}


EXPORT_FORMATS.register(
    "amc",
    ExportFormat(
        render_amc,
        exact_channels=True,
        channel_note="`amc prune --policy policy.json` ranks the channels itself with criterion {criterion}",
    ),
)
EXPORT_FORMATS.register(
    "torch-pruning",
    ExportFormat(
        render_torch_pruning,
        exact_channels=True,
        needs_dense_model=True,
        channel_note="the kept channel indices were chosen by amc (criterion {criterion}) on the dense weights named in "
        "torch_pruning_ratios.json; apply_torch_pruning.py removes the others with Torch-Pruning, so the "
        "model equals `amc prune`'s before BatchNorm recalibration and fine-tuning",
    ),
)
EXPORT_FORMATS.register(
    "nni",
    ExportFormat(
        render_nni,
        exact_channels=False,
        criteria=("l1", "l2", "taylor"),
        tools={"l1": "L1NormPruner", "l2": "L2NormPruner", "taylor": "TaylorPruner"},
        channel_note="not amc's channels: a config_list holds one sparse_ratio per layer and no channel indices; NNI's "
        "{tool} ranks each layer's channels by its own metric, not by amc's group-wise {criterion} "
        "importance, so the channel counts (FLOPs, params) match amc's but the channels kept differ; for "
        "amc's exact channels export --format torch-pruning or amc",
    ),
)


# --------------------------------------------------------------------------- the request
@dataclass(frozen=True)
class ExportRequest:
    """Which policies to export, how, and where.

    Attributes:
        out: Output directory.
        experiment: MLflow experiment name (with ``pareto`` or ``run_id``).
        pareto: Choose from the experiment's Pareto front.
        run_id: Choose from this search run.
        episode: With ``run_id``: export this episode.
        max_flops_ratio: Only policies with at most this FLOPs ratio; the highest top-1 among them is chosen.
        every: With ``pareto``: export every front policy within the budget, one directory each.
        min_top1: With ``pareto``: the front of the policies reaching this search-val top-1 only (None: all).
        format: A name from :data:`EXPORT_FORMATS`.
        tracking_uri: MLflow store.
        policy: A local policy file to export instead of an MLflow run's.
        checkpoint: The dense model, for formats that read weights (default for runs: the run's checkpoint).
        data: The data ``amc prune --data`` would use, for gradient-based criteria (default: the run's data
            set, else digits).
        seed: ``amc prune --seed``, for gradient-based criteria.
    """

    out: Path
    experiment: str | None = None
    pareto: bool = False
    run_id: str | None = None
    episode: int | None = None
    max_flops_ratio: float | None = None
    every: bool = False
    min_top1: float | None = None
    format: str = "amc"
    tracking_uri: str | None = None
    policy: Path | None = None
    checkpoint: Path | None = None
    data: DataConfig | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        fmt = EXPORT_FORMATS.get(self.format)
        if self.policy is not None:
            self._check_local(fmt)
            return
        if self.experiment is None:
            raise ConfigError(
                "say where the policy comes from: --policy FILE, or --experiment NAME with --pareto or --run-id ID"
            )
        if self.pareto == (self.run_id is not None):
            raise ConfigError("say where the policy comes from: --pareto or --run-id ID (one of them)")
        if self.episode is not None and self.pareto:
            raise ConfigError("--episode picks an episode of --run-id; with --pareto use --max-flops-ratio")
        if self.every and not self.pareto:
            raise ConfigError("--all exports every Pareto-optimal policy; it needs --pareto")
        if self.min_top1 is not None and not self.pareto:
            raise ConfigError("--min-top1 filters the Pareto front's policies; it needs --pareto")
        if self.max_flops_ratio is not None and not 0.0 < self.max_flops_ratio <= 1.0:
            raise ConfigError(
                f"--max-flops-ratio is the fraction of the dense FLOPs kept, in (0, 1]; got {self.max_flops_ratio}"
            )

    def _check_local(self, fmt: ExportFormat) -> None:
        mlflow_flags = {
            "--experiment": self.experiment is not None,
            "--run-id": self.run_id is not None,
            "--pareto": self.pareto,
            "--episode": self.episode is not None,
            "--all": self.every,
            "--max-flops-ratio": self.max_flops_ratio is not None,
            "--min-top1": self.min_top1 is not None,
        }
        given = [flag for flag, on in mlflow_flags.items() if on]
        if given:
            raise ConfigError(
                f"--policy exports a local policy file; {', '.join(given)} choose from MLflow "
                "instead: give one source or the other"
            )
        if fmt.needs_dense_model and self.checkpoint is None:
            raise ConfigError(
                f"--format {self.format} reads the dense weights to record the channels amc keeps: "
                "pass --checkpoint DENSE_MODEL.pt (the model the policy was made for)"
            )


# --------------------------------------------------------------------------- gathering the policies
def _local_item(request: ExportRequest) -> ExportItem:
    path = Path(str(request.policy))
    policy = load_policy(path)
    dense = DenseSource(request.checkpoint, request.data or DataConfig(), request.seed) if request.checkpoint else None
    figures = ", ".join(f"{k} {policy.measured[k]:.4g}" for k in ("top1", "flops_ratio") if k in policy.measured)
    label = f"{path.name} ({policy.model.name}, criterion {policy.criterion}{', ' + figures if figures else ''})"
    origin = {
        "policy_file": str(path),
        **{k: policy.measured[k] for k in ("top1", "flops_ratio", "params_ratio") if k in policy.measured},
    }
    recorded = recorded_dense_model(path)
    checkpoint = request.checkpoint or (recorded.checkpoint if recorded is not None else None)
    if checkpoint is not None:
        origin["checkpoint"] = str(checkpoint)
    return ExportItem(policy, origin, label, None, dense)


def _run_params(client: Any, run_id: str) -> Mapping[str, str]:
    return client.get_run(run_id).data.params


def _run_dense(params: Mapping[str, str], request: ExportRequest, run_id: str) -> DenseSource:
    """The dense model and data of a search run (``--checkpoint`` / ``--data`` override them)."""
    checkpoint = request.checkpoint
    if checkpoint is None:
        recorded = params.get("env.checkpoint")
        if recorded in (None, "", "None"):
            raise ConfigError(f"run {run_id} recorded no dense checkpoint; pass --checkpoint DENSE_MODEL.pt")
        checkpoint = Path(str(recorded))
        if not checkpoint.is_file():
            raise ConfigError(
                f"run {run_id} searched the dense model {checkpoint}, which is no longer there; pass "
                "--checkpoint DENSE_MODEL.pt (the same weights)"
            )
    return DenseSource(checkpoint, request.data or _run_data(params), request.seed)


def _run_data(params: Mapping[str, str]) -> DataConfig:
    """The run's ``env.data`` (MLflow params are strings)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(DataConfig):
        raw = params.get(f"env.data.{f.name}")
        if raw is not None and raw != "None":
            values[f.name] = int(raw) if f.type in ("int", int) else raw
    return DataConfig(**values)


def _mlflow_items(request: ExportRequest, fmt: ExportFormat) -> tuple[list[ExportItem], str]:
    from amc.service.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(request.tracking_uri)
    client = mlflow_client(uri)
    exp = find_experiment(client, str(request.experiment))
    runs = load_search_runs(client, exp.experiment_id)
    if request.pareto:
        if not runs:
            raise ConfigError(f"experiment {request.experiment!r} has no finished search; run `amc search` first")
        chosen = from_front(runs, request.max_flops_ratio, request.every, request.min_top1)
    else:
        run = _run_in_experiment(client, runs, str(request.run_id), str(request.experiment))
        chosen = [from_run(run, request.episode, request.max_flops_ratio)]
    uniform = {r.run_id: r.uniform.ratio for r in runs if r.uniform is not None}
    items = []
    for c in chosen:
        params = _run_params(client, c.run_id)
        dense = _run_dense(params, request, c.run_id) if fmt.needs_dense_model else None
        origin = {
            "experiment": request.experiment,
            "run_id": c.run_id,
            "run_name": c.run_name,
            "episode": c.episode,
            "top1": c.top1,
            "flops_ratio": c.flops_ratio,
            "params_ratio": c.params_ratio,
        }
        checkpoint = request.checkpoint or params.get("env.checkpoint")
        if checkpoint not in (None, "", "None"):  # where `amc prune --policy` finds the dense model
            origin["checkpoint"] = str(checkpoint)
        label = (
            f"{c.run_name} episode {c.episode} (experiment {request.experiment!r}, run {c.run_id}): "
            f"top-1 {c.top1:.2%}, FLOPs {c.flops_ratio:.1%}, params {c.params_ratio:.1%}"
        )
        items.append(ExportItem(policy_for(client, c), origin, label, uniform.get(c.run_id), dense, c))
    return items, uri


# --------------------------------------------------------------------------- end to end
def _directory(request: ExportRequest, item: ExportItem) -> Path:
    c = item.candidate
    if request.every and c is not None:
        return request.out / f"{c.run_id[:8]}-ep{c.episode:04d}"
    return request.out


def _write(directory: Path, rendered: Rendered, item: ExportItem) -> tuple[Path, ...]:
    from amc.service.plots import policy_bars

    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for name, body in rendered.items():
        write = write_text_atomic if isinstance(body, str) else write_json_atomic
        files.append(write(directory / name, body))
    files.append(policy_bars(directory / "policy.png", item.policy.ratios, item.uniform_ratio, item.label))
    return tuple(files)


def _manifest(
    request: ExportRequest,
    uri: str | None,
    fmt: ExportFormat,
    exported: Sequence[ExportedPolicy],
) -> dict[str, Any]:
    if request.policy is not None:
        selection: dict[str, Any] = {"policy": str(request.policy)}
    else:
        selection = {
            "pareto": request.pareto,
            "run_id": request.run_id,
            "episode": request.episode,
            "max_flops_ratio": request.max_flops_ratio,
            "min_top1": request.min_top1,
            "all": request.every,
        }
    policies = []
    for e in exported:
        entry = {
            "dir": str(e.directory.relative_to(request.out)),
            **e.item.origin,
            "channel_selection": fmt.describe(e.item.policy),
        }
        if e.item.dense is not None:
            entry["checkpoint"] = str(e.item.dense.checkpoint)
        entry["files"] = [str(f.relative_to(request.out)) for f in e.files]
        policies.append(entry)
    return {
        "schema_version": 2,
        "kind": "amc-export",
        "format": request.format,
        "exact_channels": fmt.exact_channels,
        "experiment": request.experiment,
        "tracking_uri": uri,
        "selection": selection,
        "policies": policies,
    }


def export_policies(request: ExportRequest) -> ExportResult:
    """Chooses the policies of ``request`` (MLflow or a local file) and writes them in its format, with a manifest.

    Every policy is checked and rendered before anything is written, so bad input writes nothing.
    """
    fmt = EXPORT_FORMATS.get(request.format)
    items, uri = ([_local_item(request)], None) if request.policy is not None else _mlflow_items(request, fmt)
    rendered = []
    for item in items:
        fmt.check(request.format, item.policy)
        rendered.append((item, fmt.render(item)))
    exported = [ExportedPolicy(item, _directory(request, item), ()) for item, _ in rendered]
    exported = [
        dataclasses.replace(e, files=_write(e.directory, files, e.item)) for e, (_, files) in zip(exported, rendered)
    ]
    manifest = write_json_atomic(request.out / MANIFEST, _manifest(request, uri, fmt, exported))
    return ExportResult(request.out, request.format, tuple(exported), manifest)


def load_ratio_mapping(path: str | Path) -> Mapping[str, float]:
    """Reads the module -> ratio mapping of a ``torch_pruning_ratios.json`` back."""
    data = json.loads(Path(path).read_text())
    if data.get("kind") != "amc-torch-pruning-ratios":
        raise ConfigError(f"{path} is not a torch-pruning export of amc")
    return {str(k): float(v) for k, v in data["pruning_ratio_dict"].items()}


__all__ = [
    "EXPORT_FORMATS",
    "ChannelSelection",
    "DenseSource",
    "ExportFormat",
    "ExportItem",
    "ExportRequest",
    "ExportResult",
    "ExportedPolicy",
    "GroupSelection",
    "export_policies",
    "from_front",
    "from_run",
    "group_exports",
    "load_ratio_mapping",
    "removed_fraction",
    "select_channels",
    "torch_pruning_ratio",
    "weights_digest",
]
