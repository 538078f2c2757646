#!/bin/sh
# The GPU check, in one go on a GPU machine without a Rust toolchain or network (under 8 minutes on
# an H100/H200). Run in the repository's root with the binaries tools/build-cuda.sh packed:
#
#   tools/device-check.sh [PACK_DIR] [OUT_DIR]        (PACK_DIR: target-cuda)
#
# It uses the archives that are there (target-cuda/app.tar.xz, target-cuda/tests.tar.xz: carry
# one or both; each fits beside the repository in one device call) and says what it skipped.
#
# Prints one table: the parity tests on CUDA (f32 against upstream's fixtures, the half-precision
# paths against f32, through the fused attention kernel and through the chunked path), the fused
# kernel against f32 at every head size, `bench vggt` at 8, 32, 100 and 128 frames of 518x392 (f32 and bf16: time and
# peak GPU memory), `bench mllm` prefill and decode, `bench ask` (a whole 16-frame question, stage
# by stage), and an `ask` end to end with the tiny fixture
# weights through the pipeline the GUI's chat thread uses. Each row's log is kept in OUT_DIR.
set -u
pack=${1:-target-cuda}
logs=${2:-${OUT:-/tmp}/device-check}
mkdir -p "$logs"
dir=$(mktemp -d)
for a in "$pack"/app.tar.xz "$pack"/tests.tar.xz; do
    [ -f "$a" ] && tar xJf "$a" -C "$dir"
done
bin=$dir/bin
[ -d "$bin" ] || { echo "no binaries in $pack (make them with tools/build-cuda.sh)" >&2; exit 1; }
# The CUDA libraries of the machine's own PyTorch (cuBLAS, cuRAND, NVRTC, the runtime).
nvidia=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]) + "/nvidia")' 2>/dev/null)
libs=$(find "$nvidia" /usr/local/cuda/lib64 -name 'lib*.so*' 2>/dev/null | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:-}
# The tests find the fixtures in this copy of the repository.
export SPATIAL_MODELS_DIR=$PWD/models SPATIAL_TEST_DEVICE=cuda
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'

row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3"; }
# run NAME LIMIT_S COMMAND...: runs with a time limit, keeps the log, says pass/fail and seconds.
run() {
    name=$1 limit=$2
    shift 2
    start=$(date +%s.%N)
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    rc=$?
    secs=$(awk "BEGIN { print $(date +%s.%N) - $start }")
    if [ $rc -eq 0 ]; then status=ok; elif [ $rc -eq 124 ]; then status="timed out after $limit s"; else status="FAILED (exit $rc)"; fi
    printf '%s %.1f' "$status" "$secs"
    # A failure's last line goes to the detail column.
    [ $rc -eq 0 ] || tail -1 "$logs/$name.log" >"$logs/$name.why"
}
# why NAME DETAIL: the detail, or why the run failed.
why() { if [ -s "$logs/$1.why" ]; then cut -c1-160 "$logs/$1.why"; else echo "$2"; fi; }

echo
echo "| check | result (s) | detail |"
echo "|---|---|---|"
if [ -x "$bin/vggt_parity" ]; then
    r=$(run vggt_parity 120 "$bin/vggt_parity" --test-threads 1)
    row "VGGT parity on CUDA (f32 within 1e-3 of upstream; bf16/f16 against f32)" "$r" "$(why vggt_parity "$(grep -E 'test result' "$logs/vggt_parity.log" | tail -1)")"
    r=$(run spatial_mllm_parity 120 "$bin/spatial_mllm_parity" --test-threads 1)
    row "Spatial-MLLM parity on CUDA" "$r" "$(why spatial_mllm_parity "$(grep -E 'test result' "$logs/spatial_mllm_parity.log" | tail -1)")"
    r=$(run cuda_attention_device 60 "$bin/cuda_attention_device" --nocapture)
    row "fused attention kernel, bf16/f16 vs f32, head sizes 16-128 (within 2e-2 / 4e-3)" "$r" "$(why cuda_attention_device "$(grep -E 'head size 64|head size 128' "$logs/cuda_attention_device.log" | tr '\n' ' ')")"
    r=$(run vggt_parity_unfused 120 env SPATIAL_CUDA_ATTENTION=unfused "$bin/vggt_parity" --test-threads 1)
    row "VGGT parity on CUDA, chunked attention (SPATIAL_CUDA_ATTENTION=unfused)" "$r" "$(why vggt_parity_unfused "$(grep -E 'test result' "$logs/vggt_parity_unfused.log" | tail -1)")"
