// The bytes of a kvstash session file (docs/FORMAT.md is the specification; keep them in step).
// This module knows nothing of llama.cpp: it turns a SessionMeta, tokens, logits and an opaque KV
// payload into bytes and back, and refuses any byte sequence it did not write.
#ifndef KVSTASH_FORMAT_SESSION_FORMAT_H_
#define KVSTASH_FORMAT_SESSION_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "format/llama_state.h"
#include "kvstash/session_file.h"
#include "kvstash/status.h"

namespace kvstash::format {

// "\x89KVS\r\n\x1a\n": the PNG trick. The high byte catches 7-bit channels, CR LF catches
// line-ending conversion, ^Z stops `type` on DOS, and the lone LF catches LF->CRLF.
inline constexpr uint8_t kMagic[8] = {0x89, 'K', 'V', 'S', '\r', '\n', 0x1A, '\n'};
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr uint32_t kMinReaderVersion = 1;
inline constexpr size_t kHeaderSize = 64;
inline constexpr size_t kSectionEntrySize = 32;
inline constexpr size_t kSectionAlign = 64;
// Checksums are computed per block of this many bytes and then over the block sums, so that
// both cores can verify one large payload at once (see SectionChecksum).
inline constexpr size_t kChecksumBlock = size_t{1} << 20;

// The parameters of the context a KV cache is computed in: everything that decides its bytes or
// how tokens are grouped into llama_decode calls. The engine creates contexts from it
// (engine::Context) and a store's namespace is written from it (store/namespace_text.h). Numbers
// are llama.cpp's and ggml's, as a session file records them.
struct ContextParams {
  uint32_t n_ctx = 0;  // per sequence
  uint32_t n_batch = 0;
  uint32_t n_ubatch = 0;
  uint32_t n_seq_max = 1;
  int32_t type_k = 0;  // ggml_type
  int32_t type_v = 0;
  std::string type_k_name;  // ggml's name of type_k
  std::string type_v_name;
  bool flash_attn = false;  // decides the V layout (transposed without flash attention)
  int32_t rope_scaling_type = 0;
  float rope_freq_base = 0;  // as resolved by the context (0 in params means "from model")
  float rope_freq_scale = 0;
  float yarn_ext_factor = 0;
  float yarn_attn_factor = 0;
  float yarn_beta_fast = 0;
  float yarn_beta_slow = 0;
  uint32_t yarn_orig_ctx = 0;
  bool swa_full = false;
  bool kv_unified = false;
};

// The META record (docs/FORMAT.md): the parameters of the context the KV cache was computed in,
// who wrote it, the model's facts and the sequence's. Field numbers (docs/FORMAT.md) never change
// meaning.
struct SessionMeta : ContextParams {
  // Who wrote it.
  std::string writer;                // "kvstash 0.1.0"
  std::string llama_build;           // llama.cpp commit the KV bytes came from
  uint32_t llama_state_version = 0;  // LLAMA_STATE_SEQ_VERSION of that build
  // The model.
  ModelFingerprint model_fingerprint;
  std::string model_description;  // llama_model_desc, for messages
  std::string model_arch;         // general.architecture
  uint64_t model_n_params = 0;
  int32_t n_vocab = 0;
  int32_t n_layer = 0;
  int32_t n_embd = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t n_embd_k_gqa = 0;  // K row width per layer (head_dim_k * n_head_kv)
  int32_t n_embd_v_gqa = 0;
  int32_t n_swa = 0;
  int32_t n_ctx_train = 0;
  // The kind of memory the model keeps per sequence, which decides the KV payload's layout
  // (docs/FORMAT.md, "The KV payload"): 0 attention KV cache, 1 interleaved sliding-window
  // attention, 2 recurrent, 3 hybrid (attention and recurrent layers).
  uint32_t memory_kind = 0;
  // The sequence.
  uint32_t n_tokens = 0;
  bool has_logits = false;
  std::string preview;  // the first tokens as text, for inspect
};

// The record by name (SessionInfo, kvstash/session_file.h): cache types, memory kind and RoPE
// scaling as names instead of ggml's and llama.cpp's numbers.
SessionInfo InfoOf(const SessionMeta& meta);

enum SectionType : uint32_t {
  kSectionMeta = 1,
  kSectionTokens = 2,
  kSectionLogits = 3,
  kSectionKv = 4,
};

// Upper bounds that no honest file exceeds; a field beyond them is corruption, which keeps size
// arithmetic far from overflow.
inline constexpr uint32_t kMaxTokens = 1u << 24;
inline constexpr int32_t kMaxVocab = 1 << 24;
inline constexpr uint64_t kMaxMetaBytes = 1u << 20;

// xxh3-64 over the little-endian xxh3-64 of each kChecksumBlock-sized block. Uses up to
// `n_threads` threads for large inputs; the value does not depend on the thread count.
uint64_t SectionChecksum(const uint8_t* data, size_t size, int n_threads = 1);

// SectionChecksum computed block by block as the bytes arrive (e.g. while they are read from disk).
// Feed it consecutive blocks of exactly kChecksumBlock bytes, the last one possibly shorter.
class SectionHasher {
 public:
  void AddBlock(const uint8_t* data, size_t size);
  uint64_t Finish() const;

