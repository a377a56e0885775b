#include "hetmoe/train/generate.h"

#include <ATen/ATen.h>

#include "hetmoe/core/error.h"

namespace hetmoe {

std::vector<int32_t> sample(Transformer& model, const std::vector<int32_t>& prompt,
                            int64_t max_seq_len, const SampleOptions& o) {
  HETMOE_CHECK(!prompt.empty(), "generate", "the prompt is empty");
  HETMOE_CHECK(max_seq_len >= 1, "generate", "max_seq_len must be >= 1, got ", max_seq_len);
  HETMOE_CHECK(o.temperature >= 0, "generate", "temperature must be >= 0 (0: greedy), got ",
               o.temperature);
  HETMOE_CHECK(o.top_k >= 0 && o.max_new_tokens >= 0 && o.vocab_limit >= 0, "generate", "top_k (",
               o.top_k, "), max_new_tokens (", o.max_new_tokens, ") and vocab_limit (",
               o.vocab_limit, ") must be >= 0");
  const int64_t vocab = model->head.size(0);
  for (size_t i = 0; i < prompt.size(); ++i)
    HETMOE_CHECK(prompt[i] >= 0 && prompt[i] < vocab, "generate", "prompt token ", i, " is id ",
                 prompt[i], ", outside the model's vocabulary [0, ", vocab, ")");
  at::NoGradGuard no_grad;
  model->eval();
  const c10::Device device = model->head.device();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  std::vector<int32_t> context(prompt), out;
  for (int64_t i = 0; i < o.max_new_tokens; ++i) {
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(context.size()) - max_seq_len);
    std::vector<int64_t> window(context.begin() + start, context.end());
    at::Tensor tokens =
        at::tensor(window, at::kLong).view({1, static_cast<int64_t>(window.size())}).to(device);
    at::Tensor logits = model->forward(tokens).logits[0][-1].to(at::kCPU).to(at::kDouble);
    if (o.vocab_limit > 0 && o.vocab_limit < logits.size(0))
      logits = logits.narrow(0, 0, o.vocab_limit);
    HETMOE_CHECK(at::isfinite(logits).all().item<bool>(), "generate", "the model's logits after ",
                 context.size(),
                 " tokens are not finite (NaN or infinite): its weights hold such values");
    int64_t next;
    if (o.temperature <= 0) {
      next = logits.argmax().item<int64_t>();
    } else {
      // Shifted so that the largest is 0 before dividing: a tiny temperature then sends the
      // others to -inf (greedy in the limit) instead of overflowing them all.
      logits = (logits - logits.max()) / o.temperature;
      if (o.top_k > 0 && o.top_k < logits.size(0)) {
        const double kth = std::get<0>(logits.topk(o.top_k))[-1].item<double>();
        logits = logits.masked_fill(logits < kth, -INFINITY);
      }
      next = at::multinomial(logits.softmax(0), 1, false, gen).item<int64_t>();
    }
    out.push_back(static_cast<int32_t>(next));
    context.push_back(static_cast<int32_t>(next));
    if (o.on_token) o.on_token(static_cast<int32_t>(next));
    if (next == o.stop_token) break;
  }
  return out;
}

}  // namespace hetmoe
