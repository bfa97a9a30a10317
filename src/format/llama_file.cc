#include "format/llama_file.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "format/coding.h"
#include "format/meta_check.h"
#include "format/session_format.h"

namespace kvstash::format {
namespace {

// llama.cpp's LLAMA_MAX_SEQ: no context has more streams, and no cell more sequences.
constexpr uint32_t kMaxSequences = 256;
constexpr uint32_t kMaxArchBytes = 256;
constexpr const char* kFix = "re-create it with llama.cpp, or save the prompt with 'kvstash save'";

Status Bad(const std::string& name, LlamaFileKind kind, const std::string& what) {
  return Status::Corruption(std::string(LlamaFileKindName(kind)) + " '" + name + "' " + what +
                            "; " + kFix);
}

Status Cut(const std::string& name, LlamaFileKind kind, const char* where) {
  return Bad(name, kind, std::string("is cut short ") + where);
}

Status ReadTokens(ByteReader& r, const std::string& name, LlamaFileKind kind, int32_t n_vocab,
                  uint32_t max_tokens, std::vector<int32_t>* tokens) {
  uint32_t n;
  if (!r.ReadU32(&n)) return Cut(name, kind, "before its token count");
  if (n == 0) return Bad(name, kind, "holds no tokens");
  const uint32_t limit = std::min(max_tokens, kMaxTokens);
  if (n > limit) {
    return Bad(name, kind,
               "records " + std::to_string(n) + " tokens, more than the model's context or " +
                   "kvstash can hold (" + std::to_string(limit) + ")");
  }
  if (n > r.remaining() / 4) {
    return Bad(name, kind,
               "records " + std::to_string(n) + " tokens but only " +
                   std::to_string(r.remaining()) + " bytes follow the count");
  }
  tokens->resize(n);
  r.Read(tokens->data(), size_t{n} * 4);
  for (uint32_t i = 0; i < n; ++i) {
    const int32_t t = (*tokens)[i];
    if (t < 0 || t >= n_vocab) {
      return Status::Incompatible(
          std::string(LlamaFileKindName(kind)) + " '" + name + "' has token id " +
          std::to_string(t) + " at " + std::to_string(i) + ", outside this model's vocabulary of " +
          std::to_string(n_vocab) + " tokens: import it with the model that wrote it");
    }
  }
  return Status::Ok();
}

// The sequence ids of the `cells` cell records at `r` (a session file lists every sequence a cell
// belongs to): refuses a file of several sequences by their count, before the payload parser
// would call it corrupt. Leaves `r` where it was.
Status CheckOneSequence(ByteReader r, uint32_t cells, const std::string& name, LlamaFileKind kind) {
  std::set<int32_t> ids;
  for (uint32_t i = 0; i < cells; ++i) {
    int32_t pos, id;
    uint32_t n_seq;
    if (!r.ReadI32(&pos) || !r.ReadU32(&n_seq)) return Cut(name, kind, "in its cell table");
    if (n_seq == 0 || n_seq > kMaxSequences) {
      return Bad(name, kind,
                 "has a cell of " + std::to_string(n_seq) + " sequences (1.." +
                     std::to_string(kMaxSequences) + ")");
    }
    for (uint32_t j = 0; j < n_seq; ++j) {
      if (!r.ReadI32(&id)) return Cut(name, kind, "in its cell table");
      ids.insert(id);
    }
  }
  if (ids.size() <= 1) return Status::Ok();
  std::string list;
  for (int32_t id : ids) {
    if (list.size() > 40) {
      list += ", ...";
      break;
    }
    list += (list.empty() ? "" : ", ") + std::to_string(id);
  }
  return Status::Incompatible(std::string(LlamaFileKindName(kind)) + " '" + name + "' holds " +
                              std::to_string(ids.size()) + " sequences (ids " + list +
                              "); kvstash imports one: save that one with " +
                              "llama_state_seq_save_file (llama-server: slot save)");
}

// The memory part: u32 n_stream, then a block per stream (u32 0 when empty). The sequence's block
// is the only non-empty one; it becomes a one-stream seq-state payload with llama_state_seq's
// header, which ParseLlamaSeqState then walks to the last byte.
Status ReadSequence(const uint8_t* data, size_t size, ByteReader& r, const std::string& name,
                    LlamaFile* file) {
  const LlamaFileKind kind = file->kind;
  uint32_t n_stream;
  if (!r.ReadU32(&n_stream)) return Cut(name, kind, "before its KV cache");
  if (n_stream == 0 || n_stream > kMaxSequences) {
    return Bad(name, kind,
               "has " + std::to_string(n_stream) + " KV streams (1.." +
                   std::to_string(kMaxSequences) + ")");
  }
  uint32_t s = 0, cells = 0;
  for (; s < n_stream; ++s) {
    if (!r.ReadU32(&cells)) return Cut(name, kind, "in its KV stream headers");
    if (cells != 0) break;
  }
  if (s == n_stream) return Bad(name, kind, "holds no KV cells (an empty context was saved)");
  const size_t block = r.position() - 4;  // at the cell count
  const size_t trailing = 4 * size_t{n_stream - 1 - s};
  if (size - block < trailing + 4) return Cut(name, kind, "in its KV stream headers");
  for (size_t i = size - trailing; i < size; ++i) {
    if (data[i] != 0) {
      return Status::Incompatible(std::string(LlamaFileKindName(kind)) + " '" + name +
                                  "' holds KV cells in more than one of its " +
                                  std::to_string(n_stream) + " streams (one per sequence); " +
                                  "kvstash imports one sequence: save that one with " +
                                  "llama_state_seq_save_file");
    }
  }
  if (cells > r.remaining() / 12) return Cut(name, kind, "in its cell table");
  KVSTASH_RETURN_IF_ERROR(CheckOneSequence(r, cells, name, kind));

  const uint32_t header[3] = {kLlamaSeqStateMagic, 0, 1};  // magic, seq_id 0, one stream
  file->kv.resize(sizeof(header) + (size - trailing - block));
  std::memcpy(file->kv.data(), header, sizeof(header));
  std::memcpy(file->kv.data() + sizeof(header), data + block, size - trailing - block);
  auto layout =
      ParseLlamaSeqState(file->kv.data(), file->kv.size(), name, LlamaFileKindName(kind), kFix);
  if (!layout.ok()) return layout.status();
  file->layout = *layout;
  const size_t n = file->tokens.size();
  if (n != cells && n != size_t{cells} + 1) {
    return Bad(name, kind,
               "records " + std::to_string(n) + " tokens but its KV cache holds " +
                   std::to_string(cells) + " cells (a writer saves as many, or one token more)");
  }
  return Status::Ok();
}

}  // namespace

const char* LlamaFileKindName(LlamaFileKind kind) {
  return kind == LlamaFileKind::kSession
             ? "llama.cpp session file ('nsgg', llama_state_save_file)"
             : "llama.cpp sequence file ('qsgg', llama_state_seq_save_file)";
}

Status CheckLlamaFileHead(const uint8_t* head, size_t n, const std::string& name) {
  if (n >= sizeof(kMagic) && std::memcmp(head, kMagic, sizeof(kMagic)) == 0) {
    return Status::InvalidArgument("'" + name + "' is already a kvstash session: use it as it " +
                                   "is (kvstash run --session '" + name + "')");
  }
  if (n >= 4 && std::memcmp(head, "GGUF", 4) == 0) {
    return Status::InvalidArgument("'" + name + "' is a GGUF model, not a llama.cpp state " +
                                   "file; pass the model with -m and the file to import after it");
  }
  const uint32_t magic = n >= 4 ? DecodeFixed32(head) : 0;
  if (magic != kLlamaSessionMagic && magic != kLlamaSeqFileMagic) {
    return Status::InvalidArgument(
        "'" + name + "' is not a llama.cpp session or sequence file (it does not start with " +
        "'nsgg' or 'qsgg'); import takes files written by llama_state_save_file " +
        "(llama-completion --prompt-cache) or llama_state_seq_save_file");
  }
  const LlamaFileKind kind =
      magic == kLlamaSessionMagic ? LlamaFileKind::kSession : LlamaFileKind::kSequence;
  if (n < 8) return Cut(name, kind, "before its version");
  const uint32_t version = DecodeFixed32(head + 4);
  const uint32_t expected =
      kind == LlamaFileKind::kSession ? kLlamaSessionVersion : kLlamaSeqFileVersion;
  if (version != expected) {
    return Status::Incompatible(std::string(LlamaFileKindName(kind)) + " '" + name +
                                "' has version " + std::to_string(version) +
                                "; this kvstash reads version " + std::to_string(expected) +
                                " (its llama.cpp's): re-create it with that llama.cpp");
  }
  return Status::Ok();
}

Result<LlamaFile> ParseLlamaFile(const uint8_t* data, size_t size, const std::string& name,
                                 int32_t n_vocab, uint32_t max_tokens) {
  KVSTASH_RETURN_IF_ERROR(CheckLlamaFileHead(data, size, name));
  LlamaFile file;
  file.kind = DecodeFixed32(data) == kLlamaSessionMagic ? LlamaFileKind::kSession
                                                        : LlamaFileKind::kSequence;
  ByteReader r(data, size);
  r.Skip(8);  // magic and version, checked above
  KVSTASH_RETURN_IF_ERROR(ReadTokens(r, name, file.kind, n_vocab, max_tokens, &file.tokens));
  if (file.kind == LlamaFileKind::kSession) {
    uint32_t len;
    if (!r.ReadU32(&len)) return Cut(name, file.kind, "before its architecture name");
    if (len == 0 || len > kMaxArchBytes || len > r.remaining()) {
      return Bad(name, file.kind,
                 "has an architecture name of " + std::to_string(len) + " bytes (1.." +
                     std::to_string(kMaxArchBytes) + ", within the file)");
    }
    file.arch.assign(reinterpret_cast<const char*>(r.current()), len);
    r.Skip(len);
  }
  KVSTASH_RETURN_IF_ERROR(ReadSequence(data, size, r, name, &file));
  return file;
}

Result<SessionMeta> CheckLlamaFileFitsModel(const LlamaFile& file, const ModelFacts& model,
                                            const std::string& name) {
  const std::string what = std::string(LlamaFileKindName(file.kind)) + " '" + name + "'";
  const auto other = [&](const std::string& why) {
    return Status::Incompatible(what + " was not written with model '" + model.path + "': " + why +
                                "; import it with the model that wrote it");
  };
  if (file.kind == LlamaFileKind::kSession && file.arch != model.arch) {
    return other("it is for architecture '" + Printable(file.arch) + "', the model is '" +
                 model.arch + "'");
  }
  const KvLayout& l = file.layout;
  if (int64_t{l.n_layer} != model.n_layer) {
    return other("its KV cache has " + std::to_string(l.n_layer) + " layers, the model " +
                 std::to_string(model.n_layer));
  }
  const CacheType* k = FindCacheType(l.k_type);
  const CacheType* v = FindCacheType(l.v_type);
  if (k == nullptr || v == nullptr) {
    return Status::Incompatible(what + " has a K/V cache of ggml types " +
                                std::to_string(l.k_type) + "/" + std::to_string(l.v_type) +
                                "; kvstash stores " + CacheTypeNames());
  }
  const uint64_t k_row = CacheRowBytes(*k, uint64_t(model.n_embd_k_gqa));
  const uint64_t v_row = CacheRowBytes(*v, uint64_t(model.n_embd_v_gqa));
  if (k_row == 0 || l.k_row_bytes != k_row) {
    return other("its K rows have " + std::to_string(l.k_row_bytes) + " bytes, the model's " +
                 std::to_string(k_row) + " (" + k->name + ")");
  }
  const bool v_ok = !l.v_trans ? v_row != 0 && l.v_row_bytes == v_row
                               : !v->quantized && l.v_elem_bytes == v->block_bytes &&
                                     int64_t{l.n_embd_v} == model.n_embd_v_gqa;
  if (!v_ok) {
    return other(std::string("its V rows do not have the model's width of ") +
                 std::to_string(model.n_embd_v_gqa) + " " + v->name + " values");
  }
  SessionMeta meta;
  meta.type_k = k->id;
  meta.type_v = v->id;
  meta.type_k_name = k->name;
  meta.type_v_name = v->name;
  meta.flash_attn = !l.v_trans;  // llama.cpp transposes V exactly when flash attention is off
  meta.n_tokens = static_cast<uint32_t>(file.tokens.size());
  return meta;
}

}  // namespace kvstash::format
