"""Python's side of `multiproc-bench spawn`: start+join of a trivial Process
under each start method. Prints `<method> <median ms>` per line."""
import multiprocessing as mp
import statistics
import sys
import time


def small():
    return 1


def measure(method, n):
    ctx = mp.get_context(method)
    # Warm up: forkserver starts its server, spawn warms the page cache.
    p = ctx.Process(target=small)
    p.start()
    p.join()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        p = ctx.Process(target=small)
        p.start()
        p.join()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000.0


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        method, n = arg.split("=")
        print(method, measure(method, int(n)), flush=True)
