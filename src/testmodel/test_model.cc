#include "testmodel/test_model.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

#include "ggml.h"
#include "gguf.h"

// The vocab files, linked in by vocab_blobs.S.
extern "C" {
extern const unsigned char kvstash_vocab_spm_begin[];
extern const unsigned char kvstash_vocab_spm_end[];
extern const unsigned char kvstash_vocab_bpe_begin[];
extern const unsigned char kvstash_vocab_bpe_end[];
extern const unsigned char kvstash_vocab_qwen2_begin[];
extern const unsigned char kvstash_vocab_qwen2_end[];
}

namespace kvstash {
namespace {

struct ShapeParams {
  const char* name;
  int64_t n_embd;
  int64_t n_layer;
  int64_t n_head;
  int64_t n_head_kv;
  int64_t n_ff;
  uint32_t n_ctx_train;
  float rope_freq_base;
  // Beyond the llama shape; 0 where the architecture has no such thing.
  int64_t head_dim = 0;       // attention.key_length; 0: n_embd / n_head
  uint32_t n_swa = 0;         // sliding window, in tokens
  uint32_t swa_pattern = 0;   // every swa_pattern-th layer is global, the others slide
  int64_t n_expert = 0;       // MoE
  int64_t n_expert_used = 0;  // top-k
  int64_t n_ff_exp = 0;       // width of one expert
  int64_t ssm_d_conv = 0;     // Mamba-2
  int64_t ssm_d_inner = 0;
  int64_t ssm_d_state = 0;
  int64_t ssm_n_group = 0;
  int64_t ssm_n_head = 0;          // ssm.time_step_rank: one dt, A and D per head
  uint64_t attn_layers = 0;        // LFM2: bit il set, layer il is attention, else short conv
  uint32_t shortconv_l_cache = 0;  // LFM2: conv kernel length; the state keeps l_cache - 1 inputs
};

int64_t HeadDim(const ShapeParams& s) { return s.head_dim > 0 ? s.head_dim : s.n_embd / s.n_head; }

ShapeParams GetShapeParams(TestShape shape) {
  switch (shape) {
    case TestShape::kTiny:
      return {"tiny", 64, 2, 2, 1, 128, 4096, 10000.0f};  // head dim 32: q8_0 caches work
    case TestShape::kSmall:                               // SmolLM2-135M
      return {"small", 576, 30, 9, 3, 1536, 8192, 10000.0f};
    case TestShape::kBench:  // Llama-3.2-1B
      return {"bench", 2048, 16, 32, 8, 8192, 131072, 500000.0f};
  }
  return {"tiny", 64, 2, 2, 1, 128, 4096, 10000.0f};
}

// A shape's transformer dimensions in one call (the aggregate cannot take them by name in C++17).
void SetDims(ShapeParams* p, int64_t n_embd, int64_t n_layer, int64_t n_head, int64_t n_head_kv,
             int64_t n_ff, uint32_t n_ctx_train, float rope_freq_base) {
  p->n_embd = n_embd;
  p->n_layer = n_layer;
  p->n_head = n_head;
  p->n_head_kv = n_head_kv;
  p->n_ff = n_ff;
  p->n_ctx_train = n_ctx_train;
  p->rope_freq_base = rope_freq_base;
}

// Gemma 3: 5 sliding layers (window 512) to each global one; tiny slides 64 tokens every other
// layer so that tests of a few hundred tokens cross the window in both kinds of layer.
ShapeParams Gemma3Shape(TestShape shape) {
  ShapeParams p = GetShapeParams(shape);
  p.n_swa = 512;
  p.swa_pattern = 6;
  if (shape == TestShape::kSmall) {  // Gemma-3-270M
    SetDims(&p, 640, 18, 4, 1, 2048, 32768, 1000000.0f);
    p.head_dim = 256;
  } else if (shape == TestShape::kBench) {  // Gemma-3-1B
    SetDims(&p, 1152, 26, 4, 1, 6912, 32768, 1000000.0f);
    p.head_dim = 256;
  } else {
    p.n_swa = 64;
    p.swa_pattern = 2;
  }
  return p;
}

// Mamba-2: no attention (head counts 0, as convert_hf_to_gguf.py writes them).
ShapeParams Mamba2Shape(TestShape shape) {
  ShapeParams p = GetShapeParams(shape);
  p.ssm_d_conv = 4;
  p.ssm_n_group = 1;
  if (shape == TestShape::kSmall) {  // mamba2-130m: head_dim 64
    SetDims(&p, 768, 24, 0, 0, 0, 1048576, 10000.0f);
    p.ssm_d_inner = 1536;
    p.ssm_d_state = 128;
  } else if (shape == TestShape::kBench) {  // mamba2-1.3b
    SetDims(&p, 2048, 48, 0, 0, 0, 1048576, 10000.0f);
    p.ssm_d_inner = 4096;
    p.ssm_d_state = 128;
  } else {
    SetDims(&p, 64, 2, 0, 0, 0, 4096, 10000.0f);
    p.ssm_d_inner = 128;
    p.ssm_d_state = 16;
  }
  p.ssm_n_head = p.ssm_d_inner / (shape == TestShape::kTiny ? 32 : 64);
  return p;
}

// LFM2: attention at layers 2, 5, 8, 10, 12 and 14 of 16 in the real models, short convolutions
// (kernel 3) elsewhere.
ShapeParams Lfm2Shape(TestShape shape) {
  ShapeParams p = GetShapeParams(shape);
  p.shortconv_l_cache = 3;
  p.attn_layers = (1u << 2) | (1u << 5) | (1u << 8) | (1u << 10) | (1u << 12) | (1u << 14);
  if (shape == TestShape::kSmall) {  // LFM2-350M
    SetDims(&p, 1024, 16, 16, 8, 4608, 128000, 1000000.0f);
  } else if (shape == TestShape::kBench) {  // LFM2-1.2B
    SetDims(&p, 2048, 16, 32, 8, 8192, 128000, 1000000.0f);
  } else {
    p.n_layer = 4;
    p.attn_layers = 0xa;  // conv, attention, conv, attention
  }
  return p;
}

// Qwen3-MoE with a few experts: the real ones (128 experts of 48 layers) would be tens of GB.
ShapeParams Qwen3MoeShape(TestShape shape) {
  ShapeParams p = GetShapeParams(shape);
  p.n_expert_used = 2;
  if (shape == TestShape::kSmall) {
    SetDims(&p, 512, 8, 8, 2, 1536, 40960, 1000000.0f);
    p.head_dim = 64;
    p.n_expert = 8;
    p.n_ff_exp = 384;
  } else if (shape == TestShape::kBench) {  // Qwen3-30B-A3B's widths, 8 layers, 8 experts
    SetDims(&p, 2048, 8, 32, 4, 6144, 40960, 1000000.0f);
    p.head_dim = 128;
    p.n_expert = 8;
    p.n_ff_exp = 768;
  } else {
    p.head_dim = 32;
    p.n_expert = 4;
    p.n_ff_exp = 64;
  }
  return p;
}

ShapeParams ArchShapeParams(TestShape shape, TestArch arch) {
  ShapeParams p = GetShapeParams(shape);
  switch (arch) {
    case TestArch::kLlama:
    case TestArch::kPhi3LongRope:
      return p;
    case TestArch::kGemma2Swa:
      p.n_swa = shape == TestShape::kTiny ? 64 : 512;
      return p;
    case TestArch::kGemma3Swa:
      return Gemma3Shape(shape);
    case TestArch::kMamba2:
      return Mamba2Shape(shape);
    case TestArch::kLfm2Hybrid:
      return Lfm2Shape(shape);
    case TestArch::kQwen3Moe:
      return Qwen3MoeShape(shape);
    case TestArch::kQwen2:
      if (shape == TestShape::kSmall) {  // Qwen2.5-0.5B
        SetDims(&p, 896, 24, 14, 2, 4864, 32768, 1000000.0f);
      } else if (shape == TestShape::kBench) {  // Qwen2.5-1.5B
        SetDims(&p, 1536, 28, 12, 2, 8960, 32768, 1000000.0f);
      }
      return p;
  }
  return p;
}

// Each enum's names, indexed by its values: what the Parse* functions take and model names use.
constexpr const char* kShapeNames[] = {"tiny", "small", "bench"};
constexpr const char* kVocabNames[] = {"spm", "bpe", "qwen2"};
constexpr const char* kTypeNames[] = {"f16", "q8_0"};
constexpr const char* kArchNames[] = {"llama",  "phi3", "gemma2",   "gemma3",
                                      "mamba2", "lfm2", "qwen3moe", "qwen2"};

template <typename E, size_t N>
const char* NameOf(const char* const (&names)[N], E value) {
  const auto i = static_cast<size_t>(value);
  return i < N ? names[i] : names[0];
}
const char* VocabName(TestVocab vocab) { return NameOf(kVocabNames, vocab); }
const char* ArchName(TestArch arch) { return NameOf(kArchNames, arch); }

// The value called `name`; InvalidArgument naming the allowed values otherwise.
template <typename E, size_t N>
Result<E> ParseName(const char* const (&names)[N], const char* what, const std::string& name) {
  std::string allowed;
  for (size_t i = 0; i < N; ++i) {
    if (name == names[i]) return static_cast<E>(i);
    allowed += std::string(i == 0 ? "" : i + 1 == N ? " or " : ", ") + names[i];
  }
  return Status::InvalidArgument("unknown test model " + std::string(what) + " '" + name +
                                 "': use " + allowed);
}

// LongRoPE factors: the long ones stretch every rotation by 2, so the two regimes give visibly
// different keys.
constexpr float kRopeLongFactor = 2.0f;

// Half-width of a uniform distribution with standard deviation 0.02 (a / sqrt(3) = 0.02): small
// enough that activations stay far from f16 overflow in every layer, so logits are finite.
constexpr float kWeightHalfWidth = 0.0346410162f;

// Rows of the slab generated in memory before it is written: ~4M values bounds the memory use
// (16 MiB of f32 scratch) whatever the model size.
constexpr int64_t kSlabValues = int64_t{1} << 22;

// Below this many values per slab, starting threads costs more than it saves.
constexpr int64_t kMinValuesPerThread = int64_t{1} << 16;

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Each row gets its own PRNG stream keyed by (seed, tensor, row), so rows can be generated in any
// order by any number of threads and the file still comes out byte-identical.
uint64_t RowState(uint64_t seed, uint64_t tensor_index, uint64_t row) {
  return Mix64(Mix64(seed + 0x9e3779b97f4a7c15ULL * (tensor_index + 1)) ^ row);
}

// splitmix64; each output gives two 24-bit uniforms. Integer-to-float conversion of a 24-bit value
// and one multiply are exact or correctly rounded everywhere, so the bytes do not depend on the
// compiler's floating-point contraction.
void FillUniformRow(uint64_t state, float* out, int64_t n) {
  constexpr float kScale = kWeightHalfWidth / 8388608.0f;  // 2^23 maps [0, 2^24) to [-a, a)
  for (int64_t i = 0; i < n; i += 2) {
    state += 0x9e3779b97f4a7c15ULL;
    const uint64_t r = Mix64(state);
    out[i] = static_cast<float>(static_cast<int32_t>(r >> 40) - 8388608) * kScale;
    if (i + 1 < n) {
      out[i + 1] =
          static_cast<float>(static_cast<int32_t>((r >> 16) & 0xffffff) - 8388608) * kScale;
    }
  }
}

struct GgufDeleter {
  void operator()(gguf_context* ctx) const { gguf_free(ctx); }
};
struct GgmlDeleter {
  void operator()(ggml_context* ctx) const { ggml_free(ctx); }
};
using GgufPtr = std::unique_ptr<gguf_context, GgufDeleter>;
using GgmlPtr = std::unique_ptr<ggml_context, GgmlDeleter>;

// One tensor of the model, in file order.
struct TensorPlan {
  std::string name;
  ggml_type type;
  int64_t ne0;      // row length
  int64_t ne1;      // number of rows (1 for norms)
  bool is_norm;     // constant `value`, f32, whatever the weight type
  float value = 1;  // of a constant tensor: 1 for norms
  int64_t ne2 = 1;  // experts: ne1 rows of each
};

// Appends a weight matrix of n_rows rows of n_cols (ggml's ne0 = n_cols).
void AddMatrix(std::vector<TensorPlan>* plan, const std::string& name, ggml_type type,
               int64_t n_cols, int64_t n_rows) {
  plan->push_back({name, type, n_cols, n_rows, false});
}
// Appends an f32 vector (or matrix) whose elements are all `value`.
void AddConstant(std::vector<TensorPlan>* plan, const std::string& name, int64_t ne0, float value,
                 int64_t ne1 = 1) {
  plan->push_back({name, GGML_TYPE_F32, ne0, ne1, true, value});
}

std::string Blk(int64_t il) { return "blk." + std::to_string(il) + "."; }

// q, k, v and output projections of head_dim-wide heads (Gemma 3 and Qwen3 decouple head_dim from
// n_embd / n_head); Qwen 2 adds q/k/v biases (zero: real ones are small), Gemma 3, Qwen3-MoE and
// LFM2 RMS-normalize each q and k head.
void PlanAttention(const ShapeParams& s, TestArch arch, int64_t il, ggml_type wtype,
                   std::vector<TensorPlan>* plan) {
  const int64_t n_q = HeadDim(s) * s.n_head, n_kv = HeadDim(s) * s.n_head_kv;
  const std::string blk = Blk(il);
  AddMatrix(plan, blk + "attn_q.weight", wtype, s.n_embd, n_q);
  AddMatrix(plan, blk + "attn_k.weight", wtype, s.n_embd, n_kv);
  AddMatrix(plan, blk + "attn_v.weight", wtype, s.n_embd, n_kv);
  AddMatrix(plan, blk + "attn_output.weight", wtype, n_q, s.n_embd);
  if (arch == TestArch::kQwen2) {
    AddConstant(plan, blk + "attn_q.bias", n_q, 0.0f);
    AddConstant(plan, blk + "attn_k.bias", n_kv, 0.0f);
    AddConstant(plan, blk + "attn_v.bias", n_kv, 0.0f);
  }
  if (arch == TestArch::kGemma3Swa || arch == TestArch::kQwen3Moe ||
      arch == TestArch::kLfm2Hybrid) {
    AddConstant(plan, blk + "attn_q_norm.weight", HeadDim(s), 1.0f);
    AddConstant(plan, blk + "attn_k_norm.weight", HeadDim(s), 1.0f);
  }
}

void PlanGatedFfn(const ShapeParams& s, const std::string& blk, ggml_type wtype,
                  std::vector<TensorPlan>* plan) {
  AddMatrix(plan, blk + "ffn_gate.weight", wtype, s.n_embd, s.n_ff);
  AddMatrix(plan, blk + "ffn_up.weight", wtype, s.n_embd, s.n_ff);
  AddMatrix(plan, blk + "ffn_down.weight", wtype, s.n_ff, s.n_embd);
}

// One layer's tensors; Phi-3 has no gate (its up matrix is gate and up), Gemma 2 adds post-norms.
// The order of llama, phi3 and gemma2 tensors is part of their bytes (each tensor's weights are
// seeded by its index): keep it.
void PlanLayer(const ShapeParams& s, TestArch arch, int64_t il, ggml_type wtype,
               std::vector<TensorPlan>* plan) {
  const int64_t n_embd_kv = s.n_embd / s.n_head * s.n_head_kv;
  const std::string blk = Blk(il);
  AddConstant(plan, blk + "attn_norm.weight", s.n_embd, 1.0f);
  if (arch == TestArch::kGemma3Swa || arch == TestArch::kQwen2) {
    PlanAttention(s, arch, il, wtype, plan);
  } else {
    AddMatrix(plan, blk + "attn_q.weight", wtype, s.n_embd, s.n_embd);
    AddMatrix(plan, blk + "attn_k.weight", wtype, s.n_embd, n_embd_kv);
    AddMatrix(plan, blk + "attn_v.weight", wtype, s.n_embd, n_embd_kv);
    AddMatrix(plan, blk + "attn_output.weight", wtype, s.n_embd, s.n_embd);
  }
  const bool post_norms = arch == TestArch::kGemma2Swa || arch == TestArch::kGemma3Swa;
  if (post_norms) AddConstant(plan, blk + "post_attention_norm.weight", s.n_embd, 1.0f);
  AddConstant(plan, blk + "ffn_norm.weight", s.n_embd, 1.0f);
  if (arch == TestArch::kPhi3LongRope) {
    AddMatrix(plan, blk + "ffn_up.weight", wtype, s.n_embd, 2 * s.n_ff);
    AddMatrix(plan, blk + "ffn_down.weight", wtype, s.n_ff, s.n_embd);
  } else {
    PlanGatedFfn(s, blk, wtype, plan);
  }
  if (post_norms) AddConstant(plan, blk + "post_ffw_norm.weight", s.n_embd, 1.0f);
}

// Qwen3-MoE: the router (ffn_gate_inp) and n_expert experts stacked in 3-d tensors.
void PlanMoeLayer(const ShapeParams& s, int64_t il, ggml_type wtype,
                  std::vector<TensorPlan>* plan) {
  const std::string blk = Blk(il);
  AddConstant(plan, blk + "attn_norm.weight", s.n_embd, 1.0f);
  PlanAttention(s, TestArch::kQwen3Moe, il, wtype, plan);
  AddConstant(plan, blk + "ffn_norm.weight", s.n_embd, 1.0f);
  AddMatrix(plan, blk + "ffn_gate_inp.weight", wtype, s.n_embd, s.n_expert);
  TensorPlan gate{blk + "ffn_gate_exps.weight", wtype, s.n_embd, s.n_ff_exp, false};
  gate.ne2 = s.n_expert;
  TensorPlan up = gate;
  up.name = blk + "ffn_up_exps.weight";
  TensorPlan down{blk + "ffn_down_exps.weight", wtype, s.n_ff_exp, s.n_embd, false};
  down.ne2 = s.n_expert;
  plan->push_back(gate);
  plan->push_back(up);
  plan->push_back(down);
}

// Mamba-2, as convert_hf_to_gguf.py writes it: ssm_a holds A = -exp(A_log) (the real models'
// A_log lies in [log 1, log 16]), ssm_dt.bias the softplus-inverse of dt (dt in [0.001, 0.1]) and
// ssm_d the skip D (1). Per-head constants in those ranges keep the state decaying, so the random
// model stays finite over any number of tokens. Convolution weights are f32, as in real files
// (ggml's ssm_conv takes f32 only).
void PlanMamba2Layer(const ShapeParams& s, int64_t il, ggml_type wtype,
                     std::vector<TensorPlan>* plan) {
  const std::string blk = Blk(il);
  const int64_t conv_dim = s.ssm_d_inner + 2 * s.ssm_n_group * s.ssm_d_state;
  // z, x, B, C and dt from one projection.
  const int64_t d_in_proj = s.ssm_d_inner + conv_dim + s.ssm_n_head;
  AddConstant(plan, blk + "attn_norm.weight", s.n_embd, 1.0f);
  AddMatrix(plan, blk + "ssm_in.weight", wtype, s.n_embd, d_in_proj);
  AddMatrix(plan, blk + "ssm_conv1d.weight", GGML_TYPE_F32, s.ssm_d_conv, conv_dim);
  AddConstant(plan, blk + "ssm_conv1d.bias", conv_dim, 0.0f);
  AddConstant(plan, blk + "ssm_dt.bias", s.ssm_n_head, -4.0f);  // softplus: dt ~ 0.018
  AddConstant(plan, blk + "ssm_a", 1, -4.0f, s.ssm_n_head);
  AddConstant(plan, blk + "ssm_d", 1, 1.0f, s.ssm_n_head);
  AddConstant(plan, blk + "ssm_norm.weight", s.ssm_d_inner / s.ssm_n_group, 1.0f, s.ssm_n_group);
  AddMatrix(plan, blk + "ssm_out.weight", wtype, s.ssm_d_inner, s.n_embd);
}

// LFM2: every layer has the gated FFN; attention layers have q/k norms, the others a short
// convolution (in_proj gives its B, C and x gates; the f32 kernel is l_cache taps wide).
void PlanLfm2Layer(const ShapeParams& s, int64_t il, ggml_type wtype,
                   std::vector<TensorPlan>* plan) {
  const std::string blk = Blk(il);
  AddConstant(plan, blk + "attn_norm.weight", s.n_embd, 1.0f);
  if ((s.attn_layers >> il) & 1) {
    PlanAttention(s, TestArch::kLfm2Hybrid, il, wtype, plan);
  } else {
    AddMatrix(plan, blk + "shortconv.conv.weight", GGML_TYPE_F32, s.shortconv_l_cache, s.n_embd);
    AddMatrix(plan, blk + "shortconv.in_proj.weight", wtype, s.n_embd, 3 * s.n_embd);
    AddMatrix(plan, blk + "shortconv.out_proj.weight", wtype, s.n_embd, s.n_embd);
  }
  AddConstant(plan, blk + "ffn_norm.weight", s.n_embd, 1.0f);
  PlanGatedFfn(s, blk, wtype, plan);
}

std::vector<TensorPlan> PlanTensors(const ShapeParams& s, TestArch arch, int64_t n_vocab,
                                    ggml_type wtype) {
  std::vector<TensorPlan> plan;
  plan.push_back({"token_embd.weight", wtype, s.n_embd, n_vocab, false});
  if (arch == TestArch::kPhi3LongRope) {
    const int64_t n_rot = s.n_embd / s.n_head;
    plan.push_back(
        {"rope_factors_long.weight", GGML_TYPE_F32, n_rot / 2, 1, true, kRopeLongFactor});
    plan.push_back({"rope_factors_short.weight", GGML_TYPE_F32, n_rot / 2, 1, true, 1.0f});
  }
  for (int64_t il = 0; il < s.n_layer; ++il) {
    switch (arch) {
      case TestArch::kQwen3Moe:
        PlanMoeLayer(s, il, wtype, &plan);
        break;
      case TestArch::kMamba2:
        PlanMamba2Layer(s, il, wtype, &plan);
        break;
      case TestArch::kLfm2Hybrid:
        PlanLfm2Layer(s, il, wtype, &plan);
        break;
      default:
        PlanLayer(s, arch, il, wtype, &plan);
        break;
    }
  }
  // LFM2's final norm is named token_embd_norm (a misnomer llama.cpp keeps for compatibility).
  plan.push_back({arch == TestArch::kLfm2Hybrid ? "token_embd_norm.weight" : "output_norm.weight",
                  GGML_TYPE_F32, s.n_embd, 1, true});
  // Gemma 2 always ties its output to token_embd (llama.cpp refuses an output.weight).
  if (arch == TestArch::kGemma2Swa) return plan;
  // The real shapes (SmolLM2, Llama 3.2 1B) tie their output to token_embd. With tied random
  // weights a token's own embedding dominates its logits and greedy decoding repeats the last
  // prompt token, which would make output comparisons vacuous; so tiny and small get an output
  // matrix of their own. It is applied to the last token of a decode call only, so prefill cost is
  // unchanged; bench keeps the tie to keep its file at 1.3 GB.
  if (std::string(s.name) != "bench")
    plan.push_back({"output.weight", wtype, s.n_embd, n_vocab, false});
  return plan;
}

// The temporary file: removed unless Commit() renamed it into place.
class TempFile {
 public:
  TempFile() = default;
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    if (fd_ >= 0) close(fd_);
    if (!name_.empty()) unlink(name_.c_str());
  }

