#include "hetmoe/train/checkpoint.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <vector>

#include "hetmoe/core/error.h"
#include "hetmoe/core/fs.h"
#include "hetmoe/core/logging.h"
#include "hetmoe/data/dataset.h"
#include "hetmoe/train/health.h"
#include "hetmoe/train/manifest.h"
#include "hetmoe/train/safetensors.h"

namespace fs = std::filesystem;

namespace hetmoe {
namespace {

const char* st_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "F32";
    case at::kDouble:
      return "F64";
    case at::kBFloat16:
      return "BF16";
    case at::kHalf:
      return "F16";
    case at::kLong:
      return "I64";
    case at::kInt:
      return "I32";
    case at::kByte:
      return "U8";
    case at::kBool:
      return "BOOL";
    default:
      HETMOE_FAIL("checkpoint", "cannot store tensors of dtype ", c10::toString(t));
  }
}

at::ScalarType torch_dtype(const std::string& d, const std::string& name) {
  if (d == "F32") return at::kFloat;
  if (d == "F64") return at::kDouble;
  if (d == "BF16") return at::kBFloat16;
  if (d == "F16") return at::kHalf;
  if (d == "I64") return at::kLong;
  if (d == "I32") return at::kInt;
  if (d == "U8") return at::kByte;
  if (d == "BOOL") return at::kBool;
  HETMOE_FAIL("checkpoint", "tensor '", name, "' has dtype ", d, ", which hetmoe does not load");
}

void write_text_file(const std::string& path, const std::string& text) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  HETMOE_CHECK(f, "checkpoint", "cannot write '", path, "'");
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() &&
                  std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  std::fclose(f);
  HETMOE_CHECK(ok, "checkpoint", "failed writing '", path, "'");
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  HETMOE_CHECK(in, "checkpoint", "cannot read '", path, "'");
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

void fsync_dir(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::string shard_file(const char* stem, const CheckpointShard& shard) {
  if (shard.world <= 1) return std::string(stem) + ".safetensors";
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s-rank%05d-of-%05d.safetensors", stem, shard.rank, shard.world);
  return buf;
}

void barrier(const CheckpointShard& shard) {
  if (shard.world > 1) shard.comm->barrier();
}

// Size and FNV-1a 64 of a file, read in 1 MiB blocks.
struct Digest {
  int64_t bytes = 0;
  uint64_t hash = 0xcbf29ce484222325ULL;
};

Digest file_digest(const fs::path& path) {
  Digest d;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  HETMOE_CHECK(f, "checkpoint", "cannot read '", path.string(), "'");
  std::vector<unsigned char> buf(1 << 20);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) {
    d.hash = fnv1a64(buf.data(), n, d.hash);
    d.bytes += static_cast<int64_t>(n);
  }
  const bool ok = !std::ferror(f);
  std::fclose(f);
  HETMOE_CHECK(ok, "checkpoint", "failed reading '", path.string(), "'");
  return d;
}

std::string hex64(uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

// The step of a checkpoint directory's name ("step_00000042" -> 42), or -1 for any other name.
// Compared as numbers: past step 99,999,999 the names outgrow their zero padding.
int64_t step_number(const fs::path& dir) {
  const std::string name = dir.filename().string();
  if (name.rfind("step_", 0) != 0 || name.size() == 5 || name.size() > 5 + 18) return -1;
  int64_t n = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    n = n * 10 + (name[i] - '0');
  }
  return n;
}

// The step directories under `root`, newest first.
std::vector<fs::path> step_dirs(const fs::path& root) {
  std::vector<fs::path> steps;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec))
    if (e.is_directory() && step_number(e.path()) >= 0) steps.push_back(e.path());
  std::sort(steps.begin(), steps.end(),
            [](const fs::path& a, const fs::path& b) { return step_number(a) > step_number(b); });
  return steps;
}

