"""The Pareto front of a set of evaluated policies (pure: no MLflow), and its tables.

The objectives are search-val top-1 (maximised) against the FLOPs ratio and the params ratio
(minimised), plus the latency ratio when every candidate has one (an episode record with a
``latency_ratio`` field; a mix of records with and without it cannot be compared, so latency is left
out then, with a warning). The non-dominated filter and the hypervolume come from ``moocore``.

Hypervolume: the volume that the front dominates in (top-1 error, FLOPs ratio, params ratio[, latency
ratio]) space, bounded by the fixed reference point :data:`REFERENCE` (error 1.0 and every ratio 1.0,
the dense model's cost with no accuracy). Each coordinate lies in [0, 1], so the hypervolume does too,
and two experiments with the same objectives compare by this one number: larger is better.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from amc.errors import ConfigError

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
        latency_ratio: Latency as a fraction of the dense model's, estimated from the search's latency table
            (recorded by latency-target searches; the objective, so that every episode compares alike).
        ratios: Per-group pruning ratios of the policy.
        latency_ms: The estimated milliseconds behind ``latency_ratio``.
        latency_ms_measured: Milliseconds measured on the physically pruned model after the search (the
            search's best and Pareto policies; None for the others).
    """

    run_id: str
    run_name: str
    episode: int
    top1: float
    flops_ratio: float
    params_ratio: float
    latency_ratio: float | None = None
    ratios: Mapping[str, float] = field(default_factory=dict)
    latency_ms: float | None = None
    latency_ms_measured: float | None = None

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
        min_top1: The search-val top-1 every candidate was required to reach (None: every policy counted).
    """

    objectives: tuple[str, ...]
    reference: tuple[float, ...]
    candidates: tuple[Candidate, ...]
    front: tuple[Candidate, ...]
    hypervolume: float
    baselines: tuple[Baseline, ...] = ()
    min_top1: float | None = None

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
        raise ConfigError(
            f"no policy {where} has flops_ratio <= {max_flops_ratio:g} (the smallest is {cheapest:.4f}); "
            "raise --max-flops-ratio"
        )
    return max(within, key=lambda c: (c.top1, -c.flops_ratio))


# --------------------------------------------------------------------------- the front (pure)
def objectives_for(candidates: Sequence[Candidate]) -> tuple[str, ...]:
    """top-1, FLOPs and params ratio, plus latency ratio when every candidate has one."""
    with_latency = sum(c.latency_ratio is not None for c in candidates)
    if 0 < with_latency < len(candidates):
        warnings.warn(
            f"only {with_latency} of {len(candidates)} candidates have a latency_ratio; "
            "leaving latency out of the Pareto objectives",
            stacklevel=2,
        )
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


def front_of_runs(runs: Sequence[SearchRun], min_top1: float | None = None) -> ParetoFront:
    """The Pareto front over every episode of ``runs`` (with ``min_top1``: those reaching that search-val top-1).

    Raises:
        ConfigError: when no episode reaches ``min_top1``.
    """
    candidates = [c for r in runs for c in r.candidates]
    if min_top1 is not None:
        kept = [c for c in candidates if c.top1 >= min_top1]
        if not kept:
            best = max((c.top1 for c in candidates), default=float("nan"))
            raise ConfigError(
                f"no policy of these {len(runs)} searches reaches search-val top-1 {min_top1:.2%} (the highest is "
                f"{best:.2%}); lower --min-top1"
            )
        candidates = kept
    front = pareto_front(candidates, [r.uniform for r in runs if r.uniform is not None])
    return dataclasses.replace(front, min_top1=min_top1)


# --------------------------------------------------------------------------- tables
def _row(c: Candidate, objectives: Sequence[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"run_id": c.run_id, "run_name": c.run_name, "episode": c.episode}
    row.update({n: c.objective(n) for n in objectives})
    if "latency_ratio" in objectives:  # estimate beside measurement (empty when the policy was not measured)
        row.update({k: getattr(c, k) for k in LATENCY_COLUMNS})
    row["ratios"] = json.dumps(dict(c.ratios), sort_keys=False)
    return row


#: Columns the tables add beside a latency objective: estimated and measured milliseconds.
LATENCY_COLUMNS = ("latency_ms", "latency_ms_measured")


def _columns(objectives: Sequence[str]) -> list[str]:
    return [*objectives, *(LATENCY_COLUMNS if "latency_ratio" in objectives else ())]


def write_csv(path: Path, front: ParetoFront, candidates: Sequence[Candidate], mark_front: bool = False) -> Path:
    """A table of ``candidates`` (one row each, ratios as a JSON column), optionally with ``on_front``."""
    keys = front.keys
    columns = ["run_id", "run_name", "episode", *_columns(front.objectives), *(["on_front"] if mark_front else [])]
    columns.append("ratios")
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
            for name in (*OBJECTIVES, *LATENCY_COLUMNS):
                if name in row:
                    row[name] = float(row[name]) if row[name] not in ("", None) else None
            row["ratios"] = json.loads(row["ratios"])
            rows.append(row)
    return rows


def front_summary(front: ParetoFront, experiment: str) -> dict[str, Any]:
    """The front as a JSON document (``pareto_front.json``)."""
    return {
        "schema_version": 1,
        "kind": "amc-pareto-front",
        "experiment": experiment,
        "objectives": {n: "max" if OBJECTIVES[n] else "min" for n in front.objectives},
        "reference_point": dict(zip(front.objectives, front.reference)),
        "hypervolume": front.hypervolume,
        "candidates": len(front.candidates),
        "min_top1": front.min_top1,
        "front": [{**_row(c, front.objectives), "ratios": dict(c.ratios)} for c in front.front],
        "uniform": [asdict(b) for b in front.baselines],
    }


__all__ = [
    "LATENCY_COLUMNS",
    "OBJECTIVES",
    "REFERENCE",
    "Baseline",
    "Candidate",
    "ParetoFront",
    "SearchRun",
    "best_within",
    "front_of_runs",
    "front_summary",
    "objectives_for",
    "pareto_front",
    "read_front_csv",
    "write_csv",
]
