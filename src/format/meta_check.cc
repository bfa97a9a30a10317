#include "format/meta_check.h"

#include <cmath>

#include "format/session_format.h"
#include "kvstash/messages.h"

namespace kvstash::format {
namespace {

// Limits no honest writer reaches; each is far above any model llama.cpp runs today and far below
// where size arithmetic could overflow.
constexpr int32_t kMaxLayers = 4096;
constexpr int32_t kMaxEmbd = 1 << 20;
constexpr int32_t kMaxHeads = 1 << 16;
constexpr size_t kMaxNameBytes = 256;
constexpr size_t kMaxPreviewBytes = 64 * 1024;
constexpr float kMaxFloatParam = 1e12f;

Status Bad(const std::string& name, const std::string& field, const std::string& why) {
  return Status::Corruption("session file '" + name + "' is corrupt: META field " + field + " " +
                            why + "; re-create it with 'kvstash save'");
}

Status IntIn(const std::string& name, const char* field, int64_t v, int64_t lo, int64_t hi) {
  if (v >= lo && v <= hi) return Status::Ok();
  return Bad(
      name, field,
      "is " + std::to_string(v) + ", outside " + std::to_string(lo) + ".." + std::to_string(hi));
}

Status StringLen(const std::string& name, const char* field, const std::string& s, size_t lo,
                 size_t hi) {
  if (s.size() >= lo && s.size() <= hi) return Status::Ok();
  return Bad(name, field,
             "has " + std::to_string(s.size()) + " bytes, outside " + std::to_string(lo) + ".." +
                 std::to_string(hi));
}

// A context parameter that llama.cpp reads as "from the model" when it is `from_model` (-1 or 0),
// or uses as given otherwise: then within [lo, kMaxFloatParam] and never subnormal (a subnormal
// base or scale turns every logit into NaN, silently).
Status FloatParam(const std::string& name, const char* field, float v, float from_model,
                  float lo = 0.0f) {
  if (v == from_model) return Status::Ok();
  if (std::isfinite(v) && std::fpclassify(v) != FP_SUBNORMAL && v >= lo && v <= kMaxFloatParam) {
    return Status::Ok();
  }
  return Bad(name, field,
             "is " + std::to_string(v) + "; a writer records " + std::to_string(from_model) +
                 " (from the model) or a finite, normal value in " + std::to_string(lo) + ".." +
                 std::to_string(kMaxFloatParam));
}

Status CheckCacheType(const std::string& name, const char* field, int32_t id,
                      const std::string& type_name) {
  const CacheType* type = FindCacheType(id);
  if (type == nullptr) {
    return Bad(
        name, field,
        "is ggml type " + std::to_string(id) + ", not a KV cache type (" + CacheTypeNames() + ")");
  }
  if (type_name != type->name) {
    return Bad(name, field,
               std::string("is ") + type->name + " but its name field says '" + type_name + "'");
  }
  return Status::Ok();
}

Status ValidateModelFields(const SessionMeta& m, const std::string& name) {
  KVSTASH_RETURN_IF_ERROR(StringLen(name, "writer", m.writer, 1, kMaxNameBytes));
  KVSTASH_RETURN_IF_ERROR(StringLen(name, "llama_build", m.llama_build, 1, kMaxNameBytes));
  KVSTASH_RETURN_IF_ERROR(
      StringLen(name, "model_description", m.model_description, 0, kMaxNameBytes));
  KVSTASH_RETURN_IF_ERROR(StringLen(name, "model_arch", m.model_arch, 1, kMaxNameBytes));
  KVSTASH_RETURN_IF_ERROR(StringLen(name, "preview", m.preview, 0, kMaxPreviewBytes));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_vocab", m.n_vocab, 1, kMaxVocab));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_layer", m.n_layer, 1, kMaxLayers));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_embd", m.n_embd, 1, kMaxEmbd));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "memory_kind", m.memory_kind, 0, kMaxMemoryKind));
  const auto kind = static_cast<MemoryKind>(m.memory_kind);
  // llama.cpp reports the heads of layer 0, which a recurrent or hybrid model may not give any.
  const int32_t min_heads = kind == MemoryKind::kRecurrent || kind == MemoryKind::kHybrid ? 0 : 1;
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_head", m.n_head, min_heads, kMaxHeads));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_head_kv", m.n_head_kv, min_heads, m.n_head));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_embd_k_gqa", m.n_embd_k_gqa, min_heads, kMaxEmbd));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_embd_v_gqa", m.n_embd_v_gqa, min_heads, kMaxEmbd));
  // The window decides which cells an iSWA payload holds; other kinds have none.
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_swa", m.n_swa, kind == MemoryKind::kIswa ? 1 : 0,
                                kind == MemoryKind::kIswa ? kMaxTokens : 0));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_ctx_train", m.n_ctx_train, 0, INT32_MAX));
  if (m.model_n_params == 0) return Bad(name, "model_n_params", "is 0");
  return Status::Ok();
}

