"""Export a found policy from MLflow: our policy JSON, a Torch-Pruning ratio mapping, or an NNI config list.

A policy is chosen from an experiment either on its Pareto front (the highest search-val top-1 within
a FLOPs budget, or every front policy within it) or from one run (its best episode, a given episode,
or its highest top-1 within the budget). Formats (registered in :data:`EXPORT_FORMATS`):

- ``amc``: ``policy.json``, the engine's policy format; ``amc prune --policy`` applies it.
- ``torch-pruning``: ``torch_pruning_ratios.json`` (every member module of every group -> pruning
  ratio, plus the layers to leave alone) and ``apply_torch_pruning.py``, a runnable snippet that
  applies it with ``torch_pruning.pruner.MetaPruner``. The ratios are chosen so that Torch-Pruning,
  which keeps ``int(channels * (1 - ratio))`` channels, keeps exactly the channels amc keeps.
- ``nni``: ``nni_config_list.json``, NNI 3.x's ``config_list``: one ``{"op_names": [...],
  "sparse_ratio": r}`` entry per group (r = the fraction of the group's channels removed). For NNI 2.x,
  rename ``sparse_ratio`` to ``sparsity_per_layer``.

Every export also writes ``policy.png`` (per-group ratios against the run's uniform baseline) and a
manifest ``export.json`` (where each policy came from, its figures, its files).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amc.errors import ConfigError
from amc.pareto import (
    Candidate, SearchRun, best_within, find_experiment, front_of_runs, load_search_runs, mlflow_client, read_json_artifact,
)
from amc.files import write_json_atomic, write_text_atomic
from amc.policy import Policy
from amc.registry import Registry

POLICY_ARTIFACT = "best_policy.json"
MANIFEST = "export.json"


@dataclass(frozen=True)
class ExportItem:
    """One policy to export: the candidate, its policy in the engine's format, and its run's uniform ratio."""

    candidate: Candidate
    policy: Policy
    uniform_ratio: float | None
    experiment: str


@dataclass(frozen=True)
class ExportedPolicy:
    """Where one exported policy went."""

    candidate: Candidate
    directory: Path
    files: tuple[Path, ...]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_policies` wrote."""

    out: Path
    format: str
    policies: tuple[ExportedPolicy, ...]
    manifest: Path


Exporter = Callable[[ExportItem, Path], tuple[Path, ...]]
EXPORT_FORMATS: Registry[Exporter] = Registry("export format")


# --------------------------------------------------------------------------- choosing policies
def from_front(runs: Sequence[SearchRun], max_flops_ratio: float | None, every: bool) -> list[Candidate]:
    """The front's best policy within the FLOPs budget, or (``every``) all front policies within it."""
    front = front_of_runs(runs)
    best = front.best(max_flops_ratio)  # raises when nothing is within the budget
    if not every:
        return [best]
    return [c for c in front.front if max_flops_ratio is None or c.flops_ratio <= max_flops_ratio]


def from_run(run: SearchRun, episode: int | None, max_flops_ratio: float | None) -> Candidate:
    """A given episode of ``run``; else its best top-1 within the budget; else the search's own best."""
    by_episode = {c.episode: c for c in run.candidates}
    if episode is not None:
        if episode not in by_episode:
            raise ConfigError(f"run {run.run_id} has no episode {episode}; it has episodes "
                              f"{min(by_episode)}..{max(by_episode)}")
        return by_episode[episode]
    if max_flops_ratio is None and run.best_episode in by_episode:
        return by_episode[run.best_episode]
    return best_within(run.candidates, max_flops_ratio, f"of run {run.run_id}")


def _run_in_experiment(client: Any, runs: Sequence[SearchRun], run_id: str, experiment: str) -> SearchRun:
    for run in runs:
        if run.run_id == run_id:
            return run
    try:
        other = client.get_run(run_id)
    except Exception:  # MlflowException: no such run
        raise ConfigError(f"there is no MLflow run {run_id!r} in {client.tracking_uri}") from None
    if other.info.experiment_id != find_experiment(client, experiment).experiment_id:
        raise ConfigError(f"run {run_id} belongs to another experiment (id {other.info.experiment_id}), not {experiment!r}")
    raise ConfigError(f"run {run_id} is not a finished search (no search.json artifact); pick another --run-id")


