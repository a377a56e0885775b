// A small prepared corpus and a tiny model config for trainer tests.
#pragma once

#include <string>

#include "hetmoe/config/config.h"
#include "hetmoe/data/dataset.h"
#include "support/temp_dir.h"

namespace hetmoe::test_support {

inline Config tiny_config(const TempDir& dir) {
  Config c;
  c.model.d_model = 32;
  c.model.n_layers = 2;
  c.model.n_heads = 4;
  c.model.n_kv_heads = 2;
  c.model.max_seq_len = 32;
  c.model.first_k_dense = 1;
  c.model.dense_ffn_hidden = 48;
  c.moe.num_experts = 4;
  c.moe.top_k = 2;
  c.moe.expert_hidden = 16;
  c.train.steps = 6;
  c.train.micro_batch = 4;
  c.train.seq_len = 16;
  c.train.grad_accum = 2;
  c.train.warmup = 2;
  c.train.eval_every = 3;
  c.train.eval_batches = 2;
  c.train.log_every = 1;
  c.train.threads = 1;
  c.data.path = dir.str("data");
  c.run.out_dir = dir.str("run");
  return c;
}

inline void prepare_corpus(const TempDir& dir) {
  std::string text;
  for (int i = 0; i < 400; ++i)
    text += "fortune " + std::to_string(i) + ": the quick brown fox jumps over the lazy dog\n%\n";
  dir.write("corpus.txt", text);
  PrepareOptions o;
  o.inputs = {dir.str("corpus.txt")};
  o.out_dir = dir.str("data");
  o.separator = "%";
  o.val_fraction = 0.1;
  prepare_dataset(o);
}

}  // namespace hetmoe::test_support
