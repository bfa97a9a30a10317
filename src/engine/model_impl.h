// Model's private parts, shared by the engine's translation units.
#ifndef KVSTASH_ENGINE_MODEL_IMPL_H_
#define KVSTASH_ENGINE_MODEL_IMPL_H_

#include <string>

#include "format/compat.h"
#include "kvstash/model.h"
#include "llama.h"

namespace kvstash {

struct Model::Impl {
  std::string path;
  llama_model* model = nullptr;
  const llama_vocab* vocab = nullptr;
  ModelFingerprint fingerprint;
  double load_ms = 0;
  double fingerprint_ms = 0;
  bool fingerprint_from_cache = false;
  bool uses_long_rope = false;  // rope_factors_long/short tensors (and no fixed rope_freqs)
  uint32_t n_ctx_orig = 0;      // llama.cpp's n_ctx_orig_yarn
  std::string arch;
  int32_t n_embd_k_gqa = 0;  // K row width of one layer's cache: head_dim_k * n_head_kv
  int32_t n_embd_v_gqa = 0;
  bool on_gpu = false;         // some layers were offloaded to a GPU backend
  bool repack_weights = true;  // ModelOptions::repack_weights

  ~Impl() {
    if (model != nullptr) llama_model_free(model);
  }
};

// The engine's access to a model's parts (Model's one friend).
struct ModelInternals {
  using Impl = Model::Impl;
  static Impl* Get(const Model& model) { return model.impl_.get(); }
};
using ModelImpl = ModelInternals::Impl;
inline ModelImpl* ImplOf(const Model& model) { return ModelInternals::Get(model); }

// The model as a session file records it (META), for format::CheckSessionFitsModel and Save.
format::ModelFacts FactsOf(const Model& model);

}  // namespace kvstash

#endif  // KVSTASH_ENGINE_MODEL_IMPL_H_