// After a run resumed from an earlier step saves its first checkpoint, the old run's later
// checkpoints belong to an abandoned future: they move to checkpoints/abandoned-after-step_N/,
// out of reach of fallback and keep_last, and are kept for whoever wants them back.
// `replaced`: a different checkpoint of the same step as `current` that the save moved aside
// (empty when there was none); it belongs to the abandoned future too, under its own name.
void set_aside_abandoned(const fs::path& root, const fs::path& current, const fs::path& replaced) {
  std::vector<std::pair<fs::path, fs::path>> moves;  // from, name inside the aside directory
  if (!replaced.empty()) moves.emplace_back(replaced, current.filename());
  for (const fs::path& p : step_dirs(root))
    if (step_number(p) > step_number(current)) moves.emplace_back(p, p.filename());
  if (moves.empty()) return;
  fs::path aside = root / ("abandoned-after-" + current.filename().string());
  for (int i = 2; fs::exists(aside); ++i)
    aside = root / ("abandoned-after-" + current.filename().string() + "-" + std::to_string(i));
  std::error_code ec;
  fs::create_directories(aside, ec);
  for (const auto& [from, name] : moves) {
    if (!ec) fs::rename(from, aside / name, ec);
    if (ec) {
      HETMOE_LOG_WARN("[checkpoint] cannot move '%s' aside: %s", from.c_str(),
                      ec.message().c_str());
      return;
    }
  }
  HETMOE_LOG_WARN("[checkpoint] %zu checkpoint(s) from before the resume (%s %s), moved to %s",
                  moves.size(), replaced.empty() ? "after" : "from", current.filename().c_str(),
                  aside.c_str());
}

// Whether the checkpoint in `dir` holds exactly the files `sums` describes (the same step saved
// again, e.g. by a run resumed from it): then replacing it loses nothing.
bool same_checkpoint_files(const fs::path& dir, const nlohmann::json& sums) {
  try {
    const nlohmann::json old = nlohmann::json::parse(read_text_file((dir / "state.json").string()));
    return old.contains("files") && old["files"] == sums;
  } catch (const std::exception&) {
    return false;
  }
}

// The checkpoint name checkpoints/latest holds under `root` ("" when it is missing or empty).
std::string latest_name(const fs::path& root) {
  const fs::path latest = root / "latest";
  std::string name = fs::exists(latest) ? read_text_file(latest.string()) : "";
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  return name;
}

// Keeps the newest `keep` step directories (0: all) and clears temporaries of saves that died.
void rotate_checkpoints(const fs::path& root, const fs::path& current, int64_t keep) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if ((name.rfind(".tmp-", 0) == 0 || name.rfind(".old-", 0) == 0) && entry.is_directory()) {
      std::string why;
      if (!remove_tree(entry.path().string(), &why))
        HETMOE_LOG_WARN("[checkpoint] cannot remove stale '%s': %s", entry.path().c_str(),
                        why.c_str());
    }
  }
  if (keep <= 0) return;
  const std::vector<fs::path> steps = step_dirs(root);  // newest first
  for (size_t i = static_cast<size_t>(keep); i < steps.size(); ++i) {
    if (steps[i] == current) continue;
    std::string why;
    if (!remove_tree(steps[i].string(), &why))
      HETMOE_LOG_WARN("[checkpoint] keep_last: cannot remove '%s': %s", steps[i].c_str(),
                      why.c_str());
  }
}

bool is_optimizer_file(const std::string& name) {
  return name.rfind("optimizer", 0) == 0;
}

