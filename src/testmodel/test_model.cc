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
};

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

const char* VocabName(TestVocab vocab) { return vocab == TestVocab::kSpm ? "spm" : "bpe"; }
const char* ArchName(TestArch arch) {
  switch (arch) {
    case TestArch::kLlama:
      return "llama";
    case TestArch::kPhi3LongRope:
      return "phi3";
    case TestArch::kGemma2Swa:
      return "gemma2";
  }
  return "llama";
}

// The sliding window of the kGemma2Swa models, in tokens.
constexpr uint32_t kSlidingWindow = 512;
// LongRoPE factors: the long ones stretch every rotation by 2, so the two regimes give visibly
// different keys.
constexpr float kRopeLongFactor = 2.0f;
const char* TypeName(TestWeightType type) { return type == TestWeightType::kF16 ? "f16" : "q8_0"; }

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

// Copies one KV pair; gguf_set_kv would copy the vocab file's general.* and llama.* keys too, and
// those describe the model the vocab came from, not this one.
Status CopyKv(gguf_context* dst, const gguf_context* src, int64_t id) {
  const char* key = gguf_get_key(src, id);
  switch (gguf_get_kv_type(src, id)) {
    case GGUF_TYPE_UINT8:
      gguf_set_val_u8(dst, key, gguf_get_val_u8(src, id));
      break;
    case GGUF_TYPE_INT8:
      gguf_set_val_i8(dst, key, gguf_get_val_i8(src, id));
      break;
    case GGUF_TYPE_UINT16:
      gguf_set_val_u16(dst, key, gguf_get_val_u16(src, id));
      break;
    case GGUF_TYPE_INT16:
      gguf_set_val_i16(dst, key, gguf_get_val_i16(src, id));
      break;
    case GGUF_TYPE_UINT32:
      gguf_set_val_u32(dst, key, gguf_get_val_u32(src, id));
      break;
    case GGUF_TYPE_INT32:
      gguf_set_val_i32(dst, key, gguf_get_val_i32(src, id));
      break;
    case GGUF_TYPE_FLOAT32:
      gguf_set_val_f32(dst, key, gguf_get_val_f32(src, id));
      break;
    case GGUF_TYPE_BOOL:
      gguf_set_val_bool(dst, key, gguf_get_val_bool(src, id));
      break;
    case GGUF_TYPE_STRING:
      gguf_set_val_str(dst, key, gguf_get_val_str(src, id));
      break;
    case GGUF_TYPE_UINT64:
      gguf_set_val_u64(dst, key, gguf_get_val_u64(src, id));
      break;
    case GGUF_TYPE_INT64:
      gguf_set_val_i64(dst, key, gguf_get_val_i64(src, id));
      break;
    case GGUF_TYPE_FLOAT64:
      gguf_set_val_f64(dst, key, gguf_get_val_f64(src, id));
      break;
    case GGUF_TYPE_ARRAY: {
      const gguf_type elem_type = gguf_get_arr_type(src, id);
      const size_t n = gguf_get_arr_n(src, id);
      if (elem_type == GGUF_TYPE_STRING) {
        std::vector<const char*> strs(n);
        for (size_t i = 0; i < n; ++i) strs[i] = gguf_get_arr_str(src, id, i);
        gguf_set_arr_str(dst, key, strs.data(), n);
      } else if (elem_type != GGUF_TYPE_ARRAY && elem_type < GGUF_TYPE_COUNT) {
        gguf_set_arr_data(dst, key, elem_type, gguf_get_arr_data(src, id), n);
      } else {
        return Status::Internal(std::string("embedded vocab key '") + key +
                                "' is an array of arrays, which GGUF does not allow: the "
                                "kvstash build embedded a broken vocab file; rebuild kvstash");
      }
      break;
    }
    default:
      return Status::Internal(std::string("embedded vocab key '") + key +
                              "' has an unknown GGUF type: the kvstash build embedded a broken "
                              "vocab file; rebuild kvstash");
  }
  return Status::Ok();
}

// One tensor of the model, in file order.
struct TensorPlan {
  std::string name;
  ggml_type type;
  int64_t ne0;      // row length
  int64_t ne1;      // number of rows (1 for norms)
  bool is_norm;     // constant `value`, f32, whatever the weight type
  float value = 1;  // of a constant tensor: 1 for norms
};

