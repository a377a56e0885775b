#include "hetmoe/train/trainer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "hetmoe/bench/catalog.h"
#include "hetmoe/comm/communicator.h"
#include "hetmoe/core/error.h"
#include "hetmoe/core/fs.h"
#include "hetmoe/core/logging.h"
#include "hetmoe/data/dataset.h"
#include "hetmoe/device/registry.h"
#include "hetmoe/ops/moe_ops.h"
#include "hetmoe/parallel/expert_parallel.h"
#include "hetmoe/parallel/grid.h"
#include "hetmoe/train/optimizer.h"
#include "hetmoe/train/schedule.h"
#include "hetmoe/train/signals.h"
#include "train/profile.h"

namespace fs = std::filesystem;

namespace hetmoe {
namespace {

// Artifacts a run writes into its out_dir; --overwrite replaces exactly these and nothing else.
const char* const kRunArtifacts[] = {"checkpoints", "metrics.jsonl", "resolved.yaml"};
// Where --overwrite keeps them until the new run's first checkpoint.
const char* const kReplacedDir = ".replaced-run";

// The device catalog `hetmoe bench` uses, for the same MFU denominator; none when no catalog is
// installed, and a warning (not a failed run) when the one found cannot be read.
std::optional<DeviceCatalog> device_catalog_if_any() {
  const std::string path = default_catalog_path();
  if (!std::ifstream(path).good()) return std::nullopt;
  try {
    return load_device_catalog(path);
  } catch (const Error& e) {
    HETMOE_LOG_WARN("MFU against the device table, the device catalog is not usable: %s", e.what());
    return std::nullopt;
  }
}

// Puts the run set aside by --overwrite back in `out` (dropping what the new run wrote);
// false when some part could not be moved back, and then the rest stays in .replaced-run.
bool restore_replaced(const fs::path& out) {
  const fs::path aside = out / kReplacedDir;
  bool ok = true;
  std::error_code ec;  // no exceptions: this also runs in a destructor
  for (const char* a : kRunArtifacts) {
    if (!fs::exists(aside / a, ec)) continue;
    std::string why;
    if (fs::exists(out / a, ec) && !remove_tree((out / a).string(), &why)) {
      ok = false;
      continue;
    }
    fs::rename(aside / a, out / a, ec);
    ok = ok && !ec;
  }
  std::string why;
  return ok && remove_tree(aside.string(), &why);
}

// An --overwrite that ended before its first checkpoint without putting the old run back (killed,
// or taken down with the rest of a multi-rank job) left it in .replaced-run: restore it now, or
// drop it when the replacement did write a checkpoint.
void recover_replaced(const fs::path& out) {
  const fs::path aside = out / kReplacedDir;
  if (!fs::exists(aside)) return;
  std::string why;
  if (fs::exists(out / "checkpoints" / "latest")) {
    if (remove_tree(aside.string(), &why))
      HETMOE_LOG_WARN("removed '%s', a run replaced (--overwrite) by the one now in '%s'",
                      aside.c_str(), out.c_str());
    return;
  }
  HETMOE_CHECK(restore_replaced(out), "train", "'", aside.string(),
               "' holds a run that an interrupted --overwrite set aside, and it cannot be put "
               "back; move its files into '",
               out.string(), "' yourself");
  HETMOE_LOG_WARN("put back the run in '%s' that an interrupted --overwrite had set aside",
                  out.c_str());
}

bool holds_run(const fs::path& dir) {
  for (const char* a : kRunArtifacts)
    if (fs::exists(dir / a)) return true;
  return false;
}

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(std::max(0.0, seconds));
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  else
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  return buf;
}

// Keeps metrics.jsonl consistent with a resumed step: lines past it belong to a lost future.
void truncate_metrics(const fs::path& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, kept;
  while (std::getline(in, line)) {
    try {
      if (nlohmann::json::parse(line).value("step", int64_t{0}) <= step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
      // A torn last line from a crash: drop it.
    }
  }
  in.close();
  std::ofstream(path, std::ios::trunc) << kept;
}

// train.threads 0: the cores this process may run on (its affinity: a launcher's binding, a
// taskset), and no more than its share of the node under a launcher, so that N ranks do not run
// N x cores threads when they are not bound (mpirun --oversubscribe) or share a socket each.
int default_threads() {
  const int node = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  int usable = node;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
    usable = std::min(node, CPU_COUNT(&set));
  return std::max(1, std::min(usable, node / launcher_local_size()));
}

// The allocator's account when `e` is running out of memory, host or device (LibTorch's CPU
// allocator throws a plain c10::Error for it); nothing for any other error.
std::optional<std::string> out_of_memory_reason(const std::exception& e) {
  if (const auto* oom = dynamic_cast<const c10::OutOfMemoryError*>(&e))
    return oom->what_without_backtrace();
  if (dynamic_cast<const std::bad_alloc*>(&e) != nullptr) return "std::bad_alloc";
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    const std::string what = c10_error->what_without_backtrace();
    if (what.find("can't allocate memory") != std::string::npos ||
        what.find("out of memory") != std::string::npos)
      return what.substr(0, what.find('\n'));
  }
  return std::nullopt;
}

// Hours of training must not end at the first save because the directory is read-only or full.
void check_writable(const fs::path& dir) {
  std::string probe;
  const int fd = create_unique_file((dir / ".write-test-").string(), &probe);
  const bool ok = fd >= 0 && ::write(fd, "hetmoe\n", 7) == 7;
  if (fd >= 0) {
    ::close(fd);
    std::remove(probe.c_str());
  }
  HETMOE_CHECK(ok, "train", "cannot write into run directory '", dir.string(),
               "' (read-only? full? permissions?)");
}

}  // namespace