// Throws hetmoe::Error naming the first file of `dir` that is missing, truncated or corrupt by
// the manifest's sizes and checksums; the optimizer shards are left out unless `optimizer`.
void verify_files(const fs::path& dir, const CheckpointManifest& manifest, bool optimizer) {
  // What the manifest must cover, so that deleting an entry cannot switch its check off: every
  // rank's model shard and the config. A step directory's name must agree with its step.
  std::vector<std::string> required{"resolved.yaml"};
  for (int r = 0; r < manifest.world_size; ++r) {
    CheckpointShard s;
    s.rank = r;
    s.world = manifest.world_size;
    required.push_back(shard_file("model", s));
  }
  for (const std::string& name : required)
    HETMOE_CHECK(manifest.files.count(name), "checkpoint", "'", (dir / "state.json").string(),
                 "' lists no size and checksum for ", name);
  const int64_t named = step_number(dir);
  HETMOE_CHECK(named < 0 || named == manifest.step, "checkpoint", "'",
               (dir / "state.json").string(), "' says step ", manifest.step,
               ", but its directory is ", dir.filename().string());
  HealthMonitor().load(manifest.health);  // malformed training-health state: not resumable
  for (const auto& [name, want] : manifest.files) {
    if (!optimizer && is_optimizer_file(name)) continue;
    const fs::path file = dir / name;
    HETMOE_CHECK(fs::exists(file), "checkpoint", "'", file.string(), "' is missing");
    const Digest got = file_digest(file);
    HETMOE_CHECK(got.bytes == want.bytes, "checkpoint", "'", file.string(),
                 "' is truncated: ", got.bytes, " bytes, the manifest says ", want.bytes);
    HETMOE_CHECK(hex64(got.hash) == want.fnv1a64, "checkpoint", "'", file.string(),
                 "' is corrupt: its checksum differs from the manifest's");
  }
}

CheckpointManifest read_manifest(const fs::path& dir) {
  const fs::path path = dir / "state.json";
  return parse_checkpoint_manifest(read_text_file(path.string()), path.string());
}

}  // namespace

namespace {
// What a checkpoint's files look like now: where they are, their sizes and modification times.
std::string fingerprint(const fs::path& dir, const CheckpointManifest& manifest) {
  std::error_code ec;
  std::string f = fs::weakly_canonical(dir, ec).string();
  for (const auto& [name, digest] : manifest.files) {
    std::error_code e1, e2;
    const auto size = fs::file_size(dir / name, e1);
    const auto time = fs::last_write_time(dir / name, e2);
    f += "|" + name + ":" + (e1 ? "?" : std::to_string(size)) + ":" +
         (e2 ? "?" : std::to_string(time.time_since_epoch().count()));
  }
  return f;
}
}  // namespace

CheckpointManifest read_checkpoint_manifest(const std::string& dir) {
  return read_manifest(fs::path(dir));
}

void verify_checkpoint(const std::string& dir, bool optimizer) {
  // Checkpoints verified in this process, as their files were then: a resume that picks a
  // checkpoint (verifying it) and then loads it reads every byte once, not twice. A file
  // rewritten or resized since is verified again. A whole verification covers a model-only one.
  static std::mutex mutex;
  static std::set<std::string> verified;
  const CheckpointManifest manifest = read_manifest(fs::path(dir));
  const std::string whole = fingerprint(fs::path(dir), manifest);
  const std::string key = optimizer ? whole : whole + "|without optimizer";
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (verified.count(whole) || verified.count(key)) return;
  }
  verify_files(fs::path(dir), manifest, optimizer);
  std::lock_guard<std::mutex> lock(mutex);
  verified.insert(key);
}

void save_tensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors,
                  const std::map<std::string, std::string>& metadata) {
  std::vector<at::Tensor> keep;  // owns the CPU copies while the views point at them
  std::vector<TensorView> views;
  for (const auto& [name, t] : tensors) {
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    keep.push_back(c);
    TensorView v;
    v.name = name;
    v.dtype = st_dtype(c.scalar_type());
    v.shape.assign(c.sizes().begin(), c.sizes().end());
    v.data = c.data_ptr();
    v.nbytes = c.nbytes();
    views.push_back(std::move(v));
  }
  std::map<std::string, std::string> meta{{"format", "pt"}, {"producer", "hetmoe"}};
  for (const auto& [k, v] : metadata) meta[k] = v;
  write_safetensors(path, views, meta);
}

