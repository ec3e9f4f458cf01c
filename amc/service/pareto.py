"""The Pareto front of an MLflow experiment, written to files and logged back to MLflow.

The candidates are every policy any search in the experiment evaluated (:mod:`amc.service.candidates`);
the front and its hypervolume are computed by :mod:`amc.service.front` (see there for the objectives
and the reference point).

:func:`update_pareto` logs the front to a dedicated run (tag ``amc.kind=pareto``, name
``pareto-front``; reused when it exists) in the experiment: metrics ``hypervolume``, ``front_size``,
``candidates``, ``search_runs`` and ``front_best_top1``; artifacts ``pareto_front.csv``,
``pareto_candidates.csv``, ``pareto_front.json``, ``pareto_front.png`` and ``pareto_best_policy.png``.
It tags every search run ``amc.pareto=true`` or ``false`` (owns a front point or not) and lists the
episodes on the front in ``amc.pareto.episodes``, so the MLflow UI can filter with
``tags.amc.pareto = "true"``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amc.errors import ConfigError
from amc.files import write_json_atomic
from amc.service.candidates import (
    KIND_TAG,
    PARETO_KIND,
    SEARCH_ARTIFACT,
    find_experiment,
    load_search_runs,
    mlflow_client,
)
from amc.service.front import ParetoFront, SearchRun, front_of_runs, front_summary, write_csv
from amc.service.plots import pareto_scatter, policy_bars

PARETO_TAG = "amc.pareto"
EPISODES_TAG = "amc.pareto.episodes"
PARETO_RUN_NAME = "pareto-front"
MAX_TAG_LENGTH = 5000  # MLflow allows 8000 characters per tag value


def write_front(front: ParetoFront, experiment: str, out: Path, runs: Sequence[SearchRun] = ()) -> tuple[Path, ...]:
    """Writes the front's tables, JSON and plots into ``out``; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    files = [
        write_csv(out / "pareto_front.csv", front, front.front),
        write_csv(out / "pareto_candidates.csv", front, front.candidates, mark_front=True),
        write_json_atomic(out / "pareto_front.json", front_summary(front, experiment)),
        pareto_scatter(
            out / "pareto_front.png",
            front,
            f"{experiment}: Pareto front of {len(front.candidates)} policies, hypervolume {front.hypervolume:.4f}",
        ),
    ]
    best = front.best()
    uniform = next((r.uniform.ratio for r in runs if r.run_id == best.run_id and r.uniform is not None), None)
    files.append(
        policy_bars(
            out / "pareto_best_policy.png",
            best.ratios,
            uniform,
            f"highest top-1 on the front: {best.run_name} episode {best.episode} "
            f"(top-1 {best.top1:.2%}, FLOPs {best.flops_ratio:.1%})",
        )
    )
    return tuple(files)


# --------------------------------------------------------------------------- logging to MLflow
def find_pareto_run(client: Any, experiment_id: str) -> str | None:
    """The id of the experiment's Pareto run (tag ``amc.kind=pareto``; the oldest active one), None before the first
    ``amc pareto``. One filtered query, not a walk over every run of the experiment."""
    found = client.search_runs(
        [experiment_id],
        f"tags.`{KIND_TAG}` = '{PARETO_KIND}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    return found[0].info.run_id if found else None


def _pareto_run_id(client: Any, experiment_id: str) -> str:
    """The experiment's Pareto run (created on first use)."""
    found = find_pareto_run(client, experiment_id)
    if found is not None:
        return found
    return client.create_run(experiment_id, run_name=PARETO_RUN_NAME, tags={KIND_TAG: PARETO_KIND}).info.run_id


def _description(front: ParetoFront) -> str:
    ref = ", ".join(f"{n} {r:g}" for n, r in zip(front.objectives, front.reference))
    kept = f"Only policies with top1 >= {front.min_top1:g} (amc pareto --min-top1). " if front.min_top1 else ""
    return (
        f"Pareto front of every policy evaluated by the searches in this experiment "
        f"({len(front.front)} of {len(front.candidates)} are non-dominated). Objectives: top1 (max), "
        f"{', '.join(n for n in front.objectives if n != 'top1')} (min). Hypervolume reference point: {ref}. "
        f'{kept}Search runs owning a front point have the tag amc.pareto = "true".'
    )


def log_front(client: Any, experiment_id: str, front: ParetoFront, files: Sequence[Path], n_runs: int) -> str:
    """Logs the front's metrics, artifacts and description to the experiment's Pareto run; returns its id."""
    from mlflow.entities import Metric

    run_id = _pareto_run_id(client, experiment_id)
    now, step = int(time.time() * 1000), len(front.candidates)
    values = {
        "hypervolume": front.hypervolume,
        "front_size": len(front.front),
        "candidates": len(front.candidates),
        "search_runs": n_runs,
        "front_best_top1": front.best().top1,
    }
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])
    for path in files:
        client.log_artifact(run_id, str(path))
    tags = {
        "amc.pareto.objectives": ",".join(front.objectives),
        "amc.pareto.reference": ",".join(f"{r:g}" for r in front.reference),
        "amc.pareto.hypervolume": f"{front.hypervolume:.6f}",
        "amc.pareto.min_top1": "none" if front.min_top1 is None else f"{front.min_top1:g}",
        "mlflow.note.content": _description(front),
    }
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


def update_pareto(
    experiment: str,
    tracking_uri: str | None = None,
    out: Path | None = None,
    log_to_mlflow: bool = True,
    min_top1: float | None = None,
) -> ParetoReport:
    """Computes an experiment's Pareto front over all its searches' episodes, writes and logs it.

    Args:
        experiment: MLflow experiment name.
        tracking_uri: MLflow store (see :func:`amc.service.tracking.resolve_tracking_uri`).
        out: Directory for the CSV / JSON / PNG files; a temporary one when None.
        log_to_mlflow: Log to the experiment's Pareto run and tag the search runs.
        min_top1: Leave out the policies below this search-val top-1 (e.g. those at chance accuracy).

    Raises:
        ConfigError: when the experiment does not exist, has no finished search, or no policy reaches ``min_top1``.
    """
    from amc.service.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow_client(uri)
    exp = find_experiment(client, experiment)
    runs = load_search_runs(client, exp.experiment_id)
    if not runs:
        raise ConfigError(
            f"experiment {experiment!r} has no finished search (no run with a {SEARCH_ARTIFACT} "
            "artifact); run `amc search` first"
        )
    front = front_of_runs(runs, min_top1)
    with tempfile.TemporaryDirectory(prefix="amc-pareto-") as tmp:
        files = write_front(front, experiment, Path(out) if out is not None else Path(tmp), runs)
        run_id = log_front(client, exp.experiment_id, front, files, len(runs)) if log_to_mlflow else None
    if log_to_mlflow:
        tag_search_runs(client, runs, front)
    return ParetoReport(experiment, uri, front, runs, run_id, files if out is not None else ())


__all__ = [
    "EPISODES_TAG",
    "PARETO_RUN_NAME",
    "PARETO_TAG",
    "ParetoReport",
    "episodes_tag",
    "find_pareto_run",
    "log_front",
    "tag_search_runs",
    "update_pareto",
    "write_front",
]