else
    row "parity tests" "skipped" "tests.tar.xz was not carried"
fi
[ -x "$bin/spatial-viewer" ] || { row "benchmarks and ask" "skipped" "app.tar.xz was not carried"; exit 0; }
for dtype in f32 bf16; do
    for frames in 8 32 100 128; do
        r=$(run "vggt-$dtype-$frames" 90 "$bin/spatial-viewer" bench vggt --frames "$frames" --width 518 --height 392 --device cuda --dtype "$dtype")
        row "bench vggt $frames x 518x392 $dtype" "$r" "$(why "vggt-$dtype-$frames" "$(grep -E '^\|' "$logs/vggt-$dtype-$frames.log" | tail -1)")"
    done
done
# f32 with TF32 tensor-core products (opt-in), next to the exact f32 rows.
r=$(run vggt-f32-8-tf32 90 env SPATIAL_CUDA_TF32=1 "$bin/spatial-viewer" bench vggt --frames 8 --width 518 --height 392 --device cuda --dtype f32)
row "bench vggt 8 x 518x392 f32 with TF32 products (SPATIAL_CUDA_TF32=1)" "$r" "$(why vggt-f32-8-tf32 "$(grep -E '^\|' "$logs/vggt-f32-8-tf32.log" | tail -1)")"
# The fused attention kernel against the chunked path, same run (bf16).
r=$(run vggt-bf16-32-unfused 90 env SPATIAL_CUDA_ATTENTION=unfused "$bin/spatial-viewer" bench vggt --frames 32 --width 518 --height 392 --device cuda --dtype bf16)
row "bench vggt 32 x 518x392 bf16, chunked attention (unfused)" "$r" "$(why vggt-bf16-32-unfused "$(grep -E '^\|' "$logs/vggt-bf16-32-unfused.log" | tail -1)")"
r=$(run mllm 120 "$bin/spatial-viewer" bench mllm --prompt-tokens 3200 --decode-tokens 64 --vision-frames 16 --device cuda --dtype bf16)
row "bench mllm 3200 prompt tokens, 64 new, 16 frames, bf16" "$r" "$(why mllm "$(grep -E '^\|' "$logs/mllm.log" | tail -2 | tr '\n' ' ')")"
r=$(run ask-bench 180 "$bin/spatial-viewer" bench ask --decode-tokens 64 --device cuda --dtype bf16)
row "bench ask: 16 frames of 476x644, 3200 prompt tokens, 64 new, bf16 (goal under 2 s)" "$r" "$(why ask-bench "$(grep -E '^\| \*\*total|^prefill' "$logs/ask-bench.log" | tr '\n' ' ')")"
frames=$(mktemp -d)
# Two real frames from the fixtures.
cp models/tests/fixtures/vggt-preprocess/bikes_1.png models/tests/fixtures/vggt-preprocess/bikes_2.png "$frames/"
gunzip -c models/tests/fixtures/qwen-tokenizer/tokenizer.json.gz >"$logs/tokenizer.json"
weights=$(mktemp -d)
cp models/tests/fixtures/spatial-mllm-tiny/config.json models/tests/fixtures/spatial-mllm-tiny/model.safetensors "$logs/tokenizer.json" "$weights/"
r=$(run ask 60 "$bin/spatial-viewer" ask --weights "$weights" --input "$frames" --frames 2 --question "How many chairs are in the room?" --max-new-tokens 8 --device cuda)
row "ask end to end, tiny weights, cuda" "$r" "$(tail -1 "$logs/ask.log")"