namespace {

// A shard file's place in the grid that wrote it, as its metadata records it ("hetmoe.shard").
std::string shard_identity(const CheckpointShard& s) {
  return detail::concat("rank ", s.rank, " of ", s.world, ", expert_parallel ", s.expert_parallel);
}

// A safetensors file read whole. With `expect`, a file that records its place in a grid must be
// that shard: a renamed or swapped shard file is refused even when the manifest's checksums
// were made to fit it.
SafetensorsFile open_shard(const std::string& path, const CheckpointShard* expect) {
  SafetensorsFile file(path);
  if (expect) {
    auto it = file.metadata().find("hetmoe.shard");
    HETMOE_CHECK(it == file.metadata().end() || it->second == shard_identity(*expect), "checkpoint",
                 "'", path, "' holds the shard of ", it->second, ", not of ",
                 shard_identity(*expect), " as its name says");
  }
  return file;
}

// A copy of the tensor `name` of `file`, or of its rows [first, first + count) along dim 0 only.
at::Tensor copy_tensor(const SafetensorsFile& file, const std::string& name, int64_t first = 0,
                       int64_t count = -1) {
  const TensorView& v = file.get(name);
  std::vector<int64_t> shape = v.shape;
  size_t offset = 0, bytes = v.nbytes;
  if (count >= 0) {  // the caller has checked that the rows exist
    const size_t row = shape[0] > 0 ? v.nbytes / static_cast<size_t>(shape[0]) : 0;
    offset = row * static_cast<size_t>(first);
    bytes = row * static_cast<size_t>(count);
    shape[0] = count;
  }
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(torch_dtype(v.dtype, name)));
  if (bytes) std::memcpy(t.data_ptr(), static_cast<const char*>(v.data) + offset, bytes);
  return t;
}

// Every tensor of a safetensors file (checked as open_shard does).
std::map<std::string, at::Tensor> load_all_tensors(const std::string& path,
                                                   const CheckpointShard* expect) {
  const SafetensorsFile file = open_shard(path, expect);
  std::map<std::string, at::Tensor> out;
  for (const auto& name : file.names()) out.emplace(name, copy_tensor(file, name));
  return out;
}

}  // namespace

std::map<std::string, at::Tensor> load_tensors(const std::string& path) {
  return load_all_tensors(path, nullptr);
}

