#include "engine/sampler.h"

#include <algorithm>
#include <cmath>

namespace kvstash::engine {

SamplerPtr MakeSampler(const SampleOptions& options, const Model& model,
                       const std::vector<Token>& history, uint32_t n_ctx) {
  SamplerPtr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
  if (options.ignore_eos) {
    std::vector<llama_logit_bias> eog;
    for (Token t = 0; t < model.n_vocab(); ++t) {
      if (model.IsEndOfGeneration(t)) eog.push_back({t, -INFINITY});
    }
    llama_sampler_chain_add(
        chain.get(), llama_sampler_init_logit_bias(model.n_vocab(),
                                                   static_cast<int32_t>(eog.size()), eog.data()));
  }
  const int32_t last_n =
      options.repeat_last_n < 0 ? static_cast<int32_t>(n_ctx) : options.repeat_last_n;
  if (options.repeat_penalty != 1.0f && last_n > 0) {
    llama_sampler* penalties =
        llama_sampler_init_penalties(model.n_vocab(), last_n, options.repeat_penalty, 0, 0);
    // llama-completion feeds the prompt to its sampler: the penalty counts the prompt's tokens.
    const size_t from = history.size() - std::min<size_t>(history.size(), size_t(last_n));
    for (size_t i = from; i < history.size(); ++i) llama_sampler_accept(penalties, history[i]);
    llama_sampler_chain_add(chain.get(), penalties);
  }
  if (options.temp <= 0) {
    llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
    return chain;
  }
  if (options.top_k > 0)
    llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(options.top_k));
  if (options.top_p < 1) {
    llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(options.top_p, 1));
  }
  if (options.min_p > 0) {
    llama_sampler_chain_add(chain.get(), llama_sampler_init_min_p(options.min_p, 1));
  }
  llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(options.temp));
  llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(options.seed));
  return chain;
}

}  // namespace kvstash::engine
