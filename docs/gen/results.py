"""The results pages' tables, generated from ``experiments/bench/results/*.json`` (never pasted).

Each generator takes the parsed JSON and returns Markdown lines. :data:`TABLES` names them; a page asks for one
with ``<!-- gen:results.NAME -->`` and gets the table followed by a line saying which file, machine and date it
comes from (the date is the file's last commit; the machine is what the file records, else what the benchmark
notes say of the machine it ran on).
"""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
import subprocess
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "bench" / "results"

MACHINE_NOTES = {
    "search_quality.json": "2-core CPU development machine, shared with other jobs during the run (timings not "
    "comparable; results are, every episode is seeded)",
    "search_quality_selection.json": "2-core CPU development machine, two searches side by side",
    "agent_variants.json": "2-core CPU development machine",
    "agent_variants_exploration.json": "2-core CPU development machine",
    "front_quality.json": "2-core CPU development machine",
    "warm_start.json": "2-core CPU development machine",
    "worker_quality.json": "2-core CPU development machine",
    "ray_scaling.json": "2-core CPU development machine, idle during the Ray and learner sections",
    "scale.json": "2-core CPU development machine, shared with a one-core benchmark during the run (2 workers had "
    "about one core between them)",
    "search_quality_mnist1d_wide.txt": "2-core CPU development machine, shared with other jobs during the run; "
    "the run's printed output",
    "search_quality_mnist1d.json": "2-core CPU development machine, shared with other jobs during the run (timings "
    "not comparable; results are, every episode is seeded)",
    "learner_quality.json": "2-core CPU development machine, shared with other jobs",
    "learner_hidden_quality.json": "2-core CPU development machine, two searches side by side (timings not "
    "comparable; results are, every episode is seeded)",
    "learner_hidden_quality_300.json": "2-core CPU development machine, two searches side by side (timings not "
    "comparable; results are, every episode is seeded)",
    "shared_machine.json": "2-core CPU development machine, with 4 competing busy processes the script starts",
    "model_zoo.json": "CPU development machine, one thread",
    "episode_cost.json": "CPU development machine, one thread, CPU time",
    "episode_cost_greedy.json": "CPU development machine, one thread, CPU time",
    "quantize.json": "2-core CPU development machine, shared with other jobs (latencies noisy)",
    "retraining.json": "2-core CPU development machine, shared with other jobs",
    "sparsity_search.json": "2-core CPU development machine, shared with other jobs",
    "uniform_budgets_mnist1d.json": "2-core CPU development machine, one thread",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}"


@cache
def load(name: str) -> Any:
    return json.loads((RESULTS / name).read_text())


