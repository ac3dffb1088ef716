#!/usr/bin/env bash
# On a machine WITH an NVIDIA GPU and driver, in one go:
#   1. build the kernels with nvcc and print the resource report (registers, shared memory,
#      spills per kernel; the build fails on any spill);
#   2. run the shared op tests on the GPU (parity with the f64 references the CPU backend is
#      held to), then the ABI and device checks;
#   3. run the kernel benchmarks (benches/kernels.rs: every kernel family on resnet56/CIFAR
#      shapes at batch 64) and write a markdown summary, ready to paste into docs/KERNELS.md:
#      ${CARGO_TARGET_DIR:-target}/kernel-bench/summary.md.
#
# Usage: .ci/gpu-check.sh                 everything above
#        .ci/gpu-check.sh --summarize     only step 3's summary, from the last benchmark run
#                                         (no GPU needed)
# Environment: KDSCOUT_BENCH_DEVICE=cuda:N benchmarks another GPU than cuda:0; extra criterion
# arguments go in BENCH_ARGS (e.g. BENCH_ARGS="--measurement-time 3 conv2d").
set -euo pipefail
cd "$(dirname "$0")/.."

out="$(pwd)/${CARGO_TARGET_DIR:-target}/kernel-bench"
case "${CARGO_TARGET_DIR:-}" in /*) out="$CARGO_TARGET_DIR/kernel-bench" ;; esac
export CRITERION_HOME="$out/criterion"
export KDSCOUT_BENCH_MANIFEST="$out/manifest.tsv"

# The benchmarks' manifest (id, shape, work, H100 bound) joined with criterion's estimates.
summarize() {
    python3 - "$KDSCOUT_BENCH_MANIFEST" "$CRITERION_HOME" "$out/summary.md" "${1:-unknown GPU}" <<'PY'
import csv, datetime, json, os, subprocess, sys

manifest, crit, summary, gpu = sys.argv[1:5]
found = {}
for root, _, files in os.walk(crit):
    if os.path.basename(root) == "new" and "benchmark.json" in files and "estimates.json" in files:
        with open(os.path.join(root, "benchmark.json")) as f:
            bench = json.load(f)
        with open(os.path.join(root, "estimates.json")) as f:
            est = json.load(f)
        found[bench["full_id"]] = (bench.get("throughput") or {}, est["mean"]["point_estimate"] * 1e-9)

def time(s):
    if s < 1e-6:
        return f"{s * 1e9:.1f} ns"
    return f"{s * 1e6:.1f} µs" if s < 1e-3 else f"{s * 1e3:.2f} ms"

try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = "?"
rows, missing = [], 0
with open(manifest) as f:
    for r in csv.DictReader(f, delimiter="\t"):
        floor = float(r["h100_min_secs"])
        if r["id"] not in found:
            missing += 1
            rows.append(f"| `{r['id']}` | {r['shape']} | {r['work']} | not run | | {r['h100_bound']}, ≥ {time(floor)} | |")
            continue
        thr, secs = found[r["id"]]
        if "Elements" in thr:
            rate = f"{thr['Elements'] / secs * 1e-9:.1f} GFLOP/s"
        elif "BytesDecimal" in thr or "Bytes" in thr:
            rate = f"{(thr.get('BytesDecimal') or thr.get('Bytes')) / secs * 1e-9:.1f} GB/s"
        else:
            rate = ""
        rows.append(
            f"| `{r['id']}` | {r['shape']} | {r['work']} | {time(secs)} | {rate} "
            f"| {r['h100_bound']}, ≥ {time(floor)} | {100 * floor / secs:.0f}% |"
        )
with open(summary, "w") as f:
    f.write(f"# Kernel benchmarks on {gpu}\n\n")
    f.write(
        f"{datetime.date.today()}, commit {commit}: `cargo bench --features cuda --bench kernels` "
        "(criterion's mean per launch, device synchronised in the timed loop). *of bound*: the H100 "
        "lower bound (work over ~60 TFLOP/s FP32 or ~3.3 TB/s) over the measured time.\n\n"
    )
    f.write("| bench | shape | work | time | throughput | H100 bound | of bound |\n|---|---|---|---:|---:|---|---:|\n")
    f.write("\n".join(rows) + "\n")
print(f"gpu-check: {len(rows) - missing} benchmark(s) summarised in {summary}" + (f", {missing} not run" if missing else ""))
PY
}

if [ "${1:-}" = "--summarize" ]; then
    [ -f "$KDSCOUT_BENCH_MANIFEST" ] || { echo "gpu-check: no $KDSCOUT_BENCH_MANIFEST: run the benchmarks first" >&2; exit 1; }
    summarize "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)"
    exit 0
fi

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu-check: nvidia-smi not found: this script needs a machine with an NVIDIA GPU and its driver" \
        "(without one, .ci/run checks every kernel on the emulator instead)" >&2
    exit 1
fi
if ! nvidia-smi -L; then
    echo "gpu-check: nvidia-smi sees no usable GPU" >&2
    exit 1
fi
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

echo "== build (nvcc: PTX + sm_80/sm_90 cubins, no spills)"
cargo build --release --features cuda
echo "== resource report (docs/kernel-resources.md)"
cat docs/kernel-resources.md

echo "== op tests on the GPU, ABI and device checks"
RUSTFLAGS="${RUSTFLAGS:-} --cfg kdscout_gpu" cargo test --features cuda --test ops -- gpu::
cargo test --features cuda,cuda-emu --test cuda_abi --test device

echo "== kernel benchmarks on $gpu"
mkdir -p "$out"
rm -f "$KDSCOUT_BENCH_MANIFEST"
# shellcheck disable=SC2086 # BENCH_ARGS is a list of criterion arguments
KDSCOUT_BENCH_DEVICE="${KDSCOUT_BENCH_DEVICE:-cuda}" cargo bench --features cuda --bench kernels -- ${BENCH_ARGS:-}
# The bench exits 0 without a manifest when it finds no usable GPU; here that is a failure.
[ -f "$KDSCOUT_BENCH_MANIFEST" ] || { echo "gpu-check: the kernel benchmarks found no usable GPU" >&2; exit 1; }
summarize "$gpu"
