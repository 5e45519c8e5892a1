"""Benchmark: bit-sequences generator vs. a baseline that enumerates all 2^n strings.

    python bench/bench_generate.py            # all cases, records bench/RESULTS.md "## Generator"
    python bench/bench_generate.py --quick    # (15, 33000) only, nothing recorded

Each (implementation, case) runs in its own subprocess. Peak memory is that child's VmHWM (peak
RSS of the exec'd image, from /proc/self/status; ru_maxrss is not used because Linux carries the
parent's RSS into a forked child's maxrss). Time is measured inside the child around generate +
write. The baseline below is the seed generator's algorithm written plainly; where it can run,
both outputs are checked to hold the same data.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (bit_length, N, val_size); the baseline needs the 2^n list in memory, so it stops at BASELINE_MAX_BITS
CASES = [(15, 33_000, 4_000), (24, 1_000_000, 100_000), (48, 1_000_000, 100_000)]
BASELINE_MAX_BITS = 26
SEED = 42


# ---- BASELINE (bench only): the seed's algorithm, enumerating all 2^n strings ----
def baseline_generate(bit_length, N, val_size, bit_parity, p, seed, path):
    rng = np.random.RandomState(seed)
    all_strings = ["".join(bits) for bits in itertools.product("01", repeat=bit_length)]
    rows = rng.choice(all_strings, size=N)
    val_positions = set(rng.choice(N, size=val_size, replace=False).tolist())
    validation = [str(rows[i]) for i in range(N) if i in val_positions]
    validation_strings = set(validation)
    train = [str(rows[i]) for i in range(N) if i not in val_positions and rows[i] not in validation_strings]

    def label(bits):
        draw = rng.rand()
        if bit_parity:
            return str((bits.count("1") % 2) ^ int(draw < p))
        return str(int(draw < p))

    data = {
        "train": [{"instruction": "", "input": s, "output": label(s)} for s in train],
        "validation": [{"instruction": "", "input": s, "output": label(s)} for s in validation],
    }
    with open(path, "w") as fh:
        json.dump(data, fh)
# ---- end of baseline ----


def worker(implementation: str, bit_length: int, N: int, val_size: int, path: str) -> None:
    from sanity_checks.bit_sequences.generator import write_dataset  # imported before the clock starts, like numpy

    start = time.perf_counter()
    if implementation == "baseline":
        baseline_generate(bit_length, N, val_size, True, 0.0, SEED, path)
    else:
        write_dataset(bit_length, N, val_size, True, 0.0, SEED, output=Path(path).name, output_dir=Path(path).parent)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(implementation: str, case: tuple[int, int, int], out_dir: Path) -> dict:
    bit_length, N, val_size = case
    path = out_dir / f"{implementation}_{bit_length}_{N}.json"
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", implementation, str(bit_length), str(N), str(val_size), str(path)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        return {"ok": False, "why": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}", "path": path}
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"ok": True, **measured, "rows_per_s": N / measured["seconds"], "path": path}


def same_data(a: Path, b: Path) -> bool:
    """json.load both files and compare, in a child so this process stays small."""
    proc = subprocess.run([sys.executable, __file__, "--compare", str(a), str(b)], capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"comparison failed: {proc.stderr.strip()}")
    return proc.returncode == 0


def compare(a: str, b: str) -> int:
    with open(a) as fa, open(b) as fb:
        return 0 if json.load(fa) == json.load(fb) else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", nargs=5, metavar=("IMPL", "BITS", "N", "VAL", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="only the smallest case; do not record results")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the new generator per case (best time)")
    cli = parser.parse_args()
    if cli.worker:
        impl, bits, n, val, path = cli.worker
        worker(impl, int(bits), int(n), int(val), path)
        return
    if cli.compare:
        sys.exit(compare(*cli.compare))

    cases = CASES[:1] if cli.quick else CASES
    lines = [
        "| bit_length | N | val_size | baseline s | baseline peak MB | new s | new peak MB | new rows/s "
        "| speed-up | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        out_dir = Path(tmp)
        for case in cases:
            bit_length, N, val_size = case
            runs = [measure("new", case, out_dir) for _ in range(max(1, cli.repeats))]
            failed = [r for r in runs if not r["ok"]]
            if failed:
                raise SystemExit(f"new generator failed at {case}: {failed[0]['why']}")
            new = min(runs, key=lambda r: r["seconds"])
            new["peak_mb"] = max(r["peak_mb"] for r in runs)
            if bit_length <= BASELINE_MAX_BITS:
                base = measure("baseline", case, out_dir)
            else:
                base = {"ok": False, "why": f"cannot run: needs all 2^{bit_length} strings in memory"}
            if base["ok"]:
                checked = "same data" if same_data(base["path"], new["path"]) else "DIFFERENT DATA"
                row = (f"| {bit_length} | {N} | {val_size} | {base['seconds']:.2f} | {base['peak_mb']:.0f} | "
                       f"{new['seconds']:.3f} | {new['peak_mb']:.0f} | {new['rows_per_s']:,.0f} | "
                       f"{base['seconds'] / new['seconds']:.1f}x | {base['peak_mb'] / new['peak_mb']:.1f}x |")
                print(f"({bit_length}, {N}): baseline {base['seconds']:.2f} s {base['peak_mb']:.0f} MB; "
                      f"new {new['seconds']:.3f} s {new['peak_mb']:.0f} MB ({new['rows_per_s']:,.0f} rows/s); "
                      f"speed-up {base['seconds'] / new['seconds']:.1f}x, "
                      f"memory {base['peak_mb'] / new['peak_mb']:.1f}x "
                      f"less; {checked}")
            else:
                row = (f"| {bit_length} | {N} | {val_size} | {base['why']} | - | {new['seconds']:.3f} | "
                       f"{new['peak_mb']:.0f} | {new['rows_per_s']:,.0f} | - | - |")
                print(f"({bit_length}, {N}): baseline {base['why']}; new {new['seconds']:.3f} s "
                      f"{new['peak_mb']:.0f} MB ({new['rows_per_s']:,.0f} rows/s)")
            lines.append(row)
            if base["ok"] and checked != "same data":
                raise SystemExit(f"baseline and new generator disagree at {case}")
            for r in runs + [base]:
                if r.get("path") and Path(r["path"]).exists():
                    Path(r["path"]).unlink()

    if cli.quick:
        return
    from cruijff_kit.markdown_sections import set_section

    body = "\n".join([
        "`python bench/bench_generate.py` (parity labels, p = 0, seed 42; each run in its own subprocess; "
        "time = generate + write inside the child; peak = the child's peak RSS (VmHWM), including the interpreter "
        f"and numpy; new generator: best of {cli.repeats}). Baseline = bench/bench_generate.py's "
        "`baseline_generate`, the seed's algorithm enumerating all 2^n strings (json.dump). "
        "Where both ran, their files were checked to hold the same data (json.load equal). "
        "Measured on the 2-core dev machine while other work ran, so times are noisy.",
        "",
        *lines,
    ])
    set_section(REPO / "bench" / "RESULTS.md", "Generator", body)
    print("recorded in bench/RESULTS.md ## Generator")


if __name__ == "__main__":
    main()
