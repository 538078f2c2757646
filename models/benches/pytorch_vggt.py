"""Baseline for `spatial-viewer bench vggt`: upstream VGGT (facebookresearch/vggt, not vendored
here) in PyTorch on the same shapes, constant weights, f32, CPU.

    PYTHONPATH=/path/to/vggt-checkout python models/benches/pytorch_vggt.py --frames 2 --height 224 --width 224

`--dtype bf16` runs it under CPU autocast to bf16, as upstream's demo runs it under CUDA autocast
(on the CPU the heads' `torch.cuda.amp.autocast(enabled=False)` does not apply, so they run in bf16
too): the comparison for `bench vggt --dtype bf16-products`.

Prints one table row: seconds (the median of --repeats) and peak RSS.
"""
import argparse
import resource
import time

import torch
from vggt.models.vggt import VGGT


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--height", type=int, default=224)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs (median), after a warm-up when more than one, as `bench vggt --repeats`")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    t0 = time.time()
    model = VGGT(enable_track=False)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1e-3)
    model.eval()
    init = time.time() - t0
    rss_after_load = peak_rss_mib()
    images = torch.full((a.frames, 3, a.height, a.width), 0.5)
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
        if a.repeats > 1:
            model(images)  # warm-up (allocator, oneDNN primitives)
        for _ in range(max(a.repeats, 1)):
            t = time.time()
            out = model(images)
            float(out["depth"].float().sum())
            times.append(time.time() - t)
    secs = sorted(times)[len(times) // 2]
    print(f"| PyTorch {torch.__version__} {a.dtype} | {a.frames} | {a.width}x{a.height} | {secs:.2f} | {rss_after_load:.0f} | {peak_rss_mib():.0f} | {init:.1f} |")


if __name__ == "__main__":
    main()
