// The sampler chain of SampleOptions, for Session::Generate and the server's slots alike.
#ifndef KVSTASH_ENGINE_SAMPLER_H_
#define KVSTASH_ENGINE_SAMPLER_H_

#include <memory>
#include <vector>

#include "kvstash/model.h"
#include "kvstash/session.h"
#include "llama.h"

namespace kvstash::engine {

struct SamplerDeleter {
  void operator()(llama_sampler* s) const { llama_sampler_free(s); }
};
using SamplerPtr = std::unique_ptr<llama_sampler, SamplerDeleter>;

// llama.cpp's order (common/sampling.cpp): logit biases, penalties, then the truncations (top_k,
// top_p, min_p), temperature and the draw. Biases and penalties apply to greedy sampling too, as
// in llama.cpp. The repetition penalty counts the last repeat_last_n tokens of `history` (as
// llama-completion feeds its prompt to the sampler); repeat_last_n -1 means `n_ctx` tokens.
SamplerPtr MakeSampler(const SampleOptions& options, const Model& model,
                       const std::vector<Token>& history, uint32_t n_ctx);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_SAMPLER_H_
