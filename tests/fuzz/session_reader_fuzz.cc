// libFuzzer harness for everything kvstash reads from an untrusted session file or prefix-store
// chunk before llama.cpp sees a byte: the container (header, table, META, tokens, logits),
// llama.cpp's KV payload, chunk files (header, payload, assembling them into a state), and
// llama.cpp's own session and sequence files (`kvstash import`).
#include <xxhash.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "format/chunk_format.h"
#include "format/llama_file.h"
#include "format/llama_state.h"
#include "format/session_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // With and without checksums: without, the fuzzer reaches the semantic checks behind them.
  for (bool verify : {true, false}) {
    auto parsed = kvstash::format::ParseFile(data, size, "fuzz.kvs", verify, 1);
    if (parsed.ok()) {
      auto layout = kvstash::format::ParseLlamaSeqState(parsed->kv, parsed->kv_size, "fuzz.kvs");
      (void)layout;
    }
  }
  // A llama.cpp file, as `kvstash import` reads it with the tiny test model's vocabulary: an
  // accepted one must hold a payload our own parser accepts again, with a last cell to compare.
  {
    namespace f = kvstash::format;
    auto file = f::ParseLlamaFile(data, size, "fuzz.bin", 32000, 4095);
    if (file.ok()) {
      auto again = f::ParseLlamaSeqState(file->kv.data(), file->kv.size(), "again");
      if (!again.ok()) __builtin_trap();
      std::vector<uint8_t> k, v;
      if (!f::CellBytes(file->kv.data(), file->kv.size(), *again,
                        static_cast<int32_t>(again->cell_count) - 1, &k, &v)
               .ok()) {
        __builtin_trap();
      }
      f::ModelFacts tiny;
      tiny.arch = "llama";
      tiny.n_layer = 2;
      tiny.n_embd_k_gqa = 32;
      tiny.n_embd_v_gqa = 32;
      auto fits = f::CheckLlamaFileFitsModel(*file, tiny, "fuzz.bin");
      (void)fits;
    }
  }
  // The payload parser on raw bytes too.
  auto layout = kvstash::format::ParseLlamaSeqState(data, size, "fuzz.kvs");
  (void)layout;
  // A chunk file: whatever its header says must be safe to assemble into a sequence state that
  // our own state parser accepts, and to cut back into the same bytes.
  namespace f = kvstash::format;
  // The same bytes with the header checksum made valid, so mutations reach the range checks behind
  // it (the payload checksum is skipped below with verify = false).
  std::vector<uint8_t> fixed(data, data + size);
  if (size >= f::kChunkHeaderSize) {
    const uint64_t sum = XXH3_64bits(fixed.data(), 248);
    std::memcpy(fixed.data() + 248, &sum, 8);
  }
  for (int pass = 0; pass < 3; ++pass) {
    const bool verify = pass == 0;
    const uint8_t* bytes = pass == 2 ? fixed.data() : data;
    auto chunk = f::ParseChunk(bytes, size, "fuzz.kvc", verify);
    if (!chunk.ok() || verify) continue;
    const f::ChunkLayout& l = chunk->header.layout;
    std::vector<uint8_t> state(f::SeqStateSize(l, chunk->header.n_tokens));
    f::AssembleSeqState(l, chunk->header.n_tokens, {chunk->kv}, state.data(), 2);
    auto parsed = f::ParseLlamaSeqState(state.data(), state.size(), "assembled");
    if (!parsed.ok()) __builtin_trap();  // an accepted chunk must assemble into a valid state
    std::vector<uint8_t> cut(chunk->kv_size);
    if (!f::CutChunkKv(state.data(), state.size(), *parsed, 0, chunk->header.n_tokens, cut.data())
             .ok() ||
        !std::equal(cut.begin(), cut.end(), chunk->kv)) {
      __builtin_trap();
    }
  }
  return 0;
}