// One layer's tensors; Phi-3 has no gate (its up matrix is gate and up), Gemma 2 adds post-norms.
void PlanLayer(const ShapeParams& s, TestArch arch, int64_t il, ggml_type wtype,
               std::vector<TensorPlan>* plan) {
  const int64_t n_embd_kv = s.n_embd / s.n_head * s.n_head_kv;
  const std::string blk = "blk." + std::to_string(il) + ".";
  plan->push_back({blk + "attn_norm.weight", GGML_TYPE_F32, s.n_embd, 1, true});
  plan->push_back({blk + "attn_q.weight", wtype, s.n_embd, s.n_embd, false});
  plan->push_back({blk + "attn_k.weight", wtype, s.n_embd, n_embd_kv, false});
  plan->push_back({blk + "attn_v.weight", wtype, s.n_embd, n_embd_kv, false});
  plan->push_back({blk + "attn_output.weight", wtype, s.n_embd, s.n_embd, false});
  if (arch == TestArch::kGemma2Swa) {
    plan->push_back({blk + "post_attention_norm.weight", GGML_TYPE_F32, s.n_embd, 1, true});
  }
  plan->push_back({blk + "ffn_norm.weight", GGML_TYPE_F32, s.n_embd, 1, true});
  if (arch == TestArch::kPhi3LongRope) {
    plan->push_back({blk + "ffn_up.weight", wtype, s.n_embd, 2 * s.n_ff, false});
  } else {
    plan->push_back({blk + "ffn_gate.weight", wtype, s.n_embd, s.n_ff, false});
    plan->push_back({blk + "ffn_up.weight", wtype, s.n_embd, s.n_ff, false});
  }
  plan->push_back({blk + "ffn_down.weight", wtype, s.n_ff, s.n_embd, false});
  if (arch == TestArch::kGemma2Swa) {
    plan->push_back({blk + "post_ffw_norm.weight", GGML_TYPE_F32, s.n_embd, 1, true});
  }
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
  for (int64_t il = 0; il < s.n_layer; ++il) PlanLayer(s, arch, il, wtype, &plan);
  plan.push_back({"output_norm.weight", GGML_TYPE_F32, s.n_embd, 1, true});
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
    const std::vector<float> values(static_cast<size_t>(t.ne0 * t.ne1), t.value);
    return file->Write(path, values.data(), values.size() * sizeof(float));
  }

  const int64_t slab_rows = std::max<int64_t>(1, std::min(t.ne1, kSlabValues / t.ne0));
  const int threads = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(n_threads, slab_rows * t.ne0 / kMinValuesPerThread)));
  const int64_t rows_per_thread = (slab_rows + threads - 1) / threads;
  std::vector<std::vector<float>> scratch(static_cast<size_t>(threads));
  for (std::vector<float>& s : scratch) s.resize(static_cast<size_t>(rows_per_thread * t.ne0));
  std::vector<uint8_t> out(static_cast<size_t>(slab_rows) * row_bytes);

  for (int64_t slab_begin = 0; slab_begin < t.ne1; slab_begin += slab_rows) {
    const int64_t rows = std::min(slab_rows, t.ne1 - slab_begin);
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
  const unsigned char* begin =
      vocab == TestVocab::kSpm ? kvstash_vocab_spm_begin : kvstash_vocab_bpe_begin;
  const unsigned char* end =
      vocab == TestVocab::kSpm ? kvstash_vocab_spm_end : kvstash_vocab_bpe_end;
  gguf_init_params params = {/*no_alloc=*/true, /*ctx=*/nullptr};
  GgufPtr ctx(gguf_init_from_buffer(begin, static_cast<size_t>(end - begin), params));
  if (!ctx) {
    return Status::Internal(std::string("the ") + VocabName(vocab) +
                            " vocab embedded in kvstash is not a valid GGUF file: rebuild kvstash "
                            "from a clean llama.cpp checkout");
  }
  return ctx;
}

