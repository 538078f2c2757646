#!/bin/sh
# The GPU check, in one go on a GPU machine without a Rust toolchain or network (under 8 minutes on
# an H100/H200). Run in the repository's root with the binaries tools/build-cuda.sh packed:
#
#   tools/device-check.sh [PACK_DIR] [OUT_DIR]        (PACK_DIR: target-cuda)
#
# It unpacks target-cuda/binaries.tar.xz (carry that file) and says what it skipped. DEADLINE_S
# (default 450) bounds the whole check: each row gets what is left of it, most important rows
# first, so a GPU lent for a few minutes still gives the table's top.
#
# Prints one table: the parity tests on CUDA (f32 against upstream's fixtures, the half-precision
# paths against f32, through the fused attention kernel and through the chunked path), the fused
# kernel against f32 at every head size, an `ask` end to end with the tiny fixture weights through
# the pipeline the GUI's chat thread uses, `bench vggt` at 8, 32, 100 and 128 frames of 518x392
# (bf16 and f32: time, peak GPU memory, per stage), `bench ask` (a whole 16-frame question, stage
# by stage) and `bench mllm` prefill and decode. OUT_DIR gets the table (table.md) and every row's
# log, one after the other (logs.txt), as they are made: a check killed midway keeps its rows.
set -u
pack=${1:-target-cuda}
logs=${2:-${OUT:-/tmp}/device-check}
deadline=${DEADLINE_S:-450}
started=$(date +%s)
mkdir -p "$logs"
table=$logs/table.md all=$logs/logs.txt
: >"$table"
: >"$all"
dir=$(mktemp -d)
# Each row's own log (the two files above are what a caller keeps).
rows=$dir/rows
mkdir -p "$rows"
[ -f "$pack/binaries.tar.xz" ] && tar xJf "$pack/binaries.tar.xz" -C "$dir"
bin=$dir/bin
[ -d "$bin" ] || { echo "no binaries in $pack (make them with tools/build-cuda.sh)" >&2; exit 1; }
# The CUDA libraries of the machine's own PyTorch (cuBLAS, cuRAND, NVRTC, the runtime).
nvidia=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]) + "/nvidia")' 2>/dev/null)
libs=$(find "$nvidia" /usr/local/cuda/lib64 -name 'lib*.so*' 2>/dev/null | xargs -r -n1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:-}
# The tests find the fixtures in this copy of the repository.
export SPATIAL_MODELS_DIR=$PWD/models SPATIAL_TEST_DEVICE=cuda
say() { echo "$*" | tee -a "$table"; }
say "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
say "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"