Status ValidateContextFields(const SessionMeta& m, const std::string& name) {
  // llama.cpp pads every context to a multiple of 256 cells, and the writer records that value.
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_ctx", m.n_ctx, 256, kMaxTokens));
  if (m.n_ctx % 256 != 0) {
    return Bad(name, "n_ctx", "is " + std::to_string(m.n_ctx) + ", not a multiple of 256");
  }
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_batch", m.n_batch, 1, kMaxTokens));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_ubatch", m.n_ubatch, 1, m.n_batch));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_seq_max", m.n_seq_max, 1, 1));
  KVSTASH_RETURN_IF_ERROR(CheckCacheType(name, "type_k", m.type_k, m.type_k_name));
  KVSTASH_RETURN_IF_ERROR(CheckCacheType(name, "type_v", m.type_v, m.type_v_name));
  if (FindCacheType(m.type_v)->quantized && !m.flash_attn) {
    return Bad(name, "type_v", "is quantized without flash attention, which llama.cpp cannot run");
  }
  // llama_rope_scaling_type: -1 unspecified (from the model), 0 none, 1 linear, 2 yarn, 3 longrope.
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "rope_scaling_type", m.rope_scaling_type, -1, 3));
  // No model uses a RoPE base below 1 or a frequency scale below 1e-6 (1/scale is the context
  // stretch); both are divided by or raised to powers of in llama.cpp.
  KVSTASH_RETURN_IF_ERROR(FloatParam(name, "rope_freq_base", m.rope_freq_base, 0.0f, 1.0f));
  KVSTASH_RETURN_IF_ERROR(FloatParam(name, "rope_freq_scale", m.rope_freq_scale, 0.0f, 1e-6f));
  KVSTASH_RETURN_IF_ERROR(FloatParam(name, "yarn_ext_factor", m.yarn_ext_factor, -1.0f));
  KVSTASH_RETURN_IF_ERROR(FloatParam(name, "yarn_attn_factor", m.yarn_attn_factor, -1.0f));
  KVSTASH_RETURN_IF_ERROR(FloatParam(name, "yarn_beta_fast", m.yarn_beta_fast, -1.0f));
  KVSTASH_RETURN_IF_ERROR(FloatParam(name, "yarn_beta_slow", m.yarn_beta_slow, -1.0f));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "yarn_orig_ctx", m.yarn_orig_ctx, 0, kMaxTokens));
  // One sequence per session: a unified multi-sequence cache is never written.
  if (m.kv_unified) return Bad(name, "kv_unified", "is 1; sessions hold one sequence");
  return Status::Ok();
}

}  // namespace

std::string Printable(std::string_view text) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += c;
    }
  }
  return out;
}