Trainer::Trainer(Config config, TrainerOptions options)
    : config_(std::move(config)), options_(std::move(options)) {
  validate(config_);
  const auto& t = config_.train;
  health_ = HealthMonitor(HealthOptions{t.max_bad_steps, t.spike_threshold, t.spike_window,
                                        t.spike_lr_scale, t.spike_replay_after});
  at::set_num_threads(t.threads > 0 ? static_cast<int>(t.threads) : default_threads());

  device_ = resolve_device(config_.backend.device);
  backend_ = &backend_for(device_);
  const bool explicit_index = config_.backend.device.find(':') != std::string::npos;
  if (device_.is_cuda() && !explicit_index && launched_by_mpi()) {
    // One GPU per rank on a node, unless the config names one.
    const auto& guard = *c10::impl::getDeviceGuardImpl(device_.type());
    device_ = c10::Device(
        device_.type(), static_cast<c10::DeviceIndex>(launcher_local_rank() % guard.deviceCount()));
  }
  if (device_.is_cuda()) c10::impl::getDeviceGuardImpl(device_.type())->setDevice(device_);
  CommOptions comm_options{config_.comm.backend, config_.comm.strict, config_.comm.timeout_s};
  std::unique_ptr<Communicator> world_comm = make_world_communicator(comm_options, device_.type());
  const int launched = world_comm->size();
  try {
    grid_ = std::make_unique<ProcessGrid>(std::move(world_comm), config_.parallel.expert_parallel,
                                          config_.moe.num_experts);
  } catch (const Error& e) {
    // A resume under another launch than the one that wrote the checkpoint: say which launch
    // it needs rather than only what does not divide.
    if (options_.resume.empty()) throw;
    std::string hint;
    try {
      const std::string dir = find_checkpoint(options_.resume);
      const CheckpointManifest m = read_checkpoint_manifest(dir);
      std::string fits;  // the expert_parallel values this launch and the experts allow
      for (int64_t p = 1; p <= launched; ++p)
        if (launched % p == 0 && config_.moe.num_experts % p == 0)
          fits += (fits.empty() ? "" : ", ") + std::to_string(p);
      const int64_t mb = config_.train.micro_batch;
      hint = detail::concat(
          "; '", dir, "' was written by ", m.world_size, " rank(s) with parallel.expert_parallel ",
          m.expert_parallel, ": resume it with that grid (mpirun -np ", m.world_size,
          "), or reshard it to this launch with --set parallel.expert_parallel=P, P one of ", fits,
          mb % launched == 0 ? ""
                             : detail::concat(" (but train.micro_batch ", mb,
                                              ", the global micro-batch, does not split over ",
                                              launched, " ranks)"));
    } catch (const Error&) {
      throw e;
    }
    const std::string what = e.what();
    throw Error(e.component(), what.substr(e.component().size() + 3) + hint);
  }
  const int world = grid_->world_size();
  if (world > 1) init_logging(grid_->rank(), config_.run.log_level, config_.run.log_all_ranks);
  HETMOE_CHECK(t.micro_batch % world == 0, "train", "train.micro_batch ", t.micro_batch,
               " is the global micro-batch and must split evenly over the ", world,
               " ranks; use a multiple of ", world);
  local_batch_ = t.micro_batch / world;
  if (config_.moe.top_k == 1 && config_.moe.renormalize &&
      config_.model.n_layers > config_.model.first_k_dense)
    HETMOE_LOG_WARN(
        "moe.top_k is 1 and moe.renormalize is on: every routing weight is then 1, so the router "
        "learns only from the balance and z losses; set moe.renormalize false to scale each "
        "token's expert output by its score (Switch Transformer)");

  LoadedCheckpoint resumed;
  const fs::path out(config_.run.out_dir);
  // Rank 0 owns the run directory from here on: it must be writable, and no other trainer may
  // use it meanwhile (two runs in one directory delete each other's checkpoints). A directory
  // made here goes again if a check below fails, unless something was written into it.
  struct RemoveIfEmpty {
    fs::path dir;
    ~RemoveIfEmpty() {
      std::error_code ignored;
      if (!dir.empty()) fs::remove(dir, ignored);  // removes only an empty directory
    }
  } made_here;
  if (is_rank0()) {
    std::error_code ec;
    if (fs::create_directories(out, ec)) made_here.dir = out;
    HETMOE_CHECK(!ec, "train", "cannot create run directory '", out.string(), "': ", ec.message());
    run_lock_ = std::make_unique<DirectoryLock>(out.string(), DirectoryLock::Wait::No);
    HETMOE_CHECK(run_lock_->opened(), "train", "cannot open run directory '", out.string(),
                 "': ", std::strerror(run_lock_->failure()));
    HETMOE_CHECK(run_lock_->failure() != EWOULDBLOCK, "train", "run directory '", out.string(),
                 "' is in use by another training run (it holds the directory's lock); wait for "
                 "it to end or pick another run.out_dir");
    if (!run_lock_->locked())  // a file system without flock
      HETMOE_LOG_WARN("cannot lock run directory '%s' (%s): another run could use it meanwhile",
                      out.c_str(), std::strerror(run_lock_->failure()));
    check_writable(out);
  }
  if (is_rank0()) recover_replaced(out);
  if (world > 1) grid_->world().barrier();  // the other ranks may read checkpoints under out
  if (!options_.resume.empty()) {
    // Written by another grid, the checkpoint is resharded to this one: the data order and the
    // global batch do not depend on the grid, so the run goes on as it would have.
    resumed = load_checkpoint(options_.resume, true, checkpoint_shard(),
                              TransformerImpl::is_expert_parameter);
    HETMOE_CHECK(resumed.state.step <= t.steps, "train", "'", resumed.dir, "' is at step ",
                 resumed.state.step, ", past train.steps ", t.steps,
                 "; give train.steps above it to continue the run");
  }
  // out_dir may hold a run: the one being resumed (<run>/checkpoints/step_N), or another one,
  // which only overwrite may replace. Nothing is removed until every check below has passed.
  std::error_code same_ec;
  const bool continuing =
      !options_.resume.empty() &&
      fs::equivalent(out, fs::path(resumed.dir).parent_path().parent_path(), same_ec);
  bool replace = false;
  if (is_rank0() && fs::exists(out) && holds_run(out)) {
    if (!continuing) {
      bool resumable = true;
      try {
        find_checkpoint(out.string());
      } catch (const Error&) {
        resumable = false;  // stopped before its first checkpoint: nothing to continue from
      }
      HETMOE_CHECK(options_.overwrite, "train", "run directory '", out.string(), "' already holds ",
                   !options_.resume.empty()
                       ? "another run than the one being resumed ('" + resumed.dir +
                             "'); pick an empty run.out_dir, or replace that run"
                   : resumable ? "a run; continue it (--resume " + out.string() +
                                     ", TrainerOptions::resume) or replace it"
                               : "a run that ended before its first checkpoint, so there is "
                                 "nothing to continue; replace it",
                   " (--overwrite, TrainerOptions::overwrite)");
      replace = true;
    }
  }

  if (options_.data) {
    data_ = options_.data;
  } else {
    auto dataset = std::make_shared<TokenDataset>(config_.data.path);
    // The ids mean what the tokenizer that wrote them says; generation decodes with the config's.
    HETMOE_CHECK(dataset->tokenizer() == config_.data.tokenizer, "train", "dataset '",
                 config_.data.path, "' was written by the '", dataset->tokenizer(),
                 "' tokenizer, but data.tokenizer is '", config_.data.tokenizer, "'");
    data_ = dataset;
  }
  const std::string data_name = data_->describe();
  HETMOE_CHECK(data_->vocab_size() <= config_.model.vocab_size, "train", "dataset '", data_name,
               "' has vocab_size ", data_->vocab_size(), " but model.vocab_size is ",
               config_.model.vocab_size);
  for (Split s : {Split::Train, Split::Val}) {
    HETMOE_CHECK(data_->split_size(s) >= t.seq_len + 1, "train", "dataset '", data_name, "': the ",
                 s == Split::Train ? "train" : "val", " split has ", data_->split_size(s),
                 " tokens, fewer than train.seq_len + 1 = ", t.seq_len + 1,
                 s == Split::Train ? ""
                                   : " (training evaluates on it; `hetmoe data prepare "
                                     "--val-fraction` sets its share)");
  }

  try {
    model_ = Transformer(config_.model, config_.moe, grid_->expert_shard());
    model_->reset_parameters(static_cast<uint64_t>(t.seed));
    model_->to(device_);
  } catch (const std::exception& e) {
    // The weights alone do not fit: say how many there are and what shrinks them, not only
    // the allocator's words.
    const std::optional<std::string> why = out_of_memory_reason(e);
    if (!why) throw;
    const ParameterCount n = count_parameters(config_.model, config_.moe);
    HETMOE_FAIL("train", "out of memory building the model on ", device_.str(), ": ",
                static_cast<double>(n.total) / 1e9, "B parameters, ",
                static_cast<double>(n.total) * 4 / (1 << 30),
                " GiB in fp32 before gradients and optimizer state (", *why,
                "); shrink model.* or moe.*, or spread the experts over more ranks "
                "(parallel.expert_parallel) (`hetmoe plan` estimates the memory)");
  }
  if (world > 1) {
    exchange_ = std::make_shared<AllToAllExchange>(*grid_, config_.moe.num_experts,
                                                   config_.parallel.overlap_shared_experts);
    model_->set_expert_exchange(exchange_);
  }
  model_->set_compute_dtype(config_.backend.dtype == "bf16" ? at::kBFloat16 : at::kFloat);
  std::vector<std::pair<std::string, at::Tensor>> named;
  for (auto& p : model_->named_parameters()) {
    named.emplace_back(p.key(), p.value());
    (model_->is_expert_parameter(p.key()) ? expert_params_ : shared_params_).push_back(p.value());
  }
  optimizer_ =
      std::make_unique<AdamW>(named, AdamWOptions{t.beta1, t.beta2, t.eps, t.weight_decay});

  if (!options_.resume.empty()) {
    model_->load_state_tensors(resumed.model, resumed.dir);
    optimizer_->load_state_dict(resumed.optimizer);
    state_ = resumed.state;
    health_.load(state_.health);
  }
  // Every check has passed: now the run directory may change.
  std::error_code ec;
  if (replace) {
    // Moved aside, not removed: the run being replaced comes back if this one fails before its
    // first checkpoint (an out-of-memory step, a diverging config), and goes when it has one.
    const fs::path aside = out / kReplacedDir;
    std::string why;
    HETMOE_CHECK(remove_tree(aside.string(), &why), "train", "--overwrite: cannot remove '",
                 aside.string(), "': ", why);
    fs::create_directories(aside, ec);
    HETMOE_CHECK(!ec, "train", "--overwrite: cannot create '", aside.string(), "': ", ec.message());
    for (const char* a : kRunArtifacts) {
      if (!fs::exists(out / a)) continue;
      fs::rename(out / a, aside / a, ec);
      HETMOE_CHECK(!ec, "train", "--overwrite: cannot move '", (out / a).string(),
                   "' aside: ", ec.message());
    }
    replaced_pending_ = true;
  }
  fs::create_directories(out, ec);
  HETMOE_CHECK(!ec, "train", "cannot create run directory '", out.string(), "': ", ec.message());
  if (!options_.resume.empty()) {
    // The resumed step's checkpoint is this run's latest until a new one is written (and, in its
    // own run directory, saving that step again would rewrite it for nothing).
    last_checkpoint_ = resumed.dir;
    if (continuing) saved_step_ = state_.step;
    if (is_rank0()) truncate_metrics(out / "metrics.jsonl", state_.step);
    HETMOE_LOG_INFO("resumed from %s at step %lld", resumed.dir.c_str(),
                    static_cast<long long>(state_.step));
  }
  const std::string resolved = to_yaml(config_);
  if (is_rank0()) {
    std::ofstream file(out / "resolved.yaml");
    file << resolved;
    file.flush();
    HETMOE_CHECK(file.good(), "train", "cannot write '", (out / "resolved.yaml").string(),
                 "' (disk full? permissions?)");
  }
  made_here.dir.clear();  // the run directory is this run's now
  HETMOE_LOG_INFO("resolved config (also in %s):\n%s", (out / "resolved.yaml").string().c_str(),
                  resolved.c_str());

  flops_per_token_ = training_flops_per_token(config_.model, config_.moe, t.seq_len);
  std::string peak_source = "backend.peak_tflops";
  if (config_.backend.peak_tflops > 0) {
    peak_flops_ = config_.backend.peak_tflops * 1e12;
  } else {
    const auto devices = backend_->devices();
    const size_t index = device_.has_index() ? static_cast<size_t>(device_.index()) : 0;
    if (index < devices.size()) {
      const DeviceInfo& d = devices[index];
      const std::optional<DeviceCatalog> catalog = device_catalog_if_any();
      const NominalPeak peak = nominal_peak(
          catalog ? &*catalog : nullptr, d.name, config_.backend.dtype,
          (config_.backend.dtype == "bf16" ? d.peak_bf16_flops : d.peak_fp32_flops) / 1e12);
      peak_flops_ = peak.tflops * 1e12;
      peak_source = peak.source;
    }
  }
  const auto count = model_->parameter_count();
  HETMOE_LOG_INFO(
      "model: %lld layers, d_model %lld, %lld experts top-%lld (+%lld shared): "
      "%.2fM parameters, %.2fM active per token",
      static_cast<long long>(config_.model.n_layers), static_cast<long long>(config_.model.d_model),
      static_cast<long long>(config_.moe.num_experts), static_cast<long long>(config_.moe.top_k),
      static_cast<long long>(config_.moe.num_shared_experts), count.total / 1e6,
      count.active_per_token / 1e6);
  HETMOE_LOG_INFO("%.3f GFLOP per training token; device peak %.1f TFLOP/s (%s)",
                  flops_per_token_ / 1e9, peak_flops_ / 1e12, peak_source.c_str());
  if (world > 1)
    HETMOE_LOG_INFO(
        "grid: %s; %lld of the %lld sequences of each micro-batch per rank; "
        "this rank holds experts [%lld, %lld)",
        grid_->describe().c_str(), static_cast<long long>(local_batch_),
        static_cast<long long>(t.micro_batch), static_cast<long long>(grid_->expert_shard().first),
        static_cast<long long>(grid_->expert_shard().first + grid_->expert_shard().count));
  HETMOE_LOG_INFO("device %s, dtype %s, %d threads, data %s (%lld train / %lld val tokens)",
                  device_.str().c_str(), config_.backend.dtype.c_str(), at::get_num_threads(),
                  data_name.c_str(), static_cast<long long>(data_->split_size(Split::Train)),
                  static_cast<long long>(data_->split_size(Split::Val)));
}