  // A unique name (not a fixed PATH.tmp) so that two processes generating the same model at once,
  // e.g. tests run in parallel, cannot interleave their bytes in one file.
  Status Create(const std::string& path) {
    std::vector<char> name(path.begin(), path.end());
    const char kSuffix[] = ".tmp-XXXXXX";
    name.insert(name.end(), kSuffix, kSuffix + sizeof(kSuffix));  // with the terminating NUL
    fd_ = mkstemp(name.data());
    if (fd_ < 0) return Failure(path, "creating a temporary file next to it", errno);
    name_ = name.data();
    // mkstemp creates 0600; a model is not secret and other users' tools may want to read it.
    if (fchmod(fd_, 0644) != 0) {
      return Failure(path, "setting permissions of '" + name_ + "'", errno);
    }
    return Status::Ok();
  }

  Status Write(const std::string& path, const void* data, size_t size) {
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = write(fd_, p, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        return Failure(path, "writing '" + name_ + "'", errno);
      }
      p += n;
      size -= static_cast<size_t>(n);
      written_ += static_cast<uint64_t>(n);
    }
    return Status::Ok();
  }

  // No fsync: test models are regenerated on demand, and syncing gigabytes would dominate the
  // run time. The rename still guarantees that readers see either the old file or the new one.
  Status Commit(const std::string& path) {
    const int fd = fd_;
    fd_ = -1;
    if (close(fd) != 0) return Failure(path, "closing '" + name_ + "'", errno);
    if (rename(name_.c_str(), path.c_str()) != 0) {
      return Failure(path, "renaming '" + name_ + "' to it", errno);
    }
    name_.clear();
    return Status::Ok();
  }