std::string save_checkpoint(const std::string& out_dir, const Config& config,
                            const TrainState& state,
                            const std::map<std::string, at::Tensor>& model_state,
                            const std::map<std::string, at::Tensor>& optimizer_state,
                            const CheckpointShard& shard) {
  HETMOE_CHECK(shard.world <= 1 || shard.comm, "checkpoint",
               "a sharded checkpoint needs the world communicator");
  const fs::path root = fs::path(out_dir) / "checkpoints";
  const fs::path final_dir = root / step_name(state.step);
  // One temporary directory per job: rank 0's pid names it for every rank.
  at::Tensor pid = at::full({1}, static_cast<int64_t>(::getpid()), at::kLong);
  if (shard.world > 1) shard.comm->broadcast(pid, 0);
  const fs::path tmp_dir =
      root / (".tmp-" + step_name(state.step) + "-" + std::to_string(pid.item<int64_t>()));
  std::error_code ec;
  if (shard.rank == 0) {
    fs::create_directories(tmp_dir, ec);
    HETMOE_CHECK(!ec, "checkpoint", "cannot create '", tmp_dir.string(), "': ", ec.message());
  }
  barrier(shard);

  const std::map<std::string, std::string> identity{{"hetmoe.shard", shard_identity(shard)}};
  save_tensors((tmp_dir / shard_file("model", shard)).string(), model_state, identity);
  if (!optimizer_state.empty())
    save_tensors((tmp_dir / shard_file("optimizer", shard)).string(), optimizer_state, identity);
  // Each rank checksums its own files; rank 0 collects them for the manifest.
  at::Tensor digests = at::zeros({4}, at::kLong);
  {
    const Digest m = file_digest(tmp_dir / shard_file("model", shard));
    digests[0] = m.bytes;
    digests[1] = static_cast<int64_t>(m.hash);
    if (!optimizer_state.empty()) {
      const Digest o = file_digest(tmp_dir / shard_file("optimizer", shard));
      digests[2] = o.bytes;
      digests[3] = static_cast<int64_t>(o.hash);
    }
  }
  if (shard.world > 1) digests = shard.comm->all_gather(digests);
  barrier(shard);  // every shard is on disk before the manifest says so
  if (shard.rank == 0) {
    nlohmann::json j = {
        {"format", "hetmoe-checkpoint"},
        {"version", 1},
        {"step", state.step},
        {"tokens_seen", state.tokens_seen},
        {"last_val_loss", state.last_val_loss},
        {"log_window", {{"loss_sum", state.log_loss_sum}, {"steps", state.log_steps}}},
        {"seed", config.train.seed},
        {"world_size", shard.world},
        {"expert_parallel", shard.expert_parallel},
        {"health",
         state.health.empty() ? nlohmann::json::object() : nlohmann::json::parse(state.health)},
        {"data_sampler", "stateless: windows are a function of (seed, step)"}};
    nlohmann::json files = nlohmann::json::array();
    nlohmann::json sums = nlohmann::json::object();
    const int64_t* dg = digests.data_ptr<int64_t>();
    for (int r = 0; r < shard.world; ++r) {
      CheckpointShard s = shard;
      s.rank = r;
      files.push_back({{"rank", r},
                       {"model", shard_file("model", s)},
                       {"optimizer", optimizer_state.empty() ? "" : shard_file("optimizer", s)}});
      sums[shard_file("model", s)] = {{"bytes", dg[4 * r]},
                                      {"fnv1a64", hex64(static_cast<uint64_t>(dg[4 * r + 1]))}};
      if (!optimizer_state.empty())
        sums[shard_file("optimizer", s)] = {
            {"bytes", dg[4 * r + 2]}, {"fnv1a64", hex64(static_cast<uint64_t>(dg[4 * r + 3]))}};
    }
    j["shards"] = files;
    write_text_file((tmp_dir / "resolved.yaml").string(), to_yaml(config));
    const Digest y = file_digest(tmp_dir / "resolved.yaml");
    sums["resolved.yaml"] = {{"bytes", y.bytes}, {"fnv1a64", hex64(y.hash)}};
    j["files"] = sums;
    write_text_file((tmp_dir / "state.json").string(), j.dump(2) + "\n");
    fsync_dir(tmp_dir);

    // A checkpoint of this step already there (a run resumed from an earlier step) is moved
    // aside, not removed, until the new one is in place: `latest` may name it meanwhile.
    // One with other contents (the abandoned future of a run resumed from an earlier step) is
    // then set aside with the later ones; the same checkpoint saved again is removed.
    std::string why;
    const fs::path old_dir = root / (".old-" + final_dir.filename().string());
    HETMOE_CHECK(remove_tree(old_dir.string(), &why), "checkpoint", "cannot remove '",
                 old_dir.string(), "': ", why);
    bool replaced_differs = false;
    if (fs::exists(final_dir)) {
      replaced_differs = !same_checkpoint_files(final_dir, sums);
      fs::rename(final_dir, old_dir, ec);
      HETMOE_CHECK(!ec, "checkpoint", "cannot move '", final_dir.string(),
                   "' aside: ", ec.message());
    }
    fs::rename(tmp_dir, final_dir, ec);
    HETMOE_CHECK(!ec, "checkpoint", "cannot move checkpoint into '", final_dir.string(),
                 "': ", ec.message());
    // The pointer changes last, by rename, so it always names a complete checkpoint.
    const fs::path latest_tmp = root / ".latest.tmp";
    write_text_file(latest_tmp.string(), step_name(state.step) + "\n");
    fs::rename(latest_tmp, root / "latest", ec);
    HETMOE_CHECK(!ec, "checkpoint", "cannot update '", (root / "latest").string(), "'");
    fsync_dir(root);
    if (!replaced_differs) remove_tree(old_dir.string(), &why);
    set_aside_abandoned(root, final_dir, replaced_differs ? old_dir : fs::path());
    rotate_checkpoints(root, final_dir, config.train.keep_last);
  }
  barrier(shard);
  return final_dir.string();
}