Trainer::~Trainer() {
  if (!replaced_pending_) return;
  // This run ends without a checkpoint: put back the run it was to replace.
  const fs::path out(config_.run.out_dir), aside = out / kReplacedDir;
  if (restore_replaced(out))
    HETMOE_LOG_WARN(
        "the run ended before its first checkpoint; the run it was to replace "
        "(--overwrite) is back in '%s'",
        out.c_str());
  else
    HETMOE_LOG_WARN(
        "the run ended before its first checkpoint; the run it was to replace is in "
        "'%s'",
        aside.c_str());
}

void Trainer::commit_replacement() {
  if (!replaced_pending_) return;
  replaced_pending_ = false;
  std::string why;
  const fs::path aside = fs::path(config_.run.out_dir) / kReplacedDir;
  if (!remove_tree(aside.string(), &why))
    HETMOE_LOG_WARN("cannot remove the replaced run in '%s': %s", aside.c_str(), why.c_str());
}

bool Trainer::is_rank0() const {
  return grid_->rank() == 0;
}

CheckpointShard Trainer::checkpoint_shard() const {
  return CheckpointShard{grid_->rank(), grid_->world_size(), grid_->expert_parallel(),
                         grid_->world_size() > 1 ? &grid_->world() : nullptr};
}

at::Tensor Trainer::local_batch(Split split, uint64_t stream_step) const {
  const int64_t len = config_.train.seq_len + 1;
  at::Tensor buf = at::empty({local_batch_, len}, at::kInt);
  data_->sample_windows(split, local_batch_, len, static_cast<uint64_t>(config_.train.seed),
                        stream_step, buf.data_ptr<int32_t>(), grid_->rank() * local_batch_);
  // A data source of one's own may break its vocab_size promise; an id outside the embedding
  // would otherwise surface as an indexing error deep in the model (a device assert on a GPU).
  // A TokenDataset checked every id against its vocabulary when it was opened.
  if (options_.data) {
    const int32_t* ids = buf.data_ptr<int32_t>();
    const auto [lo, hi] = std::minmax_element(ids, ids + buf.numel());
    HETMOE_CHECK(*lo >= 0 && *hi < config_.model.vocab_size, "data", "'", data_->describe(),
                 "' gave token id ", *lo < 0 ? *lo : *hi, " (",
                 split == Split::Train ? "train" : "val", " batch ", stream_step,
                 "), outside [0, model.vocab_size = ", config_.model.vocab_size, ")");
  }
  return buf.to(at::kLong).to(device_);
}

