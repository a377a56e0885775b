#!/usr/bin/env bash
# Expert-parallel step-time overhead: configs/bench-small.yaml on 2 ranks with expert_parallel 2
# against 2 ranks of pure data parallelism, same global batch (micro_batch 8 = 4 per rank), one
# thread per rank. Prints tokens/s, the overhead and the time split, and writes JSON.
#   benchmarks/ep_overhead.sh [STEPS]     (default 30; needs a build in $HETMOE_BUILD_DIR or build)
set -euo pipefail
source "$(dirname "$0")/common.sh"
steps=${1:-30}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
tmp=$(mktemp -d)
for ep in 1 2; do
  mpirun --oversubscribe -np 2 "$build/src/hetmoe" train --config configs/bench-small.yaml \
    --set train.steps=$((steps + 5)) --set train.log_every=1 --set train.threads=1 \
    --set parallel.expert_parallel=$ep --set run.out_dir="$tmp/ep$ep" --overwrite \
    >"$tmp/ep$ep.log" 2>&1
done
python3 - "$tmp" "$out" <<'PY'
import datetime, json, sys
tmp, out = sys.argv[1], sys.argv[2]
def load(ep):
    rows = [json.loads(l) for l in open(f"{tmp}/ep{ep}/metrics.jsonl")]
    timed = [r for r in rows if r["step"] > 5]  # skip warm-up
    step_s = [r["elapsed_s"] for r in rows]
    total = sum(1.0 / r["tokens_per_s"] for r in timed)  # seconds per token, summed
    tokens = len(timed) / total
    return {"tokens_per_s": tokens,
            "dispatch_s_per_step": sum(r.get("dispatch_s", 0) for r in timed) / len(timed),
            "combine_s_per_step": sum(r.get("combine_s", 0) for r in timed) / len(timed),
            "step_s": 8 * 256 / tokens, "final_loss": rows[-1]["loss"]}
dp, ep = load(1), load(2)
res = {"date": datetime.date.today().isoformat(), "config": "configs/bench-small.yaml",
       "ranks": 2, "threads_per_rank": 1, "data_parallel_2": dp, "expert_parallel_2": ep,
       "overhead": dp["tokens_per_s"] / ep["tokens_per_s"] - 1}
path = f"{out}/ep-overhead-{res['date']}.json"
json.dump(res, open(path, "w"), indent=1)
print(f"{'':22s}{'tokens/s':>10s}{'step ms':>9s}{'dispatch ms':>13s}{'combine ms':>12s}{'rest ms':>9s}")
for name, r in (("2 ranks data parallel", dp), ("2 ranks expert par.", ep)):
    rest = r["step_s"] - r["dispatch_s_per_step"] - r["combine_s_per_step"]
    print(f"{name:22s}{r['tokens_per_s']:10.0f}{1e3 * r['step_s']:9.1f}"
          f"{1e3 * r['dispatch_s_per_step']:13.1f}{1e3 * r['combine_s_per_step']:12.1f}{1e3 * rest:9.1f}")
print(f"expert-parallel overhead {100 * res['overhead']:.1f}% (written to {path})")
PY
rm -rf "$tmp"