std::string find_checkpoint(const std::string& path) {
  const fs::path p(path);
  HETMOE_CHECK(fs::exists(p), "checkpoint", "'", path, "' does not exist");
  if (fs::exists(p / "state.json")) return p.string();
  const fs::path latest = p / "checkpoints" / "latest";
  HETMOE_CHECK(fs::exists(latest), "checkpoint", "'", path,
               "' is neither a checkpoint directory (no state.json) nor a run directory with "
               "checkpoints/latest");
  const std::string name = latest_name(p / "checkpoints");
  const fs::path dir = p / "checkpoints" / name;
  HETMOE_CHECK(!name.empty() && fs::exists(dir / "state.json"), "checkpoint", "'", latest.string(),
               "' names '", name, "', which is not a checkpoint");
  return dir.string();
}

namespace {

// A run directory's checkpoints to try, best first: the one `latest` names, then the older ones,
// newest first (never newer ones: they belong to a timeline a resume abandoned). When `latest`
// is missing or names no checkpoint (a crash while it was replaced), every checkpoint, newest
// first.
std::vector<fs::path> run_candidates(const fs::path& run) {
  const std::vector<fs::path> steps = step_dirs(run / "checkpoints");
  const fs::path latest = run / "checkpoints" / "latest";
  const std::string name = latest_name(run / "checkpoints");
  const fs::path named = run / "checkpoints" / name;
  if (name.empty() || !fs::exists(named / "state.json")) {
    HETMOE_CHECK(!steps.empty(), "checkpoint", "'", run.string(),
                 "' is neither a checkpoint directory (no state.json) nor a run directory with "
                 "checkpoints");
    HETMOE_LOG_WARN("[checkpoint] '%s' %s; trying every checkpoint, newest first", latest.c_str(),
                    name.empty() ? "is missing or empty"
                                 : ("names '" + name + "', which is not a checkpoint").c_str());
    return steps;
  }
  std::vector<fs::path> out{named};
  for (const auto& p : steps)
    if (step_number(p) < step_number(named)) out.push_back(p);
  return out;
}

// The checkpoint `path` names, verified. A run directory yields its newest checkpoint that
// verifies (with a warning for each one skipped); a checkpoint directory must verify itself.
// Without `optimizer` the optimizer shards are neither needed nor checked.
std::string verified_checkpoint(const std::string& path, bool optimizer) {
  fs::path given = fs::path(path).lexically_normal();
  if (given.filename().empty()) given = given.parent_path();  // a trailing '/'
  HETMOE_CHECK(fs::exists(given), "checkpoint", "'", path, "' does not exist");
  if (fs::exists(given / "state.json")) {
    verify_checkpoint(given.string(), optimizer);  // a checkpoint named must itself be sound
    return given.string();
  }
  const std::vector<fs::path> candidates = run_candidates(given);
  std::string problems;
  for (const auto& dir : candidates) {
    try {
      verify_checkpoint(dir.string(), optimizer);
    } catch (const Error& e) {
      problems += std::string(problems.empty() ? "" : "; ") + e.what();
      HETMOE_LOG_WARN("%s; trying an older checkpoint", e.what());
      continue;
    }
    if (dir != candidates.front())
      HETMOE_LOG_WARN("[checkpoint] using %s, the newest checkpoint that verifies", dir.c_str());
    return dir.string();
  }
  HETMOE_FAIL("checkpoint", "no valid checkpoint under '", path, "': ", problems);
}

}  // namespace