  uint64_t written() const { return written_; }
  void set_expected_size(uint64_t size) { expected_size_ = size; }

 private:
  Status Failure(const std::string& path, const std::string& action, int err) const {
    std::string fix;
    switch (err) {
      case ENOENT:
      case ENOTDIR:
        fix = "create the directory first or pass another path";
        break;
      case EISDIR:
        fix = "pass a file path, not a directory";
        break;
      case EACCES:
      case EPERM:
      case EROFS:
        fix = "pass a path in a writable directory";
        break;
      case ENOSPC:
      case EDQUOT:
      case EFBIG:
        fix = "free disk space (this model needs " +
              std::to_string((expected_size_ + (1 << 20) - 1) >> 20) +
              " MiB) or pass a path on another file system";
        break;
      default:
        fix = "check the file system and pass another path if it persists";
        break;
    }
    return Status::IOError("cannot write test model '" + path + "': " + action + " failed (" +
                           std::strerror(err) + "): " + fix);
  }

  int fd_ = -1;
  std::string name_;
  uint64_t written_ = 0;
  uint64_t expected_size_ = 0;
};

// Runs fn(row_begin, row_end, worker) over [0, n_rows) split across up to n_threads workers.
template <typename Fn>
void ParallelRows(int64_t n_rows, int n_threads, const Fn& fn) {
  if (n_threads <= 1 || n_rows <= 1) {
    fn(int64_t{0}, n_rows, 0);
    return;
  }
  const int64_t n = std::min<int64_t>(n_threads, n_rows);
  const int64_t per = (n_rows + n - 1) / n;
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(n - 1));
  for (int64_t w = 1; w < n; ++w) {
    const int64_t begin = std::min(n_rows, w * per);
    const int64_t end = std::min(n_rows, begin + per);
    try {
      workers.emplace_back([&fn, begin, end, w] { fn(begin, end, static_cast<int>(w)); });
    } catch (const std::system_error&) {
      // Out of threads (ulimit -u, containers): do this worker's share here rather than fail,
      // and never let the vector destroy joinable threads (std::terminate).
      fn(begin, end, static_cast<int>(w));
    }
  }
  fn(int64_t{0}, std::min(n_rows, per), 0);
  for (std::thread& t : workers) t.join();
}

