#include "engine/memory_support.h"

namespace kvstash::engine {

Status CheckSupportedMemory(const ModelMemoryKind& kind, const std::string& model_path,
                            const std::string& arch) {
  std::string what;
  if (kind.hybrid) {
    what = "a hybrid model (attention and recurrent layers)";
  } else if (kind.recurrent) {
    what = "a recurrent model";
  } else if (kind.n_swa > 0) {
    what = "a sliding-window attention model (window of " + std::to_string(kind.n_swa) + " tokens)";
  } else {
    return Status::Ok();
  }
  return Status::Incompatible("model '" + model_path + "' (" + arch + ") is " + what +
                              ": kvstash saves only plain attention KV caches and cannot make " +
                              "sessions for it; use a model with full attention");
}

}  // namespace kvstash::engine
