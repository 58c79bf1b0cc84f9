"""Wall-clock helpers shared by the benchmarks: medians, and paired (interleaved) timing.

On a shared machine the load changes from second to second, so a comparison of two programs
times them in turns (A, B, A, B, ...) after warming both up: each pair sees about the same
load, and the ratio of the two medians is far steadier than that of two back-to-back blocks
(short calls get one untimed call after each switch, see time_turns).
Every timed call must return only once its work is done: JAX callables block_until_ready
their outputs (`jax_call`), torch callables synchronise CUDA when it is in use (`torch_call`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def median(seconds: list[float]) -> float:
    """The median of a non-empty list of timings (seconds)."""
    if not seconds:
        raise ValueError("no timings to take the median of")
    return float(statistics.median(seconds))


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    """Seconds of `runs` calls fn() after `warmup` untimed calls (which compile, for JAX)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_pair(
    fn_a: Callable[[], object],
    fn_b: Callable[[], object],
    runs: int,
    warmup: int = 1,
    rewarm_below: float = 0.5,
) -> tuple[list[float], list[float]]:
    """(seconds of fn_a, seconds of fn_b): `runs` calls each, interleaved a, b, a, b, ...
    after `warmup` untimed calls of each (time_turns with two programs)."""
    a, b = time_turns((fn_a, fn_b), runs, warmup, rewarm_below)
    return a, b


def time_turns(
    fns: Sequence[Callable[[], object]],
    runs: int,
    warmup: int = 1,
    rewarm_below: float = 0.5,
) -> list[list[float]]:
    """Seconds of `runs` calls of each of fns, taken in turns (a, b, c, a, b, c, ...) after
    `warmup` untimed calls of each; one list per program.

    Switching frameworks has a cost of its own: the first call after the other framework ran
    waits for that one's thread pool to wind down (seen on 2 cores: a 0.5 ms torch call took
    10-30 ms right after a JAX call, and 0.6 ms after one more torch call). So a call that took
    less than `rewarm_below` seconds last time is preceded by one untimed call of itself; for
    longer calls the switch is lost in the noise."""
    last = [0.0] * len(fns)
    for _ in range(warmup):
        last = [_timed(fn) for fn in fns]
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(max(1, runs)):
        for side, fn in enumerate(fns):
            if last[side] < rewarm_below:
                fn()
            last[side] = _timed(fn)
            times[side].append(last[side])
    return times


def jax_call(fn: Callable, *args) -> Callable[[], object]:
    """A thunk that runs fn(*args) and waits for every output array."""
    import jax

    def run():
        return jax.block_until_ready(fn(*args))

    return run


def torch_call(fn: Callable, *args) -> Callable[[], object]:
    """A thunk that runs fn(*args) under torch.inference_mode and waits for CUDA if used."""
    import torch

    def run():
        with torch.inference_mode():
            out = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out

    return run


def torch_device() -> str:
    """'cuda' when torch sees a GPU, else 'cpu' (the reference side runs there)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_torch_threads(candidates=None, runs: int = 5) -> tuple[int, dict]:
    """Give the PyTorch side its faster thread count on this machine, now; returns
    (threads set, {threads: median seconds of the probe}).

    torch's OpenMP threads meet at a barrier after every op, so when other processes hold some
    cores (a shared machine) one thread per core can be several times slower than one thread;
    on an idle machine one per core wins. The probe is what the benchmarks do a lot of: a chain
    of 20 mid-sized matmuls ([256, 256] @ [256, 256] + relu), timed with 1 thread and with
    one per core (torch's default)."""
    import os

    import torch

    candidates = candidates or sorted({1, torch.get_num_threads(), os.cpu_count() or 1})
    x = torch.randn(256, 256)
    w = torch.randn(256, 256) / 16.0

    def probe():
        y = x
        for _ in range(20):
            y = torch.relu(y @ w)
        return y

    seconds = {}
    for n in candidates:
        torch.set_num_threads(n)
        with torch.inference_mode():
            seconds[n] = median(time_calls(probe, runs, warmup=2))
    best = min(seconds, key=seconds.get)
    torch.set_num_threads(best)
    return best, seconds