std::string resumable_checkpoint(const std::string& path) {
  return verified_checkpoint(path, true);
}

namespace {

// The verified checkpoint `path` names (its optimizer shards too when `optimizer`), its config
// and training state; returns its manifest.
CheckpointManifest open_checkpoint(const std::string& path, bool optimizer, LoadedCheckpoint& c) {
  c.dir = verified_checkpoint(path, optimizer);
  const fs::path dir(c.dir);
  c.config = load_config((dir / "resolved.yaml").string());
  CheckpointManifest m = read_manifest(dir);
  c.state.step = m.step;
  c.state.tokens_seen = m.tokens_seen;
  c.state.last_val_loss = m.last_val_loss;
  c.state.log_loss_sum = m.log_loss_sum;
  c.state.log_steps = m.log_steps;
  c.state.health = m.health;
  return m;
}

}  // namespace

namespace {

std::string describe_grid(int64_t world, int64_t expert_parallel) {
  return detail::concat(world, " rank", world == 1 ? "" : "s", " with expert_parallel ",
                        expert_parallel);
}

// Whether `want` is the grid that wrote the checkpoint.
bool same_grid(const CheckpointManifest& m, const CheckpointShard& want) {
  return m.world_size == want.world && m.expert_parallel == want.expert_parallel;
}

// Whether every rank of both grids holds every expert: then any shard is the whole state.
bool unsharded(const CheckpointManifest& m, const CheckpointShard& want) {
  return m.expert_parallel == 1 && want.expert_parallel == 1;
}

// `stem`'s tensors ("model" or "optimizer") as rank `want.rank` of the grid `want` describes
// holds them, from the checkpoint in `dir` whose manifest `m` names the grid that wrote it.
// The same grid reads the rank's own file, and so does any grid where every rank holds every
// expert (rank 0's). Otherwise every tensor that `sharded` rejects comes from rank 0's file
// (all ranks hold the same ones), and this rank's experts are cut out of the files of the ranks
// 0 .. expert_parallel - 1 that wrote them: the first expert group, which holds every expert,
// rank j experts [j * E / ep, (j + 1) * E / ep) along dim 0 of each sharded tensor. Each file is
// read once, and only the rows this rank keeps are copied out of it.
std::map<std::string, at::Tensor> load_part(
    const fs::path& dir, const char* stem, const CheckpointManifest& m, int64_t num_experts,
    const CheckpointShard& want, const std::function<bool(const std::string&)>& sharded) {
  CheckpointShard from;
  from.world = m.world_size;
  from.expert_parallel = m.expert_parallel;
  if (same_grid(m, want) || unsharded(m, want)) {
    from.rank = same_grid(m, want) ? want.rank : 0;
    return load_all_tensors((dir / shard_file(stem, from)).string(), &from);
  }
  HETMOE_CHECK(m.expert_parallel >= 1 && num_experts % m.expert_parallel == 0 &&
                   want.expert_parallel >= 1 && num_experts % want.expert_parallel == 0,
               "checkpoint", "'", dir.string(), "': moe.num_experts ", num_experts,
               " does not split over expert_parallel ", m.expert_parallel, " and ",
               want.expert_parallel);
  const int64_t per_file = num_experts / m.expert_parallel;
  const int64_t per_rank = num_experts / want.expert_parallel;
  const int64_t first = (want.rank % want.expert_parallel) * per_rank, last = first + per_rank;
  std::map<std::string, at::Tensor> out;
  std::map<std::string, std::vector<at::Tensor>> parts;
  std::string names_from;  // the first file the expert tensors came from, for the name check
  for (int j = 0; j < static_cast<int>(m.expert_parallel); ++j) {
    const int64_t lo = std::max(first, j * per_file), hi = std::min(last, (j + 1) * per_file);
    if (lo >= hi && j > 0) continue;  // rank 0's file is read for the unsharded tensors anyway
    from.rank = j;
    const std::string path = (dir / shard_file(stem, from)).string();
    const SafetensorsFile file = open_shard(path, &from);
    std::vector<std::string> experts;
    for (const auto& name : file.names()) {
      if (!sharded(name)) {
        if (j == 0) out.emplace(name, copy_tensor(file, name));
      } else if (lo < hi) {
        experts.push_back(name);
      }
    }
    if (lo >= hi) continue;
    if (names_from.empty()) {
      names_from = path;
    } else {
      HETMOE_CHECK(experts.size() == parts.size(), "checkpoint", "'", path, "' holds ",
                   experts.size(), " expert tensors, '", names_from, "' ", parts.size());
    }
    for (const auto& name : experts) {
      HETMOE_CHECK(names_from == path || parts.count(name), "checkpoint", "'", path,
                   "' holds expert tensor '", name, "', which '", names_from, "' lacks");
      const std::vector<int64_t>& shape = file.get(name).shape;
      HETMOE_CHECK(!shape.empty() && shape[0] == per_file, "checkpoint", "'", path, "': tensor '",
                   name, "' has ", shape.empty() ? 0 : shape[0], " rows, not the ", per_file,
                   " experts of one of ", m.expert_parallel,
                   " expert-parallel ranks (moe.num_experts ", num_experts, ")");
      parts[name].push_back(copy_tensor(file, name, lo - j * per_file, hi - lo));
    }
  }
  for (auto& [name, list] : parts) out[name] = list.size() == 1 ? list[0] : at::cat(list, 0);
  return out;
}

}  // namespace

