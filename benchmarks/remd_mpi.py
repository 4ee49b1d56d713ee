"""Speedup of ``mpirun -n 2 trade-md remd`` over one process on the same short run (a benchmark, not a test).

The same run (alanine dipeptide, Reference platform, default ladder 300:1000:4, 500 steps per iteration) is made
with one process and with ``mpirun -n N`` (N = 2 by default), alternating the two ``--repeats`` times so that load
from other processes on a shared machine hits both alike. Per run it reads from ``run.json`` the wall time of the
iteration loop (openmmtools' propagation, exchanges and storage writes; without start-up, system set-up and
minimisation) and rank 0's CPU time, and it times the whole command (start-up included) and measures how many
cores other work on the machine used meanwhile (/proc/stat less the command's own CPU time). It prints a table
(median over repeats: loop wall s, iterations/s, end-to-end wall s, speedup = one process's wall time / MPI's; also
the speedup of the best run of each kind and repeat by repeat) and writes a JSON with the machine, the load
averages, the MPI library and every command.

    python benchmarks/remd_mpi.py                # writes benchmarks/results/remd_mpi/remd_mpi_<date-time>.json
    python benchmarks/remd_mpi.py --iterations 200 --repeats 2 --out /tmp/remd_mpi.json

Needs ``pip install "trade-md[mpi]"`` (mpi4py and an ``mpirun``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform as host
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "remd_mpi"


def machine_info() -> dict[str, Any]:
    cpu = host.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "os": f"{host.system()} {host.release()}",
        "python": sys.version.split()[0],
    }


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def find_mpirun() -> str | None:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which("mpirun", path=search) or shutil.which("mpiexec", path=search)


def trade_md_command() -> list[str]:
    script = Path(sys.executable).parent / "trade-md"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from trade_md.cli import main; sys.exit(main())"]


def run_once(command: list[str], out: Path) -> dict[str, Any]:
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMP_NUM_THREADS": "1"}
    own0, jiffies0 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_jiffies()
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    total = time.perf_counter() - start
    own1, jiffies1 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_jiffies()
    own_cpu = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)  # every rank (waited-for descendants)
    n_cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy_cores = None
    if jiffies0 and jiffies1 and jiffies1[1] > jiffies0[1]:
        busy_cores = n_cpus * (jiffies1[0] - jiffies0[0]) / (jiffies1[1] - jiffies0[1])
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    record = json.loads((out / "run.json").read_text())
    segment = record["segments"][-1]
    iterations = segment["last_iteration"] - segment["first_iteration"]
    return {"end_to_end_wall_s": total, "loop_wall_s": segment["wall_s"], "rank0_cpu_s": segment["cpu_s"],
            "all_ranks_cpu_s": own_cpu, "machine_busy_cores": busy_cores,
            "other_work_cores": None if busy_cores is None else max(0.0, busy_cores - own_cpu / total),
            "iterations": iterations, "iterations_per_s": iterations / segment["wall_s"],
            "n_ranks": segment["n_ranks"], "mpi": segment.get("mpi")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2, help="MPI ranks (default %(default)s)")
    parser.add_argument("--temperatures", default="300:1000:4", help="ladder (default %(default)s)")
    parser.add_argument("--iterations", type=int, default=400, help="iterations per run (default %(default)s)")
    parser.add_argument("--steps-per-iteration", type=int, default=500, help="(default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind, alternating (default %(default)s)")
    parser.add_argument("--out", type=Path, help=f"JSON to write (default {RESULTS}/remd_mpi_<date-time>.json)")
    args = parser.parse_args(argv)
    mpirun = find_mpirun()
    if mpirun is None:
        raise SystemExit('no mpirun/mpiexec found: pip install "trade-md[mpi]"')

    out_json = args.out or RESULTS / f"remd_mpi_{datetime.datetime.now():%Y%m%d-%H%M}.json"
    load_before = load_average()
    rows: dict[str, list[dict[str, Any]]] = {"1 process": [], f"mpirun -n {args.ranks}": []}
    commands: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="remd_mpi_") as scratch:
        for repeat in range(args.repeats):
            for label in rows:
                out = Path(scratch) / f"{label.replace(' ', '_')}_{repeat}"
                remd = [*trade_md_command(), "remd", "--system", "alanine-dipeptide", "--temperatures",
                        args.temperatures, "--iterations", str(args.iterations), "--steps-per-iteration",
                        str(args.steps_per_iteration), "--platform", "Reference", "--out", str(out), "--no-progress"]
                command = remd if label == "1 process" else [mpirun, "-n", str(args.ranks), *remd]
                commands[label] = [Path(c).name if c in (mpirun, remd[0]) else c for c in command]
                rows[label].append(run_once(command, out))
                row = rows[label][-1]
                other = "?" if row["other_work_cores"] is None else f"{row['other_work_cores']:.2f}"
                print(f"repeat {repeat}: {label:<14} loop {row['loop_wall_s']:7.1f} s, end-to-end "
                      f"{row['end_to_end_wall_s']:7.1f} s, all ranks' CPU {row['all_ranks_cpu_s']:6.1f} s, "
                      f"cores busy with other work {other}, load {load_average()}", flush=True)

    def median(label: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[label])

    single, parallel = rows
    summary = {label: {key: median(label, key) for key in ("loop_wall_s", "end_to_end_wall_s", "iterations_per_s",
                                                          "rank0_cpu_s")} for label in rows}
    speedup_loop = summary[single]["loop_wall_s"] / summary[parallel]["loop_wall_s"]
    speedup_total = summary[single]["end_to_end_wall_s"] / summary[parallel]["end_to_end_wall_s"]
    speedup_best = min(r["loop_wall_s"] for r in rows[single]) / min(r["loop_wall_s"] for r in rows[parallel])
    pairs = [a["loop_wall_s"] / b["loop_wall_s"] for a, b in zip(rows[single], rows[parallel])]
    print(f"\n{'':<16}{'loop wall s':>12}{'iterations/s':>14}{'end-to-end s':>14}{'rank-0 CPU s':>14}")
    for label in rows:
        s = summary[label]
        print(f"{label:<16}{s['loop_wall_s']:>12.1f}{s['iterations_per_s']:>14.2f}{s['end_to_end_wall_s']:>14.1f}"
              f"{s['rank0_cpu_s']:>14.1f}")
    print(f"speedup of {parallel} (medians of {args.repeats}): {speedup_loop:.2f}x on the iteration loop, "
          f"{speedup_total:.2f}x end to end; best of each {speedup_best:.2f}x; repeat by repeat "
          f"{', '.join(f'{x:.2f}' for x in pairs)}")

    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "benchmark": "benchmarks/remd_mpi.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "mpi_library": next((r["mpi"]["library"] for r in rows[parallel] if r["mpi"]), None),
        "commands": {label: " ".join(command) for label, command in commands.items()},
        "settings": {"temperatures": args.temperatures, "iterations": args.iterations,
                     "steps_per_iteration": args.steps_per_iteration, "platform": "Reference",
                     "repeats": args.repeats, "ranks": args.ranks},
        "median": summary,
        "speedup_loop": speedup_loop,
        "speedup_end_to_end": speedup_total,
        "speedup_loop_best": speedup_best,
        "speedup_loop_by_repeat": pairs,
        "runs": rows,
        "notes": "loop = the iteration loop timed in run.json (propagation, exchanges, storage writes); end to end "
                 "includes start-up (imports), system set-up and minimisation; all_ranks_cpu_s = CPU time of the "
                 "command and every process it started; machine_busy_cores = busy CPUs of the whole machine "
                 "during the command (/proc/stat), other_work_cores = that minus this command's own CPU / wall: "
                 "what other users took from the cores",
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
