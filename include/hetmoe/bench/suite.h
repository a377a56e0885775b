// `hetmoe bench`: the standard benchmark suite of one backend, and its JSON document.
//   ceilings  a large GEMM in the benchmark dtype, a large copy (memory bandwidth) and a copy the
//             size of the operators' rows (the bandwidth they can reach), measured in the same run
//   ops       route, permute, grouped expert FFN and unpermute, forward and backward, at the
//             config's layer shape, through the backend's kernel table
//   train     whole training steps of the config (AdamW, fp32 master weights), tokens/s, MFU
//   memory    the device's memory high-water mark
//   cost      per 1T training tokens, from the device catalog's price
// Every timed figure keeps its samples (after warm-up); reports give median and spread.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "hetmoe/bench/catalog.h"
#include "hetmoe/config/config.h"

namespace hetmoe {

struct BenchFigure {
  std::string name;    // e.g. "op.route.forward", "train.tokens_per_s"
  std::string unit;    // e.g. "ms", "tokens/s", "TFLOP/s", "fraction", "MiB", "USD"
  std::string better;  // "lower" | "higher": the direction of an improvement
  std::vector<double> samples;
  double rate = 0;          // the work rate at the median (0: none), in rate_unit
  std::string rate_unit;    // "TFLOP/s" (GEMM work) or "GB/s" (bytes read + written)
  double utilisation = -1;  // rate as a fraction of the named ceiling figure (< 0: none)
  std::string ceiling;      // "ceiling.gemm" | "ceiling.copy" (a copy of the operators' rows)

  double median() const;
  double min() const;
  double max() const;
  double stdev() const;  // sample standard deviation (0 for one sample)
};

// One backend's results.
struct BenchRun {
  std::string backend;        // "cpu" | "cuda" | "rocm"
  std::string device;         // the backend's device name
  std::string kernels;        // the kernel table's implementation name
  int threads = 0;            // intra-op threads
  std::string catalog_entry;  // the matching device catalog entry ("" when none)
  double price_per_hour = 0;
  std::string currency;
  std::vector<BenchFigure> figures;

  const BenchFigure* find(const std::string& name) const;
};

struct BenchOptions {
  int warmup = 3;        // untimed calls before each operator's samples
  int repeats = 20;      // timed samples per operator and ceiling
  int train_warmup = 2;  // untimed training steps
  int train_steps = 10;  // timed training steps
  bool ops = true;       // the operator benchmarks
  bool train = true;     // the training-step benchmark (needs the config's data)
  // Called with one line per finished item, e.g. "cpu  op.route.forward  0.146 ms ±2.1%".
  std::function<void(const std::string&)> progress;
};

// Runs the suite on `device` ("cpu", "cuda", "cuda:1", ...) for the config's shapes and dtype.
// The training benchmark builds a Trainer in a temporary run directory that is removed after.
// Throws hetmoe::Error when the device is not available or the config cannot train.
BenchRun run_benchmarks(const Config& config, const std::string& device,
                        const DeviceCatalog* catalog, const BenchOptions& options = {});

// A hash of what the benchmark measures (model, moe, train shapes, dtype), not of where it runs
// or writes: equal hashes mean comparable figures. "fnv1a64:<16 hex digits>".
std::string workload_hash(const Config& config);

// The JSON document of a run of `hetmoe bench` (schema "hetmoe-bench/1", docs/benchmarks.md).
std::string bench_document(const Config& config, const std::string& config_path,
                           const BenchOptions& options, const std::vector<BenchRun>& runs);

// Reads a document written by bench_document. Throws hetmoe::Error("[bench] ...") naming the file
// and the field when it is not one. `dtype` receives the document's compute dtype.
std::vector<BenchRun> read_bench_document(const std::string& path, std::string* dtype = nullptr);

}  // namespace hetmoe
