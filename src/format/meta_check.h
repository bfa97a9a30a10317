// What a session file's META may say, and whether its KV payload says the same.
//
// Checksums are integrity, not trust: anyone can recompute XXH3. So every value read from a file is
// range-checked against what a kvstash writer can produce (docs/FORMAT.md, "Field ranges") before
// it is used, and the KV payload's own headers must agree with META. Nothing here needs a model or
// llama.h; the checks against a loaded model are in format/compat.h.
#ifndef KVSTASH_FORMAT_META_CHECK_H_
#define KVSTASH_FORMAT_META_CHECK_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "format/llama_state.h"
#include "format/session_format.h"
#include "kvstash/status.h"

namespace kvstash::format {

// A KV cache type a session may hold: ggml's type id (a stable ABI number), llama.cpp's name for
// it, and its block geometry (elements per block, bytes per block). src/engine checks this table
// against ggml at start-up (tests/model_test.cc), so the two cannot drift apart.
struct CacheType {
  int32_t id;
  const char* name;
  uint32_t block_elems;
  uint32_t block_bytes;
  bool quantized;
};

inline constexpr CacheType kCacheTypes[] = {
    {0, "f32", 1, 4, false},      {1, "f16", 1, 2, false},   {30, "bf16", 1, 2, false},
    {8, "q8_0", 32, 34, true},    {2, "q4_0", 32, 18, true}, {3, "q4_1", 32, 20, true},
    {20, "iq4_nl", 32, 18, true}, {6, "q5_0", 32, 22, true}, {7, "q5_1", 32, 24, true},
};

// nullptr when `id` / `name` is not a cache type kvstash accepts.
const CacheType* FindCacheType(int32_t id);
const CacheType* FindCacheType(std::string_view name);
// "f32, f16, ..." for messages.
std::string CacheTypeNames();
// Bytes of a row of `n` elements; 0 when `n` is not a whole number of blocks.
uint64_t CacheRowBytes(const CacheType& type, uint64_t n);

// `text` with every control character (and DEL) written as \xNN, so that a string from a file can
// be printed in a message or on a terminal without reaching it as an escape sequence.
std::string Printable(std::string_view text);

// Every META field within the range a writer produces, names agreeing with type ids, floats finite.
// A refusal is kCorruption naming the file and the field.
Status ValidateMeta(const SessionMeta& meta, const std::string& name);

// The KV payload's memory kind, token count, layer count, V layout, types and row sizes equal what
// META says.
Status CheckPayloadMatchesMeta(const SessionMeta& meta, const SeqLayout& layout,
                               const std::string& name);

}  // namespace kvstash::format

#endif  // KVSTASH_FORMAT_META_CHECK_H_