def _git_date(path: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "not committed yet"


def machine(name: str) -> str:
    """What the JSON file says of the machine (CPU, cores, torch, note), else the benchmark's notes (for a file of
    printed output, only them)."""
    if not name.endswith(".json"):
        return MACHINE_NOTES.get(name, "CPU development machine")
    data = load(name)
    settings = data.get("settings", {}) if isinstance(data, dict) else {}
    parts = []
    cpu = settings.get("cpu") or data.get("processor") or data.get("machine")
    cores = settings.get("cpus") or settings.get("cores") or data.get("cpus")
    if cpu:
        parts.append(f"{cpu}{f', {cores} cores' if cores else ''}")
    elif cores:
        parts.append(f"{cores} CPUs")
    if settings.get("torch") or data.get("torch"):
        parts.append(f"torch {settings.get('torch') or data.get('torch')}")
    note = data.get("note") if isinstance(data.get("note"), str) and len(data.get("note", "")) < 120 else None
    parts.append(note or MACHINE_NOTES.get(name, "CPU development machine"))
    return "; ".join(parts)


def provenance(*names: str) -> str:
    """One line: each file, its machine and its date."""
    return "Source: " + "; ".join(
        f"`experiments/bench/results/{n}` ({machine(n)}; {_git_date(RESULTS / n)})" for n in names
    )


# --------------------------------------------------------------------------- search quality
@cache
def _quality_table() -> Any:
    """``experiments/bench/quality_table.py``, the script that prints the search-quality tables."""
    spec = importlib.util.spec_from_file_location("quality_table", ROOT / "experiments" / "bench" / "quality_table.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _quality(kind: str, model: str, name: str = "search_quality.json") -> list[str]:
    qt = _quality_table()
    table = load(name)["models"][model]
    fn = {
        "methods": qt.method_table,
        "val": qt.search_val_table,
        "criteria": qt.criterion_table,
        "selection": qt.selection_table,
    }[kind]
    return fn(model, table)


def printed_quality(name: str) -> list[str]:
    """Best-so-far search-val @100 (mean ± sd) and fine-tuned test top-1 per method and FLOPs target, read from the
    summary a ``search_quality.py`` run printed (``name``: its output, kept where its JSON was not written)."""
    cells: dict[str, dict[str, tuple[str, str]]] = {}
    target = ""
    for line in (RESULTS / name).read_text().splitlines():
        if m := re.match(r"  flops_([\d.]+):$", line):
            target = m.group(1)
        elif m := re.match(r" +(\w+)  test .*@100 ([\d.]+)%\+-([\d.]+)%.*?(?:fine-tuned ([\d.]+)%)?$", line):
            method, val, sd, tuned = m.groups()
            cells.setdefault(method, {})[target] = (f"{val} ± {sd}", f"{float(tuned):.1f}" if tuned else "–")
    targets = sorted({t for c in cells.values() for t in c}, key=float)
    head = [f"{100 * float(t):g}% FLOPs: {what}" for t in targets for what in ("search-val @100", "fine-tuned")]
    out = ["| method | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
    for method, by_target in cells.items():
        out.append(f"| {method} | " + " | ".join(" | ".join(by_target.get(t, ("–", "–"))) for t in targets) + " |")
    return out


def versus() -> list[str]:
    """Best-so-far search-val top-1 at 100 and 300 episodes, TPE beside the agents, one row per cell."""
    methods = ("tpe", "ddpg", "ddpg_p32", "ddpg_amc")
    head = [f"{m} @{n}" for n in ("100", "300") for m in methods]
    lines = ["| cell | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
    for model, table in load("search_quality.json")["models"].items():
        for key in sorted(k for k in table if k.startswith("flops_")):
            cells = []
            for n in ("100", "300"):
                for m in methods:
                    c = table[key].get(m, {})
                    v = f"{_pct(c['val_at'][n])}" if "val_at" in c else "–"
                    cells.append(f"**{v}**" if m == "ddpg" and v != "–" else v)
            lines.append(f"| {model}, FLOPs {key[6:]} | " + " | ".join(cells) + " |")
    return lines


def summary() -> list[str]:
    """Per model and FLOPs target: test top-1 without fine-tuning of uniform, the best method, TPE and DDPG."""
    out = [
        "| cell | uniform | best method | tpe | ddpg | ddpg fine-tuned | uniform fine-tuned |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, table in load("search_quality.json")["models"].items():
        for key in sorted(k for k in table if k.startswith("flops_")):
            cells = table[key]
            best = max(cells, key=lambda m: cells[m]["test_top1_mean"])

            def get(method: str, name: str = "test_top1_mean", c: dict = cells) -> str:
                return f"{_pct(c[method][name])}%" if name in c.get(method, {}) else "–"

            out.append(
                f"| {model}, FLOPs {key[6:]} | {get('uniform')} | {best} {get(best)} | {get('tpe')} | {get('ddpg')} "
                f"| {get('ddpg', 'finetuned_test_top1_mean')} | {get('uniform', 'finetuned_test_top1_mean')} |"
            )
    return out


# --------------------------------------------------------------------------- agent variants
VARIANTS = {
    "tpe": "TPE",
    "amcobs": "previous default (AMC observation, mean value)",
    "hmean": "history, mean value",
    "hlast": "history, last-step value",
    "u2": "history, last-step value, 2 updates per transition",
    "p64": "history, last-step value, 64 proposals",
}
EXPLORATION = {
    "tpe": "TPE",
    "ddpg": "the default",
    "s5": "`ddpg.noise_sigma: 0.5`",
    "o2": "`ddpg.optimism: 2`",
    "d99": "`ddpg.noise_decay: 0.99`",
    "e10": "`ddpg.elites: 10`",
}


def _pooled(summaries: list[dict], key: str) -> float:
    """The mean of ``key`` over several summaries of one cell, weighted by their runs."""
    total = sum(s["runs"] for s in summaries)
    return sum(s[key] * s["runs"] for s in summaries) / total


def agent_variants(runs: tuple[str, ...] = ("r1", "r2")) -> list[str]:
    """Best-so-far search-val after 100 episodes per variant and cell (runs of one cell pooled), with the mean
    critic fit and the share of learning episodes beating the warm-up's best over the cells' summaries."""
    data = load("agent_variants.json")["runs"]
    cells: dict[str, dict[str, list[dict]]] = {}
    for r in runs:
        for cell, variants in data[r]["summary"].items():
            for v, s in variants.items():
                cells.setdefault(cell, {}).setdefault(v, []).append(s)
    names = [v for v in VARIANTS if any(v in c for c in cells.values())]
    head = [f"{cell} ({sum(s['runs'] for s in cells[cell][names[0]])} runs)" for cell in cells]
    lines = [
        "| variant | " + " | ".join(head) + " | critic fit | beats warm-up best |",
        "| --- |" + " --- |" * (len(head) + 2),
    ]
    for v in names:
        vals = []
        for cell in cells:
            summ = cells[cell].get(v)
            vals.append(_pct(_pooled([{**s, "v": s["val_at"]["100"]} for s in summ], "v")) if summ else "–")
        flat = [s for cell in cells.values() for s in cell.get(v, [])]
        fits = [s["critic_fit"] for s in flat if s.get("critic_fit") is not None]
        beats = [s["beats_warmup_best"] for s in flat if s.get("beats_warmup_best") is not None]
        fit = f"{statistics.mean(fits):.2f}" if fits else "–"
        beat = f"{statistics.mean(beats):.2f}" if beats else "–"
        lines.append(f"| {VARIANTS[v]} | " + " | ".join(vals) + f" | {fit} | {beat} |")
    return lines


def exploration() -> list[str]:
    data = load("agent_variants_exploration.json")["summary"]
    lines = []
    for cell, variants in data.items():
        lines += [f"| {cell}: variant | runs | after 30 episodes | after 100 |", "| --- | --- | --- | --- |"]
        for v, s in variants.items():
            label = EXPLORATION.get(v, v)
            lines.append(f"| {label} | {s['runs']} | {_pct(s['val_at']['30'])} | {_pct(s['val_at']['100'])} |")
    return lines


# --------------------------------------------------------------------------- front, warm start
FRONT_METHODS = {
    "tpe_per_target": "TPE, one study per target",
    "one_search": "one DDPG search, all targets",
    "one_search_equal": "one DDPG search, all targets",
    "optuna_multiobjective": "Optuna multi-objective",
}


def front_quality() -> list[str]:
    data = load("front_quality.json")
    out = []
    for model, methods in data["models"].items():
        targets = list(next(iter(methods.values()))["per_target"])
        out += [
            f"| {model}: method | evaluations | hypervolume | "
            + " | ".join(f"best within {t}" for t in targets)
            + " |",
            "| --- | --- | --- |" + " --- |" * len(targets),
        ]
        for name, m in methods.items():
            best = " | ".join(_pct(m["per_target"][t]) for t in targets)
            out.append(
                f"| {FRONT_METHODS.get(name, name)} | {m['evaluations']:.0f} | {m['hypervolume']:.3f} | {best} |"
            )
    return out


WARM = {"cold": "cold", "target_0.5": "from 0.5", "target_0.3": "from 0.3", "retrained": "retrained dense model"}


def warm_start() -> list[str]:
    data = load("warm_start.json")
    out = [
        "| model | start | @10 | @30 | @100 | cold's best @30 reached after | cold's best @100 reached after |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model, scenarios in data["models"].items():
        for name, s in scenarios.items():
            at = " | ".join(_pct(s["val_at"][n]) for n in ("10", "30", "100"))
            reach = []
            for n in ("30", "100"):
                runs = s["episodes_to_cold_at"][n]
                hit = sum(r is not None for r in runs)
                reach.append(f"{s['median_episodes_to_cold_at'][n]:g} ({hit}/{len(runs)} runs)")
            out.append(f"| {model} | {WARM.get(name, name)} | {at} | " + " | ".join(reach) + " |")
    return out


# --------------------------------------------------------------------------- latency
def latency_estimate(name: str = "latency_estimate.json") -> list[str]:
    data = load(name)
    threads = [str(t) for t in data["settings"]["threads"]]
    head = []
    for t in threads:
        head += [f"{t} thread{'s' if t != '1' else ''}", "noise floor"]
    out = [
        "| model | " + " | ".join(head) + " | Spearman (1 thread) | table |",
        "| --- |" + " --- |" * (len(head) + 2),
    ]
    for model, m in data["models"].items():
        cells = []
        for t in threads:
            s = m["threads"][t]
            cells.append(f"{_pct(s['median_abs_err'])}% / {_pct(s['p95_abs_err'])}%")
            cells.append(f"{_pct(s['repeat_median_abs_diff'])}% / {_pct(s['repeat_p95_abs_diff'])}%")
        rho = m["threads"][threads[0]].get("spearman")
        build = m["build_seconds"][threads[0]]
        out.append(
            f"| {model} | " + " | ".join(cells) + f" | {rho:.3f} | {m['entries']} entries, {build:.0f} s |"
            if rho is not None
            else f"| {model} | " + " | ".join(cells) + f" | – | {m['entries']} entries, {build:.0f} s |"
        )
    return out


def latency_vs_flops() -> list[str]:
    data = load("latency_vs_flops.json")
    labels = {
        "latency": f"latency {data['settings']['latency_target_ratio']:.0%}",
        "flops": f"FLOPs {statistics.mean(s['flops_target_ratio'] for s in data['seeds']):.0%}",
        "uniform": "uniform",
    }
    out = [
        "| budget | test top-1 | search-val top-1 | FLOPs kept | measured latency | speedup | test top-1 per seed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, m in data["mean"].items():
        per = " / ".join(_pct(s[key]["test_top1"]) for s in data["seeds"])
        out.append(
            f"| {labels[key]} | {_pct(m['test_top1'], 2)}% | {_pct(m['val_top1'], 2)}% | {_pct(m['flops_ratio'])}% "
            f"| {_pct(m['latency_ratio_measured'])}% | {m['speedup_measured']:.2f}x | {per} |"
        )
    return out


def latency_vs_flops_estimates() -> list[str]:
    """Per seed: the estimated and measured latency of each search's best policy."""
    data = load("latency_vs_flops.json")
    out = [
        "| seed | dense ms (estimated / measured) | latency search's best: estimated / measured ms | "
        "FLOPs search's best: estimated / measured ms |",
        "| --- | --- | --- | --- |",
    ]
    for s in data["seeds"]:
        out.append(
            f"| {s['seed']} | {s['dense_latency_ms_estimated']:.2f} / {s['dense_latency_ms_measured']:.2f} | "
            f"{s['latency']['latency_ms_estimated']:.2f} / {s['latency']['latency_ms_measured']:.2f} | "
            f"{s['flops']['latency_ms_estimated']:.2f} / {s['flops']['latency_ms_measured']:.2f} |"
        )
    return out


def latency_backends() -> list[str]:
    data = load("latency_backends.json")
    out = [
        "| model | batch | torch: dense / half-width ms | onnxruntime: dense / half-width ms | torch / onnxruntime (dense) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for model, batches in data["models"].items():
        for batch, b in batches.items():
            t, o = b["torch"], b["onnxruntime"]
            out.append(
                f"| {model} | {batch.removeprefix('batch')} | {t['dense_ms']:.2f} / {t['pruned_ms']:.2f} | "
                f"{o['dense_ms']:.2f} / {o['pruned_ms']:.2f} | {b['torch_over_onnxruntime_dense']:.1f}x |"
            )
    return out


# --------------------------------------------------------------------------- scaling and cost
def ray_scaling() -> list[str]:
    d = load("ray_scaling.json")
    by = d["ddpg"]["by_workers"]
    out = [
        "| run | workers | staleness bound | episodes/s | speedup | learner s / episode | learner busy | workers busy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w, eps in d["eps_per_s"].items():
        speed = eps / d["eps_per_s"]["1"]
        out.append(f"| random (warm-up) episodes | {w} | – | {eps:.1f} | {speed:.2f}x | – | – | – |")
    rows = [("DDPG after warm-up", r) for r in by.values()] + [("DDPG after warm-up", d["ddpg_stale"])]
    for label, r in rows:
        busy = " / ".join(f"{b:.0%}" for b in r["workers_busy"])
        out.append(
            f"| {label} | {r['workers']} | {r['bound']} | {r['eps_per_s']:.1f} | "
            f"{r['eps_per_s'] / by['1']['eps_per_s']:.2f}x | {1000 * r['learner_s_per_episode']:.0f} ms | "
            f"{r['learner_busy']:.0%} | {busy} |"
        )
    return out


def ray_learner() -> list[str]:
    d = load("ray_scaling.json")["learner"]
    labels = {
        "sb3": "SB3's step (before)",
        "default": "the default agent's step",
        "hidden_128": "`ddpg.hidden: [128, 128]`",
        "default_u1_x_groups": "`updates_per_episode: 1`, AMC's samples per episode",
    }
    out = [
        "| learner | gradient steps x batch | ms / episode | critics fwd+bwd | critic Adam | actor fwd+bwd "
        "| actor Adam | Polyak | rest | learner ceiling (workers) | plan ms | with the planning |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in d["by_setting"].items():
        ms = r["learner_ms_per_episode"]
        k = name.removeprefix("default_u")
        label = labels.get(name, f"`ddpg.updates_per_episode: {k}`")
        rest = ms["store"] + ms["sample"] + ms["other"]
        out.append(
            f"| {label} | {r['steps_per_episode']} x {r['batch_size']} | {ms['total']:.1f} | "
            f"{ms['critic_forward_backward']:.1f} | {ms['critic_adam']:.1f} | {ms['actor_forward_backward']:.1f} | "
            f"{ms['actor_adam']:.1f} | {ms['polyak']:.1f} | {rest:.1f} | {r['learner_ceiling_workers']:.1f} | "
            f"{r['plan_ms']:.0f} | {r['search_process_ceiling_workers']:.1f} |"
        )
    out += [
        "",
        f"(One thread, the machine's load average {d['load_average']:.1f} at the start; {d['groups']} groups, so AMC's schedule is {d['groups']} steps per episode; mean over "
        f"{d['learning_episodes']} learning episodes x {d['rounds']} rounds, the settings alternating. One worker's "
        f"episode: {d['episode_ms']:.0f} ms; plan: the critic-ranked plan of a learning episode.)",
    ]
    return out


def ray_payload() -> list[str]:
    p = load("ray_scaling.json")["payload_memory"]
    out = ["| payload | pickled MiB | each worker's peak MiB |", "| --- | --- | --- |"]
    labels = {
        "full": "the whole workspace",
        "slim": "the worker payload",
        "tiny": "a worker with 64 images (no data to speak of)",
    }
    for key, label in labels.items():
        if key in p:
            peaks = " / ".join(f"{m:,.0f}" for m in p[key]["worker_peak_mb"])
            out.append(f"| {label} | {p[key]['payload_mb']:,.0f} | {peaks} |")
    out += ["", f"({p['samples']:,} images of which {p['val_size']:,} search-val, {p['workers']} workers.)"]
    return out


def scale() -> list[str]:
    d = load("scale.json")
    out = [
        "| worker data | data set | workers | pickled payload MiB | has the training split | first episode after "
        "| episodes/s | each worker's peak MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode, m in d["modes"].items():
        for w, r in m["by_workers"].items():
            peaks = " / ".join(f"{x:,.0f}" for x in r["worker_peak_mb"])
            eps = f"{r['eps_per_s']:.3f}" if r["eps_per_s"] is not None else "–"
            out.append(
                f"| {mode} | {m['data']} | {w} | {m['payload_mb']:,.0f} | {'yes' if m['payload_has_train'] else 'no'} "
                f"| {r['first_episode_s']:.1f} s | {eps} | {peaks} |"
            )
    out += [
        "",
        f"({d['model']}, {d['train_images']:,} training images of which {d['val_size']:,} search-val, "
        f"{d['evaluated_images']:,} evaluated per episode, {d['rounds']} episodes per worker, {d['cpus']} CPUs. "
        f"The DDPG learner: {1000 * d['learner_s_per_episode']:.0f} ms per episode against "
        f"{d['episode_s']:.1f} s for one worker's episode: a ceiling of {d['learner_ceiling_workers']:,.0f} "
        "workers.)",
    ]
    return out


def worker_quality() -> list[str]:
    d = load("worker_quality.json")
    out = [
        "| rollouts | best search-val top-1 (mean ± sd) | per seed | test top-1 of the best | staleness (max) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for w, s in d["summary"].items():
        per = d["per_seed"][w]
        label = "in-process" if w == "0" else f"{w} Ray workers"
        out.append(
            f"| {label} | {_pct(s['best_top1_mean'], 2)}% ± {_pct(s['best_top1_sd'], 2)} | "
            + " / ".join(_pct(r["best_top1"]) for r in per)
            + f" | {_pct(s['best_test_top1_mean'], 2)}% | {max(r['staleness']['max'] for r in per)} |"
        )
    check = d["same_seed_check"]
    out += ["", f"One Ray worker gave exactly the in-process episodes (seed {check['seed']}): "
            f"{str(check['workers_1_identical_to_in_process']).lower()}."]  # fmt: skip
    return out


def episode_cost() -> list[str]:
    out = [
        "| policies | model | groups | episode / unavoidable forward passes (IQR) | with a fresh deepcopy per episode "
        "| pruning ms | masking / physical removal |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("episode_cost.json", "episode_cost_greedy.json"):
        d = load(name)
        for model, m in d["models"].items():
            c = m["cpu"]
            q = c["ratio_spread"]
            out.append(
                f"| {d['actions']} | {model} | {m['groups']} | {c['ratio']:.2f} ({q['q1']:.2f}-{q['q3']:.2f}) | "
                f"{c['fresh_ratio']:.2f} | {1000 * c['medians']['prune_s']:.0f} | {c['masking_over_physical']:.2f}x |"
            )
    return out


def shared_machine() -> list[str]:
    d = load("shared_machine.json")
    out = [
        f"| torch threads | OpenMP wait policy | idle steps/s | with {d['load_processes']} busy processes | slowdown |"
        " threads used (idle / loaded) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in d["rows"]:
        used = f"{r['threads_used']['idle']} / {r['threads_used']['loaded']}"
        out.append(
            f"| {r['threads']} | {r['omp_wait_policy']} | {r['idle_steps_per_s']:.1f} | {r['loaded_steps_per_s']:.1f} "
            f"| {r['slowdown']:.1f}x | {used} |"
        )
    return out


def model_zoo() -> list[str]:
    d = load("model_zoo.json")
    counts = d["counts"]
    out = [
        f"Every torchvision classifier at ratio {d['ratio']}: **{counts['pruned']}** pruned, replayed, fine-tuned, "
        f"saved and reloaded exactly; **{counts['refused']}** refused with the operator named; "
        f"**{counts['failed']}** failed.",
        "",
        "| model | status | groups | FLOPs kept | params kept | detail |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return out + [f"| {r['model']} | {r['status']} | {_zoo_cells(r)} |" for r in d["results"]]


def _zoo_cells(r: dict) -> str:
    """A model zoo row's groups, FLOPs and params kept (dashes unless pruned) and its detail, as table cells."""
    pruned = r["status"] == "pruned"
    detail = " ".join((r.get("detail") or "").split())
    detail = detail if len(detail) <= 100 else detail[:99] + "…"
    cells = (
        (r.get("groups", "–"), f"{_pct(r['flops_ratio'])}%", f"{_pct(r['params_ratio'])}%") if pruned else ("–",) * 3
    )
    return " | ".join([*map(str, cells), _cell(detail)])


def model_zoo_timm() -> list[str]:
    d = load("model_zoo.json")["timm"]
    out = [
        f"timm {d['timm']} (the smallest model of each family plus every model up to {d['max_params'] / 1e6:g}M "
        f"params): **{d['pruned']}** pruned, replayed, fine-tuned, saved and reloaded exactly; **{d['refused']}** "
        f"refused with the module and the reason; **{d['failed']}** failed; **{d['hung']}** hung.",
        "",
        "| model | status | input | groups | FLOPs kept | params kept | detail |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    return out + [f"| {r['model']} | {r['status']} | {r.get('size', '–')} | {_zoo_cells(r)} |" for r in d["models"]]


# --------------------------------------------------------------------------- compression beyond channel ratios
def quantize() -> list[str]:
    d = load("quantize.json")
    out = [
        "| calibration | float top-1 (ONNX) | INT8 top-1 | drop, mean (max), points | smaller than dense float32 "
        "| INT8 / float latency |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, s in d["summary"].items():
        out.append(
            f"| {method} | {s['float_top1_mean']:.2f} | {s['int8_top1_mean']:.2f} | {s['drop_points_mean']:.2f} "
            f"({s['drop_points_max']:.2f}) | {s['compression_mean']:.1f}x | {s['latency_ratio_mean']:.2f} |"
        )
    sizes = d["runs"][0]["size_bytes"]
    out += [
        "",
        f"ResNet-20 at {d['target_flops']:.0%} of the FLOPs (uniform, {d['finetune_epochs']} fine-tuning epochs), "
        f"{len({r['seed'] for r in d['runs']})} dense seeds; files: dense float32 "
        f"{d['runs'][0]['dense_size_bytes'] / 1e3:.0f} KB, pruned float32 {sizes['float'] / 1e3:.0f} KB, "
        f"pruned INT8 {sizes['int8'] / 1e3:.0f} KB; {d['calib_images']} calibration images; latency: {d['latency']}.",
    ]
    return out


RECOVERY = {
    "finetune": "fine-tune (lr 0.01)",
    "lr_rewind": "learning-rate rewinding (lr 0.1)",
    "weight_rewind": "weight rewinding",
    "from_scratch": "from scratch",
    "distill": "fine-tune + distillation",
}


def retraining() -> list[str]:
    d = load("retraining.json")
    cells = {(r["target"], r["policy"], r["method"]): r for r in d["summary"]}
    columns = sorted({(t, p) for t, p, _ in cells})
    header = " | ".join(f"FLOPs {t:.0%}, {p}" for t, p in columns)
    out = [f"| recovery ({d['recovery_epochs']} epochs) | {header} |", "| --- |" + " --- |" * len(columns)]
    for method, label in RECOVERY.items():
        row = [
            f"{cells[(t, p, method)]['test_mean']:.2f} ± {cells[(t, p, method)]['test_spread'] / 2:.2f}"
            for t, p in columns
        ]
        out.append(f"| {label} | " + " | ".join(row) + " |")
    n = max(r["n"] for r in d["summary"])
    out += [
        "",
        f"Test top-1 (%), mean ± half the range over {n} dense seeds; weight rewinding restarts from epoch "
        f"{d['rewind_epoch']} of {d['train_epochs']}; the searched policy is the best of a {d['search_episodes']}"
        "-episode DDPG search on each dense model.",
    ]
    return out


def sparsity_search() -> list[str]:
    d = load("sparsity_search.json")
    out = [
        "| non-zero params | method | test top-1 before fine-tuning | after | largest non-zero fraction |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in d["summary"]:
        out.append(
            f"| {s['target']:.0%} | {s['method']} | {s['test_before_mean']:.2f} "
            f"({'/'.join(f'{v:.1f}' for v in s['test_before_per_run'])}) | {s['test_after_mean']:.2f} | "
            f"{s['nonzero_ratio_max']:.3f} |"
        )
    out += [
        "",
        f"{d['granularity']} sparsity, {d['episodes']}-episode searches, {d['finetune_epochs']} epochs of fine-tuning.",
    ]
    return out


# --------------------------------------------------------------------------- the registry
SOURCES: dict[Callable[[], list[str]], tuple[str, ...]] = {}
"""Each registered table -> the JSON files it reads."""


def _with_source(lines: Callable[[], list[str]], *files: str) -> Callable[[], list[str]]:
    def table() -> list[str]:
        return [*lines(), "", provenance(*files)]

    SOURCES[table] = files
    return table


TABLES: dict[str, Callable[[], list[str]]] = {
    **{
        f"{kind}.{model}": _with_source(lambda k=kind, m=model: _quality(k, m), "search_quality.json")
        for kind in ("methods", "val")
        for model in ("resnet20", "mobilenetv2_small")
    },
    "criteria.resnet20": _with_source(lambda: _quality("criteria", "resnet20"), "search_quality.json"),
    **{
        f"{kind}.mnist1d.{model}": _with_source(
            lambda k=kind, m=model: _quality(k, m, "search_quality_mnist1d.json"), "search_quality_mnist1d.json"
        )
        for kind in ("methods", "val", "criteria")
        for model in ("resnet20_1d",)
    },
    "mnist1d.resnet20_1d_wide": _with_source(
        lambda: printed_quality("search_quality_mnist1d_wide.txt"), "search_quality_mnist1d_wide.txt"
    ),
    **{
        f"{prefix}.{model}": _with_source(lambda m=model, n=name: _quality("val", m, n), name)
        for prefix, name in (
            ("learner_hidden", "learner_hidden_quality.json"),
            ("learner_hidden300", "learner_hidden_quality_300.json"),
        )
        for model in ("resnet20", "mobilenetv2_small")
    },
    "selection.resnet20": _with_source(
        lambda: _quality("selection", "resnet20", "search_quality_selection.json"), "search_quality_selection.json"
    ),
    "versus": _with_source(versus, "search_quality.json"),
    "summary": _with_source(summary, "search_quality.json"),
    "agent_variants": _with_source(agent_variants, "agent_variants.json"),
    "agent_variants_heldout": _with_source(lambda: agent_variants(("r3",)), "agent_variants.json"),
    "exploration": _with_source(exploration, "agent_variants_exploration.json"),
    "front_quality": _with_source(front_quality, "front_quality.json"),
    "warm_start": _with_source(warm_start, "warm_start.json"),
    "latency_estimate": _with_source(latency_estimate, "latency_estimate.json"),
    "latency_estimate_b64": _with_source(
        lambda: latency_estimate("latency_estimate_b64.json"), "latency_estimate_b64.json"
    ),
    "latency_vs_flops": _with_source(latency_vs_flops, "latency_vs_flops.json"),
    "latency_vs_flops_estimates": _with_source(latency_vs_flops_estimates, "latency_vs_flops.json"),
    "latency_backends": _with_source(latency_backends, "latency_backends.json"),
    "ray_scaling": _with_source(ray_scaling, "ray_scaling.json"),
    "ray_payload": _with_source(ray_payload, "ray_scaling.json"),
    "scale": _with_source(scale, "scale.json"),
    "ray_learner": _with_source(ray_learner, "ray_scaling.json"),
    "worker_quality": _with_source(worker_quality, "worker_quality.json"),
    "episode_cost": _with_source(episode_cost, "episode_cost.json", "episode_cost_greedy.json"),
    "shared_machine": _with_source(shared_machine, "shared_machine.json"),
    "model_zoo": _with_source(model_zoo, "model_zoo.json"),
    "model_zoo_timm": _with_source(model_zoo_timm, "model_zoo.json"),
    "quantize": _with_source(quantize, "quantize.json"),
    "retraining": _with_source(retraining, "retraining.json"),
    "sparsity_search": _with_source(sparsity_search, "sparsity_search.json"),
}
"""Table name -> its Markdown lines (with the source line); a results page asks for ``gen:results.NAME``."""


def table(name: str) -> str:
    return "\n".join(TABLES[name]())


def files_table(shown: dict[str, list[str]]) -> str:
    """Every JSON file under ``experiments/bench/results/``: its machine, its date, and the pages that show it
    (``shown``: table name -> pages); a file no page shows yet is listed as such."""
    pages: dict[str, set[str]] = {}
    for name, fn in TABLES.items():
        for file in SOURCES.get(fn, ()):
            pages.setdefault(file, set()).update(shown.get(name, []))
    lines = ["| file | machine | date | shown on |", "| --- | --- | --- | --- |"]
    for path in sorted(RESULTS.glob("*.json")):
        where = ", ".join(f"[{Path(p).stem}]({Path(p).name})" for p in sorted(pages.get(path.name, ())))
        lines.append(
            f"| `{path.name}` | {_cell(machine(path.name))} | {_git_date(path)} | {where or 'not on a page yet'} |"
        )
    return "\n".join(lines)
