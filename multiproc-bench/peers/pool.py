"""Python's side of `multiproc-bench pool`: the same work on a
multiprocessing.Pool of the same size. Prints `<figure> <value>` lines."""
import multiprocessing as mp
import os
import statistics
import sys
import time


def inc(x):
    return x + 1


def echo(b):
    return b


def getpid(_):
    return os.getpid()


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


if __name__ == "__main__":
    workers, tasks, map_items, roundtrips, big_rounds = (int(a) for a in sys.argv[1:6])
    with mp.Pool(workers) as pool:
        pool.map(inc, range(1000))  # warm up
        t = time.perf_counter()
        results = [pool.apply_async(inc, (i,)) for i in range(tasks)]
        for r in results:
            r.get()
        print("apply_async_per_s", tasks / (time.perf_counter() - t), flush=True)

        t = time.perf_counter()
        for _ in pool.imap(inc, range(tasks), chunksize=1):
            pass
        print("imap_chunk1_per_s", tasks / (time.perf_counter() - t), flush=True)

        t = time.perf_counter()
        pool.map(inc, range(map_items))
        print("map_default_chunk_per_s", map_items / (time.perf_counter() - t), flush=True)

        times = []
        for _ in range(roundtrips):
            t = time.perf_counter()
            pool.apply(inc, (1,))
            times.append(time.perf_counter() - t)
        print("apply_roundtrip_us", statistics.median(times) * 1e6, flush=True)

        # 64 MiB of bytes in and out. Protocol 5 pickles bytes as 4 does
        # (one BINBYTES8 frame), so the default protocol stands for it.
        big = bytes(i % 251 for i in range(256)) * (64 * 1024 * 1024 // 256)
        times = []
        for _ in range(big_rounds):
            t = time.perf_counter()
            back = pool.apply(echo, (big,))
            times.append(time.perf_counter() - t)
            assert back == big
        print("apply_64mib_ms", statistics.median(times) * 1e3, flush=True)

        pids = set(pool.map(getpid, range(workers * 50), chunksize=1))
        time.sleep(0.2)
        print("worker_rss_mib", statistics.mean(rss_mib(p) for p in pids), flush=True)
