"""Celery 5 and RQ on the same Redis: no-op tasks per second.

Usage: cluster.py REDIS_SOCKET TASKS RQ_TASKS
Prints `celery_tasks_per_s N` and `rq_tasks_per_s N`. Run with a Python
that has celery[redis] and rq installed (multiproc-bench makes a venv).
"""
import os
import subprocess
import sys
import tempfile
import time

socket, tasks, rq_tasks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
here = tempfile.mkdtemp()
with open(os.path.join(here, "bench_tasks.py"), "w") as f:
    f.write(f"""
from celery import Celery
app = Celery('bench_tasks', broker='redis+socket://{socket}', backend='redis+socket://{socket}')
app.conf.worker_prefetch_multiplier = 4
@app.task
def noop(x):
    return x

def rq_noop(x):
    return x
""")
sys.path.insert(0, here)
env = dict(os.environ, PYTHONPATH=here)

# Celery: prefork, 2 processes.
worker = subprocess.Popen(
    [sys.executable, "-m", "celery", "-A", "bench_tasks", "worker", "--concurrency", "2", "-P", "prefork",
     "--loglevel", "ERROR", "--without-gossip", "--without-mingle", "--without-heartbeat"],
    cwd=here, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
import bench_tasks
bench_tasks.noop.delay(0).get(timeout=120)  # the worker is up
start = time.perf_counter()
results = [bench_tasks.noop.delay(i) for i in range(tasks)]
for r in results:
    r.get(timeout=600)
elapsed = time.perf_counter() - start
worker.terminate()
worker.wait()
print(f"celery_tasks_per_s {tasks / elapsed}")

# RQ: two workers.
from redis import Redis
from rq import Queue
conn = Redis(unix_socket_path=socket)
q = Queue("bench", connection=conn)
jobs = [q.enqueue(bench_tasks.rq_noop, i) for i in range(rq_tasks)]
start = time.perf_counter()
workers = [subprocess.Popen([sys.executable, "-m", "rq.cli", "worker", "--burst", "-u", f"unix://{socket}", "bench"],
                            cwd=here, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
           for _ in range(2)]
for w in workers:
    w.wait()
elapsed = time.perf_counter() - start
done = sum(1 for j in jobs if j.get_status(refresh=True) == "finished")
assert done == rq_tasks, f"rq finished {done} of {rq_tasks}"
print(f"rq_tasks_per_s {rq_tasks / elapsed}")
