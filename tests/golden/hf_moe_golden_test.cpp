// hetmoe's MoE layer against an independent implementation: the MoE blocks of Hugging Face
// transformers (Mixtral, DeepSeek-V3) loaded with the same weights give the same outputs.
// The golden file is produced at test time by tests/golden/hf_moe_golden.py with the project's
// Python (HETMOE_PYTHON); the test skips, saying why, where that Python lacks transformers.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "hetmoe/model/layers.h"
#include "hetmoe/train/checkpoint.h"
#include "support/temp_dir.h"
#include "support/tensor_test_util.h"

namespace hetmoe {
namespace {

using test_support::TempDir;

class HfGoldenTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string python = HETMOE_PYTHON;
    if (python.empty() || !std::filesystem::exists(python)) {
      skip_reason_ = "no project Python configured (HETMOE_PYTHON='" + python + "')";
      return;
    }
    dir_ = new TempDir();
    const std::string file = dir_->str("golden.safetensors");
    const std::string cmd = python + " " + HETMOE_SOURCE_DIR "/tests/golden/hf_moe_golden.py " +
                            file + " > " + dir_->str("log") + " 2>&1";
    const int status = std::system(cmd.c_str());
    if (WIFEXITED(status) && WEXITSTATUS(status) == 3) {
      skip_reason_ = "transformers is not installed in " + python;
      return;
    }
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "golden script failed: " << cmd;
    golden_ = new std::map<std::string, at::Tensor>(load_tensors(file));
  }
  static void TearDownTestSuite() {
    delete golden_;
    delete dir_;
    golden_ = nullptr;
    dir_ = nullptr;
  }
  void SetUp() override {
    if (!skip_reason_.empty()) GTEST_SKIP() << skip_reason_;
    ASSERT_NE(golden_, nullptr);
  }
  const at::Tensor& g(const std::string& name) { return golden_->at(name); }

  static inline std::string skip_reason_;
  static inline TempDir* dir_ = nullptr;
  static inline std::map<std::string, at::Tensor>* golden_ = nullptr;
};

MoEConfig moe_for(const at::Tensor& w2, int64_t top_k) {
  MoEConfig e;
  e.num_experts = w2.size(0);
  e.expert_hidden = w2.size(1);
  e.top_k = top_k;
  return e;
}

TEST_F(HfGoldenTest, MixtralSparseMoeBlock) {
  ModelConfig m;
  m.d_model = g("mixtral/x").size(1);
  MoEConfig e = moe_for(g("mixtral/w2"), 2);
  e.num_shared_experts = 0;
  e.score_func = "softmax";
  e.renormalize = true;
  MoELayer layer(m, e);
  {
    at::NoGradGuard no_grad;
    layer->router.copy_(g("mixtral/router"));
    layer->w13.copy_(g("mixtral/w13"));
    layer->w2.copy_(g("mixtral/w2"));
  }
  layer->eval();
  EXPECT_CLOSE(layer->forward(g("mixtral/x")), g("mixtral/out"), 1e-5);
}

TEST_F(HfGoldenTest, DeepseekV3MoEWithBiasAndSharedExpert) {
  ModelConfig m;
  m.d_model = g("deepseek_v3/x").size(1);
  MoEConfig e = moe_for(g("deepseek_v3/w2"), 2);
  e.num_shared_experts = 1;
  e.score_func = "sigmoid";
  e.renormalize = true;
  e.bias_update_rate = 1e-3;  // enables the selection bias (updates only happen in training)
  MoELayer layer(m, e);
  {
    at::NoGradGuard no_grad;
    layer->router.copy_(g("deepseek_v3/router"));
    layer->w13.copy_(g("deepseek_v3/w13"));
    layer->w2.copy_(g("deepseek_v3/w2"));
    layer->expert_bias.copy_(g("deepseek_v3/bias"));
    layer->shared->w13->weight.copy_(g("deepseek_v3/shared_w13"));
    layer->shared->w2->weight.copy_(g("deepseek_v3/shared_w2"));
  }
  layer->eval();
  EXPECT_CLOSE(layer->forward(g("deepseek_v3/x")), g("deepseek_v3/out"), 1e-5);
}

}  // namespace
}  // namespace hetmoe
