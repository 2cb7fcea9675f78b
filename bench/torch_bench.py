"""torch_bench.py - what the PyTorch reference scripts of the benchmarks share (bench/*_torch.py).

time_steps(step, threads, n) runs step() n times (the first is a warm-up) with torch's intra-op pool at `threads`
and prints the two lines bench/bench_torch.h reads:
  "torch threads T forward+backward S seconds (cpu C s)"  - the best wall-clock and process CPU time;
  "torch memory: before steps B MB, peak P MB, steps +D MB" - the resident set before the steps, its
  high-water mark over them (getrusage), and their difference. Linux only (/proc).
"""
import resource
import sys
import time

import torch


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1048576.0


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_steps(step, threads, n):
    torch.set_num_threads(threads)
    before = rss_mb()
    times, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(f"torch threads {threads} forward+backward {min(times[1:]):.4f} seconds (cpu {min(cpu[1:]):.4f} s)")
    peak = peak_mb()
    print(f"torch memory: before steps {before:.0f} MB, peak {peak:.0f} MB, steps +{peak - before:.0f} MB")
    sys.stdout.flush()
