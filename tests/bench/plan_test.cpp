// `hetmoe plan`'s arithmetic: parameter counts against instantiated models (whole and sharded),
// the published Ling shapes, memory per rank, grid validation and the per-device estimate.
#include <gtest/gtest.h>

#include <string>

#include "hetmoe/bench/plan.h"
#include "hetmoe/core/error.h"
#include "hetmoe/model/transformer.h"

namespace hetmoe {
namespace {

Config small(int64_t first_k_dense, int64_t shared, bool tie) {
  Config c;
  c.model.vocab_size = 97;
  c.model.d_model = 32;
  c.model.n_layers = 3;
  c.model.n_heads = 4;
  c.model.n_kv_heads = 2;
  c.model.first_k_dense = first_k_dense;
  c.model.dense_ffn_hidden = 40;
  c.model.tie_embeddings = tie;
  c.moe.num_experts = 8;
  c.moe.top_k = 2;
  c.moe.expert_hidden = 24;
  c.moe.num_shared_experts = shared;
  c.train.micro_batch = 8;
  c.train.seq_len = 16;
  return c;
}

int64_t numel(const Transformer& model) {
  int64_t n = 0;
  for (const auto& p : model->parameters()) n += p.numel();
  return n;
}

class PlanCountTest : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, bool>> {};

TEST_P(PlanCountTest, CountsAgreeWithTheInstantiatedModel) {
  const auto [dense, shared, tie] = GetParam();
  const Config c = small(dense, shared, tie);
  const TrainingPlan p = plan_training(c, PlanGrid{}, "fp32");
  Transformer model(c.model, c.moe);
  EXPECT_EQ(p.parameters.total, model->parameter_count().total);
  EXPECT_EQ(p.parameters.active_per_token, model->parameter_count().active_per_token);
  EXPECT_EQ(p.parameters_per_rank, numel(model));
  EXPECT_EQ(p.memory.weights, 4 * numel(model));
  EXPECT_EQ(p.memory.gradients, 4 * numel(model));
  EXPECT_EQ(p.memory.optimizer, 8 * numel(model));
  EXPECT_EQ(p.memory.compute_weights, 0);
}

TEST_P(PlanCountTest, PerRankCountsAgreeWithAnExpertShard) {
  const auto [dense, shared, tie] = GetParam();
  const Config c = small(dense, shared, tie);
  for (int64_t ep : {2, 4, 8}) {
    const TrainingPlan p = plan_training(c, PlanGrid{8 / ep, ep}, "bf16");
    Transformer shard(c.model, c.moe, ExpertShard{0, c.moe.num_experts / ep});
    EXPECT_EQ(p.experts_per_rank, c.moe.num_experts / ep);
    EXPECT_EQ(p.parameters_per_rank, numel(shard)) << "ep=" << ep;
    EXPECT_EQ(p.memory.compute_weights, 2 * numel(shard));
    // The whole model is the same whatever the grid.
    EXPECT_EQ(p.parameters.total, shard->parameter_count().total);
    EXPECT_EQ(p.tokens_per_rank, c.train.micro_batch / 8 * c.train.seq_len);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PlanCountTest,
                         ::testing::Values(std::make_tuple(0, 0, false),
                                           std::make_tuple(1, 1, false),
                                           std::make_tuple(1, 2, true),
                                           std::make_tuple(2, 1, true)));

TEST(PlanTest, LingConfigsHaveThePublishedSizes) {
  const std::string dir = std::string(HETMOE_SOURCE_DIR) + "/configs/";
  // Ling-Lite 16.8B / 2.75B, Ling-Plus 290B / 28.8B (the report rounds; within 1%).
  const struct {
    const char* file;
    double total, active;
  } models[] = {{"ling-lite.yaml", 16.8e9, 2.75e9}, {"ling-plus.yaml", 290e9, 28.8e9}};
  for (const auto& m : models) {
    const TrainingPlan p = plan_training(load_config(dir + m.file), PlanGrid{}, "bf16");
    EXPECT_NEAR(static_cast<double>(p.parameters.total), m.total, 0.01 * m.total) << m.file;
    EXPECT_NEAR(static_cast<double>(p.parameters.active_per_token), m.active, 0.01 * m.active)
        << m.file;
  }
}

TEST(PlanTest, ActivationsScaleWithTokensPerRank) {
  Config c = small(1, 1, false);
  const TrainingPlan one = plan_training(c, PlanGrid{}, "fp32");
  c.train.micro_batch *= 2;
  const TrainingPlan two = plan_training(c, PlanGrid{}, "fp32");
  EXPECT_GT(one.memory.activations, 0);
  EXPECT_NEAR(static_cast<double>(two.memory.activations), 2.0 * one.memory.activations, 2.0);
  // Two data-parallel ranks split the global micro-batch: each holds half the tokens.
  const TrainingPlan split = plan_training(c, PlanGrid{2, 1}, "fp32");
  EXPECT_EQ(split.memory.activations, one.memory.activations);
  // bf16 activations are smaller than fp32 ones.
  EXPECT_LT(plan_training(c, PlanGrid{}, "bf16").memory.activations, two.memory.activations);
}

std::string plan_error(const Config& c, PlanGrid g, const std::string& dtype = "fp32") {
  try {
    plan_training(c, g, dtype);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(PlanTest, GridsThatDoNotFitAreRefusedNamingTheValues) {
  const Config c = small(1, 1, false);
  EXPECT_NE(plan_error(c, PlanGrid{1, 3}).find("ep=3 does not divide moe.num_experts 8"),
            std::string::npos);
  EXPECT_NE(plan_error(c, PlanGrid{3, 1}).find("train.micro_batch 8"), std::string::npos);
  EXPECT_NE(plan_error(c, PlanGrid{}, "fp16").find("unknown dtype 'fp16'"), std::string::npos);
}

TEST(PlanTest, ParsesGrids) {
  EXPECT_EQ(parse_grid("dp=2,ep=4").data, 2);
  EXPECT_EQ(parse_grid("dp=2,ep=4").expert, 4);
  EXPECT_EQ(parse_grid("ep=8").data, 1);
  // A part left out keeps the given default (the config's expert parallelism).
  EXPECT_EQ(parse_grid("dp=2", PlanGrid{1, 8}).expert, 8);
  EXPECT_EQ(parse_grid("ep=2", PlanGrid{4, 8}).data, 4);
  for (const char* bad :
       {"", "dp", "dp=0", "dp=x", "tp=2", "dp=2,,ep=1", "dp=1.5", "dp=1,ep=8,dp=2", "ep=2,ep=2"}) {
    try {
      parse_grid(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--grid"), std::string::npos) << e.what();
    }
  }
}

TEST(PlanTest, EstimateIsTokensTimesFlopsOverAchievedRate) {
  Config c = small(1, 1, false);
  const TrainingPlan p = plan_training(c, PlanGrid{2, 2}, "bf16");
  CatalogDevice d;
  d.name = "x";
  d.peak_bf16_tflops = 100;
  d.memory_gb = 80;
  d.price_per_hour = 2.5;
  d.currency = "USD";
  const DeviceEstimate e = estimate_on(p, d, 0.5, 1e12);
  const double hours = 1e12 * p.flops_per_token / (100e12 * 0.5) / 3600;
  EXPECT_NEAR(e.device_hours, hours, 1e-9 * hours);
  EXPECT_NEAR(e.wall_hours, hours / 4, 1e-9 * hours);
  EXPECT_NEAR(e.cost, hours * 2.5, 1e-9 * hours);
  EXPECT_TRUE(e.fits);
  d.memory_gb = static_cast<double>(p.memory.total()) / 1e9 * 0.99;
  EXPECT_FALSE(estimate_on(p, d, 0.5).fits);
  // No fp32 peak: nothing to estimate from.
  EXPECT_EQ(estimate_on(plan_training(c, PlanGrid{}, "fp32"), d, 0.5).device_hours, 0);
}

}  // namespace
}  // namespace hetmoe