int Trainer::stop_requested() {
  int stop = StopSignals::received();
  if (grid_->world_size() > 1) {
    // A launcher may signal the ranks at slightly different moments, or only some of them: stop
    // together, every rank naming a signal that one of them received.
    at::Tensor flag = at::full({1}, stop, at::kInt);
    grid_->world().all_reduce(flag, ReduceOp::Max);
    stop = flag.item<int>();
  }
  return stop;
}

int64_t Trainer::peak_memory() const {
  return backend_->peak_memory_bytes(device_.has_index() ? device_.index() : 0);
}

namespace {

// Times the MoE kernels of a training step on the CPU (metrics.jsonl's time split); restores
// the previous setting after, so evaluation and other code stay untimed.
class StepOpTiming {
 public:
  explicit StepOpTiming(bool on) : previous_(ops::op_timing()) { ops::set_op_timing(on); }
  ~StepOpTiming() { ops::set_op_timing(previous_); }
  StepOpTiming(const StepOpTiming&) = delete;
  StepOpTiming& operator=(const StepOpTiming&) = delete;

 private:
  bool previous_;
};

}  // namespace

double Trainer::train_step() {
  StepOpTiming timing(device_.is_cpu());
  try {
    return train_step_unguarded();
  } catch (const std::exception& e) {
    if (const std::optional<std::string> why = out_of_memory_reason(e)) throw out_of_memory(*why);
    throw;
  }
}

