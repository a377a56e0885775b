#!/usr/bin/env bash
# CPU training speed of hetmoe against the PyTorch-eager reference on configs/bench-small.yaml:
# tokens/s, MFU against the fp32 GEMM ceiling measured here, and peak memory, side by side.
#   benchmarks/cpu_compare.sh [STEPS]      (default 40; needs a build in $HETMOE_BUILD_DIR or build)
# Writes the figures as JSON to ${OUT:-benchmarks/results}/cpu-compare-<date>.json.
set -euo pipefail
source "$(dirname "$0")/common.sh"
steps=${1:-40}

ceiling=$("$build/benchmarks/hetmoe_op_bench" --benchmark_filter=DenseGemm \
  --benchmark_min_time=0.5 --benchmark_format=json 2>/dev/null |
  python3 -c 'import json,sys; print(max(b.get("TFLOP/s", 0) for b in json.load(sys.stdin)["benchmarks"]))')
eager=$("$HETMOE_VENV/bin/python" benchmarks/reference/eager_moe.py --data data/fortunes \
  --steps "$steps" --threads 2)
run=$(mktemp -d)
"$build/src/hetmoe" train --config configs/bench-small.yaml --set train.steps=$((steps + 5)) \
  --set train.log_every=1 --set run.out_dir="$run" --overwrite >"$run/log" 2>&1
python3 - "$run" "$ceiling" "$eager" "$out" <<'PY'
import datetime, json, re, sys
run, ceiling, eager, out = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
rows = [json.loads(l) for l in open(run + "/metrics.jsonl")]
timed = [r for r in rows if r["step"] > 5]  # the reference also skips 5 warm-up steps
tps = len(timed) / sum(1.0 / r["tokens_per_s"] for r in timed)  # tokens over total time
log = open(run + "/log").read()
gflop = float(re.search(r"([0-9.]+) GFLOP per training token", log).group(1))
peak = float(re.search(r"peak memory ([0-9.]+) MiB", log).group(1))
res = {
    "date": datetime.date.today().isoformat(), "config": "configs/bench-small.yaml",
    "gemm_ceiling_tflops": ceiling, "gflop_per_token": gflop,
    "hetmoe": {"tokens_per_s": tps, "mfu_vs_gemm_ceiling": tps * gflop / 1e3 / ceiling,
               "peak_memory_mib": peak, "final_loss": rows[-1]["loss"]},
    "eager": dict(eager, mfu_vs_gemm_ceiling=eager["tokens_per_s"] * gflop / 1e3 / ceiling),
}
res["speedup"] = tps / eager["tokens_per_s"]
path = f"{out}/cpu-compare-{res['date']}.json"
json.dump(res, open(path, "w"), indent=1)
print(f"fp32 GEMM ceiling {ceiling * 1e3:.0f} GFLOP/s; {gflop:.4f} GFLOP per token")
print(f"{'':24s}{'tokens/s':>10s}{'MFU':>8s}{'peak MiB':>10s}")
print(f"{'hetmoe':24s}{tps:10.0f}{100 * res['hetmoe']['mfu_vs_gemm_ceiling']:7.1f}%{peak:10.0f}")
print(f"{'pytorch eager (HF loop)':24s}{eager['tokens_per_s']:10.0f}"
      f"{100 * res['eager']['mfu_vs_gemm_ceiling']:7.1f}%{eager['peak_rss_mib']:10.0f}")
print(f"speedup {res['speedup']:.2f}x  (written to {path})")
PY
rm -rf "$run"
