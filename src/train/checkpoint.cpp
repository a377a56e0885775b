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
                            const std::map<std::string, at::Tensor>& optimizer_state) {
  const fs::path root = fs::path(out_dir) / "checkpoints";
  const fs::path final_dir = root / step_name(state.step);
  const fs::path tmp_dir =
      root / (".tmp-" + step_name(state.step) + "-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::create_directories(tmp_dir, ec);
  HETMOE_CHECK(!ec, "checkpoint", "cannot create '", tmp_dir.string(), "': ", ec.message());

  save_tensors((tmp_dir / "model.safetensors").string(), model_state);
  if (!optimizer_state.empty())
    save_tensors((tmp_dir / "optimizer.safetensors").string(), optimizer_state);
  nlohmann::json j = {{"format", "hetmoe-checkpoint"},
                      {"version", 1},
                      {"step", state.step},
                      {"tokens_seen", state.tokens_seen},
                      {"last_val_loss", state.last_val_loss},
                      {"seed", config.train.seed},
                      {"data_sampler", "stateless: windows are a function of (seed, step)"}};
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

LoadedCheckpoint load_checkpoint(const std::string& path, bool load_optimizer) {
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
  } catch (const nlohmann::json::exception& e) {
    HETMOE_FAIL("checkpoint", (dir / "state.json").string(), ": ", e.what());
  }
  c.model = load_tensors((dir / "model.safetensors").string());
  if (load_optimizer) c.optimizer = load_tensors((dir / "optimizer.safetensors").string());
  return c;
}

}  // namespace hetmoe