Status WriteTensorData(const TensorPlan& t, uint64_t tensor_index, uint64_t seed, int n_threads,
                       const std::string& path, TempFile* file) {
  const size_t row_bytes = ggml_row_size(t.type, t.ne0);
  if (t.is_norm) {
    // RMS norm weights of 1 leave the normalized activations as they are.
    const std::vector<float> values(static_cast<size_t>(t.ne0 * t.ne1 * t.ne2), t.value);
    return file->Write(path, values.data(), values.size() * sizeof(float));
  }

  // Experts' matrices are consecutive rows: row r of expert e is row e * ne1 + r.
  const int64_t n_rows = t.ne1 * t.ne2;
  const int64_t slab_rows = std::max<int64_t>(1, std::min(n_rows, kSlabValues / t.ne0));
  const int threads = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(n_threads, slab_rows * t.ne0 / kMinValuesPerThread)));
  const int64_t rows_per_thread = (slab_rows + threads - 1) / threads;
  std::vector<std::vector<float>> scratch(static_cast<size_t>(threads));
  for (std::vector<float>& s : scratch) s.resize(static_cast<size_t>(rows_per_thread * t.ne0));
  std::vector<uint8_t> out(static_cast<size_t>(slab_rows) * row_bytes);

  for (int64_t slab_begin = 0; slab_begin < n_rows; slab_begin += slab_rows) {
    const int64_t rows = std::min(slab_rows, n_rows - slab_begin);
    ParallelRows(rows, threads, [&](int64_t begin, int64_t end, int worker) {
      float* f32 = scratch[static_cast<size_t>(worker)].data();
      for (int64_t r = begin; r < end; ++r) {
        FillUniformRow(RowState(seed, tensor_index, static_cast<uint64_t>(slab_begin + r)),
                       f32 + (r - begin) * t.ne0, t.ne0);
      }
      uint8_t* dst = out.data() + static_cast<size_t>(begin) * row_bytes;
      if (t.type == GGML_TYPE_F16) {
        ggml_fp32_to_fp16_row(f32, reinterpret_cast<ggml_fp16_t*>(dst), (end - begin) * t.ne0);
      } else {
        ggml_quantize_chunk(t.type, f32, dst, 0, end - begin, t.ne0, nullptr);
      }
    });
    KVSTASH_RETURN_IF_ERROR(file->Write(path, out.data(), static_cast<size_t>(rows) * row_bytes));
  }
  return Status::Ok();
}

