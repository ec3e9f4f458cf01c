"""The Pareto front of an MLflow experiment: every policy any search in it evaluated, best trade-offs marked.

Every episode record in every search run's ``search.json`` is a candidate, not only each run's best.
The objectives are search-val top-1 (maximised) against the FLOPs ratio and the params ratio
(minimised), plus the latency ratio when every candidate has one (an episode record with a
``latency_ratio`` field; a mix of records with and without it cannot be compared, so latency is left
out then, with a warning). The non-dominated filter and the hypervolume come from ``moocore``.

Hypervolume: the volume that the front dominates in (top-1 error, FLOPs ratio, params ratio[, latency
ratio]) space, bounded by the fixed reference point :data:`REFERENCE` (error 1.0 and every ratio 1.0,
the dense model's cost with no accuracy). Each coordinate lies in [0, 1], so the hypervolume does too,
and two experiments with the same objectives compare by this one number: larger is better.

:func:`update_pareto` logs the front to a dedicated run (tag ``amc.kind=pareto``, name
``pareto-front``; reused when it exists) in the experiment: metrics ``hypervolume``, ``front_size``,
``candidates``, ``search_runs`` and ``front_best_top1``; artifacts ``pareto_front.csv``,
``pareto_candidates.csv``, ``pareto_front.json``, ``pareto_front.png`` and ``pareto_best_policy.png``.
It tags every search run ``amc.pareto=true`` or ``false`` (owns a front point or not) and lists the
episodes on the front in ``amc.pareto.episodes``, so the MLflow UI can filter with
``tags.amc.pareto = "true"``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from amc.errors import ConfigError
from amc.files import write_json_atomic

log = logging.getLogger(__name__)

SEARCH_ARTIFACT = "search.json"
KIND_TAG = "amc.kind"
PARETO_KIND = "pareto"
PARETO_TAG = "amc.pareto"
EPISODES_TAG = "amc.pareto.episodes"
PARETO_RUN_NAME = "pareto-front"
_PROGRESS_VAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
MAX_TAG_LENGTH = 5000  # MLflow allows 8000 characters per tag value
#: Objective name -> True when maximised. ``latency_ratio`` is used only when every candidate has one.
OBJECTIVES: dict[str, bool] = {"top1": True, "flops_ratio": False, "params_ratio": False, "latency_ratio": False}
#: Reference point of the hypervolume per objective: top-1 0 (error 1.0) and each cost ratio 1.0.
REFERENCE: dict[str, float] = {"top1": 0.0, "flops_ratio": 1.0, "params_ratio": 1.0, "latency_ratio": 1.0}


@dataclass(frozen=True)
class Candidate:
    """One evaluated policy: an episode of a search run.

    Attributes:
        run_id: MLflow run of the search.
        run_name: Its run name.
        episode: Episode number within the search.
        top1: Search-val top-1 accuracy.
        flops_ratio: FLOPs kept, as a fraction of the dense model's.
        params_ratio: Parameters kept, as a fraction of the dense model's.
        latency_ratio: Measured latency as a fraction of the dense model's, when recorded.
        ratios: Per-group pruning ratios of the policy.
    """

    run_id: str
    run_name: str
    episode: int
    top1: float
    flops_ratio: float
    params_ratio: float
    latency_ratio: float | None = None
    ratios: Mapping[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``<run_id>:<episode>``, unique within an experiment."""
        return f"{self.run_id}:{self.episode}"

    def objective(self, name: str) -> float:
        """The value of objective ``name`` (see :data:`OBJECTIVES`)."""
        value = getattr(self, name)
        if value is None:
            raise ConfigError(f"candidate {self.key} has no {name}")
        return float(value)


@dataclass(frozen=True)
class Baseline:
    """The uniform policy a search compared itself against (every group pruned by ``ratio``)."""

    run_id: str
    ratio: float
    top1: float
    flops_ratio: float
    params_ratio: float


@dataclass(frozen=True)
class SearchRun:
    """What one search run contributes: its episodes as candidates, its uniform baseline, its best episode."""

    run_id: str
    run_name: str
    candidates: tuple[Candidate, ...]
    uniform: Baseline | None
    best_episode: int | None


