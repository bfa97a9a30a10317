// Generated llama-architecture models for tests and benchmarks.
//
// Tests need a model that loads and decodes, but shipping or downloading real weights makes the
// suite slow and network-dependent. These models carry a real tokenizer (llama.cpp's SPM or BPE
// vocab, embedded in the library) and seeded random weights, so token ids, KV cache layout and
// decode cost match real models of the same shape while the output text is meaningless.
#ifndef KVSTASH_SRC_TESTMODEL_TEST_MODEL_H_
#define KVSTASH_SRC_TESTMODEL_TEST_MODEL_H_

#include <cstdint>
#include <string>

#include "kvstash/status.h"

namespace kvstash {

// kTiny loads and decodes in milliseconds (unit tests); kSmall has SmolLM2-135M's shape and kBench
// Llama-3.2-1B's, so KV cache sizes and timings are those of models people actually run.
enum class TestShape { kTiny, kSmall, kBench };
enum class TestVocab { kSpm, kBpe };
enum class TestWeightType { kF16, kQ8_0 };

struct TestModelSpec {
  TestShape shape = TestShape::kTiny;
  TestVocab vocab = TestVocab::kSpm;
  TestWeightType type = TestWeightType::kF16;
  uint64_t seed = 1;
};

// Parse "tiny"/"small"/"bench", "spm"/"bpe", "f16"/"q8_0"; InvalidArgument naming the allowed
// values otherwise.
Result<TestShape> ParseTestShape(const std::string& name);
Result<TestVocab> ParseTestVocab(const std::string& name);
Result<TestWeightType> ParseTestWeightType(const std::string& name);

// Writes a valid llama-architecture GGUF with seeded random weights and a real tokenizer to
// `path`, replacing it atomically (a reader never sees a half-written model).
// The same spec gives a byte-identical file; a different seed gives different weights of the same
// shape. Tied embeddings: there is no output.weight, llama.cpp reuses token_embd.
Status WriteTestModel(const TestModelSpec& spec, const std::string& path);

}  // namespace kvstash

#endif  // KVSTASH_SRC_TESTMODEL_TEST_MODEL_H_