Error Trainer::out_of_memory(const std::string& what) const {
  const auto& t = config_.train;
  return Error("train", detail::concat("out of memory at step ", state_.step + 1, " on ",
                                       device_.str(), " (", what, "); lower train.micro_batch (",
                                       t.micro_batch, "), train.seq_len (", t.seq_len,
                                       ") or moe.expert_hidden (", config_.moe.expert_hidden,
                                       "), use backend.dtype bf16, or spread "
                                       "the experts over more ranks (parallel.expert_parallel ",
                                       config_.parallel.expert_parallel, ")"));
}

double Trainer::train_step_unguarded() {
  const auto& t = config_.train;
  const int64_t step = state_.step + 1;
  // A caller's NoGradGuard (evaluating before a fork of the run, say) must not reach the step;
  // InferenceMode cannot be lifted from inside, so it is refused by name.
  HETMOE_CHECK(!c10::InferenceMode::is_enabled(), "train",
               "train_step() called under c10::InferenceMode; leave the guard's scope first");
  const at::AutoGradMode grad_mode(true);
  model_->train();
  model_->set_step(step, static_cast<uint64_t>(t.seed));
  grid_->set_step(step);
  optimizer_->zero_grad();
  // This step's micro-batches: its own stream indices, then any deferred batch now due.
  std::vector<int64_t> streams;
  for (int64_t micro = 0; micro < t.grad_accum; ++micro)
    streams.push_back(state_.step * t.grad_accum + micro);
  const std::vector<int64_t> replay = health_.due(step);
  streams.insert(streams.end(), replay.begin(), replay.end());
  const double n_micro = static_cast<double>(streams.size());
  // The logged scalars and the tokens per expert are summed on the device and copied to the host
  // once per step: a device-to-host copy waits for the device, and one per micro-batch (and per
  // MoE layer) would leave a GPU idle while the host queues the next micro-batch.
  at::Tensor logged_sum;             // [3] double: ce, aux, z, each already divided by n_micro
  std::vector<at::Tensor> load_sum;  // per MoE layer: tokens per expert
  // bf16 compute: each fp32 master weight cast once for all micro-batches, the casts'
  // gradients added straight into the fp32 .grad() (closed before the optimizer runs; a
  // caller's own open scope is used as it is).
  std::optional<WeightCastScope> weight_casts;
  if (!WeightCastScope::active()) weight_casts.emplace();
  for (int64_t stream : streams) {
    at::Tensor batch = local_batch(Split::Train, static_cast<uint64_t>(stream));
    at::Tensor inputs = batch.narrow(1, 0, t.seq_len), targets = batch.narrow(1, 1, t.seq_len);
    ForwardOutput out;
    at::Tensor ce, loss;
    {
      RECORD_USER_SCOPE("hetmoe::forward");
      out = model_->forward(inputs);
      ce = at::cross_entropy_loss(out.logits.reshape({-1, out.logits.size(-1)}),
                                  targets.reshape(-1));
      if (options_.loss_hook) ce = options_.loss_hook(step, ce);
      loss = ce + config_.moe.aux_loss_coef * out.aux_loss + config_.moe.z_loss_coef * out.z_loss;
    }
    {
      RECORD_USER_SCOPE("hetmoe::backward");
      (loss / n_micro).backward();
    }
    at::Tensor logged =
        at::stack({ce.detach().to(at::kDouble), out.aux_loss.detach().to(at::kDouble),
                   out.z_loss.detach().to(at::kDouble)}) /
        n_micro;
    logged_sum = logged_sum.defined() ? logged_sum + logged : logged;
    for (size_t i = 0; i < out.tokens_per_expert.size(); ++i) {
      if (load_sum.size() <= i)
        load_sum.push_back(out.tokens_per_expert[i].clone());
      else
        load_sum[i] += out.tokens_per_expert[i];
    }
  }
  weight_casts.reset();
  StepRecord stats;
  {
    RECORD_USER_SCOPE("hetmoe::step_scalars");
    std::vector<at::Tensor> parts{logged_sum};
    for (const at::Tensor& l : load_sum) parts.push_back(l.to(at::kDouble));
    const at::Tensor host = at::cat(parts).to(at::kCPU);  // the step's one synchronisation
    at::Tensor means = host.narrow(0, 0, 3).clone();
    // The global batch's means: every rank holds the same number of tokens.
    if (grid_->world_size() > 1) grid_->world().all_reduce(means, ReduceOp::Avg);
    const double* v = means.data_ptr<double>();
    stats.loss = v[0];
    stats.aux = v[1];
    stats.z = v[2];
    int64_t offset = 3;
    for (const at::Tensor& l : load_sum) {
      stats.load.push_back(host.narrow(0, offset, l.numel()).to(at::kLong));
      offset += l.numel();
    }
  }
  if (options_.after_backward) options_.after_backward(step, model_);
  const double lr = learning_rate(t, state_.step);
  double grad_norm = 0;
  {
    RECORD_USER_SCOPE("hetmoe::grad_sync_and_clip");
    if (grid_->world_size() > 1) {
      synchronize_gradients(*grid_, shared_params_, expert_params_);
      grad_norm = clip_grad_norm_sharded(*grid_, shared_params_, expert_params_, t.clip);
    } else {
      grad_norm = clip_grad_norm(model_->parameters(), t.clip);
    }
  }
  // Every rank sees the same global loss and norm, so every rank decides the same.
  const HealthMonitor::Verdict verdict = health_.judge(step, stats.loss, grad_norm);
  stats.skipped = verdict.action == HealthMonitor::Action::Skip;
  if (verdict.action == HealthMonitor::Action::Skip) {
    if (std::isfinite(stats.loss) && std::isfinite(grad_norm)) {
      // A spike: see these batches again later (not the replayed ones a second time).
      health_.defer(step, std::vector<int64_t>(streams.begin(), streams.begin() + t.grad_accum));
    }
    if (is_rank0())
      HETMOE_LOG_WARN("step %lld: %s", static_cast<long long>(step), verdict.why.c_str());
  } else {
    if (verdict.action == HealthMonitor::Action::ScaledUpdate && is_rank0())
      HETMOE_LOG_WARN("step %lld: %s", static_cast<long long>(step), verdict.why.c_str());
    RECORD_USER_SCOPE("hetmoe::optimizer");
    optimizer_->step(lr * verdict.lr_scale);
    model_->update_expert_bias(stats.load);
  }
  watch_experts(step, stats.load);
  state_.step += 1;
  state_.tokens_seen += static_cast<int64_t>(streams.size()) * t.micro_batch * t.seq_len;
  stats.grad_norm = grad_norm;
  stats.lr = stats.skipped ? 0.0 : lr * verdict.lr_scale;  // the rate applied: none when skipped
  last_ = std::move(stats);
  return last_.loss;
}

