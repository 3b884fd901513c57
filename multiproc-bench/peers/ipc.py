"""Python's side of `multiprocessing-bench ipc`. Prints `<figure> <value>`."""
import multiprocessing as mp
import statistics
import sys
import time


def echo_queue(qin, qout, n):
    for _ in range(n):
        qout.put(qin.get())


def echo_pipe(conn, n):
    for _ in range(n):
        conn.send_bytes(conn.recv_bytes())


def drain(q, n):
    for _ in range(n):
        q.get()


def roundtrip_us(send, recv, rounds):
    """Median microseconds of `rounds` send-then-receive round trips."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        send()
        recv()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


if __name__ == "__main__":
    rounds, stream = int(sys.argv[1]), int(sys.argv[2])

    qa, qb = mp.Queue(), mp.Queue()
    p = mp.Process(target=echo_queue, args=(qa, qb, rounds))
    p.start()
    rt = roundtrip_us(lambda: qa.put(b"x"), qb.get, rounds)
    p.join()
    print("queue_roundtrip_us", rt, flush=True)

    for name, payload in (("queue_8b_per_s", b"x" * 8), ("queue_1k_per_s", b"x" * 1024)):
        q = mp.Queue()
        p = mp.Process(target=drain, args=(q, stream))
        p.start()
        t = time.perf_counter()
        for _ in range(stream):
            q.put(payload)
        p.join()
        print(name, stream / (time.perf_counter() - t), flush=True)

    a, b = mp.Pipe()
    p = mp.Process(target=echo_pipe, args=(b, rounds))
    p.start()
    rt = roundtrip_us(lambda: a.send_bytes(b"x"), a.recv_bytes, rounds)
    p.join()
    print("pipe_roundtrip_us", rt, flush=True)

    lock = mp.Lock()
    n = 200000
    t = time.perf_counter()
    for _ in range(n):
        lock.acquire()
        lock.release()
    print("lock_ns", (time.perf_counter() - t) / n * 1e9, flush=True)

    v = mp.Value("i", 0)
    t = time.perf_counter()
    for _ in range(n):
        with v.get_lock():
            v.value += 1
    print("value_incr_ns", (time.perf_counter() - t) / n * 1e9, flush=True)
