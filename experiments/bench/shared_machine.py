"""Fine-tuning speed on an idle and on a loaded machine, by torch threads and OpenMP wait policy.

The workload is what ``amc prune`` and ``amc train`` spend their time on: SGD steps of ResNet-20 on digits (batch
64, 16x16). Each setting runs in a fresh process (OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads):
torch threads 1 and N (the CPUs), the wait policy as OpenMP's default (unset: threads spin while they wait for
each other) and ``PASSIVE`` (they sleep), and ``auto``: the count the commands choose (:mod:`amc.threads`, the
CPUs not busy when they start). Each setting is timed idle and with a competing load this script starts
(``--load`` busy processes, each stopped after ``--load-seconds`` at the latest). ``slowdown`` is idle steps/s over
loaded steps/s: 1 is immune, the load's share (e.g. 2 with N busy processes on N cores) is fair, 10 is what
OpenMP threads spinning on cores taken by others can cost. Prints and writes JSON.

    .venv/bin/python experiments/bench/shared_machine.py            # load = CPUs
    .venv/bin/python experiments/bench/shared_machine.py --steps 20 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

from amc.files import write_json_atomic

RESULTS = Path(__file__).parent / "results"

CHILD = """
import json, sys, time
import torch
from torch import nn
from amc.models import ModelSpec, create_model
threads, steps = sys.argv[1], int(sys.argv[2])
if threads == "auto":
    from amc.threads import choose_threads
    choose_threads()
else:
    torch.set_num_threads(int(threads))
torch.manual_seed(0)
model = create_model(ModelSpec("resnet20", 1, 10, 16))
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,))
def step():
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
for _ in range(3):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"steps_per_s": steps / (time.perf_counter() - start), "threads": torch.get_num_threads()}))
"""


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1


def measure(threads: int | str, policy: str | None, steps: int, timeout: float) -> dict:
    """Steps per second (and the threads used) of one setting, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads), str(steps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parser.add_argument("--load", type=int, default=cpus, help="competing busy processes (default: the CPUs)")
    parser.add_argument("--load-seconds", type=float, default=300, help="the load stops itself after this")
    parser.add_argument("--steps", type=int, default=40, help="timed SGD steps per setting")
    parser.add_argument("--timeout", type=float, default=240, help="seconds one setting may take before it fails")
    parser.add_argument("--out", type=Path, default=RESULTS / "shared_machine.json")
    args = parser.parse_args()
    settings: list[tuple[int | str, str | None]] = [(t, p) for t in sorted({1, cpus}) for p in (None, "PASSIVE")]
    settings.append(("auto", None))  # what the commands do: amc.threads.choose_threads
    rows = []
    for threads, policy in settings:
        idle = measure(threads, policy, args.steps, args.timeout)
        ctx = multiprocessing.get_context("spawn")
        load = [ctx.Process(target=_burn, args=(args.load_seconds,), daemon=True) for _ in range(args.load)]
        for p in load:
            p.start()
        try:
            time.sleep(1.0)  # the load is on the cores before timing starts
            loaded = measure(threads, policy, args.steps, args.timeout)
        finally:
            for p in load:
                p.terminate()
                p.join()
        row = {
            "threads": threads,
            "omp_wait_policy": policy or "default",
            "idle_steps_per_s": idle["steps_per_s"],
            "loaded_steps_per_s": loaded["steps_per_s"],
            "slowdown": idle["steps_per_s"] / loaded["steps_per_s"],
            "threads_used": {"idle": idle["threads"], "loaded": loaded["threads"]},
        }
        rows.append(row)
        print(
            f"threads {threads} ({idle['threads']} idle, {loaded['threads']} loaded), OMP_WAIT_POLICY "
            f"{row['omp_wait_policy']:>7}: idle {row['idle_steps_per_s']:6.1f} steps/s, loaded "
            f"{row['loaded_steps_per_s']:6.1f} steps/s, slowdown {row['slowdown']:.1f}x",
            flush=True,
        )
    result = {"cpus": cpus, "load_processes": args.load, "steps": args.steps, "rows": rows}
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