void Trainer::watch_experts(int64_t step, const std::vector<at::Tensor>& load) {
  if (!is_rank0()) return;  // the load is global: every rank would say the same
  const auto& m = config_.moe;
  if (idle_steps_.size() != load.size()) idle_steps_.assign(load.size(), {});
  for (size_t layer = 0; layer < load.size(); ++layer) {
    at::Tensor l = load[layer].to(at::kDouble);
    const int64_t e = l.numel();
    const double* c = l.data_ptr<double>();
    double total = 0, most = 0;
    int64_t busiest = 0;
    for (int64_t i = 0; i < e; ++i) {
      total += c[i];
      if (c[i] > most) most = c[i], busiest = i;
    }
    const double ratio = total > 0 ? most / (total / static_cast<double>(e)) : 0;
    // Top-k routing caps the ratio at E/k (the busiest expert gets every token): a layer there
    // has collapsed, and is reported even when moe.imbalance_warn is at or above the cap.
    const bool collapsed = ratio >= static_cast<double>(e) / static_cast<double>(m.top_k) - 1e-9;
    if (m.imbalance_warn > 0 && (ratio > m.imbalance_warn || collapsed) &&
        step - last_imbalance_warning_ >= config_.train.log_every) {
      last_imbalance_warning_ = step;
      HETMOE_LOG_WARN(
          "step %lld: MoE layer %zu is imbalanced: expert %lld got %.0f tokens, "
          "%.1fx the mean (moe.imbalance_warn %.1f); consider moe.aux_loss_coef or "
          "moe.bias_update_rate",
          static_cast<long long>(step), layer, static_cast<long long>(busiest), most, ratio,
          m.imbalance_warn);
    }
    auto& idle = idle_steps_[layer];
    idle.resize(static_cast<size_t>(e), 0);
    std::vector<int64_t> dead;
    for (int64_t i = 0; i < e; ++i) {
      idle[i] = c[i] > 0 ? 0 : idle[i] + 1;
      if (m.dead_expert_steps > 0 && idle[i] == m.dead_expert_steps) dead.push_back(i);
    }
    if (!dead.empty()) {
      std::string list;
      for (int64_t i : dead) list += (list.empty() ? "" : ", ") + std::to_string(i);
      HETMOE_LOG_WARN("step %lld: MoE layer %zu: expert(s) %s received no tokens for %lld steps",
                      static_cast<long long>(step), layer, list.c_str(),
                      static_cast<long long>(m.dead_expert_steps));
    }
  }
}