Result<GgufPtr> LoadVocab(TestVocab vocab) {
  const unsigned char* begin = kvstash_vocab_spm_begin;
  const unsigned char* end = kvstash_vocab_spm_end;
  if (vocab == TestVocab::kBpe) {
    begin = kvstash_vocab_bpe_begin;
    end = kvstash_vocab_bpe_end;
  } else if (vocab == TestVocab::kQwen2) {
    begin = kvstash_vocab_qwen2_begin;
    end = kvstash_vocab_qwen2_end;
  }
  gguf_init_params params = {/*no_alloc=*/true, /*ctx=*/nullptr};
  GgufPtr ctx(gguf_init_from_buffer(begin, static_cast<size_t>(end - begin), params));
  if (!ctx) {
    return Status::Internal(std::string("the ") + VocabName(vocab) +
                            " vocab embedded in kvstash is not a valid GGUF file: rebuild kvstash "
                            "from a clean llama.cpp checkout");
  }
  return ctx;
}

// The general.name suffix of each architecture's models (phi3's is not its name, see below).
std::string NameSuffix(TestArch arch) {
  switch (arch) {
    case TestArch::kLlama:
      return "";
    case TestArch::kPhi3LongRope:
      return "-longrope";
    case TestArch::kGemma2Swa:
      return "-swa";
    default:
      return std::string("-") + ArchName(arch);
  }
}

