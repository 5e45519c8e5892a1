"""Poll cost for many SLURM jobs: one squeue for all (SlurmExecutor.states) vs. one query per job.

Needs the local SLURM (`scripts/slurm-local start`). Submits N held jobs (`sbatch --hold --wrap true`,
they never run), times one poll of all of them with the executor and the per-job baseline
(`squeue -j ID` for each), prints the ratio, cancels the jobs and records the numbers in the
`## Job polling` section of bench/RESULTS.md.

    python bench/bench_poll.py [--jobs 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from cruijff_kit.executors import SlurmExecutor
from cruijff_kit.markdown_sections import set_section

JOB_NAME = "ck-bench-poll"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def submit_held(n: int, workdir: Path) -> list[str]:
    def one(_: int) -> str:
        proc = subprocess.run(["sbatch", "--parsable", "--hold", f"--job-name={JOB_NAME}", "--output=/dev/null",
                               "--mem=1M", "--wrap", "true"], cwd=workdir, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"sbatch failed: {proc.stderr.strip()} (is scripts/slurm-local started?)")
        return proc.stdout.strip().split(";")[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(tqdm(pool.map(one, range(n)), total=n, desc="submitting held jobs", unit="job"))


def per_job_poll(job_ids: list[str]) -> dict[str, str]:
    states = {}
    for job_id in tqdm(job_ids, desc="baseline: one squeue per job", unit="job", leave=False):
        proc = subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--Format=JobID:|,State:|"],
                              capture_output=True, text=True)
        states[job_id] = proc.stdout.split("|")[1].strip() if "|" in proc.stdout else "UNKNOWN"
    return states


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3, help="timed polls with the executor (median reported)")
    args = parser.parse_args()

    workdir = Path("/tmp")
    t0 = time.perf_counter()
    job_ids = submit_held(args.jobs, workdir)
    submit_s = time.perf_counter() - t0
    try:
        executor = SlurmExecutor()
        one_poll = []
        for _ in range(args.repeats):
            executor.query_count = 0
            t = time.perf_counter()
            infos = executor.states(job_ids)
            one_poll.append(time.perf_counter() - t)
            queries = executor.query_count
        held = sum(1 for i in infos.values() if i.state == "PENDING")
        if held != len(job_ids):
            raise SystemExit(f"expected {len(job_ids)} PENDING jobs, got {held}")

        t = time.perf_counter()
        baseline_states = per_job_poll(job_ids)
        baseline_s = time.perf_counter() - t
        assert all(s == "PENDING" for s in baseline_states.values())
    finally:
        subprocess.run(["scancel", f"--name={JOB_NAME}"], check=False)

    poll_s = statistics.median(one_poll)
    ratio = baseline_s / poll_s
    lines = [
        f"jobs: {len(job_ids)} held (sbatch --hold --wrap true), submitted in {submit_s:.1f} s",
        f"one poll (SlurmExecutor.states, {queries} scheduler call(s)): median {poll_s * 1000:.0f} ms of {args.repeats}",
        f"baseline (squeue -j ID per job, {len(job_ids)} calls): {baseline_s:.2f} s",
        f"ratio baseline / one poll: {ratio:.0f}x; target < 1 s per poll: {'met' if poll_s < 1 else 'NOT met'}",
    ]
    print("\n".join(lines))
    machine = f"{platform.node()}, {platform.processor() or platform.machine()}, local single-node SLURM (scripts/slurm-local)"
    set_section(RESULTS, "Job polling", "`python bench/bench_poll.py`, " + machine + ", "
                + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()) + ":\n\n" + "\n".join(f"- {line}" for line in lines))
    return 0 if poll_s < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