# --------------------------------------------------------------------------- the policy in the engine's format
def policy_for(client: Any, candidate: Candidate) -> Policy:
    """The candidate's ratios in the engine's format, with its run's model identity, target and settings."""
    data = read_json_artifact(client, candidate.run_id, POLICY_ARTIFACT)
    if data is None:
        raise ConfigError(f"run {candidate.run_id} has no {POLICY_ARTIFACT} artifact, so the model it searched "
                          "is unknown; export from a finished `amc search` run")
    template = Policy.from_dict(data)
    measured = {"top1": candidate.top1, "flops_ratio": candidate.flops_ratio, "params_ratio": candidate.params_ratio}
    if candidate.latency_ratio is not None:
        measured["latency_ratio"] = candidate.latency_ratio
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return dataclasses.replace(template, ratios=dict(candidate.ratios), measured=measured, created=now)


# --------------------------------------------------------------------------- module-level ratios
@dataclass(frozen=True)
class GroupExport:
    """One group as other tools see it: its member modules, channels, kept channels and removed fraction."""

    name: str
    modules: tuple[str, ...]
    channels: int
    kept: int
    ratio: float


def dense_graph(policy: Policy) -> Any:
    """The dependency groups of the dense architecture a policy was made for (built without weights)."""
    from amc.groups import ModelGraph
    from amc.models import ModelSpec, create_model
    from amc.policy import architecture_hash

    identity = policy.model
    channels, height, width = identity.input_shape
    if identity.name.startswith("python:") or height != width:
        raise ConfigError(f"model {identity.name!r} (input {list(identity.input_shape)}) cannot be rebuilt from the "
                          "model registry; export with --format amc and apply it in Python with amc.apply_policy")
    spec = ModelSpec(identity.name, channels, identity.num_classes, height)
    model = create_model(spec).eval()
    if architecture_hash(model) != identity.arch_hash:
        raise ConfigError(f"the registry's {identity.name!r} is not the architecture the policy was made for (hash "
                          f"{architecture_hash(model)} vs {identity.arch_hash}); export with --format amc")
    return ModelGraph(model, spec.example_inputs())


def group_exports(policy: Policy) -> tuple[list[GroupExport], str]:
    """Each group's member modules with the fraction of channels amc removes, and the classifier's name."""
    from amc.pruning import kept_channels

    if policy.granularity != "channel":
        raise ConfigError(f"the policy prunes {policy.granularity} weights, not channels; only channel policies "
                          "export to torch-pruning / nni (use --format amc)")
    graph = dense_graph(policy)
    groups = []
    for g in graph:
        kept = kept_channels(g.channels, float(policy.ratios.get(g.name, 0.0)), policy.round_to)
        groups.append(GroupExport(g.name, tuple(g.modules), g.channels, kept, round(1.0 - kept / g.channels, 6)))
    return groups, graph.classifier


def torch_pruning_ratio(channels: int, kept: int) -> float:
    """A ratio for which Torch-Pruning (keeping ``int(channels * (1 - ratio))``) keeps exactly ``kept``."""
    if not 1 <= kept <= channels:
        raise ConfigError(f"cannot keep {kept} of {channels} channels")
    for ratio in (round(1.0 - kept / channels, 6), (channels - kept - 0.5) / channels):
        ratio = max(0.0, ratio)
        if int(channels * (1.0 - ratio)) == kept:
            return ratio
    raise AssertionError(f"no Torch-Pruning ratio keeps {kept} of {channels}")  # pragma: no cover


# --------------------------------------------------------------------------- formats
def write_amc(item: ExportItem, out: Path) -> tuple[Path, ...]:
    """``policy.json`` in the engine's format."""
    return (item.policy.save(out / "policy.json"),)