// ChatML, as Qwen and SmolLM2 write it.
constexpr const char* kChatMlTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

// The keys of the architectures beyond llama's set (appended, so older archs keep their bytes).
void SetFamilyKeys(gguf_context* g, TestArch arch, const ShapeParams& s) {
  const std::string a = ArchName(arch);
  auto u32 = [&](const char* suffix, int64_t v) {
    gguf_set_val_u32(g, (a + "." + suffix).c_str(), static_cast<uint32_t>(v));
  };
  if (s.head_dim > 0) {
    u32("attention.key_length", s.head_dim);
    u32("attention.value_length", s.head_dim);
  }
  if (arch == TestArch::kGemma3Swa) {
    u32("attention.sliding_window", s.n_swa);
    u32("attention.sliding_window_pattern", s.swa_pattern);
    gguf_set_val_f32(g, (a + ".rope.freq_base_swa").c_str(), 10000.0f);
  }
  if (arch == TestArch::kQwen3Moe) {
    u32("expert_count", s.n_expert);
    u32("expert_used_count", s.n_expert_used);
    u32("expert_feed_forward_length", s.n_ff_exp);
  }
  if (arch == TestArch::kMamba2) {
    u32("ssm.conv_kernel", s.ssm_d_conv);
    u32("ssm.inner_size", s.ssm_d_inner);
    u32("ssm.state_size", s.ssm_d_state);
    u32("ssm.time_step_rank", s.ssm_n_head);
    u32("ssm.group_count", s.ssm_n_group);
  }
  if (arch == TestArch::kLfm2Hybrid) u32("shortconv.l_cache", s.shortconv_l_cache);
}