@dataclass(frozen=True)
class ParetoFront:
    """The non-dominated candidates of a set of searches.

    Attributes:
        objectives: Objective names, in the column order of the front's tables.
        reference: Hypervolume reference point, one value per objective.
        candidates: Every candidate considered.
        front: The non-dominated candidates, by increasing FLOPs ratio.
        hypervolume: Hypervolume of the front with respect to ``reference``.
        baselines: Uniform baselines of the searches (drawn on the plot).
    """

    objectives: tuple[str, ...]
    reference: tuple[float, ...]
    candidates: tuple[Candidate, ...]
    front: tuple[Candidate, ...]
    hypervolume: float
    baselines: tuple[Baseline, ...] = ()

    @property
    def keys(self) -> frozenset[str]:
        """Keys (``<run_id>:<episode>``) of the front's candidates."""
        return frozenset(c.key for c in self.front)

    def episodes_of(self, run_id: str) -> list[int]:
        """Episodes of run ``run_id`` that lie on the front, in increasing order."""
        return sorted(c.episode for c in self.front if c.run_id == run_id)

    def best(self, max_flops_ratio: float | None = None) -> Candidate:
        """The front's highest-top-1 candidate within a FLOPs budget (ties: the cheaper one)."""
        return best_within(self.front, max_flops_ratio, "on the Pareto front")


def best_within(candidates: Sequence[Candidate], max_flops_ratio: float | None, where: str) -> Candidate:
    """The highest-top-1 candidate with at most ``max_flops_ratio`` FLOPs (ties: the cheaper one).

    Raises:
        ConfigError: when none is within the budget; ``where`` says which candidates were looked at.
    """
    within = [c for c in candidates if max_flops_ratio is None or c.flops_ratio <= max_flops_ratio]
    if not within:
        cheapest = min((c.flops_ratio for c in candidates), default=float("nan"))
        raise ConfigError(f"no policy {where} has flops_ratio <= {max_flops_ratio:g} (the smallest is {cheapest:.4f}); "
                          "raise --max-flops-ratio")
    return max(within, key=lambda c: (c.top1, -c.flops_ratio))


# --------------------------------------------------------------------------- the front (pure)
def objectives_for(candidates: Sequence[Candidate]) -> tuple[str, ...]:
    """top-1, FLOPs and params ratio, plus latency ratio when every candidate has one."""
    with_latency = sum(c.latency_ratio is not None for c in candidates)
    if 0 < with_latency < len(candidates):
        warnings.warn(f"only {with_latency} of {len(candidates)} candidates have a latency_ratio; "
                      "leaving latency out of the Pareto objectives", stacklevel=2)
    names = ("top1", "flops_ratio", "params_ratio")
    return names + ("latency_ratio",) if candidates and with_latency == len(candidates) else names


def _moocore() -> ModuleType:
    try:
        import moocore
    except ModuleNotFoundError as exc:  # pragma: no cover - part of the pinned stack
        raise ModuleNotFoundError("the Pareto front needs moocore: pip install moocore") from exc
    return moocore


def pareto_front(candidates: Iterable[Candidate], baselines: Iterable[Baseline] = ()) -> ParetoFront:
    """Filters the non-dominated candidates and computes the front's hypervolume.

    Args:
        candidates: Evaluated policies; candidates with a non-finite objective are left out.
        baselines: Uniform baselines, carried along for the plot.

    Raises:
        ConfigError: when no candidate is left.
    """
    import numpy as np

    pool = [c for c in candidates if all(math.isfinite(v) for v in (c.top1, c.flops_ratio, c.params_ratio))]
    if not pool:
        raise ConfigError("there are no evaluated policies to build a Pareto front from; run `amc search` first")
    names = objectives_for(pool)
    points = np.array([[c.objective(n) for n in names] for c in pool], dtype=float)
    maximise = [OBJECTIVES[n] for n in names]
    reference = tuple(REFERENCE[n] for n in names)
    moocore = _moocore()
    mask = moocore.is_nondominated(points, maximise=maximise, keep_weakly=False)
    front = sorted((c for c, keep in zip(pool, mask) if keep), key=lambda c: (c.flops_ratio, -c.top1, c.key))
    volume = float(moocore.hypervolume(points[mask], ref=list(reference), maximise=maximise))
    return ParetoFront(names, reference, tuple(pool), tuple(front), volume, tuple(baselines))