 private:
  std::string block_sums_;  // little-endian XXH3-64 of each block
};

// Everything before the KV payload: header, section table, META, TOKENS, LOGITS and padding.
// The writer appends the kv payload right after it. `kv_checksum` is SectionChecksum(kv).
std::string EncodeFilePrefix(const SessionMeta& meta, const std::vector<int32_t>& tokens,
                             const std::vector<float>& logits, uint64_t kv_size,
                             uint64_t kv_checksum);

struct ParsedFile {
  uint32_t format_version = 0;
  uint32_t min_reader_version = 0;
  SessionMeta meta;
  std::vector<int32_t> tokens;
  std::vector<float> logits;    // empty when the file has none
  const uint8_t* kv = nullptr;  // points into the caller's buffer
  uint64_t kv_size = 0;
  SeqLayout layout;                 // the KV payload's structure, checked against META
  uint64_t kv_checksum = 0;         // from the section table
  bool checksums_verified = false;  // every section's, the KV one included
};

// Parses and checks `data` (the whole file): header, table layout, every META field's range
// (format/meta_check.h), tokens, logits, and the KV payload's structure against META. With
// `verify_checksums`, every section's checksum too (the KV one last, with `n_threads` threads).
// Nothing a model decides is checked here (format/compat.h). `name` is used in errors.
// With `defer_kv_payload`, the KV payload is left to the caller: VerifyKvChecksum (which it can
// run on another thread while it does something else: Session::Open creates the context), then
// ParseKvPayload. Its headers lie between its layers, all through the file: on a cold page cache,
// walking them through a mapping faults the file in page by page, at a fraction of disk speed, so
// a reader that reads the payload anyway parses it after the checksum pass brought it in.
Result<ParsedFile> ParseFile(const uint8_t* data, size_t size, const std::string& name,
                             bool verify_checksums, int n_threads = 1,
                             bool defer_kv_payload = false);

// What can be checked from the first `n` bytes of a file of `file_size` bytes (magic, header, and
// the section table when it lies within them), so that a reader refuses a file that is no session
// before reading (or copying) the rest of it.
Status CheckFileHead(const uint8_t* head, size_t n, uint64_t file_size, const std::string& name);

// The KV payload's structure (format/llama_state.h) and its agreement with META (layout filled).
Status ParseKvPayload(ParsedFile* parsed, const std::string& name);

// The KV section's checksum against the table's; sets parsed->checksums_verified when the other
// sections were verified too.
Status VerifyKvChecksum(ParsedFile* parsed, const std::string& name, int n_threads);

std::string EncodeMeta(const SessionMeta& meta);
Result<SessionMeta> DecodeMeta(const uint8_t* data, size_t size, const std::string& name);

}  // namespace kvstash::format

#endif  // KVSTASH_FORMAT_SESSION_FORMAT_H_
