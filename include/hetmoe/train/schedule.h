// Learning-rate schedules: linear warmup, then cosine, warmup-stable-decay (WSD) or constant.
#pragma once

#include <cstdint>

#include "hetmoe/config/config.h"

namespace hetmoe {

// Learning rate for optimizer step `step` (0-based) of train.steps.
double learning_rate(const TrainConfig& train, int64_t step);

}  // namespace hetmoe