row() { say "| $1 | $2 | $3 |"; }
# run NAME LIMIT_S COMMAND...: runs within its limit and what is left of the deadline, appends its
# log to logs.txt, says pass/fail and seconds.
run() {
    name=$1 limit=$2
    shift 2
    left=$((deadline - ($(date +%s) - started)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 10 ]; then
        echo "skipped (deadline)" >"$rows/$name.why"
        printf 'skipped'
        return
    fi
    start=$(date +%s.%N)
    timeout "$limit" "$@" >"$rows/$name.log" 2>&1
    rc=$?
    secs=$(awk "BEGIN { print $(date +%s.%N) - $start }")
    if [ $rc -eq 0 ]; then status=ok; elif [ $rc -eq 124 ]; then status="timed out after $limit s"; else status="FAILED (exit $rc)"; fi
    { echo "===== $name: $status, $secs s: $*"; cat "$rows/$name.log"; } >>"$all"
    printf '%s %.1f' "$status" "$secs"
    # A failure's last line goes to the detail column.
    [ $rc -eq 0 ] || tail -1 "$rows/$name.log" >"$rows/$name.why"
}
# why NAME DETAIL: the detail, or why the run failed.
why() { if [ -s "$rows/$1.why" ]; then cut -c1-200 "$rows/$1.why"; else echo "$2"; fi; }
# bench_vggt DTYPE FRAMES LIMIT [ENV...]: one `bench vggt` row.
bench_vggt() {
    dtype=$1 frames=$2 limit=$3 name=vggt-$1-$2
    shift 3
    label="bench vggt $frames x 518x392 $dtype"
    [ $# -gt 0 ] && { name=$name-$(echo "$*" | tr -c 'a-zA-Z0-9\n' '-'); label="$label, $*"; }
    r=$(run "$name" "$limit" env "$@" "$bin/spatial-viewer" bench vggt --frames "$frames" --width 518 --height 392 --device cuda --dtype "$dtype")
    row "$label" "$r" "$(why "$name" "$(grep -E '^\| [0-9]' "$rows/$name.log" 2>/dev/null | tail -1)")"
}

say ""
say "| check | result (s) | detail |"
say "|---|---|---|"
if [ -x "$bin/vggt_parity" ]; then
    r=$(run vggt_parity 120 "$bin/vggt_parity" --test-threads 1 --nocapture)
    row "VGGT parity on CUDA (f32 within 1e-3 of upstream; bf16/f16 against f32 within 2e-2)" "$r" "$(why vggt_parity "$(grep -E 'test result|^(BF16|F16) ' "$rows/vggt_parity.log" | tr '\n' ' ')")"
    r=$(run spatial_mllm_parity 120 "$bin/spatial_mllm_parity" --test-threads 1)
    row "Spatial-MLLM parity on CUDA" "$r" "$(why spatial_mllm_parity "$(grep -E 'test result' "$rows/spatial_mllm_parity.log" | tail -1)")"
    r=$(run cuda_attention_device 60 "$bin/cuda_attention_device" --nocapture)
    row "fused attention kernel, bf16/f16 vs f32, head sizes 16-128 (within 2e-2 / 4e-3)" "$r" "$(why cuda_attention_device "$(grep -E 'head size 64|head size 128|test result' "$rows/cuda_attention_device.log" | tr '\n' ' ')")"
else
    row "parity tests" "skipped" "no test binaries in $pack"
fi
[ -x "$bin/spatial-viewer" ] || { row "benchmarks and ask" "skipped" "no app binary in $pack"; exit 0; }
frames=$(mktemp -d)
# Two real frames from the fixtures.
cp models/tests/fixtures/vggt-preprocess/bikes_1.png models/tests/fixtures/vggt-preprocess/bikes_2.png "$frames/"
weights=$(mktemp -d)
gunzip -c models/tests/fixtures/qwen-tokenizer/tokenizer.json.gz >"$weights/tokenizer.json"
cp models/tests/fixtures/spatial-mllm-tiny/config.json models/tests/fixtures/spatial-mllm-tiny/model.safetensors "$weights/"
r=$(run ask 60 "$bin/spatial-viewer" ask --weights "$weights" --input "$frames" --frames 2 --question "How many chairs are in the room?" --max-new-tokens 8 --device cuda)
row "ask end to end, tiny weights, cuda" "$r" "$(why ask "$(grep -o 'loaded on [a-z0-9:]*' "$rows/ask.log"); $(tail -1 "$rows/ask.log")")"
for frames in 8 32 100 128; do
    bench_vggt bf16 "$frames" 90
done
r=$(run ask-bench 150 "$bin/spatial-viewer" bench ask --decode-tokens 64 --device cuda --dtype bf16)
row "bench ask: 16 frames of 476x644, 3200 prompt tokens, 64 new, bf16 (goal under 2 s)" "$r" "$(why ask-bench "$(grep -E '^\| \*\*total|^prefill' "$rows/ask-bench.log" | tr '\n' ' ')")"
r=$(run mllm 120 "$bin/spatial-viewer" bench mllm --prompt-tokens 3200 --decode-tokens 64 --vision-frames 16 --device cuda --dtype bf16)
row "bench mllm 3200 prompt tokens, 64 new, 16 frames, bf16" "$r" "$(why mllm "$(grep -E '^\| (vision|[0-9])' "$rows/mllm.log" | tr '\n' ' ')")"
bench_vggt f32 8 60
bench_vggt f32 32 90
# The fused attention kernel against the chunked path, same run (bf16).
bench_vggt bf16 32 90 SPATIAL_CUDA_ATTENTION=unfused
# f32 with TF32 tensor-core products (opt-in), next to the exact f32 rows.
bench_vggt f32 8 60 SPATIAL_CUDA_TF32=1
if [ -x "$bin/vggt_parity" ]; then
    r=$(run vggt_parity_unfused 120 env SPATIAL_CUDA_ATTENTION=unfused "$bin/vggt_parity" --test-threads 1 --nocapture)
    row "VGGT parity on CUDA, chunked attention (SPATIAL_CUDA_ATTENTION=unfused)" "$r" "$(why vggt_parity_unfused "$(grep -E 'test result|^(BF16|F16) ' "$rows/vggt_parity_unfused.log" | tr '\n' ' ')")"
fi
bench_vggt f32 100 240
bench_vggt f32 128 240
say ""
say "check took $(($(date +%s) - started)) s (deadline $deadline s)"
