#!/usr/bin/env python3
"""VSI-Bench on a Ray cluster: one Ray task per shard of `spatial-viewer eval run`, each with its
own GPU request, then `spatial-viewer eval merge` of the shard folders into one result.

    pip install "ray[default]"
    python tools/vsibench_ray.py --shards 8 --gpus-per-shard 1 --binary /shared/spatial-viewer \
        --out /shared/runs/sa-16 -- --dataset /shared/VSI-Bench --weights /shared/Spatial-MLLM \
        --sampling space-aware --vggt /shared/VGGT-1B --frames 16

Everything after `--` goes to every `eval run`. The binary, the dataset, the weights and --out must
be at the same paths on every node (a shared file system). Shards are journalled: running the same
command again continues each unfinished shard where it stopped. Ray schedules and retries the
tasks; this script only says what to run.
"""
import argparse
import subprocess
import sys
from pathlib import Path

import ray


@ray.remote
def run_shard(binary: str, index: int, count: int, out: str, args: list) -> dict:
    shard_out = str(Path(out) / f"shard-{index}-of-{count}")
    cmd = [binary, "eval", "run", *args, "--shard", f"{index}/{count}", "--out", shard_out]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return {"index": index, "out": shard_out, "returncode": done.returncode, "stderr": done.stderr[-4000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--gpus-per-shard", type=float, default=1.0)
    parser.add_argument("--cpus-per-shard", type=float, default=1.0)
    parser.add_argument("--binary", default="spatial-viewer", help="the spatial-viewer binary on every node")
    parser.add_argument("--out", required=True, help="the merged results go here, the shards in its subfolders")
    parser.add_argument("--address", default=None, help="a running cluster (default: RAY_ADDRESS, else a local instance)")
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then the arguments of `eval run`")
    a = parser.parse_args()
    args = a.run_args[1:] if a.run_args[:1] == ["--"] else a.run_args
    if a.shards < 1:
        parser.error("--shards must be at least 1")
    if any(x in ("--shard", "--out") for x in args):
        parser.error("--shard and --out are set per shard by this script")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    ray.init(address=a.address)
    tasks = [
        run_shard.options(num_gpus=a.gpus_per_shard, num_cpus=a.cpus_per_shard).remote(a.binary, i, a.shards, a.out, args)
        for i in range(a.shards)
    ]
    results = sorted(ray.get(tasks), key=lambda r: r["index"])
    failed = [r for r in results if r["returncode"] != 0]
    for r in failed:
        print(f"shard {r['index']} failed (exit {r['returncode']}):\n{r['stderr']}", file=sys.stderr)
    if failed:
        print("rerun the same command to continue the failed shards", file=sys.stderr)
        return 1
    merge = subprocess.run([a.binary, "eval", "merge", *[r["out"] for r in results], "--out", a.out])
    return merge.returncode


if __name__ == "__main__":
    sys.exit(main())