double Trainer::evaluate() {
  const auto& t = config_.train;
  at::NoGradGuard no_grad;
  model_->eval();
  double total = 0;
  for (int64_t i = 0; i < t.eval_batches; ++i) {
    // The same fixed windows every evaluation, so val losses are comparable across steps.
    at::Tensor batch = local_batch(Split::Val, static_cast<uint64_t>(i));
    ForwardOutput out = model_->forward(batch.narrow(1, 0, t.seq_len));
    at::Tensor loss = at::cross_entropy_loss(out.logits.reshape({-1, out.logits.size(-1)}),
                                             batch.narrow(1, 1, t.seq_len).reshape(-1))
                          .to(at::kCPU, at::kDouble)
                          .reshape({1});
    if (grid_->world_size() > 1) grid_->world().all_reduce(loss, ReduceOp::Avg);
    total += loss.item<double>();
  }
  model_->train();
  return total / static_cast<double>(t.eval_batches);
}

std::string Trainer::save() {
  // The same step again (a stop signal right after a periodic save): it is on disk already, and
  // writing it anew would only lengthen a shutdown that may have a deadline.
  if (saved_step_ == state_.step && !last_checkpoint_.empty()) return last_checkpoint_;
  const std::map<std::string, at::Tensor> weights = model_->state_tensors();
  state_.health = health_.save();
  last_checkpoint_ = save_checkpoint(config_.run.out_dir, config_, state_, weights,
                                     optimizer_->state_dict(), checkpoint_shard());
  saved_step_ = state_.step;
  commit_replacement();
  if (options_.on_checkpoint) options_.on_checkpoint(state_.step, last_checkpoint_);
  return last_checkpoint_;
}

