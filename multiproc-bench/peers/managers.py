"""Python's side of `multiproc-bench managers`. Prints `<figure> <value>`."""
import multiprocessing as mp
import sys
import time
from multiprocessing.managers import SyncManager


def pairs(q, n):
    for i in range(n):
        q.put(i)
        q.get()


def client(q, n, ready, go):
    ready.wait()
    go.wait()
    pairs(q, n)


if __name__ == "__main__":
    n, clients = int(sys.argv[1]), int(sys.argv[2])
    m = SyncManager(authkey=b"bench")
    m.start()

    q = m.Queue()
    pairs(q, 100)
    t = time.perf_counter()
    pairs(q, n)
    print("queue_put_get_per_s", n / (time.perf_counter() - t), flush=True)

    per = max(1, n // clients)
    ready = mp.Barrier(clients + 1)
    go = mp.Event()
    procs = [mp.Process(target=client, args=(q, per, ready, go)) for _ in range(clients)]
    for p in procs:
        p.start()
    ready.wait()
    t = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    print("queue_put_get_16_clients_per_s", per * clients / (time.perf_counter() - t), flush=True)

    d = m.dict()
    t = time.perf_counter()
    for i in range(n):
        d[i % 100] = i
        d[i % 100]
    print("dict_set_get_per_s", n / (time.perf_counter() - t), flush=True)
    m.shutdown()
