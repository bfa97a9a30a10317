// A reader for llama.cpp's own state files, for `kvstash import` (docs/FORMAT.md, "llama.cpp's
// own files"). Two layouts, both little-endian, both written by src/llama-context.cpp:
//
//   session file (llama_state_save_file; llama-completion --prompt-cache):
//     u32 magic 'ggsn' (bytes "nsgg"), u32 version 10, u32 n_tokens, i32 tokens[n_tokens],
//     u32 arch_len, arch[arch_len]  (the model's architecture name),
//     the whole memory: u32 n_stream, per stream u32 cell_count and, if > 0, its cells and layers
//   sequence file (llama_state_seq_save_file; llama-server's slot save):
//     u32 magic 'ggsq' (bytes "qsgg"), u32 version 3, u32 n_tokens, i32 tokens[n_tokens],
//     one sequence's memory: the same stream blocks, cells of that sequence only
//
// A stream block is the layout format/llama_state.h reads, without the 8-byte header
// (magic 0xaf143cd8, seq_id) that only llama_state_seq_get_data writes; a session file's cells
// list every sequence they belong to. Neither file records a context parameter, a fingerprint or
// logits. Nothing in either is trusted: every count is checked against the bytes that are left
// before anything is allocated, and the result is a seq-state payload that ParseLlamaSeqState
// walked completely.
#ifndef KVSTASH_FORMAT_LLAMA_FILE_H_
#define KVSTASH_FORMAT_LLAMA_FILE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "format/compat.h"
#include "format/llama_state.h"
#include "format/session_format.h"
#include "kvstash/status.h"

namespace kvstash::format {

// llama.h's LLAMA_SESSION_MAGIC/VERSION and LLAMA_STATE_SEQ_MAGIC/VERSION of the pinned build
// (tests/import_test.cc checks them against llama.h, which src/format may not include).
inline constexpr uint32_t kLlamaSessionMagic = 0x6767736eu;  // 'ggsn'
inline constexpr uint32_t kLlamaSessionVersion = 10;
inline constexpr uint32_t kLlamaSeqFileMagic = 0x67677371u;  // 'ggsq'
inline constexpr uint32_t kLlamaSeqFileVersion = 3;

enum class LlamaFileKind { kSession, kSequence };

struct LlamaFile {
  LlamaFileKind kind = LlamaFileKind::kSequence;
  std::vector<int32_t> tokens;
  std::string arch;  // session files only
  // The sequence's KV cache as llama_state_seq_get_data(ctx, ..., seq) would have written it: the
  // header, one stream, the cells and layers. What a kvstash session's KV section holds.
  std::vector<uint8_t> kv;
  KvLayout layout;  // of `kv`, walked completely
};

// "llama.cpp session file ('nsgg', llama_state_save_file)" and the like, for messages.
const char* LlamaFileKindName(LlamaFileKind kind);

// Parses `data` (the whole file, `size` bytes) and checks that: the magic and version are the
// ones this build's llama.cpp writes (any other, a kvstash session or a GGUF model, is refused by
// name); the token count fits the file, kMaxTokens and `max_tokens`; every token is in
// [0, n_vocab); the architecture name is 1..256 bytes; the memory holds exactly one sequence (a
// session file of several is refused, naming how many); and its KV part parses exactly to the end
// of the file (ParseLlamaSeqState), with n_tokens equal to its cell count or one more (llama-
// completion saves its prompt before decoding the prompt's last token, and replays that token
// after loading). `name` is used in errors.
Result<LlamaFile> ParseLlamaFile(const uint8_t* data, size_t size, const std::string& name,
                                 int32_t n_vocab, uint32_t max_tokens);

// What can be said from a file's first `n` bytes: whether it is a llama.cpp state file at all, so
// that import refuses a kvstash session, a model or a text before reading the rest.
Status CheckLlamaFileHead(const uint8_t* head, size_t n, const std::string& name);

// The parsed file fits `model`: the architecture (session files), the layer count, the cache
// types (f32, f16, bf16 or quantized as kvstash accepts them) and every K/V row size against the
// model's widths (CheckPayloadMatchesMeta). Returns the META fields the KV decides: type_k/v and
// their names, flash_attn (row-major V) and n_tokens; the caller fills in the rest.
Result<SessionMeta> CheckLlamaFileFitsModel(const LlamaFile& file, const ModelFacts& model,
                                            const std::string& name);

}  // namespace kvstash::format

#endif  // KVSTASH_FORMAT_LLAMA_FILE_H_
