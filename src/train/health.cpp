#include "hetmoe/train/health.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/json_int.h"
#include "hetmoe/core/error.h"

namespace hetmoe {

HealthMonitor::Verdict HealthMonitor::judge(int64_t step, double loss, double grad_norm) {
  Verdict v;
  if (!std::isfinite(loss) || !std::isfinite(grad_norm)) {
    ++consecutive_bad_;
    ++bad_total_;
    HETMOE_CHECK(options_.max_bad_steps <= 0 || consecutive_bad_ < options_.max_bad_steps, "train",
                 consecutive_bad_, " consecutive steps (the last: step ", step,
                 ") had a non-finite loss or gradient (train.max_bad_steps is ",
                 options_.max_bad_steps,
                 "); lower train.lr, check the data, or resume from the "
                 "last checkpoint with a smaller learning rate");
    v.action = Action::Skip;
    v.why = std::string("non-finite ") + (std::isfinite(loss) ? "gradient norm" : "loss") +
            ", update skipped (" + std::to_string(consecutive_bad_) + " in a row)";
    return v;
  }
  consecutive_bad_ = 0;
  const bool judged = options_.spike_threshold > 0 && recent_.size() >= window() / 2;
  if (judged) {
    double mean = 0, var = 0;
    for (double l : recent_) mean += l;
    mean /= static_cast<double>(recent_.size());
    for (double l : recent_) var += (l - mean) * (l - mean);
    const double std = std::sqrt(var / static_cast<double>(recent_.size()));
    // A floor on the deviation so a flat curve does not call every wobble a spike.
    const double limit = mean + options_.spike_threshold * std::max(std, 0.01 * std::abs(mean));
    if (loss > limit) {
      ++spikes_;
      char buf[160];
      std::snprintf(buf, sizeof buf, "loss spike: %.4f > %.4f (mean %.4f + %.1f x std %.4f)", loss,
                    limit, mean, options_.spike_threshold, std);
      if (last_was_spike_ && options_.spike_lr_scale > 0) {
        // Persistent: the model has moved on; learn from it, gently. The step is applied, so its
        // loss joins the window: a lasting change of the loss level is absorbed within a few
        // steps instead of being skipped every other step for ever. The run of spikes goes on
        // (the next spike is scaled too) until a step passes the test.
        ++scaled_;
        v.action = Action::ScaledUpdate;
        v.lr_scale = options_.spike_lr_scale;
        v.why = std::string(buf) + " again: update with lr x " +
                std::to_string(options_.spike_lr_scale).substr(0, 4);
        remember(loss);
        return v;
      }
      last_was_spike_ = true;
      v.action = Action::Skip;
      v.why = std::string(buf) + ": update skipped, batch deferred";
      return v;
    }
  }
  last_was_spike_ = false;
  remember(loss);
  return v;
}

void HealthMonitor::remember(double loss) {
  recent_.push_back(loss);
  while (recent_.size() > window()) recent_.pop_front();
}

void HealthMonitor::defer(int64_t step, const std::vector<int64_t>& streams) {
  if (options_.spike_replay_after <= 0) return;
  for (int64_t s : streams) deferred_.emplace_back(step + options_.spike_replay_after, s);
}

std::vector<int64_t> HealthMonitor::due(int64_t step) {
  std::vector<int64_t> out;
  while (!deferred_.empty() && deferred_.front().first <= step) {
    out.push_back(deferred_.front().second);
    deferred_.pop_front();
    ++replayed_;
  }
  return out;
}

std::string HealthMonitor::save() const {
  nlohmann::json j;
  j["recent_losses"] = std::vector<double>(recent_.begin(), recent_.end());
  j["consecutive_bad"] = consecutive_bad_;
  j["bad_total"] = bad_total_;
  j["spikes"] = spikes_;
  j["scaled"] = scaled_;
  j["replayed"] = replayed_;
  j["last_was_spike"] = last_was_spike_;
  nlohmann::json d = nlohmann::json::array();
  for (const auto& [due, stream] : deferred_) d.push_back({due, stream});
  j["deferred"] = d;
  return j.dump();
}

void HealthMonitor::load(const std::string& text) {
  static const char* const kWhere = "checkpoint";
  if (text.empty() || text == "{}") return;
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    const auto losses = j.at("recent_losses").get<std::vector<double>>();
    recent_.assign(losses.begin(), losses.end());
    consecutive_bad_ = json_int64(j.at("consecutive_bad"), kWhere, "consecutive_bad");
    bad_total_ = json_int64(j.at("bad_total"), kWhere, "bad_total");
    spikes_ = json_int64(j.at("spikes"), kWhere, "spikes");
    scaled_ = json_int64(j.at("scaled"), kWhere, "scaled");
    replayed_ = json_int64(j.at("replayed"), kWhere, "replayed");
    last_was_spike_ = j.at("last_was_spike").get<bool>();
    deferred_.clear();
    for (const auto& d : j.at("deferred"))
      deferred_.emplace_back(json_int64(d.at(0), kWhere, "a deferred step"),
                             json_int64(d.at(1), kWhere, "a deferred batch"));
  } catch (const nlohmann::json::exception& e) {
    HETMOE_FAIL("checkpoint", "training-health state in state.json is malformed: ", e.what());
  }
}

}  // namespace hetmoe
