"""Markdown tables of a search-quality JSON (``search_quality.py``'s output), as the documentation's results pages show them (docs/results/search-quality.md).

python experiments/bench/quality_table.py                                  # results/search_quality.json
python experiments/bench/quality_table.py experiments/bench/results/search_quality_reconstruct.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
METHODS = ("uniform", "global", "sensitivity", "random", "tpe", "ddpg", "ddpg_amc", "ddpg_p32")
SEARCHING = ("random", "tpe", "ddpg", "ddpg_amc", "ddpg_p32", "ddpg_u1", "ddpg_u2", "ddpg_h64", "ddpg_h128")


def _pct(values: list[float]) -> str:
    return "/".join(f"{100 * v:.1f}" for v in values)


def method_table(model: str, table: dict) -> list[str]:
    """One row per method: test top-1 without fine-tuning (mean and per seed) per FLOPs target."""
    targets = sorted(k for k in table if k.startswith("flops_"))
    head = "| method | " + " | ".join(f"FLOPs {k[6:]}: test top-1 (per run)" for k in targets) + " |"
    lines = [
        f"**{model}** (dense {100 * table['dense_test_top1']:.2f}%, {table['seeds']} dense seeds"
        f" x {table.get('search_seeds', 1)} search seeds, "
        f"{table['episodes']} episodes, criterion {table['criterion']}"
        f"{', searched with reconstruction' if table.get('reconstruct') else ''})",
        "",
        head,
        "| --- |" + " --- |" * len(targets),
    ]
    for method in [m for m in METHODS if any(m in table[k] for k in targets)]:
        cells = []
        for key in targets:
            c = table[key].get(method)
            cells.append("–" if c is None else f"**{100 * c['test_top1_mean']:.2f}** ({_pct(c['test_top1'])})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    extra = [
        ("ddpg fine-tuned", "ddpg", "finetuned_test_top1"),
        ("ddpg_amc fine-tuned", "ddpg_amc", "finetuned_test_top1"),
        ("uniform fine-tuned", "uniform", "finetuned_test_top1"),
        ("ddpg best + reconstruction", "ddpg", "recon_test_top1"),
        ("uniform + reconstruction", "uniform", "recon_test_top1"),
        ("tpe best + reconstruction", "tpe", "recon_test_top1"),
    ]
    for label, method, name in extra:
        cells = []
        for key in targets:
            c = table[key].get(method, {})
            cells.append(f"{100 * c[name + '_mean']:.2f} ({_pct(c[name])})" if name in c else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    to99 = [str(round(table[k]["ddpg"]["episodes_to_99pct"])) if "ddpg" in table[k] else "–" for k in targets]
    lines.append("| ddpg episodes to 99% of its best (search-val) | " + " | ".join(to99) + " |")
    return lines


def search_val_table(model: str, table: dict) -> list[str]:
    """Best-so-far search-val top-1 after 30 / 100 / 300 episodes (mean +- sd over every run) per searching method."""
    targets = sorted(k for k in table if k.startswith("flops_"))
    cells = {k: {m: table[k][m] for m in SEARCHING if "val_at" in table[k].get(m, {})} for k in targets}
    if not any(cells.values()):
        return []
    runs = table["seeds"] * table.get("search_seeds", 1)
    at_n = [n for n in ("30", "100", "300") if int(n) <= table.get("episodes", 300)]  # a shorter run has no @300
    lines = [
        f"Best-so-far search-val top-1 on **{model}** (the search's own objective; mean +- sd of {runs} runs: "
        f"{table['seeds']} dense x {table.get('search_seeds', 1)} search seeds):",
        "",
        "| FLOPs | method | "
        + " | ".join(f"after {n}" + (" episodes" if i == 0 else "") for i, n in enumerate(at_n))
        + " | search-val - test gap of the best |",
        "| --- | --- |" + " --- |" * len(at_n) + " --- |",
    ]
    for key in targets:
        for method, c in cells[key].items():
            at = [f"{100 * c['val_at'][n]:.1f} ± {100 * c['val_at_sd'][n]:.1f}" for n in at_n]
            gap = f"{100 * c['selection']['gap']:+.1f}"
            lines.append(f"| {key[6:]} | {method} | " + " | ".join(at) + f" | {gap} |")
    return lines


def selection_table(model: str, table: dict) -> list[str]:
    """The search-val to test gap of the best policy on search-val against the best of the top-k on the selection split."""
    targets = sorted(k for k in table if k.startswith("flops_"))
    rows = [
        (k, m, c["selection"]) for k in targets for m, c in table[k].items() if "by_selection" in c.get("selection", {})
    ]
    if not rows:
        return []
    lines = [
        f"Selection on **{model}** ({table.get('selection_size')} held-out training images; test top-1 without "
        f"fine-tuning, mean of {table['seeds'] * table.get('search_seeds', 1)} runs):",
        "",
        "| FLOPs | method | best on search-val: val / test (gap) | best of the top 10 on selection: val / selection / test (gap) |",
        "| --- | --- | --- | --- |",
    ]
    for key, method, sel in rows:
        before, after = sel["by_reward"], sel["by_selection"]
        lines.append(
            f"| {key[6:]} | {method} | {100 * before['val']:.1f} / {100 * before['test']:.1f} "
            f"({100 * before['gap']:+.1f}) | {100 * after['val']:.1f} / {100 * after['selection']:.1f} / "
            f"{100 * after['test']:.1f} ({100 * after['gap']:+.1f}) |"
        )
    return lines


def versus_table(data: dict, rival: str = "tpe", methods: tuple[str, ...] = ("ddpg", "ddpg_amc")) -> list[str]:
    """Best-so-far search-val top-1 at 100 and 300 episodes of the agent beside ``rival``, one row per cell."""
    at = ("100", "300")
    head = [f"{name} @{n}" for n in at for name in (rival, *methods)]
    lines = ["| cell | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(head)]
    for model, table in data["models"].items():
        for key in sorted(k for k in table if k.startswith("flops_")):
            cells = table[key]
            if rival not in cells or not all("val_at" in cells.get(m, {}) for m in methods):
                continue
            values = [100 * cells[name]["val_at"][n] for n in at for name in (rival, *methods)]
            lines.append(f"| {model}, FLOPs {key[6:]} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    return lines


def criterion_table(model: str, table: dict) -> list[str]:
    crits = table.get("criteria", {})
    if not crits:
        return []
    targets = sorted(crits)
    names = list(next(iter(crits.values())))
    lines = [
        f"Criteria on **{model}** (test top-1 without fine-tuning, uniform / global policy):",
        "",
        "| criterion | " + " | ".join(f"FLOPs {k[6:]}" for k in targets) + " |",
        "| --- |" + " --- |" * len(targets),
    ]
    for name in names:
        cells = [
            "refused"
            if "refused" in crits[k][name]
            else f"{100 * crits[k][name]['uniform_test_top1_mean']:.2f} / {100 * crits[k][name]['global_test_top1_mean']:.2f}"
            for k in targets
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, nargs="?", default=RESULTS / "search_quality.json")
    args = parser.parse_args()
    data = json.loads(args.json.read_text())
    for model, table in data["models"].items():
        print("\n".join(method_table(model, table)) + "\n")
        val = search_val_table(model, table)
        if val:
            print("\n".join(val) + "\n")
        for extra in (selection_table(model, table), criterion_table(model, table)):
            if extra:
                print("\n".join(extra) + "\n")
    versus = versus_table(data)
    if len(versus) > 2:
        print("\n".join(versus) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
