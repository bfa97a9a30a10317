#include "engine/compat.h"

namespace kvstash::engine {

uint32_t PaddedContextSize(uint32_t n_ctx) {
  if (n_ctx > UINT32_MAX - (kContextPad - 1)) return n_ctx;
  return (n_ctx + kContextPad - 1) / kContextPad * kContextPad;
}

Status CheckRopeRegime(uint32_t saved_n_ctx, uint32_t new_n_ctx, uint32_t n_ctx_orig,
                       bool uses_long_rope, const std::string& path) {
  if (!uses_long_rope) return Status::Ok();
  const uint32_t saved = PaddedContextSize(saved_n_ctx);
  const uint32_t now = PaddedContextSize(new_n_ctx);
  const bool saved_long = saved > n_ctx_orig;
  if (saved_long == (now > n_ctx_orig)) return Status::Ok();
  const std::string line = std::to_string(n_ctx_orig);
  const std::string fix = saved_long ? "use -c " + std::to_string(n_ctx_orig + 1) + " or more"
                                     : "use -c " + line + " or less";
  return Status::Incompatible("session '" + path + "' was saved with a " + std::to_string(saved) +
                              "-token context, this context has " + std::to_string(now) +
                              " tokens: the model uses " + "LongRoPE, whose rotation changes at " +
                              line + " tokens (" + (saved_long ? "long" : "short") +
                              " factors in the file), so the cached keys would be " + "wrong; " +
                              fix + ", or re-save the session with the context you need");
}

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
