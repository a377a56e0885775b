#include "hetmoe/train/checkpoint.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "hetmoe/core/error.h"
#include "hetmoe/core/fs.h"
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

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

}  // namespace

void save_tensors(const std::string& path, const std::map<std::string, at::Tensor>& tensors) {
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
  write_safetensors(path, views, {{"format", "pt"}, {"producer", "hetmoe"}});
}

std::map<std::string, at::Tensor> load_tensors(const std::string& path) {
  SafetensorsFile file(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& name : file.names()) {
    const TensorView& v = file.get(name);
    at::Tensor t = at::empty(v.shape, at::TensorOptions().dtype(torch_dtype(v.dtype, name)));
    if (v.nbytes) std::memcpy(t.data_ptr(), v.data, v.nbytes);
    out.emplace(name, t);
  }
  return out;
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

  save_tensors((tmp_dir / shard_file("model", shard)).string(), model_state);
  if (!optimizer_state.empty())
    save_tensors((tmp_dir / shard_file("optimizer", shard)).string(), optimizer_state);
  barrier(shard);  // every shard is on disk before the manifest says so
  if (shard.rank == 0) {
    nlohmann::json j = {{"format", "hetmoe-checkpoint"},
                        {"version", 1},
                        {"step", state.step},
                        {"tokens_seen", state.tokens_seen},
                        {"last_val_loss", state.last_val_loss},
                        {"seed", config.train.seed},
                        {"world_size", shard.world},
                        {"expert_parallel", shard.expert_parallel},
                        {"data_sampler", "stateless: windows are a function of (seed, step)"}};
    nlohmann::json files = nlohmann::json::array();
    for (int r = 0; r < shard.world; ++r) {
      CheckpointShard s = shard;
      s.rank = r;
      files.push_back({{"rank", r},
                       {"model", shard_file("model", s)},
                       {"optimizer", optimizer_state.empty() ? "" : shard_file("optimizer", s)}});
    }
    j["shards"] = files;
    write_text_file((tmp_dir / "state.json").string(), j.dump(2) + "\n");
    write_text_file((tmp_dir / "resolved.yaml").string(), to_yaml(config));
    fsync_dir(tmp_dir);

    std::string why;
    HETMOE_CHECK(remove_tree(final_dir.string(), &why), "checkpoint", "cannot replace '",
                 final_dir.string(), "': ", why);
    fs::rename(tmp_dir, final_dir, ec);
    HETMOE_CHECK(!ec, "checkpoint", "cannot move checkpoint into '", final_dir.string(),
                 "': ", ec.message());
    // The pointer changes last, by rename, so it always names a complete checkpoint.
    const fs::path latest_tmp = root / ".latest.tmp";
    write_text_file(latest_tmp.string(), step_name(state.step) + "\n");
    fs::rename(latest_tmp, root / "latest", ec);
    HETMOE_CHECK(!ec, "checkpoint", "cannot update '", (root / "latest").string(), "'");
    fsync_dir(root);
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
  std::string name = read_text_file(latest.string());
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
  const fs::path dir = p / "checkpoints" / name;
  HETMOE_CHECK(!name.empty() && fs::exists(dir / "state.json"), "checkpoint", "'", latest.string(),
               "' names '", name, "', which is not a checkpoint");
  return dir.string();
}

LoadedCheckpoint load_checkpoint(const std::string& path, bool load_optimizer,
                                 const CheckpointShard& shard) {
  LoadedCheckpoint c;
  c.dir = find_checkpoint(path);
  const fs::path dir(c.dir);
  c.config = load_config((dir / "resolved.yaml").string());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file((dir / "state.json").string()));
    HETMOE_CHECK(j.value("format", "") == "hetmoe-checkpoint", "checkpoint",
                 (dir / "state.json").string(), ": not a hetmoe checkpoint state");
    c.state.step = j.at("step").get<int64_t>();
    c.state.tokens_seen = j.at("tokens_seen").get<int64_t>();
    c.state.last_val_loss = j.value("last_val_loss", -1.0);
    const int world = j.value("world_size", 1);
    const int64_t ep = j.value("expert_parallel", int64_t{1});
    HETMOE_CHECK(world == shard.world && ep == shard.expert_parallel, "checkpoint", "'", c.dir,
                 "' was written by a grid of ", world, " rank", world == 1 ? "" : "s",
                 " with expert_parallel ", ep, "; this run has ", shard.world, " rank",
                 shard.world == 1 ? "" : "s", " with expert_parallel ", shard.expert_parallel,
                 ". Resume with the same grid (resharding is not supported yet)");
  } catch (const nlohmann::json::exception& e) {
    HETMOE_FAIL("checkpoint", (dir / "state.json").string(), ": ", e.what());
  }
  c.model = load_tensors((dir / shard_file("model", shard)).string());
  if (load_optimizer) c.optimizer = load_tensors((dir / shard_file("optimizer", shard)).string());
  return c;
}

}  // namespace hetmoe