// general.* and <arch>.* keys.
void SetArchKeys(gguf_context* g, const TestModelSpec& spec, const ShapeParams& shape,
                 const std::string& name, int64_t n_vocab) {
  const std::string a = ArchName(spec.arch);
  auto key = [&](const char* suffix) { return a + "." + suffix; };
  gguf_set_val_str(g, "general.architecture", a.c_str());
  gguf_set_val_str(g, "general.name", name.c_str());
  gguf_set_val_u32(g, "general.file_type", spec.type == TestWeightType::kF16 ? 1 : 7);
  gguf_set_val_u32(g, key("context_length").c_str(), shape.n_ctx_train);
  gguf_set_val_u32(g, key("embedding_length").c_str(), static_cast<uint32_t>(shape.n_embd));
  gguf_set_val_u32(g, key("block_count").c_str(), static_cast<uint32_t>(shape.n_layer));
  gguf_set_val_u32(g, key("feed_forward_length").c_str(), static_cast<uint32_t>(shape.n_ff));
  gguf_set_val_u32(g, key("attention.head_count").c_str(), static_cast<uint32_t>(shape.n_head));
  if (spec.arch == TestArch::kLfm2Hybrid) {
    // Per layer: llama.cpp makes the layers with no KV heads short-convolution layers.
    std::vector<int32_t> n_head_kv(static_cast<size_t>(shape.n_layer));
    for (int64_t il = 0; il < shape.n_layer; ++il) {
      n_head_kv[static_cast<size_t>(il)] =
          (shape.attn_layers >> il) & 1 ? static_cast<int32_t>(shape.n_head_kv) : 0;
    }
    gguf_set_arr_data(g, key("attention.head_count_kv").c_str(), GGUF_TYPE_INT32, n_head_kv.data(),
                      n_head_kv.size());
  } else if (shape.n_head > 0) {
    gguf_set_val_u32(g, key("attention.head_count_kv").c_str(),
                     static_cast<uint32_t>(shape.n_head_kv));
  }
  gguf_set_val_f32(g, key("rope.freq_base").c_str(), shape.rope_freq_base);
  gguf_set_val_f32(g, key("attention.layer_norm_rms_epsilon").c_str(), 1e-5f);
  gguf_set_val_u32(g, key("vocab_size").c_str(), static_cast<uint32_t>(n_vocab));
  if (shape.n_head > 0) {
    gguf_set_val_u32(g, key("rope.dimension_count").c_str(), static_cast<uint32_t>(HeadDim(shape)));
  }
  if (spec.arch == TestArch::kPhi3LongRope) {
    gguf_set_val_u32(g, key("rope.scaling.original_context_length").c_str(), shape.n_ctx_train / 4);
  }
  if (spec.arch == TestArch::kGemma2Swa) {
    gguf_set_val_u32(g, key("attention.sliding_window").c_str(), shape.n_swa);
  }
  SetFamilyKeys(g, spec.arch, shape);
}

// The model's keys: its name and architecture's (SetArchKeys), the vocab's tokenizer.* keys and a
// chat template.
void SetModelKeys(gguf_context* g, const TestModelSpec& spec, const ShapeParams& shape,
                  const gguf_context* vctx, int64_t n_vocab) {
  // Not the architecture's name: llama.cpp gives vocabularies of models named "phi3" special
  // token attributes that look up tokens the llama vocabularies do not have.
  const std::string arch_suffix = NameSuffix(spec.arch);
  const std::string name = std::string("kvstash-test-") + shape.name + "-" + VocabName(spec.vocab) +
                           "-" + NameOf(kTypeNames, spec.type) + "-seed" +
                           std::to_string(spec.seed) + arch_suffix;
  SetArchKeys(g, spec, shape, name, n_vocab);
  // The vocab's tokenizer.* keys, in its order: its general.* and llama.* keys describe the model
  // the vocab came from, not this one.
  GgufPtr tokenizer(gguf_init_empty());
  gguf_set_kv(tokenizer.get(), vctx);
  for (int64_t id = gguf_get_n_kv(tokenizer.get()) - 1; id >= 0; --id) {
    const char* key = gguf_get_key(tokenizer.get(), id);
    if (std::strncmp(key, "tokenizer.", 10) != 0) gguf_remove_key(tokenizer.get(), key);
  }
  gguf_set_kv(g, tokenizer.get());
  if (spec.add_eos) gguf_set_val_bool(g, "tokenizer.ggml.add_eos_token", true);
  // A chat template, as real chat models carry, so that `kvstash serve` applies the model's own
  // (llama.cpp recognises ChatML by its markers; with these vocabs they are plain text).
  if (gguf_find_key(g, "tokenizer.chat_template") < 0) {
    gguf_set_val_str(g, "tokenizer.chat_template", kChatMlTemplate);
  }
}