// ChatML, as Qwen and SmolLM2 write it.
constexpr const char* kChatMlTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}";

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
  gguf_set_val_u32(g, key("attention.head_count_kv").c_str(),
                   static_cast<uint32_t>(shape.n_head_kv));
  gguf_set_val_f32(g, key("rope.freq_base").c_str(), shape.rope_freq_base);
  gguf_set_val_f32(g, key("attention.layer_norm_rms_epsilon").c_str(), 1e-5f);
  gguf_set_val_u32(g, key("vocab_size").c_str(), static_cast<uint32_t>(n_vocab));
  gguf_set_val_u32(g, key("rope.dimension_count").c_str(),
                   static_cast<uint32_t>(shape.n_embd / shape.n_head));
  if (spec.arch == TestArch::kPhi3LongRope) {
    gguf_set_val_u32(g, key("rope.scaling.original_context_length").c_str(), shape.n_ctx_train / 4);
  }
  if (spec.arch == TestArch::kGemma2Swa) {
    gguf_set_val_u32(g, key("attention.sliding_window").c_str(), kSlidingWindow);
  }
}

Status WriteTestModelImpl(const TestModelSpec& spec, const std::string& path) {
  const ShapeParams shape = GetShapeParams(spec.shape);
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
  // Not the architecture's name: llama.cpp gives vocabularies of models named "phi3" special
  // token attributes that look up tokens the llama vocabularies do not have.
  const char* arch_suffix = spec.arch == TestArch::kPhi3LongRope ? "-longrope"
                            : spec.arch == TestArch::kGemma2Swa  ? "-swa"
                                                                 : "";
  const std::string name = std::string("kvstash-test-") + shape.name + "-" + VocabName(spec.vocab) +
                           "-" + TypeName(spec.type) + "-seed" + std::to_string(spec.seed) +
                           arch_suffix;
  SetArchKeys(g, spec, shape, name, n_vocab);
  const int64_t n_kv = gguf_get_n_kv(vctx);
  for (int64_t id = 0; id < n_kv; ++id) {
    if (std::strncmp(gguf_get_key(vctx, id), "tokenizer.", 10) == 0) {
      KVSTASH_RETURN_IF_ERROR(CopyKv(g, vctx, id));
    }
  }
  if (spec.add_eos) gguf_set_val_bool(g, "tokenizer.ggml.add_eos_token", true);
  // A chat template, as real chat models carry, so that `kvstash serve` applies the model's own
  // (llama.cpp recognises ChatML by its markers; with these vocabs they are plain text).
  if (gguf_find_key(g, "tokenizer.chat_template") < 0) {
    gguf_set_val_str(g, "tokenizer.chat_template", kChatMlTemplate);
  }

  // Tensor descriptions only (no_alloc): the data is generated slab by slab further down.
  const std::vector<TensorPlan> plan = PlanTensors(shape, spec.arch, n_vocab, wtype);
  ggml_init_params tparams = {/*mem_size=*/plan.size() * ggml_tensor_overhead(),
                              /*mem_buffer=*/nullptr, /*no_alloc=*/true};
  GgmlPtr tctx(ggml_init(tparams));
  if (!tctx) return Status::Internal("ggml_init failed for the test model's tensor descriptions");
  for (const TensorPlan& t : plan) {
    ggml_tensor* tensor = t.ne1 == 1 ? ggml_new_tensor_1d(tctx.get(), t.type, t.ne0)
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
  if (name == "tiny") return TestShape::kTiny;
  if (name == "small") return TestShape::kSmall;
  if (name == "bench") return TestShape::kBench;
  return Status::InvalidArgument("unknown test model shape '" + name +
                                 "': use tiny, small or bench");
}

Result<TestVocab> ParseTestVocab(const std::string& name) {
  if (name == "spm") return TestVocab::kSpm;
  if (name == "bpe") return TestVocab::kBpe;
  return Status::InvalidArgument("unknown test model vocab '" + name + "': use spm or bpe");
}

Result<TestWeightType> ParseTestWeightType(const std::string& name) {
  if (name == "f16") return TestWeightType::kF16;
  if (name == "q8_0") return TestWeightType::kQ8_0;
  return Status::InvalidArgument("unknown test model weight type '" + name + "': use f16 or q8_0");
}

Result<TestArch> ParseTestArch(const std::string& name) {
  if (name == "llama") return TestArch::kLlama;
  if (name == "phi3") return TestArch::kPhi3LongRope;
  if (name == "gemma2") return TestArch::kGemma2Swa;
  return Status::InvalidArgument("unknown test model architecture '" + name +
                                 "': use llama, phi3 or gemma2");
}

Status WriteTestModel(const TestModelSpec& spec, const std::string& path) {
  if (path.empty()) {
    return Status::InvalidArgument("test model path is empty: pass the file to write");
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
