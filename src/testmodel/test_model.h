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
// Llama-3.2-1B's, so KV cache sizes and timings are those of models people actually run. The other
// architectures take the shapes of their own family's models instead (see TestArch).
enum class TestShape { kTiny, kSmall, kBench };
// kQwen2: llama.cpp's ggml-vocab-qwen2.gguf (BPE with the "qwen2" pre-tokenizer, 151k tokens).
enum class TestVocab { kSpm, kBpe, kQwen2 };
enum class TestWeightType { kF16, kQ8_0 };
// kLlama: plain attention. kPhi3LongRope: Phi-3 with rope_factors_long/short tensors and an
// original context of a quarter of the training context (LongRoPE switches factors there).
// kGemma2Swa: Gemma 2 with sliding-window attention, every other layer (a window of 64 tokens for
// kTiny, so that short tests cross it, 512 otherwise).
// kGemma3Swa: Gemma 3 (q/k norms, head_dim key): tiny has 2 layers, one sliding (64 tokens) and one
// global; small is Gemma-3-270M's shape and bench Gemma-3-1B's (5 sliding layers of 512 tokens to
// each global one).
// kMamba2: recurrent, no attention and no KV cache: tiny has d_inner 128, d_state 16, 4 heads,
// 1 group; small is mamba2-130m's shape and bench mamba2-1.3b's.
// kLfm2Hybrid: LFM2, gated short-convolution layers (recurrent state: the last l_cache-1 inputs)
// mixed with attention layers; tiny has 4 layers alternating conv and attention, small is
// LFM2-350M's shape and bench LFM2-1.2B's.
// kQwen3Moe: Qwen3-MoE (q/k norms, routed experts, no shared expert): tiny has 4 experts of
// width 64, top-2; small (512 wide, 8 layers, 8 experts) and bench (Qwen3-30B-A3B's layer widths,
// but 8 layers and 8 experts, top-2) are scaled down, a real MoE would be tens of GB.
// kQwen2: Qwen 2 (q/k/v biases); tiny is the llama tiny shape, small Qwen2.5-0.5B's and bench
// Qwen2.5-1.5B's. Its vocab must be TestVocab::kQwen2 (make-test-model picks it by default).
enum class TestArch {
  kLlama,
  kPhi3LongRope,
  kGemma2Swa,
  kGemma3Swa,
  kMamba2,
  kLfm2Hybrid,
  kQwen3Moe,
  kQwen2,
};

struct TestModelSpec {
  TestShape shape = TestShape::kTiny;
  TestVocab vocab = TestVocab::kSpm;
  TestWeightType type = TestWeightType::kF16;
  uint64_t seed = 1;
  TestArch arch = TestArch::kLlama;
  // Sets tokenizer.ggml.add_eos_token: llama.cpp's add_special then appends EOS.
  bool add_eos = false;
};

// Parse "tiny"/"small"/"bench", "spm"/"bpe"/"qwen2", "f16"/"q8_0"; InvalidArgument naming the
// allowed values otherwise.
Result<TestShape> ParseTestShape(const std::string& name);
Result<TestVocab> ParseTestVocab(const std::string& name);
Result<TestWeightType> ParseTestWeightType(const std::string& name);
// "llama"/"phi3"/"gemma2"/"gemma3"/"mamba2"/"lfm2"/"qwen3moe"/"qwen2".
Result<TestArch> ParseTestArch(const std::string& name);

// Writes a valid GGUF of spec.arch with seeded random weights and a real tokenizer to
// `path`, replacing it atomically (a reader never sees a half-written model).
// The same spec gives a byte-identical file; a different seed gives different weights of the same
// shape. Gemma 2 and every bench shape tie the output to token_embd (no output.weight); the others
// have an output matrix of their own (see PlanTensors). InvalidArgument for a kQwen2 model whose
// vocab is not kQwen2.
Status WriteTestModel(const TestModelSpec& spec, const std::string& path);

}  // namespace kvstash

#endif  // KVSTASH_SRC_TESTMODEL_TEST_MODEL_H_
