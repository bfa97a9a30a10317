// The text of a prefix store's namespace (docs/STORE.md, "Namespace"): one "key=value" line for
// everything that decides the KV bytes of a chunk or how its tokens are grouped into decode calls.
// Two sessions whose texts are equal compute bit-identical KV for the same tokens. The text is
// hashed into every chunk's namespace, so its bytes for given values never change: another text is
// another namespace, and a store's chunks under the old one are never found again.
#ifndef KVSTASH_STORE_NAMESPACE_TEXT_H_
#define KVSTASH_STORE_NAMESPACE_TEXT_H_

#include <cstdint>
#include <map>
#include <string>

#include "format/compat.h"
#include "format/session_format.h"

namespace kvstash::store {

// What the text is written from.
struct NamespaceParams {
  format::ModelFacts model;
  std::string model_description;
  // The context's parameters: cache types, RoPE/YaRN, n_ctx, batch sizes.
  format::ContextParams context;
  bool v_trans = false;
  uint32_t chunk_tokens = 0;
  std::string llama_build;
  // A model whose memory is not a plain KV cache: its kind (format::MemoryKindName), window and
  // snapshot interval. No kind for a plain KV cache, whose text has none of these three lines.
  struct Memory {
    std::string kind;
    uint32_t n_swa = 0;
    uint32_t snapshot_every = 0;
  } memory;
};

// The text; floats are written exactly (C's %a).
std::string NamespaceText(const NamespaceParams& params);

// The "key=value" lines of a text (a line without '=' is skipped).
std::map<std::string, std::string> ParseNamespaceText(const std::string& text);

// One line for people: model, cache types and flash attention; "(no description)" for a text
// without a line.
std::string NamespaceSummary(const std::string& text);

}  // namespace kvstash::store

#endif  // KVSTASH_STORE_NAMESPACE_TEXT_H_
