#!/usr/bin/env python3
"""Summarise a hetmoe_op_bench JSON (Google Benchmark format) against the ceilings it measured.

Usage: summarize.py OP_BENCH.json [--out SUMMARY.json]
Prints, per layer shape, each variant's time and TFLOP/s with its fraction of the measured dense
GEMM rate, and permute/unpermute GB/s as a fraction of the measured copy bandwidth.
"""
import argparse
import json
import re


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench")
    ap.add_argument("--out")
    args = ap.parse_args()
    doc = json.load(open(args.bench))
    rows = [b for b in doc["benchmarks"] if not b.get("error_occurred")]
    # The faster of LibTorch's GEMM and the backend's own is the ceiling.
    gemm = max((b["TFLOP/s"] for b in rows
                if b["name"].startswith("BM_DenseGemm") and "TFLOP/s" in b), default=None)
    copy = next((b["GB/s"] for b in rows if b["name"].startswith("BM_Copy")), None)
    out = {"context": {k: doc["context"].get(k) for k in ("date", "host_name", "num_cpus")},
           "dense_gemm_tflops": gemm, "copy_gbps": copy, "layers": [], "data_movement": []}
    print(f"ceilings: dense GEMM {gemm:.1f} TFLOP/s, copy {copy:.0f} GB/s")
    for b in rows:
        m = re.match(r"BM_(MoELayer|Permute)/(\w+)/(.*)/real_time", b["name"])
        if not m:
            continue
        shape = dict(kv.split(":") for kv in m.group(3).split("/"))
        shape = {k: int(v) for k, v in shape.items()}
        if m.group(1) == "MoELayer":
            row = {"variant": m.group(2), **shape, "time_ms": b["real_time"],
                   "tflops": b["TFLOP/s"], "fraction_of_dense_gemm": b["TFLOP/s"] / gemm}
            out["layers"].append(row)
            print(f"{m.group(2):20s} tokens {shape['tokens']:6d} experts {shape['experts']:3d} "
                  f"{b['real_time']:9.3f} ms {b['TFLOP/s']:8.1f} TFLOP/s "
                  f"({100 * row['fraction_of_dense_gemm']:5.1f}% of dense)")
        else:
            row = {"op": m.group(2), **shape, "time_ms": b["real_time"], "gbps": b["GB/s"],
                   "fraction_of_copy": b["GB/s"] / copy}
            out["data_movement"].append(row)
            print(f"{m.group(2):20s} tokens {shape['tokens']:6d} experts {shape['experts']:3d} "
                  f"{b['real_time']:9.3f} ms {b['GB/s']:8.0f} GB/s "
                  f"({100 * row['fraction_of_copy']:5.1f}% of copy)")
    if args.out:
        json.dump(out, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
