#include "format/compat.h"

#include <algorithm>
#include <cstring>

#include "format/meta_check.h"
#include "format/session_format.h"

namespace kvstash {

// ModelFingerprint is a plain value of the public API; its methods live here, below the engine, so
// that format code comparing fingerprints links without llama.cpp.
std::string ModelFingerprint::Hex() const {
  static const char* kDigits = "0123456789abcdef";
  std::string hex;
  for (uint8_t b : bytes) {
    hex.push_back(kDigits[b >> 4]);
    hex.push_back(kDigits[b & 15]);
  }
  return hex;
}

bool ModelFingerprint::operator==(const ModelFingerprint& other) const {
  return std::memcmp(bytes, other.bytes, sizeof(bytes)) == 0;
}

}  // namespace kvstash

namespace kvstash::format {
namespace {

Status Mismatch(const std::string& path, const std::string& what, const std::string& saved,
                const std::string& now, const std::string& fix) {
  return Status::Incompatible("session '" + path + "' was saved with " + what + "=" + saved +
                              ", this context uses " + now + ": " + fix);
}

const char* FlashName(bool on) { return on ? "on" : "off"; }

}  // namespace

uint32_t PaddedContextSize(uint32_t n_ctx) {
  if (n_ctx > UINT32_MAX - (kContextPad - 1)) return n_ctx;
  return (n_ctx + kContextPad - 1) / kContextPad * kContextPad;
}

uint32_t CreatedContextSize(uint32_t n_ctx, int32_t n_ctx_train) {
  return PaddedContextSize(n_ctx != 0 ? n_ctx : static_cast<uint32_t>(n_ctx_train));
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

Status CheckSessionFitsModel(const SessionMeta& meta, const ModelFacts& model,
                             const std::string& path) {
  if (meta.model_fingerprint != model.fingerprint) {
    if (meta.writer.rfind("kvstash 0.1.", 0) == 0) {
      // Its fingerprint is of sampled tensors (docs/FORMAT.md, "Model fingerprint").
      return Status::Incompatible("session '" + path + "' was saved by " + Printable(meta.writer) +
                                  ", whose model fingerprints this " +
                                  "version no longer uses (it hashes the whole model file now): " +
                                  "re-save the session with this kvstash");
    }
    return Status::Incompatible("session '" + path + "' was saved with another model (" +
                                Printable(meta.model_description) + ", fingerprint " +
                                meta.model_fingerprint.Hex().substr(0, 16) + "), not '" +
                                model.path + "' (fingerprint " +
                                model.fingerprint.Hex().substr(0, 16) +
                                "): open it with the model it was saved with, or re-save it");
  }
  if (meta.llama_state_version != model.llama_state_version) {
    return Status::Incompatible("session '" + path + "' holds llama.cpp state version " +
                                std::to_string(meta.llama_state_version) + ", this build reads " +
                                std::to_string(model.llama_state_version) +
                                ": re-save the session");
  }
  // The fingerprint matched, so these disagree only in a forged or buggy file.
  const struct {
    const char* field;
    int64_t in_file;
    int64_t in_model;
  } dims[] = {
      {"n_vocab", meta.n_vocab, model.n_vocab},
      {"n_layer", meta.n_layer, model.n_layer},
      {"n_embd", meta.n_embd, model.n_embd},
      {"n_head", meta.n_head, model.n_head},
      {"n_head_kv", meta.n_head_kv, model.n_head_kv},
      {"n_embd_k_gqa", meta.n_embd_k_gqa, model.n_embd_k_gqa},
      {"n_embd_v_gqa", meta.n_embd_v_gqa, model.n_embd_v_gqa},
      {"n_swa", meta.n_swa, model.n_swa},
      {"n_ctx_train", meta.n_ctx_train, model.n_ctx_train},
  };
  for (const auto& d : dims) {
    if (d.in_file != d.in_model) {
      return Status::Corruption("session '" + path + "' records " + d.field + "=" +
                                std::to_string(d.in_file) + " but its model '" + model.path +
                                "' (same fingerprint) has " + std::to_string(d.in_model) +
                                "; re-create it with 'kvstash save'");
    }
  }
  if (meta.model_arch != model.arch) {
    return Status::Corruption("session '" + path + "' records architecture '" +
                              Printable(meta.model_arch) + "' but its model has '" + model.arch +
                              "'; re-create it with 'kvstash save'");
  }
  return Status::Ok();
}

Result<uint32_t> ResolveOpenContext(const SessionMeta& meta, const OpenRequest& options,
                                    const ModelFacts& model, const std::string& path) {
  if (options.cache_type_k && *options.cache_type_k != meta.type_k_name) {
    return Mismatch(path, "cache type K", meta.type_k_name, *options.cache_type_k,
                    "open without --cache-type-k or re-save the session");
  }
  if (options.cache_type_v && *options.cache_type_v != meta.type_v_name) {
    return Mismatch(path, "cache type V", meta.type_v_name, *options.cache_type_v,
                    "open without --cache-type-v or re-save the session");
  }
  if (options.flash_attn && *options.flash_attn != meta.flash_attn) {
    return Mismatch(path, "flash attention", FlashName(meta.flash_attn),
                    FlashName(*options.flash_attn), "open without -fa or re-save the session");
  }
  // Later decodes are grouped by these, and a warm run must group as the cold one did.
  const uint32_t n_batch = options.n_batch.value_or(meta.n_batch);
  if (n_batch != meta.n_batch) {
    return Mismatch(path, "batch size", std::to_string(meta.n_batch), std::to_string(n_batch),
                    "open without -b or re-save the session");
  }
  if (options.n_ubatch && std::min(*options.n_ubatch, n_batch) != meta.n_ubatch) {
    return Mismatch(path, "micro-batch size", std::to_string(meta.n_ubatch),
                    std::to_string(std::min(*options.n_ubatch, n_batch)),
                    "open without -ub or re-save the session");
  }
  uint64_t n_ctx = meta.n_ctx;
  if (options.n_ctx.value_or(0) != 0) {
    n_ctx = *options.n_ctx;
  } else if (options.n_room != 0) {
    uint64_t need = (uint64_t{meta.n_tokens} + options.n_room + 255) / 256 * 256;
    // A LongRoPE session saved above the regime line stays above it (the keys were rotated with
    // the long factors).
    const uint32_t line = meta.yarn_orig_ctx != 0 ? meta.yarn_orig_ctx : model.n_ctx_orig;
    if (model.long_rope && meta.n_ctx > line) {
      need = std::max<uint64_t>(need, uint64_t{PaddedContextSize(line + 1)});
    }
    n_ctx = std::min<uint64_t>(n_ctx, need);
  }
  if (n_ctx <= meta.n_tokens) {
    return Status::InvalidArgument("session '" + path + "' holds " + std::to_string(meta.n_tokens) +
                                   " tokens, so a " + std::to_string(n_ctx) +
                                   "-token context leaves no room; use -c " +
                                   std::to_string(meta.n_tokens + 1) + " or more");
  }
  if (n_ctx > kMaxTokens) {
    return Status::InvalidArgument("a context of " + std::to_string(n_ctx) +
                                   " tokens is more than kvstash supports (" +
                                   std::to_string(kMaxTokens) + "); use a smaller -c");
  }
  KVSTASH_RETURN_IF_ERROR(CheckRopeRegime(
      meta.n_ctx, static_cast<uint32_t>(n_ctx),
      meta.yarn_orig_ctx != 0 ? meta.yarn_orig_ctx : model.n_ctx_orig, model.long_rope, path));
  return static_cast<uint32_t>(n_ctx);
}

}  // namespace kvstash::format
