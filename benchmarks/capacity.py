"""Capacity planning from a server load run: cores and replicas for a target number of streams.

    python benchmarks/capacity.py load.json [--replica-cores 8] [--utilization 0.7]

Reads the JSON written by `benchmarks/server_load.py --out load.json` and turns its largest
level that kept up (`max_streams_keeping_up`, on `settings.cpu_count` cores) into streams per
core, then into cores and replicas for 1 k, 10 k and 100 k concurrent streams, each replica
run at `--utilization` of its measured capacity (headroom for bursts and for the replica that
is draining). An estimate that assumes streams per core stay constant as cores grow (each
replica batches its own streams; the load client ran on the same cores, so the measured
figure is conservative).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

TARGETS = (1_000, 10_000, 100_000)


def capacity_table(load: dict, replica_cores: int, utilization: float, targets=TARGETS) -> list[dict]:
    """Rows of {streams, cores, replicas} for each target, from one server_load result."""
    kept, cores = load["max_streams_keeping_up"], load["settings"]["cpu_count"]
    if kept <= 0:
        raise ValueError("the load run kept up with no level: nothing to plan from")
    per_core = kept / cores * utilization
    per_replica = per_core * replica_cores
    return [{"streams": n, "streams_per_core": round(per_core, 2), "cores": math.ceil(n / per_core),
             "replicas": math.ceil(n / per_replica)} for n in targets]


def main(argv=None) -> dict[str, list[dict]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("load", type=Path, help="JSON from benchmarks/server_load.py --out")
    ap.add_argument("--replica-cores", type=int, default=8)
    ap.add_argument("--utilization", type=float, default=0.7, help="share of measured capacity to plan for")
    args = ap.parse_args(argv)
    load = json.loads(args.load.read_text())
    # A run over several backends (`server_load.py --backend torch onnx ...`) gives one table each.
    runs = load.get("backends") or {load.get("backend", "torch"): load}
    tables = {}
    for backend, run in runs.items():
        if run["max_streams_keeping_up"] <= 0:
            print(f"[{backend}] kept up with no level: nothing to plan from")
            continue
        rows = tables[backend] = capacity_table(run, args.replica_cores, args.utilization)
        print(f"[{backend}] measured: {run['max_streams_keeping_up']} streams kept up on "
              f"{run['settings']['cpu_count']} cores (model {run['model']}); planned at {args.utilization:.0%} "
              f"of it, {args.replica_cores}-core replicas")
        print("| concurrent streams | streams per core | cores | replicas |\n|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['streams']:,} | {r['streams_per_core']} | {r['cores']:,} | {r['replicas']:,} |")
    return tables


if __name__ == "__main__":
    main()
