// libFuzzer harness for everything kvstash reads from an untrusted session file before llama.cpp
// sees a byte: the container (header, table, META, tokens, logits) and llama.cpp's KV payload.
#include <cstddef>
#include <cstdint>

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
  // The payload parser on raw bytes too.
  auto layout = kvstash::format::ParseLlamaSeqState(data, size, "fuzz.kvs");
  (void)layout;
  return 0;
}
