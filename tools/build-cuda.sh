#!/bin/sh
# Builds the CUDA binaries (the app and the test binaries) on a CPU-only Debian machine and packs
# what a GPU machine without a Rust toolchain or network needs to run them.
#
#   tools/build-cuda.sh        (writes target-cuda/binaries.tar.xz)
#
# The CUDA compiler, headers and runtime libraries come from NVIDIA's PyPI wheels (no system CUDA,
# no root). CUDA_COMPUTE_CAP picks the GPU generation (default 90: H100/H200). Slow steps are
# cached: the wheels' venv and the cargo target folder (candle's kernels are compiled once per
# compute capability) live in $SPATIAL_CUDA_CACHE (default ~/.cache/spatial-viewer-cuda).
#
# On the GPU machine, in the repository's root: tools/device-check.sh (carrying target-cuda/).
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SPATIAL_CUDA_CACHE:-$HOME/.cache/spatial-viewer-cuda}
cap=${CUDA_COMPUTE_CAP:-90}
# CUDA 13.0: the GPU machines' driver (580) runs its PTX (a newer nvcc's PTX would be refused) and
# their image has its libraries (cuBLAS, cuRAND, NVRTC, the runtime), which the binaries load there.
# Only the compiler (nvcc, its NVVM and CRT pinned to the same release: unpinned they would come
# from the newest CUDA), the runtime (headers, libcudart to link) and CCCL's headers are needed here.
cuda_wheels="nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85"
started=$(date +%s)
say() { echo "[$(( $(date +%s) - started )) s] $*"; }

mkdir -p "$cache"
if [ ! -x "$cache/venv/bin/pip" ]; then
    say "making the wheels' venv"
    python3 -m venv "$cache/venv" || { echo "python3-venv is needed: apt-get install python3-venv" >&2; exit 1; }
fi
if [ ! -f "$cache/venv/wheels-$(echo "$cuda_wheels" | md5sum | cut -c1-8)" ]; then
    say "installing the CUDA compiler and libraries from PyPI"
    "$cache/venv/bin/pip" install --quiet $cuda_wheels
    touch "$cache/venv/wheels-$(echo "$cuda_wheels" | md5sum | cut -c1-8)"
fi

# One CUDA_HOME in the layout the build tools expect (bin/nvcc, include, lib64) from the wheels'
# folders, with the unversioned library names the linker looks for.
nv=$(echo "$cache"/venv/lib/python3*/site-packages/nvidia)
home=$cache/cuda-home
rm -rf "$home" && mkdir -p "$home/bin" "$home/include" "$home/lib64"
# (CUDA 13 wheels share nvidia/cu13/; CUDA 12 ones had a folder per package.)
for d in "$nv"/*/ "$nv"/*/*/; do
    [ -d "$d/bin" ] && for f in "$d"/bin/*; do ln -sf "$f" "$home/bin/"; done
    [ -d "$d/include" ] && for f in "$d"/include/*; do ln -sf "$f" "$home/include/"; done
    [ -d "$d/lib" ] && for f in "$d"/lib/*; do ln -sf "$f" "$home/lib64/"; done
    # nvcc finds its own tools (cicc, libdevice) in nvvm/ beside bin/.
    [ -d "$d/nvvm" ] && ln -sfn "$d/nvvm" "$home/nvvm"
done
for lib in "$home"/lib64/lib*.so.*; do
    base=$(basename "$lib" | sed 's/\.so\..*/.so/')
    [ -e "$home/lib64/$base" ] || ln -s "$lib" "$home/lib64/$base"
done
"$home/bin/nvcc" --version | tail -1

# Link-time stand-ins for the libraries candle's cudarc links to (the driver, cuBLAS, cuBLASLt,
# cuRAND, NVRTC): every function cudarc declares, with the real libraries' sonames, so the binaries
# load the GPU machine's own libraries there (as CUDA's own libcuda stub is used). No 1 GB of
# cuBLAS wheels to download for a link.
cudarc=$(cd "$repo" && cargo metadata --format-version 1 --features spatial-models/cuda 2>/dev/null | python3 -c 'import json, sys, os
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "cudarc"))')
for spec in driver:cuda:libcuda.so.1 cublas:cublas:libcublas.so.13 cublaslt:cublasLt:libcublasLt.so.13 curand:curand:libcurand.so.10 nvrtc:nvrtc:libnvrtc.so.13; do
    module=${spec%%:*}; rest=${spec#*:}; lib=${rest%%:*}; soname=${rest#*:}
    python3 - "$cudarc/src/$module/sys/mod.rs" >"$home/stub-$lib.c" <<'PY'
import re, sys
names = sorted(set(re.findall(r"^\s+fn (\w+)\(", open(sys.argv[1]).read(), re.M)))
print("\n".join(f"void {n}(void) {{}}" for n in names))
PY
    cc -shared -fPIC -o "$home/lib64/lib$lib.so" -Wl,-soname,"$soname" "$home/stub-$lib.c"
done

export CUDA_HOME=$home CUDA_PATH=$home CUDA_ROOT=$home CUDA_COMPUTE_CAP=$cap
export PATH=$home/bin:$PATH
# The linker's search path (not RUSTFLAGS: that would rebuild every crate when it changes).
export LIBRARY_PATH=$home/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}
export CARGO_TARGET_DIR=$cache/target-sm$cap

say "building the app and the parity test binaries with --features cuda for compute capability $cap"
cd "$repo"
cargo build --release -p spatial-viewer --no-default-features --features cuda
tests=$(cargo test --release -p spatial-models --no-default-features --features cuda --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"] + " " + m["executable"])')

say "packing"
# What travels to a GPU machine: the binaries, stripped, in one archive (the repository's own copy
# there has the fixtures and scripts; the CUDA libraries are the machine's own). The four binaries
# share most of their bytes (candle, the kernels' PTX), so xz gets a window over all of them: 23 MB
# instead of 40 MB as two default archives, so it fits beside the 40 MB repository in one device
# call (64 MiB). It takes about 4 minutes on 2 cores.
pack=$repo/target-cuda
rm -rf "$pack/bin" && mkdir -p "$pack/bin"
cp "$CARGO_TARGET_DIR/release/spatial-viewer" "$pack/bin/"
echo "$tests" | while read -r name exe; do
    case "$name" in vggt_parity|spatial_mllm_parity|cuda_attention_device) cp "$exe" "$pack/bin/$name" ;; esac
done
strip "$pack"/bin/*
rm -f "$pack"/app.tar.xz "$pack"/tests.tar.xz
tar cf - -C "$pack" bin/vggt_parity bin/spatial_mllm_parity bin/cuda_attention_device bin/spatial-viewer | xz -T1 --lzma2=preset=9e,dict=256MiB >"$pack/binaries.tar.xz"
say "wrote $pack/binaries.tar.xz ($(du -h "$pack/binaries.tar.xz" | cut -f1)); compute capability $cap"
