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
// kLlama: plain attention. kPhi3LongRope: Phi-3 with rope_factors_long/short tensors and an
// original context of a quarter of the training context (LongRoPE switches factors there).
// kGemma2Swa: Gemma 2 with sliding-window attention (a window of 512 tokens).
enum class TestArch { kLlama, kPhi3LongRope, kGemma2Swa };

struct TestModelSpec {
  TestShape shape = TestShape::kTiny;
  TestVocab vocab = TestVocab::kSpm;
  TestWeightType type = TestWeightType::kF16;
  uint64_t seed = 1;
  TestArch arch = TestArch::kLlama;
  // Sets tokenizer.ggml.add_eos_token: llama.cpp's add_special then appends EOS.
  bool add_eos = false;
};

// Parse "tiny"/"small"/"bench", "spm"/"bpe", "f16"/"q8_0"; InvalidArgument naming the allowed
// values otherwise.
Result<TestShape> ParseTestShape(const std::string& name);
Result<TestVocab> ParseTestVocab(const std::string& name);
Result<TestWeightType> ParseTestWeightType(const std::string& name);
// "llama"/"phi3"/"gemma2".
Result<TestArch> ParseTestArch(const std::string& name);

// Writes a valid GGUF of spec.arch with seeded random weights and a real tokenizer to
// `path`, replacing it atomically (a reader never sees a half-written model).
// The same spec gives a byte-identical file; a different seed gives different weights of the same
// shape. Tied embeddings: there is no output.weight, llama.cpp reuses token_embd.
Status WriteTestModel(const TestModelSpec& spec, const std::string& path);

}  // namespace kvstash

#endif  // KVSTASH_SRC_TESTMODEL_TEST_MODEL_H_