# --------------------------------------------------------------------------- reading searches from MLflow
def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri`` (MLflow imported here, with an install hint)."""
    from amc.tracking import _client

    return _client(uri)


def find_experiment(client: Any, name: str) -> Any:
    """The experiment called ``name``; raises ConfigError listing the store's experiments otherwise."""
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        raise ConfigError(f"no MLflow experiment named {name!r} in {client.tracking_uri}; it has: "
                          f"{', '.join(names) or 'none'} (pass --tracking-uri for another store)")
    return exp


def all_runs(client: Any, experiment_id: str) -> list[Any]:
    """Every active run of an experiment, oldest first."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def read_json_artifact(client: Any, run_id: str, name: str) -> dict | None:
    """A run's top-level JSON artifact ``name``, or None when the run has none."""
    if name not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory(prefix="amc-artifact-") as tmp, _no_progress_bars():
        path = client.download_artifacts(run_id, name, tmp)
        try:
            return json.loads(Path(path).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"artifact {name} of run {run_id} is not valid JSON: {exc}") from None


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Turns MLflow's artifact download progress bars off for one small download."""
    old = os.environ.get(_PROGRESS_VAR)
    os.environ[_PROGRESS_VAR] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_PROGRESS_VAR, None)
        else:
            os.environ[_PROGRESS_VAR] = old


def search_run_from_summary(run_id: str, run_name: str, summary: Mapping[str, Any]) -> SearchRun:
    """Builds a :class:`SearchRun` from a ``search.json`` summary."""
    try:
        candidates = tuple(
            Candidate(run_id, run_name, int(e["episode"]), float(e["top1"]), float(e["flops_ratio"]),
                      float(e["params_ratio"]), _optional_float(e.get("latency_ratio")),
                      {str(k): float(v) for k, v in e["ratios"].items()})
            for e in summary["episodes"])
        u = summary.get("uniform")
        uniform = Baseline(run_id, float(u["ratio"]), float(u["top1"]), float(u["flops_ratio"]),
                           float(u["params_ratio"])) if u else None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"search.json of run {run_id} is malformed ({type(exc).__name__}: {exc}); "
                          "it should come from `amc search`") from None
    best = summary.get("best") or {}
    return SearchRun(run_id, run_name, candidates, uniform, best.get("episode"))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def load_search_runs(client: Any, experiment_id: str) -> tuple[SearchRun, ...]:
    """The experiment's search runs: runs with a ``search.json`` artifact (the Pareto run excluded)."""
    found = []
    for run in all_runs(client, experiment_id):
        if run.data.tags.get(KIND_TAG) == PARETO_KIND:
            continue
        summary = read_json_artifact(client, run.info.run_id, SEARCH_ARTIFACT)
        if summary is None:
            log.info("run %s has no %s (unfinished or not a search); skipped", run.info.run_id, SEARCH_ARTIFACT)
            continue
        found.append(search_run_from_summary(run.info.run_id, run.info.run_name or run.info.run_id, summary))
    return tuple(found)


def front_of_runs(runs: Sequence[SearchRun]) -> ParetoFront:
    """The Pareto front over every episode of ``runs``."""
    candidates = [c for r in runs for c in r.candidates]
    return pareto_front(candidates, [r.uniform for r in runs if r.uniform is not None])