StepMetrics Trainer::last_step() const {
  StepMetrics m;
  m.step = state_.step;
  m.loss = last_.loss;
  m.aux_loss = last_.aux;
  m.z_loss = last_.z;
  m.lr = last_.lr;  // 0 for a skipped step
  m.grad_norm = last_.grad_norm;
  m.skipped = last_.skipped;
  for (const at::Tensor& l : last_.load) {
    at::Tensor c = l.to(at::kCPU, at::kLong).contiguous();
    m.expert_load.emplace_back(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
  }
  return m;
}

void Trainer::record(const StepRecord& r, double tokens_per_s, double elapsed, int64_t first_step,
                     double val_loss) {
  const auto& t = config_.train;
  // Imbalance: max over mean tokens per expert, averaged over the MoE layers.
  double imbalance = 0;
  nlohmann::json load = nlohmann::json::array();
  for (const auto& l : r.load) {
    at::Tensor lf = l.to(at::kDouble);
    imbalance += (lf.max() / lf.mean().clamp_min(1e-9)).item<double>();
    std::vector<int64_t> counts(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + l.numel());
    load.push_back(counts);
  }
  if (!r.load.empty()) imbalance /= static_cast<double>(r.load.size());
  const int64_t done = state_.step - first_step;
  const double eta = done > 0 ? elapsed / done * static_cast<double>(t.steps - state_.step) : 0;

  // MFU of the whole job against the peak of all its devices.
  const double mfu =
      peak_flops_ > 0 ? tokens_per_s * flops_per_token_ / (peak_flops_ * grid_->world_size()) : 0.0;
  HETMOE_LOG_INFO(
      "step %lld/%lld | loss %.4f | aux %.4f | z %.4f | lr %.2e | gnorm %.3f | "
      "%.0f tok/s | mfu %.1f%% | imbalance %.2f | eta %s",
      static_cast<long long>(state_.step), static_cast<long long>(t.steps), r.loss, r.aux, r.z,
      r.lr, r.grad_norm, tokens_per_s, 100.0 * mfu, imbalance, format_duration(eta).c_str());
  nlohmann::json j = {{"step", state_.step},
                      {"loss", r.loss},
                      {"aux_loss", r.aux},
                      {"z_loss", r.z},
                      {"lr", r.lr},
                      {"grad_norm", r.grad_norm},
                      {"tokens_per_s", tokens_per_s},
                      {"tokens_seen", state_.tokens_seen},
                      {"mfu", mfu},
                      {"peak_memory_mib", static_cast<double>(peak_memory()) / (1 << 20)},
                      {"model_tflops", tokens_per_s * flops_per_token_ / 1e12},
                      {"expert_imbalance", imbalance},
                      {"expert_load", load},
                      {"skipped_steps", health_.skipped_steps()},
                      {"bad_steps", health_.bad_steps()},
                      {"loss_spikes", health_.spikes()},
                      {"spike_lr_scaled", health_.scaled_updates()},
                      {"replayed_batches", health_.replayed()},
                      {"elapsed_s", elapsed}};
  if (!std::isfinite(r.grad_norm)) j["grad_norm"] = nullptr;
  if (val_loss >= 0) j["val_loss"] = val_loss;
  if (device_.is_cpu()) {
    // Seconds in the MoE kernels since the last record, forward and backward (CPU only: device
    // kernels are asynchronous to the host).
    const ops::OpSeconds ops = ops::take_op_seconds();
    j["route_s"] = ops.route;
    j["permute_s"] = ops.permute;
    j["experts_s"] = ops.experts;
    j["unpermute_s"] = ops.unpermute;
  }
  if (exchange_) {
    // Expert-parallel exchange time since the last record, forward and backward, and the
    // shared-expert work that ran while dispatched rows travelled.
    const auto [to, from] = exchange_->take_comm_seconds();
    j["dispatch_s"] = to;
    j["combine_s"] = from;
    j["overlapped_s"] = exchange_->take_overlapped_seconds();
  }
  if (!is_rank0()) return;
  const fs::path metrics = fs::path(config_.run.out_dir) / "metrics.jsonl";
  std::error_code size_ec;
  const auto before = fs::exists(metrics) ? fs::file_size(metrics, size_ec) : 0;
  std::ofstream out(metrics, std::ios::app);
  out << j.dump() << "\n";
  out.flush();
  if (!out) {
    // A line cut short (the disk filled mid-write) would break every reader of the file: the
    // file goes back to its last whole line.
    out.close();
    std::error_code ignored;
    if (!size_ec) fs::resize_file(metrics, before, ignored);
  }
  // Said when writing starts to fail, not at every step after (and again if it recovers).
  if (!out && !metrics_failing_)
    HETMOE_LOG_WARN(
        "cannot append step %lld's metrics to '%s' (disk full? permissions?); later lines are "
        "dropped too until a write succeeds",
        static_cast<long long>(state_.step), metrics.c_str());
  else if (out && metrics_failing_)
    HETMOE_LOG_WARN("metrics.jsonl is written again from step %lld on",
                    static_cast<long long>(state_.step));
  metrics_failing_ = !out;
}

TrainResult Trainer::run() {
  const auto& t = config_.train;
  using clock = std::chrono::steady_clock;
  const int64_t first_step = state_.step;
  const auto start = clock::now();
  TrainResult result;
  StopSignals signals;
  if (first_step >= t.steps && is_rank0())
    HETMOE_LOG_WARN(
        "the run is already at step %lld of train.steps %lld: nothing to train; give a larger "
        "train.steps (--set train.steps=N) to continue it",
        static_cast<long long>(first_step), static_cast<long long>(t.steps));
  const Backend& backend = backend_for(device_);
  // The window ends with the run at the latest: a trace of the steps that exist, not none.
  const int64_t profile_start = config_.run.profile_start;
  const int64_t profile_steps =
      profile_start > 0 ? std::min(config_.run.profile_steps, t.steps - profile_start + 1) : 0;
  if (profile_start > 0 && profile_start + profile_steps - 1 <= first_step)
    HETMOE_LOG_WARN(
        "run.profile_start %lld: steps %lld..%lld ran before this resumed run "
        "(from step %lld); no profile",
        static_cast<long long>(profile_start), static_cast<long long>(profile_start),
        static_cast<long long>(profile_start + profile_steps - 1),
        static_cast<long long>(first_step));
  StepProfiler profiler(profile_start, profile_steps, device_, config_.run.out_dir, grid_->rank(),
                        [&] { backend.synchronize(device_.has_index() ? device_.index() : 0); });
  // Throughput of the steps since the last record (evaluation and checkpoints left out).
  double window_seconds = 0;
  int64_t window_tokens_from = state_.tokens_seen;
  while (state_.step < t.steps) {
    const auto step_start = clock::now();
    profiler.before_step(state_.step + 1);
    const double loss = train_step();
    const double step_seconds = std::chrono::duration<double>(clock::now() - step_start).count();
    window_seconds += step_seconds;
    profiler.after_step(state_.step);
    if (options_.on_step) {
      StepMetrics m = last_step();
      m.seconds = step_seconds;
      m.tokens_per_s = static_cast<double>(t.grad_accum * t.micro_batch * t.seq_len) /
                       std::max(step_seconds, 1e-9);
      options_.on_step(m);
    }
    state_.log_loss_sum += loss;
    ++state_.log_steps;
    const bool last = state_.step == t.steps;
    double val_loss = -1;
    if (state_.step % t.eval_every == 0 || last) {
      val_loss = evaluate();
      state_.last_val_loss = val_loss;
      if (options_.on_eval) options_.on_eval(state_.step, val_loss);
      HETMOE_LOG_INFO("step %lld/%lld | val loss %.4f", static_cast<long long>(state_.step),
                      static_cast<long long>(t.steps), val_loss);
    }
    if (state_.step % t.log_every == 0 || last || val_loss >= 0) {
      const double elapsed = std::chrono::duration<double>(clock::now() - start).count();
      // The log line and metrics.jsonl carry the mean loss since the last record.
      StepRecord logged = last_;
      logged.loss = state_.log_loss_sum / static_cast<double>(state_.log_steps);
      const double window_tokens = static_cast<double>(state_.tokens_seen - window_tokens_from);
      record(logged, window_tokens / std::max(window_seconds, 1e-9), elapsed, first_step, val_loss);
      window_seconds = 0;
      window_tokens_from = state_.tokens_seen;
      result.final_train_loss = logged.loss;
      state_.log_loss_sum = 0;
      state_.log_steps = 0;
    }
    if ((t.save_every > 0 && state_.step % t.save_every == 0) || (last && t.save_final)) save();
    if (const int sig = last ? 0 : stop_requested(); sig != 0) {
      // A stop signal: the step is done; keep it (save() of a step just saved is a no-op).
      const std::string where = save();
      if (is_rank0())
        HETMOE_LOG_WARN("stopped by signal %d after step %lld; saved %s; continue with --resume %s",
                        sig, static_cast<long long>(state_.step), where.c_str(),
                        config_.run.out_dir.c_str());
      result.interrupted = true;
      break;
    }
  }
  result.seconds = std::chrono::duration<double>(clock::now() - start).count();
  result.steps = state_.step;
  result.final_val_loss = state_.last_val_loss;
  result.tokens_per_s = result.seconds > 0
                            ? static_cast<double>((state_.step - first_step) * t.grad_accum *
                                                  t.micro_batch * t.seq_len) /
                                  result.seconds
                            : 0;
  result.peak_memory_bytes = peak_memory();
  result.mfu = peak_flops_ > 0
                   ? result.tokens_per_s * flops_per_token_ / (peak_flops_ * grid_->world_size())
                   : 0.0;
  result.skipped_steps = health_.skipped_steps();
  result.checkpoint = last_checkpoint_;
  commit_replacement();  // finished (or stopped) without an error: the old run goes
  return result;
}

}  // namespace hetmoe