TP_SNIPPET = '''"""Applies torch_pruning_ratios.json (exported by `amc export`) with Torch-Pruning.

Source: experiment {experiment!r}, run {run_id}, episode {episode}: search-val top-1 {top1:.4f},
FLOPs {flops_ratio:.4f} and params {params_ratio:.4f} of the dense model ({model}).

    python apply_torch_pruning.py DENSE_MODEL.pt [OUT.pt]   # an amc model file; needs amc-search

or, with your own instance of the dense model:

    from apply_torch_pruning import prune
    pruned = prune(model, torch.zeros(1, {shape}))
"""

import json
import sys
from pathlib import Path

import torch
import torch_pruning as tp

RATIOS = Path(__file__).with_name("torch_pruning_ratios.json")
IMPORTANCE = {{"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
               "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
               "bn_scale": lambda: tp.importance.BNScaleImportance()}}


def prune(model: torch.nn.Module, example_inputs: torch.Tensor, ratios_path: Path = RATIOS) -> tp.pruner.MetaPruner:
    """Prunes ``model`` in place; returns the pruner (``pruner.pruning_history()`` replays the result)."""
    spec = json.loads(Path(ratios_path).read_text())
    modules = dict(model.named_modules())
    pruner = tp.pruner.MetaPruner(
        model, example_inputs, importance=IMPORTANCE.get(spec["importance"], IMPORTANCE["l1"])(),
        pruning_ratio=0.0, pruning_ratio_dict={{modules[n]: r for n, r in spec["pruning_ratio_dict"].items()}},
        ignored_layers=[modules[n] for n in spec["ignored_layers"]])
    pruner.step()
    return pruner


if __name__ == "__main__":
    from amc.checkpoint import load_model

    model = load_model(sys.argv[1]).model.eval()
    example = torch.zeros(1, *json.loads(RATIOS.read_text())["input_shape"])
    before = tp.utils.count_ops_and_params(model, example)
    pruner = prune(model, example)
    after = tp.utils.count_ops_and_params(model, example)
    print(f"MACs {{before[0]:,.0f}} -> {{after[0]:,.0f}}, params {{before[1]:,.0f}} -> {{after[1]:,.0f}}")
    if len(sys.argv) > 2:  # tensors and lists only: loads with torch.load(..., weights_only=True)
        torch.save({{"state_dict": model.state_dict(), "pruning_history": pruner.pruning_history()}}, sys.argv[2])
'''


def write_torch_pruning(item: ExportItem, out: Path) -> tuple[Path, ...]:
    """``torch_pruning_ratios.json`` (module -> ratio) and the ``apply_torch_pruning.py`` snippet."""
    groups, classifier = group_exports(item.policy)
    c, p = item.candidate, item.policy
    body = {
        "schema_version": 1, "kind": "amc-torch-pruning-ratios", "model": p.model.name,
        "input_shape": list(p.model.input_shape), "num_classes": p.model.num_classes, "arch_hash": p.model.arch_hash,
        "importance": p.criterion, "ignored_layers": [classifier],
        "pruning_ratio_dict": {m: torch_pruning_ratio(g.channels, g.kept) for g in groups for m in g.modules},
        "kept_channels": {m: g.kept for g in groups for m in g.modules},
        "groups": [dataclasses.asdict(g) for g in groups],
    }
    snippet = TP_SNIPPET.format(experiment=item.experiment, run_id=c.run_id, episode=c.episode, top1=c.top1,
                                flops_ratio=c.flops_ratio, params_ratio=c.params_ratio, model=p.model.name,
                                shape=", ".join(str(s) for s in p.model.input_shape))
    return (write_json_atomic(out / "torch_pruning_ratios.json", body),
            write_text_atomic(out / "apply_torch_pruning.py", snippet))


def write_nni(item: ExportItem, out: Path) -> tuple[Path, ...]:
    """``nni_config_list.json``: NNI 3.x's config_list, one entry per group."""
    groups, _ = group_exports(item.policy)
    config_list = [{"op_names": list(g.modules), "sparse_ratio": g.ratio} for g in groups]
    return (write_json_atomic(out / "nni_config_list.json", config_list),)


EXPORT_FORMATS.register("amc", write_amc)
EXPORT_FORMATS.register("torch-pruning", write_torch_pruning)
EXPORT_FORMATS.register("nni", write_nni)