# --------------------------------------------------------------------------- outputs
def _row(c: Candidate, objectives: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": c.run_id, "run_name": c.run_name, "episode": c.episode}
    row.update({n: c.objective(n) for n in objectives})
    row["ratios"] = json.dumps(dict(c.ratios), sort_keys=False)
    return row


def write_csv(path: Path, front: ParetoFront, candidates: Sequence[Candidate], mark_front: bool = False) -> Path:
    """A table of ``candidates`` (one row each, ratios as a JSON column), optionally with ``on_front``."""
    keys = front.keys
    columns = ["run_id", "run_name", "episode", *front.objectives, *(["on_front"] if mark_front else []), "ratios"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for c in candidates:
            row = _row(c, front.objectives)
            if mark_front:
                row["on_front"] = str(c.key in keys).lower()
            writer.writerow(row)
    return path


def read_front_csv(path: Path) -> list[dict[str, Any]]:
    """Reads a table written by :func:`write_csv` back (numbers as floats, ratios as a dict)."""
    rows = []
    with Path(path).open(newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = dict(raw)
            row["episode"] = int(row["episode"])
            for name in OBJECTIVES:
                if name in row:
                    row[name] = float(row[name])
            row["ratios"] = json.loads(row["ratios"])
            rows.append(row)
    return rows


def front_summary(front: ParetoFront, experiment: str) -> dict[str, Any]:
    """The front as a JSON document (``pareto_front.json``)."""
    return {
        "schema_version": 1, "kind": "amc-pareto-front", "experiment": experiment,
        "objectives": {n: "max" if OBJECTIVES[n] else "min" for n in front.objectives},
        "reference_point": dict(zip(front.objectives, front.reference)),
        "hypervolume": front.hypervolume, "candidates": len(front.candidates),
        "front": [{**_row(c, front.objectives), "ratios": dict(c.ratios)} for c in front.front],
        "uniform": [asdict(b) for b in front.baselines],
    }


def _staircase(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """The 2-D front (min x, max y) of ``points`` as a step line."""
    xs, ys, best = [], [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            xs.append(x)
            ys.append(y)
            best = y
    return xs, ys


def pareto_scatter(path: Path, front: ParetoFront, title: str = "") -> Path:
    """Top-1 against the FLOPs and the params ratio: every candidate, the front, the uniform baselines."""
    from amc.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    keys = front.keys
    for ax, cost in zip(axes, ("flops_ratio", "params_ratio")):
        others = [c for c in front.candidates if c.key not in keys]
        ax.plot([getattr(c, cost) for c in others], [c.top1 * 100 for c in others], ".", color="#aaaaaa", ms=4,
                label="evaluated policy")
        ax.plot([getattr(c, cost) for c in front.front], [c.top1 * 100 for c in front.front], "o", color="#3b7dd8",
                ms=5, label="Pareto-optimal (all objectives)")
        xs, ys = _staircase([(getattr(c, cost), c.top1) for c in front.candidates])
        ax.step(xs, [y * 100 for y in ys], where="post", color="k", lw=1, label=f"front of top-1 vs {cost}")
        for i, b in enumerate(front.baselines):
            ax.plot(getattr(b, cost), b.top1 * 100, "X", color="#d8553b", ms=9,
                    label="uniform baseline" if i == 0 else None)
        ax.set_xlabel(f"{cost.replace('_', ' ')} (fraction of dense)")
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("search-val top-1 (%)")
    fig.suptitle(title or f"Pareto front: {len(front.front)} of {len(front.candidates)} policies, "
                          f"hypervolume {front.hypervolume:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_front(front: ParetoFront, experiment: str, out: Path, runs: Sequence[SearchRun] = ()) -> tuple[Path, ...]:
    """Writes the front's tables, JSON and plots into ``out``; returns the files."""
    from amc.plots import policy_bars

    out.mkdir(parents=True, exist_ok=True)
    files = [write_csv(out / "pareto_front.csv", front, front.front),
             write_csv(out / "pareto_candidates.csv", front, front.candidates, mark_front=True),
             write_json_atomic(out / "pareto_front.json", front_summary(front, experiment)),
             pareto_scatter(out / "pareto_front.png", front, f"{experiment}: Pareto front of {len(front.candidates)} "
                                                              f"policies, hypervolume {front.hypervolume:.4f}")]
    best = front.best()
    uniform = next((r.uniform.ratio for r in runs if r.run_id == best.run_id and r.uniform is not None), None)
    files.append(policy_bars(out / "pareto_best_policy.png", best.ratios, uniform,
                             f"highest top-1 on the front: {best.run_name} episode {best.episode} "
                             f"(top-1 {best.top1:.2%}, FLOPs {best.flops_ratio:.1%})"))
    return tuple(files)


# --------------------------------------------------------------------------- logging to MLflow
def _pareto_run_id(client: Any, experiment_id: str) -> str:
    """The experiment's Pareto run (created on first use)."""
    for run in all_runs(client, experiment_id):
        if run.data.tags.get(KIND_TAG) == PARETO_KIND:
            return run.info.run_id
    return client.create_run(experiment_id, run_name=PARETO_RUN_NAME, tags={KIND_TAG: PARETO_KIND}).info.run_id


def _description(front: ParetoFront) -> str:
    ref = ", ".join(f"{n} {r:g}" for n, r in zip(front.objectives, front.reference))
    return (f"Pareto front of every policy evaluated by the searches in this experiment "
            f"({len(front.front)} of {len(front.candidates)} are non-dominated). Objectives: top1 (max), "
            f"{', '.join(n for n in front.objectives if n != 'top1')} (min). Hypervolume reference point: {ref}. "
            f"Search runs owning a front point have the tag amc.pareto = \"true\".")


def log_front(client: Any, experiment_id: str, front: ParetoFront, files: Sequence[Path], n_runs: int) -> str:
    """Logs the front's metrics, artifacts and description to the experiment's Pareto run; returns its id."""
    from mlflow.entities import Metric

    run_id = _pareto_run_id(client, experiment_id)
    now, step = int(time.time() * 1000), len(front.candidates)
    values = {"hypervolume": front.hypervolume, "front_size": len(front.front), "candidates": len(front.candidates),
              "search_runs": n_runs, "front_best_top1": front.best().top1}
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])
    for path in files:
        client.log_artifact(run_id, str(path))
    tags = {"amc.pareto.objectives": ",".join(front.objectives),
            "amc.pareto.reference": ",".join(f"{r:g}" for r in front.reference),
            "amc.pareto.hypervolume": f"{front.hypervolume:.6f}", "mlflow.note.content": _description(front)}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")
    return run_id


def episodes_tag(episodes: Sequence[int]) -> str:
    """Comma-separated episodes, shortened to fit an MLflow tag (the CSV has them all)."""
    text = ",".join(str(e) for e in episodes)
    if len(text) <= MAX_TAG_LENGTH:
        return text
    cut = text[:MAX_TAG_LENGTH].rsplit(",", 1)[0]
    return f"{cut},...(+{len(episodes) - cut.count(',') - 1} more; see pareto_front.csv)"


def tag_search_runs(client: Any, runs: Sequence[SearchRun], front: ParetoFront) -> None:
    """Tags each search run ``amc.pareto`` true/false and lists its front episodes in ``amc.pareto.episodes``."""
    for run in runs:
        episodes = front.episodes_of(run.run_id)
        client.set_tag(run.run_id, PARETO_TAG, "true" if episodes else "false")
        client.set_tag(run.run_id, EPISODES_TAG, episodes_tag(episodes))


# --------------------------------------------------------------------------- end to end
@dataclass(frozen=True)
class ParetoReport:
    """What :func:`update_pareto` computed and where it went.

    Attributes:
        experiment: Experiment name.
        tracking_uri: The MLflow store.
        front: The front.
        runs: The search runs it was computed from.
        pareto_run_id: The Pareto run it was logged to (None when not logged).
        files: Files written to ``out`` (empty when no ``out`` was given).
    """

    experiment: str
    tracking_uri: str
    front: ParetoFront
    runs: tuple[SearchRun, ...]
    pareto_run_id: str | None
    files: tuple[Path, ...]


def update_pareto(experiment: str, tracking_uri: str | None = None, out: Path | None = None,
                  log_to_mlflow: bool = True) -> ParetoReport:
    """Computes an experiment's Pareto front over all its searches' episodes, writes and logs it.

    Args:
        experiment: MLflow experiment name.
        tracking_uri: MLflow store (see :func:`amc.tracking.resolve_tracking_uri`).
        out: Directory for the CSV / JSON / PNG files; a temporary one when None.
        log_to_mlflow: Log to the experiment's Pareto run and tag the search runs.

    Raises:
        ConfigError: when the experiment does not exist or has no finished search.
    """
    from amc.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    exp = find_experiment(client, experiment)
    runs = load_search_runs(client, exp.experiment_id)
    if not runs:
        raise ConfigError(f"experiment {experiment!r} has no finished search (no run with a {SEARCH_ARTIFACT} "
                          "artifact); run `amc search` first")
    front = front_of_runs(runs)
    with tempfile.TemporaryDirectory(prefix="amc-pareto-") as tmp:
        files = write_front(front, experiment, Path(out) if out is not None else Path(tmp), runs)
        run_id = log_front(client, exp.experiment_id, front, files, len(runs)) if log_to_mlflow else None
    if log_to_mlflow:
        tag_search_runs(client, runs, front)
    return ParetoReport(experiment, uri, front, runs, run_id, files if out is not None else ())


__all__ = [
    "Baseline", "Candidate", "OBJECTIVES", "ParetoFront", "ParetoReport", "REFERENCE", "SearchRun", "best_within",
    "find_experiment",
    "front_of_runs", "load_search_runs", "pareto_front", "pareto_scatter", "read_front_csv", "update_pareto",
]
