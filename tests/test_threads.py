"""Torch threads on a shared machine: the commands take the CPUs other work leaves free (amc.threads)."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import torch

from amc.threads import busy_cpus, choose_threads, fair_threads


def test_fair_threads_leaves_the_busy_cpus_alone() -> None:
    assert fair_threads(2, 0.1) == 2
    assert fair_threads(2, 0.9) == 1
    assert fair_threads(2, 4.0) == 1, "never fewer than one"
    assert fair_threads(16, 5.2) == 11


def _burn(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_busy_cpus_sees_competing_processes() -> None:
    ctx = multiprocessing.get_context("spawn")
    burners = [ctx.Process(target=_burn, args=(5.0,), daemon=True) for _ in range(2)]
    for p in burners:
        p.start()
    try:
        time.sleep(0.5)  # past the interpreters' start-up
        assert busy_cpus(0.3) >= 1.0, "two busy processes keep at least one CPU busy"
    finally:
        for p in burners:
            p.terminate()
            p.join()


def test_omp_num_threads_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads() is None and torch.get_num_threads() == before