Status WriteTestModelImpl(const TestModelSpec& spec, const std::string& path) {
  const ShapeParams shape = ArchShapeParams(spec.shape, spec.arch);
  const ggml_type wtype = spec.type == TestWeightType::kF16 ? GGML_TYPE_F16 : GGML_TYPE_Q8_0;

  Result<GgufPtr> vocab = LoadVocab(spec.vocab);
  if (!vocab.ok()) return vocab.status();
  const gguf_context* vctx = vocab->get();
  const int64_t tokens_id = gguf_find_key(vctx, "tokenizer.ggml.tokens");
  if (tokens_id < 0 || gguf_get_kv_type(vctx, tokens_id) != GGUF_TYPE_ARRAY) {
    return Status::Internal(std::string("the ") + VocabName(spec.vocab) +
                            " vocab embedded in kvstash has no tokenizer.ggml.tokens array: "
                            "rebuild kvstash from a clean llama.cpp checkout");
  }
  const int64_t n_vocab = static_cast<int64_t>(gguf_get_arr_n(vctx, tokens_id));

  GgufPtr out(gguf_init_empty());
  gguf_context* g = out.get();
  SetModelKeys(g, spec, shape, vctx, n_vocab);

  // Tensor descriptions only (no_alloc): the data is generated slab by slab further down.
  const std::vector<TensorPlan> plan = PlanTensors(shape, spec.arch, n_vocab, wtype);
  ggml_init_params tparams = {/*mem_size=*/plan.size() * ggml_tensor_overhead(),
                              /*mem_buffer=*/nullptr, /*no_alloc=*/true};
  GgmlPtr tctx(ggml_init(tparams));
  if (!tctx) return Status::Internal("ggml_init failed for the test model's tensor descriptions");
  for (const TensorPlan& t : plan) {
    ggml_tensor* tensor = t.ne2 > 1    ? ggml_new_tensor_3d(tctx.get(), t.type, t.ne0, t.ne1, t.ne2)
                          : t.ne1 == 1 ? ggml_new_tensor_1d(tctx.get(), t.type, t.ne0)
                                       : ggml_new_tensor_2d(tctx.get(), t.type, t.ne0, t.ne1);
    ggml_set_name(tensor, t.name.c_str());
    gguf_add_tensor(g, tensor);
  }

  std::vector<uint8_t> meta(gguf_get_meta_size(g));
  gguf_get_meta_data(g, meta.data());
  const uint64_t data_start = meta.size();  // gguf pads the metadata to the alignment
  const size_t alignment = gguf_get_alignment(g);
  const int64_t last = gguf_get_n_tensors(g) - 1;
  // Like gguf_write_to_file, pad after every tensor, the last one included.
  const uint64_t file_size =
      data_start + gguf_get_tensor_offset(g, last) +
      GGML_PAD(ggml_nbytes(ggml_get_tensor(tctx.get(), gguf_get_tensor_name(g, last))), alignment);

  TempFile file;
  file.set_expected_size(file_size);
  KVSTASH_RETURN_IF_ERROR(file.Create(path));
  KVSTASH_RETURN_IF_ERROR(file.Write(path, meta.data(), meta.size()));
  meta = std::vector<uint8_t>();  // ~8 MB with the BPE vocab; no reason to hold it to the end

  const int n_threads =
      static_cast<int>(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1, 16));
  const std::vector<uint8_t> zeros(alignment, 0);
  for (size_t i = 0; i < plan.size(); ++i) {
    // gguf computed each tensor's offset from the sizes; a mismatch here would be a corrupt file.
    const uint64_t want = data_start + gguf_get_tensor_offset(g, static_cast<int64_t>(i));
    if (file.written() != want) {
      return Status::Internal("test model writer bug: tensor '" + plan[i].name + "' at byte " +
                              std::to_string(file.written()) + ", gguf expects " +
                              std::to_string(want));
    }
    KVSTASH_RETURN_IF_ERROR(WriteTensorData(plan[i], i, spec.seed, n_threads, path, &file));
    const size_t pad = static_cast<size_t>((alignment - file.written() % alignment) % alignment);
    if (pad > 0) {
      KVSTASH_RETURN_IF_ERROR(file.Write(path, zeros.data(), pad));
    }
  }
  if (file.written() != file_size) {
    return Status::Internal("test model writer bug: wrote " + std::to_string(file.written()) +
                            " bytes, expected " + std::to_string(file_size));
  }
  return file.Commit(path);
}

}  // namespace

Result<TestShape> ParseTestShape(const std::string& name) {
  return ParseName<TestShape>(kShapeNames, "shape", name);
}

Result<TestVocab> ParseTestVocab(const std::string& name) {
  return ParseName<TestVocab>(kVocabNames, "vocab", name);
}

Result<TestWeightType> ParseTestWeightType(const std::string& name) {
  return ParseName<TestWeightType>(kTypeNames, "weight type", name);
}

Result<TestArch> ParseTestArch(const std::string& name) {
  return ParseName<TestArch>(kArchNames, "architecture", name);
}

Status WriteTestModel(const TestModelSpec& spec, const std::string& path) {
  if (path.empty()) {
    return Status::InvalidArgument("test model path is empty: pass the file to write");
  }
  // A Qwen 2 model with a llama vocab would load, but a test asking for "qwen2" means the Qwen
  // tokenizer too; refusing beats a silent mismatch.
  if (spec.arch == TestArch::kQwen2 && spec.vocab != TestVocab::kQwen2) {
    return Status::InvalidArgument(
        std::string("a qwen2 test model carries the qwen2 vocab, not ") + VocabName(spec.vocab) +
        ": set TestModelSpec::vocab to TestVocab::kQwen2 (--vocab qwen2)");
  }
  try {
    return WriteTestModelImpl(spec, path);
  } catch (const std::bad_alloc&) {
    return Status::Internal("out of memory while writing test model '" + path +
                            "': free memory and retry");
  } catch (const std::exception& e) {
    return Status::Internal("cannot write test model '" + path + "': " + e.what());
  } catch (...) {
    return Status::Internal("cannot write test model '" + path + "': unknown exception");
  }
}

}  // namespace kvstash