# --------------------------------------------------------------------------- end to end
@dataclass(frozen=True)
class ExportRequest:
    """Which policies to export, how, and where.

    Attributes:
        experiment: MLflow experiment name.
        out: Output directory.
        pareto: Choose from the experiment's Pareto front (else from ``run_id``).
        run_id: Choose from this search run.
        episode: With ``run_id``: export this episode.
        max_flops_ratio: Only policies with at most this FLOPs ratio; the highest top-1 among them is chosen.
        every: With ``pareto``: export every front policy within the budget, one directory each.
        format: A name from :data:`EXPORT_FORMATS`.
        tracking_uri: MLflow store.
    """

    experiment: str
    out: Path
    pareto: bool = False
    run_id: str | None = None
    episode: int | None = None
    max_flops_ratio: float | None = None
    every: bool = False
    format: str = "amc"
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        EXPORT_FORMATS.get(self.format)
        if self.pareto == (self.run_id is not None):
            raise ConfigError("say where the policy comes from: --pareto or --run-id ID (one of them)")
        if self.episode is not None and self.pareto:
            raise ConfigError("--episode picks an episode of --run-id; with --pareto use --max-flops-ratio")
        if self.every and not self.pareto:
            raise ConfigError("--all exports every Pareto-optimal policy; it needs --pareto")
        if self.max_flops_ratio is not None and not 0.0 < self.max_flops_ratio <= 1.0:
            raise ConfigError("--max-flops-ratio is the fraction of the dense FLOPs kept, in (0, 1]; "
                              f"got {self.max_flops_ratio}")


def _choose(client: Any, request: ExportRequest) -> tuple[list[Candidate], tuple[SearchRun, ...]]:
    exp = find_experiment(client, request.experiment)
    runs = load_search_runs(client, exp.experiment_id)
    if request.pareto:
        if not runs:
            raise ConfigError(f"experiment {request.experiment!r} has no finished search; run `amc search` first")
        return from_front(runs, request.max_flops_ratio, request.every), runs
    run = _run_in_experiment(client, runs, str(request.run_id), request.experiment)
    return [from_run(run, request.episode, request.max_flops_ratio)], runs


def _export_one(item: ExportItem, out: Path, fmt: str) -> ExportedPolicy:
    from amc.plots import policy_bars

    out.mkdir(parents=True, exist_ok=True)
    c = item.candidate
    files = EXPORT_FORMATS.get(fmt)(item, out)
    bars = policy_bars(out / "policy.png", c.ratios, item.uniform_ratio,
                       f"{c.run_name} episode {c.episode}: top-1 {c.top1:.2%}, FLOPs {c.flops_ratio:.1%}")
    return ExportedPolicy(c, out, (*files, bars))


def _manifest(request: ExportRequest, uri: str, exported: Sequence[ExportedPolicy]) -> dict[str, Any]:
    selection = {"pareto": request.pareto, "run_id": request.run_id, "episode": request.episode,
                 "max_flops_ratio": request.max_flops_ratio, "all": request.every}
    policies = []
    for e in exported:
        c = e.candidate
        policies.append({"dir": str(e.directory.relative_to(request.out)), "run_id": c.run_id, "run_name": c.run_name,
                         "episode": c.episode, "top1": c.top1, "flops_ratio": c.flops_ratio, "params_ratio": c.params_ratio,
                         "files": [str(f.relative_to(request.out)) for f in e.files]})
    return {"schema_version": 1, "kind": "amc-export", "format": request.format, "experiment": request.experiment,
            "tracking_uri": uri, "selection": selection, "policies": policies}


def export_policies(request: ExportRequest) -> ExportResult:
    """Chooses the policies of ``request`` from MLflow and writes them in its format, with a manifest."""
    from amc.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(request.tracking_uri)
    client = mlflow_client(uri)
    chosen, runs = _choose(client, request)
    uniform = {r.run_id: r.uniform.ratio for r in runs if r.uniform is not None}
    exported = []
    for c in chosen:
        item = ExportItem(c, policy_for(client, c), uniform.get(c.run_id), request.experiment)
        where = request.out / f"{c.run_id[:8]}-ep{c.episode:04d}" if request.every else request.out
        exported.append(_export_one(item, where, request.format))
    manifest = write_json_atomic(request.out / MANIFEST, _manifest(request, uri, exported))
    return ExportResult(request.out, request.format, tuple(exported), manifest)


def load_ratio_mapping(path: str | Path) -> Mapping[str, float]:
    """Reads the module -> ratio mapping of a ``torch_pruning_ratios.json`` back."""
    data = json.loads(Path(path).read_text())
    if data.get("kind") != "amc-torch-pruning-ratios":
        raise ConfigError(f"{path} is not a torch-pruning export of amc")
    return {str(k): float(v) for k, v in data["pruning_ratio_dict"].items()}


__all__ = ["EXPORT_FORMATS", "ExportRequest", "ExportResult", "ExportedPolicy", "export_policies", "from_front",
           "from_run", "group_exports", "load_ratio_mapping", "torch_pruning_ratio"]