LoadedCheckpoint load_checkpoint(const std::string& path, bool load_optimizer,
                                 const CheckpointShard& shard,
                                 const std::function<bool(const std::string&)>& is_expert) {
  LoadedCheckpoint c;
  const CheckpointManifest m = open_checkpoint(path, load_optimizer, c);
  const fs::path dir(c.dir);
  const bool same = same_grid(m, shard);
  HETMOE_CHECK(same || is_expert || unsharded(m, shard), "checkpoint", "'", c.dir,
               "' was written by a grid of ", describe_grid(m.world_size, m.expert_parallel),
               "; this run has ", describe_grid(shard.world, shard.expert_parallel),
               ". Resume with the same grid, or say which tensors are sharded (is_expert) to "
               "reshard it");
  const int64_t experts = c.config.moe.num_experts;
  if (!same)
    HETMOE_LOG_INFO("[checkpoint] resharding %s, written by %s, for %s", c.dir.c_str(),
                    describe_grid(m.world_size, m.expert_parallel).c_str(),
                    describe_grid(shard.world, shard.expert_parallel).c_str());
  c.model = load_part(dir, "model", m, experts, shard, is_expert);
  if (load_optimizer) c.optimizer = load_part(dir, "optimizer", m, experts, shard, is_expert);
  return c;
}

LoadedCheckpoint load_whole_model(const std::string& path,
                                  const std::function<bool(const std::string&)>& is_expert) {
  LoadedCheckpoint c;
  const CheckpointManifest m = open_checkpoint(path, false, c);
  HETMOE_CHECK(is_expert || m.expert_parallel == 1, "checkpoint", "'", c.dir,
               "' holds experts sharded over ", m.expert_parallel,
               " ranks; load_whole_model needs is_expert to gather them");
  c.model = load_part(fs::path(c.dir), "model", m, c.config.moe.num_experts, CheckpointShard{},
                      is_expert);
  return c;
}

}  // namespace hetmoe
