// Which kinds of model memory kvstash can save: a pure decision over plain values (no llama.h),
// tested on its own.
#ifndef KVSTASH_ENGINE_MEMORY_SUPPORT_H_
#define KVSTASH_ENGINE_MEMORY_SUPPORT_H_

#include <cstdint>
#include <string>

#include "kvstash/status.h"

namespace kvstash::engine {

// What kind of memory a model keeps, as llama.cpp reports it.
struct ModelMemoryKind {
  bool recurrent = false;  // llama_model_is_recurrent: Mamba, RWKV, ...
  bool hybrid = false;     // llama_model_is_hybrid: attention and recurrent layers (Jamba, ...)
  int32_t n_swa = 0;       // llama_model_n_swa: sliding-window attention (Gemma 2/3, ...)
};

// kvstash saves and validates only a plain attention KV cache. Session::Create refuses the other
// kinds up front, before a prefill that could take minutes only for Save to refuse it.
Status CheckSupportedMemory(const ModelMemoryKind& kind, const std::string& model_path,
                            const std::string& arch);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_MEMORY_SUPPORT_H_
