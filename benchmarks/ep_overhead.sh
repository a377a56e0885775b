#!/usr/bin/env bash
# Expert-parallel step-time overhead: configs/bench-small.yaml on 2 ranks with expert_parallel 2
# (with and without the shared experts overlapped with the dispatch) against 2 ranks of pure data
# parallelism, same global batch (micro_batch 8 = 4 per rank), one thread per rank. Prints
# tokens/s, the overhead and the time split of a step (routing, permute + unpermute, experts,
# dispatch, combine, the rest), and writes JSON.
#   benchmarks/ep_overhead.sh [STEPS]     (default 30; needs a build in $HETMOE_BUILD_DIR or build)
set -euo pipefail
source "$(dirname "$0")/common.sh"
steps=${1:-30}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
run() {  # name expert_parallel overlap
  mpirun --oversubscribe -np 2 "$build/src/hetmoe" train --config configs/bench-small.yaml \
    --set train.steps=$((steps + 5)) --set train.log_every=1 --set train.threads=1 \
    --set parallel.expert_parallel="$2" --set parallel.overlap_shared_experts="$3" \
    --set run.out_dir="$tmp/$1" --overwrite >"$tmp/$1.log" 2>&1 ||
    { tail -20 "$tmp/$1.log"; exit 1; }
}
run dp 1 true
run ep 2 true
run ep_serial 2 false
python3 - "$tmp" "$out" <<'PY'
import datetime, json, sys
tmp, out = sys.argv[1], sys.argv[2]
SPLIT = ("route", "permute", "experts", "dispatch", "combine", "overlapped")

def load(name):
    rows = [json.loads(l) for l in open(f"{tmp}/{name}/metrics.jsonl")]
    timed = [r for r in rows if r["step"] > 5 and "val_loss" not in r]  # no warm-up, no eval
    tokens = len(timed) / sum(1.0 / r["tokens_per_s"] for r in timed)  # harmonic mean
    res = {"tokens_per_s": tokens, "step_s": 8 * 256 / tokens, "final_loss": rows[-1]["loss"]}
    for key in SPLIT:
        if key == "permute":
            v = [r.get("permute_s", 0) + r.get("unpermute_s", 0) for r in timed]
        else:
            v = [r.get(key + "_s", 0) for r in timed]
        res[key + "_s_per_step"] = sum(v) / len(v)
    # What the split does not name: attention, norms, the dense layers, the optimizer, ...
    # (overlapped work happens inside the dispatch call but is not dispatch time).
    res["rest_s_per_step"] = res["step_s"] - sum(res[k + "_s_per_step"] for k in SPLIT)
    return res

dp, ep, serial = load("dp"), load("ep"), load("ep_serial")
res = {"date": datetime.date.today().isoformat(), "config": "configs/bench-small.yaml",
       "ranks": 2, "threads_per_rank": 1, "data_parallel_2": dp, "expert_parallel_2": ep,
       "expert_parallel_2_no_overlap": serial,
       "overhead": dp["tokens_per_s"] / ep["tokens_per_s"] - 1,
       "overhead_no_overlap": dp["tokens_per_s"] / serial["tokens_per_s"] - 1}
path = f"{out}/ep-overhead-{res['date']}.json"
json.dump(res, open(path, "w"), indent=1)
cols = ("route", "permute", "experts", "dispatch", "combine", "overlapped", "rest")
print(f"{'ms per step':26s}{'tokens/s':>9s}{'step':>7s}" + "".join(f"{c:>11s}" for c in cols))
for name, r in (("2 ranks data parallel", dp), ("2 ranks expert parallel", ep),
                ("  without overlap", serial)):
    print(f"{name:26s}{r['tokens_per_s']:9.0f}{1e3 * r['step_s']:7.1f}" +
          "".join(f"{1e3 * r[c + '_s_per_step']:11.1f}" for c in cols))
print("(permute = permute + unpermute; overlapped = shared experts computed while tokens travel)")
print(f"expert-parallel overhead {100 * res['overhead']:+.1f}% "
      f"({100 * res['overhead_no_overlap']:+.1f}% without overlap); written to {path}")
PY
