"""``memory`` suite: peak resident memory of a quick-budget ``exp=hybrid`` run.

    python -m experiments.bench memory                    # 40 steps, 64 evaluation samples
    python -m experiments.bench memory memory.budget=smoke memory.steps=2 memory.num_generated=4

Runs ``python -m experiments.run exp=hybrid budget=quick logger=none`` in a child process,
shortened: the same model, data and batch as the quick budget, but ``trainer.max_steps=steps``
and ``eval.num_generated=num_generated`` instead of the budget's. What holds memory is in place
after the first steps (weights, optimiser state, the text encoder, the fusion CNN, the data); more
steps add nothing, and 500 instead of 64 evaluation samples at 32 px add a few MB of images and
features, so the shortened run measures the full one's peak in minutes instead of 15.

The peak comes from ``os.wait4`` on that child: the kernel's maximum resident set size of the
child and of its own waited-for children (loader workers), whichever is largest, not their sum.
``getrusage(RUSAGE_CHILDREN)`` would also count other children of this process (the data
suite's loader workers under ``all``).

Keys:
- ``memory.quick_hybrid_peak_rss_gib``: the child's peak RSS in GiB (2^30 bytes). Target <= 4.
- ``memory.run_s``: the child's wall seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from experiments.bench_suites.common import hydra_overrides, log



def run_child(command: list[str], log_path: Path, timeout: float) -> tuple[int, int, float]:
    """Run ``command``; return its exit code, peak RSS in KiB and wall seconds. Output goes to ``log_path``."""
    start = time.perf_counter()
    with open(log_path, "wb") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        next_report = 60.0
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid == child.pid:
                break
            elapsed = time.perf_counter() - start
            if elapsed > timeout:
                child.kill()  # our own child, by its pid
                os.wait4(child.pid, 0)
                raise TimeoutError(f"bench memory: the run took over {timeout:.0f} s; its output: {log_path}")
            if elapsed > next_report:
                log.info("memory: run still going after %.0f s", elapsed)
                next_report += 60.0
            time.sleep(0.5)
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    return child.returncode, int(usage.ru_maxrss), time.perf_counter() - start


def suite(options: dict[str, str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dermsynth-bench-memory-") as temp:
        command = [
            sys.executable, "-m", "experiments.run", f"exp={options['exp']}", f"budget={options['budget']}", "logger=none",
            f"paths.output_dir={Path(temp) / 'run'}", f"trainer.max_steps={options['steps']}",
            f"eval.num_generated={options['num_generated']}", *hydra_overrides(options),
        ]
        log.info("memory: %s", " ".join(command[1:]))
        log_path = Path(temp) / "run.log"
        code, peak_kib, seconds = run_child(command, log_path, float(options["timeout"]))
        if code != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"bench memory: the run exited with code {code}; last output:\n{tail}")
    return {
        "memory.quick_hybrid_peak_rss_gib": round(peak_kib / 2**20, 3),
        "memory.run_s": round(seconds, 1),
        "memory.settings": {
            "options": dict(options),
            "command": " ".join(command[1:]),
            "run": f"shortened {options['budget']}-budget run: same model, data and batch; trainer.max_steps={options['steps']} "
                   f"and eval.num_generated={options['num_generated']} instead of the budget's",
            "peak": "os.wait4 ru_maxrss of the run process: max over it and its waited-for loader workers, not their sum",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        },
    }
