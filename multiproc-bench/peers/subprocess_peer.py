"""Python's side of `multiproc-bench subprocess` (not named subprocess.py, which would hide the module). Prints `<figure> <value>`."""
import subprocess
import sys
import time

if __name__ == "__main__":
    runs = int(sys.argv[1])
    subprocess.run(["true"], capture_output=True)  # warm up
    t = time.perf_counter()
    for _ in range(runs):
        subprocess.run(["true"], capture_output=True)
    print("run_true_captured_us", (time.perf_counter() - t) / runs * 1e6, flush=True)