const CacheType* FindCacheType(int32_t id) {
  for (const CacheType& t : kCacheTypes) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

const CacheType* FindCacheType(std::string_view name) {
  for (const CacheType& t : kCacheTypes) {
    if (name == t.name) return &t;
  }
  return nullptr;
}

std::string CacheTypeNames() {
  std::string names;
  for (const CacheType& t : kCacheTypes) names += std::string(names.empty() ? "" : ", ") + t.name;
  return names;
}

uint64_t CacheRowBytes(const CacheType& type, uint64_t n) {
  if (n % type.block_elems != 0) return 0;
  return n / type.block_elems * type.block_bytes;
}

Status ValidateMeta(const SessionMeta& meta, const std::string& name) {
  KVSTASH_RETURN_IF_ERROR(ValidateModelFields(meta, name));
  KVSTASH_RETURN_IF_ERROR(ValidateContextFields(meta, name));
  KVSTASH_RETURN_IF_ERROR(IntIn(name, "n_tokens", meta.n_tokens, 1, meta.n_ctx));
  return Status::Ok();
}

namespace {

Status Mismatch(const std::string& name, const std::string& field, const std::string& in_meta,
                const std::string& in_payload) {
  return Status::Corruption("session file '" + name + "' is inconsistent: META says " + field +
                            "=" + in_meta + ", the KV payload has " + in_payload +
                            "; re-create it with 'kvstash save'");
}

// One KV part's V layout and types against META; its row sizes too when `check_rows` (a hybrid's
// attention layers may be wider than layer 0, whose heads META records: llama.cpp checks those
// rows itself when it restores them).
Status CheckKvPart(const SessionMeta& meta, const KvLayout& layout, bool check_rows,
                   const std::string& name) {
  if (layout.v_trans == meta.flash_attn) {
    return Mismatch(name, "flash_attn", meta.flash_attn ? "on" : "off",
                    layout.v_trans ? "a transposed V" : "a row-major V");
  }
  // ValidateMeta ran first, so both types are in the table.
  const CacheType& type_k = *FindCacheType(meta.type_k);
  const CacheType& type_v = *FindCacheType(meta.type_v);
  const uint64_t k_row = CacheRowBytes(type_k, uint64_t(meta.n_embd_k_gqa));
  if (layout.k_type != meta.type_k || (check_rows && (k_row == 0 || layout.k_row_bytes != k_row))) {
    return Mismatch(name, "type_k, n_embd_k_gqa",
                    meta.type_k_name + ", " + std::to_string(meta.n_embd_k_gqa) + " (rows of " +
                        std::to_string(k_row) + " bytes)",
                    "type " + std::to_string(layout.k_type) + " rows of " +
                        std::to_string(layout.k_row_bytes) + " bytes");
  }
  const bool v_ok = !layout.v_trans
                        ? CacheRowBytes(type_v, uint64_t(meta.n_embd_v_gqa)) != 0 &&
                              layout.v_row_bytes == CacheRowBytes(type_v, meta.n_embd_v_gqa)
                        : !type_v.quantized && layout.v_elem_bytes == type_v.block_bytes &&
                              int64_t(layout.n_embd_v) == meta.n_embd_v_gqa;
  if (layout.v_type != meta.type_v || (check_rows && !v_ok) ||
      (layout.v_trans && layout.v_elem_bytes != type_v.block_bytes)) {
    return Mismatch(
        name, "type_v, n_embd_v_gqa", meta.type_v_name + ", " + std::to_string(meta.n_embd_v_gqa),
        "type " + std::to_string(layout.v_type) +
            (layout.v_trans
                 ? " (transposed), " + std::to_string(layout.n_embd_v) + " values per cell"
                 : ", rows of " + std::to_string(layout.v_row_bytes) + " bytes"));
  }
  return Status::Ok();
}

}  // namespace

Status CheckPayloadMatchesMeta(const SessionMeta& meta, const SeqLayout& layout,
                               const std::string& name) {
  if (static_cast<uint32_t>(layout.kind) != meta.memory_kind) {
    return Mismatch(name, "memory_kind", MemoryKindName(static_cast<MemoryKind>(meta.memory_kind)),
                    std::string("the layout of ") + MemoryKindName(layout.kind));
  }
  if (layout.n_tokens != meta.n_tokens) {
    return Mismatch(name, "n_tokens", std::to_string(meta.n_tokens),
                    std::to_string(layout.n_tokens) + " tokens");
  }
  // Layers: an iSWA model's are in one of its two caches; llama.cpp's recurrent part counts all of
  // a model's layers, and a hybrid's attention and recurrent layers are distinct (some models have
  // layers with neither, Nemotron-H's MLP-only ones).
  int64_t layers = 0;
  switch (layout.kind) {
    case MemoryKind::kKv:
      layers = layout.kv.n_layer;
      break;
    case MemoryKind::kIswa:
      layers = int64_t{layout.kv.n_layer} + layout.swa.n_layer;
      break;
    case MemoryKind::kRecurrent:
    case MemoryKind::kHybrid:
      layers = layout.rs.n_layer;
      break;
  }
  if (layers != meta.n_layer) {
    return Mismatch(name, "n_layer", std::to_string(meta.n_layer), std::to_string(layers));
  }
  if (layout.kind == MemoryKind::kHybrid &&
      int64_t{layout.kv.n_layer} + layout.rs.n_r > meta.n_layer) {
    return Mismatch(name, "n_layer", std::to_string(meta.n_layer),
                    std::to_string(layout.kv.n_layer) + " attention and " +
                        std::to_string(layout.rs.n_r) + " recurrent layers");
  }
  const bool strict = layout.kind == MemoryKind::kKv || layout.kind == MemoryKind::kIswa;
  if (layout.kind != MemoryKind::kRecurrent) {
    KVSTASH_RETURN_IF_ERROR(CheckKvPart(meta, layout.kv, strict, name));
  }
  if (layout.kind == MemoryKind::kIswa) {
    KVSTASH_RETURN_IF_ERROR(CheckKvPart(meta, layout.swa, strict, name));
  }
  return Status::Ok();
}

}  // namespace kvstash::format

std::string kvstash::PrintableText(std::string_view text) { return format::Printable(text); }
