#include "hetmoe/train/schedule.h"

#include <algorithm>
#include <cmath>

namespace hetmoe {

double learning_rate(const TrainConfig& t, int64_t step) {
  if (step < t.warmup) return t.lr * static_cast<double>(step + 1) / static_cast<double>(t.warmup);
  if (t.schedule == "constant") return t.lr;
  const double span = std::max<int64_t>(1, t.steps - t.warmup);
  const double progress = std::clamp((step - t.warmup) / span, 0.0, 1.0);
  if (t.schedule == "wsd") {
    // Stable at the peak, then a linear decay to min_lr over the last wsd_decay_fraction.
    const double decay_start = 1.0 - t.wsd_decay_fraction;
    if (progress <= decay_start) return t.lr;
    const double d = (progress - decay_start) / t.wsd_decay_fraction;
    return t.lr + (t.min_lr - t.lr) * d;
  }
  const double pi = std::acos(-1.0);
  return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + std::cos(pi * progress));
}

}  // namespace hetmoe
