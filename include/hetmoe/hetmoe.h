// hetmoe: Mixture-of-Experts training on heterogeneous accelerators, as a C++ library.
// The one header an embedding project includes; docs/embedding.md tours it. Link hetmoe::hetmoe
// (find_package(hetmoe 0.1 REQUIRED)).
//
//   configuration   hetmoe/config/config.h      Config, load_config, parse_config, validate
//   backends        hetmoe/device/registry.h    backends(), backend(kind), resolve_device
//   MoE operators   hetmoe/ops/moe_ops.h        route, permute, expert_ffn, unpermute, linear
//   model           hetmoe/model/layers.h       MoELayer (router + routed + shared experts)
//                   hetmoe/model/transformer.h  Transformer, count_parameters
//   data            hetmoe/data/dataset.h       DataSource (your own), TokenDataset, prepare
//   training        hetmoe/train/trainer.h      Trainer, TrainerOptions (callbacks), StepMetrics
//                   hetmoe/train/checkpoint.h   save/find/load checkpoints
//   parallelism     hetmoe/comm/communicator.h, hetmoe/parallel/grid.h, expert_parallel.h
//   planning        hetmoe/bench/plan.h, suite.h, check.h, catalog.h
//   errors, logs    hetmoe/core/error.h (hetmoe::Error), hetmoe/core/logging.h
//   version         hetmoe/core/version.h       HETMOE_VERSION_STRING, HETMOE_BACKENDS
#pragma once

#include "hetmoe/bench/catalog.h"
#include "hetmoe/bench/check.h"
#include "hetmoe/bench/plan.h"
#include "hetmoe/bench/suite.h"
#include "hetmoe/comm/communicator.h"
#include "hetmoe/config/config.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/fs.h"
#include "hetmoe/core/host_memory.h"
#include "hetmoe/core/logging.h"
#include "hetmoe/core/version.h"
#include "hetmoe/data/dataset.h"
#include "hetmoe/data/tokenizer.h"
#include "hetmoe/device/backend.h"
#include "hetmoe/device/kernels.h"
#include "hetmoe/device/registry.h"
#include "hetmoe/model/layers.h"
#include "hetmoe/model/transformer.h"
#include "hetmoe/ops/moe_ops.h"
#include "hetmoe/ops/reference.h"
#include "hetmoe/parallel/expert_parallel.h"
#include "hetmoe/parallel/grid.h"
#include "hetmoe/train/checkpoint.h"
#include "hetmoe/train/generate.h"
#include "hetmoe/train/health.h"
#include "hetmoe/train/manifest.h"
#include "hetmoe/train/optimizer.h"
#include "hetmoe/train/safetensors.h"
#include "hetmoe/train/schedule.h"
#include "hetmoe/train/signals.h"
#include "hetmoe/train/trainer.h"
