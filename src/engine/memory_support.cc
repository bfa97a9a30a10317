#include "engine/memory_support.h"

namespace kvstash::engine {

using format::MemoryKind;

Result<MemoryKind> ClassifyMemory(const ModelMemoryKind& kind, const std::string& model_path,
                                  const std::string& arch) {
  if (kind.hybrid && kind.n_swa > 0) {
    return Status::Incompatible(
        "model '" + model_path + "' (" + arch + ") is a hybrid model whose attention layers " +
        "use a sliding window (" + std::to_string(kind.n_swa) + " tokens): kvstash cannot " +
        "save its memory yet; plain, sliding-window, recurrent and hybrid models are supported");
  }
  if (kind.hybrid) return MemoryKind::kHybrid;
  if (kind.recurrent) return MemoryKind::kRecurrent;
  if (kind.n_swa > 0) return MemoryKind::kIswa;
  return MemoryKind::kKv;
}

std::string ReuseRule(MemoryKind kind, int32_t n_swa) {
  switch (kind) {
    case MemoryKind::kKv:
      return "any prefix of the saved tokens";
    case MemoryKind::kIswa:
      return "the saved tokens, extended; a shorter prefix only within the " +
             std::to_string(n_swa) +
             "-token window's reach or at a stored snapshot (a prefix store's chunk boundary)";
    case MemoryKind::kRecurrent:
    case MemoryKind::kHybrid:
      return "the saved tokens, extended; a shorter prefix only at a stored snapshot (a prefix "
             "store's chunk boundary), else from the start";
  }
  return "none";
}

}  // namespace kvstash::engine
