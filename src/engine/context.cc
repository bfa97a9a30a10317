#include "engine/context.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "engine/batch_engine.h"
#include "engine/llama_runtime.h"
#include "engine/memory_support.h"
#include "engine/model_impl.h"
#include "engine/sequence.h"
#include "engine/store_chain.h"
#include "env/env.h"
#include "format/meta_check.h"
#include "format/session_format.h"
#include "ggml-cpu.h"

namespace kvstash::engine {
namespace {}  // namespace

Status CheckThreadsAndBatch(int n_threads, uint32_t n_batch, uint32_t n_ubatch) {
  if (n_threads > GGML_MAX_N_THREADS) {
    return Status::InvalidArgument("-t " + std::to_string(n_threads) + " is more threads than " +
                                   "llama.cpp supports (" + std::to_string(GGML_MAX_N_THREADS) +
                                   "); use -t " +
                                   std::to_string(std::thread::hardware_concurrency()) +
                                   " (the cores of this machine) or leave it out");
  }
  if (n_batch == 0 || n_ubatch == 0) {
    return Status::InvalidArgument("batch sizes must be at least 1 token (-b " +
                                   std::to_string(n_batch) + ", -ub " + std::to_string(n_ubatch) +
                                   "); leave them out for the defaults 2048 and 512");
  }
  return Status::Ok();
}

namespace {

int ResolveThreads(int n_threads) {
  if (n_threads > 0) return n_threads;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(std::min<unsigned>(hw, GGML_MAX_N_THREADS)) : 1;
}

// The KV cache types llama.cpp accepts, by the names its CLI uses (format/meta_check.h's table,
// whose ids and block sizes tests/model_test.cc checks against ggml).
Result<ggml_type> ParseCacheType(const std::string& name, const char* which) {
  if (const format::CacheType* t = format::FindCacheType(name))
    return static_cast<ggml_type>(t->id);
  return Status::InvalidArgument(std::string("unknown ") + which + " cache type '" + name +
                                 "'; use one of " + format::CacheTypeNames());
}

// A context whose KV cache alone would not fit in this machine's memory is refused before
// llama.cpp tries to allocate it (a failed allocation there is an abort under sanitizers and can
// take the machine into swap elsewhere).
Status CheckContextFits(const Model& model, const format::ContextParams& p, uint64_t n_ctx) {
  const ModelImpl& m = *ImplOf(model);
  const uint64_t per_token = uint64_t(llama_model_n_layer(m.model)) *
                             (ggml_row_size(static_cast<ggml_type>(p.type_k), m.n_embd_k_gqa) +
                              ggml_row_size(static_cast<ggml_type>(p.type_v), m.n_embd_v_gqa));
  if (n_ctx == 0) n_ctx = uint64_t(model.n_ctx_train());
  const uint64_t need = n_ctx * per_token;
  const uint64_t have = Env::PhysicalMemoryBytes();
  if (n_ctx > format::kMaxTokens) {
    return Status::InvalidArgument(
        "a " + std::to_string(n_ctx) + "-token context is more than kvstash supports (at most " +
        std::to_string(format::kMaxTokens) + " tokens, 2^24); use a smaller -c");
  }
  if (have != 0 && need > have) {
    auto gib = [](uint64_t b) { return std::to_string((b + (1u << 29)) >> 30); };
    return Status::InvalidArgument("a " + std::to_string(n_ctx) + "-token context for model '" +
                                   model.path() + "' needs " + gib(need) +
                                   " GiB of KV cache, more than this machine's " + gib(have) +
                                   " GiB of memory; use a smaller -c or --parallel");
  }
  return Status::Ok();
}

llama_context_params LlamaParams(const ContextSpec& spec, int n_threads, int n_threads_batch) {
  const format::ContextParams& p = spec.params;
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = p.n_ctx * spec.n_seq;
  cp.n_batch = p.n_batch;
  cp.n_ubatch = p.n_ubatch;
  cp.n_seq_max = spec.n_seq;
  cp.n_threads = n_threads;
  cp.n_threads_batch = n_threads_batch;
  cp.type_k = static_cast<ggml_type>(p.type_k);
  cp.type_v = static_cast<ggml_type>(p.type_v);
  cp.flash_attn_type =
      p.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
  cp.rope_scaling_type = static_cast<llama_rope_scaling_type>(p.rope_scaling_type);
  cp.rope_freq_base = p.rope_freq_base;
  cp.rope_freq_scale = p.rope_freq_scale;
  cp.yarn_ext_factor = p.yarn_ext_factor;
  cp.yarn_attn_factor = p.yarn_attn_factor;
  cp.yarn_beta_fast = p.yarn_beta_fast;
  cp.yarn_beta_slow = p.yarn_beta_slow;
  cp.yarn_orig_ctx = p.yarn_orig_ctx;
  cp.swa_full = p.swa_full;
  // One KV stream per sequence: a sequence's cells are always its positions in order.
  cp.kv_unified = spec.n_seq > 1 ? false : p.kv_unified;
  cp.no_perf = true;
  return cp;
}

}  // namespace

Result<format::MemoryKind> MemoryKindOf(const Model& model) {
  const llama_model* lm = ImplOf(model)->model;
  ModelMemoryKind memory;
  memory.recurrent = llama_model_is_recurrent(lm);
  memory.hybrid = llama_model_is_hybrid(lm);
  memory.n_swa = llama_model_n_swa(lm);
  return ClassifyMemory(memory, model.path(), ImplOf(model)->arch);
}

bool ResolveFlashAttn(const Model& model, FlashAttention requested) {
  if (requested != FlashAttention::kAuto) return requested == FlashAttention::kOn;
  return ImplOf(model)->arch != "grok";
}

Result<format::ContextParams> ParamsFor(const Model& model, const SessionOptions& options) {
  format::ContextParams p;
  p.n_ctx = options.n_ctx.value_or(SessionOptions::kDefaultContext);
  p.n_batch = options.n_batch.value_or(2048);
  p.n_ubatch = std::min(options.n_ubatch.value_or(512), p.n_batch);
  p.n_seq_max = 1;
  const std::string type_k_name = options.cache_type_k.value_or("f16");
  const std::string type_v_name = options.cache_type_v.value_or("f16");
  auto type_k = ParseCacheType(type_k_name, "K");
  if (!type_k.ok()) return type_k.status();
  auto type_v = ParseCacheType(type_v_name, "V");
  if (!type_v.ok()) return type_v.status();
  p.type_k = *type_k;
  p.type_v = *type_v;
  p.type_k_name = ggml_type_name(*type_k);
  p.type_v_name = ggml_type_name(*type_v);
  const FlashAttention fa = options.flash_attn.value_or(FlashAttention::kAuto);
  if (fa == FlashAttention::kOff && ggml_is_quantized(*type_v)) {
    return Status::InvalidArgument("a quantized V cache (" + type_v_name +
                                   ") needs flash attention; use -fa on or --cache-type-v f16");
  }
  p.flash_attn = ResolveFlashAttn(model, fa) || ggml_is_quantized(*type_v);
  const llama_context_params defaults = llama_context_default_params();
  p.rope_scaling_type = defaults.rope_scaling_type;
  p.rope_freq_base = defaults.rope_freq_base;
  p.rope_freq_scale = defaults.rope_freq_scale;
  p.yarn_ext_factor = defaults.yarn_ext_factor;
  p.yarn_attn_factor = defaults.yarn_attn_factor;
  p.yarn_beta_fast = defaults.yarn_beta_fast;
  p.yarn_beta_slow = defaults.yarn_beta_slow;
  p.yarn_orig_ctx = defaults.yarn_orig_ctx;
  p.swa_full = defaults.swa_full;
  p.kv_unified = defaults.kv_unified;
  return p;
}

Result<std::unique_ptr<Context>> Context::Create(std::shared_ptr<const Model> model,
                                                 const ContextSpec& spec) {
  if (!model) return Status::InvalidArgument("a context needs a loaded model");
  const format::ContextParams& p = spec.params;
  KVSTASH_RETURN_IF_ERROR(CheckThreadsAndBatch(spec.n_threads, p.n_batch, p.n_ubatch));
  KVSTASH_RETURN_IF_ERROR(CheckThreadsAndBatch(spec.n_threads_batch, 1, 1));
  auto memory = MemoryKindOf(*model);
  if (!memory.ok()) return memory.status();
  KVSTASH_RETURN_IF_ERROR(CheckContextFits(*model, p, uint64_t(p.n_ctx) * spec.n_seq));
  std::unique_ptr<Context> c(new Context());
  c->model_ = model;
  c->memory_ = *memory;
  c->n_swa_ = static_cast<uint32_t>(std::max(0, llama_model_n_swa(ImplOf(*model)->model)));
  c->n_threads_ = ResolveThreads(spec.n_threads);
  const int n_threads_batch = spec.n_threads_batch > 0 ? spec.n_threads_batch : c->n_threads_;
  ClearLlamaError();
  llama_context* ctx = llama_init_from_model(ImplOf(*model)->model,
                                             LlamaParams(spec, c->n_threads_, n_threads_batch));
  if (ctx == nullptr) {
    const std::string why = LastLlamaError();
    const std::string size =
        spec.n_seq > 1 ? std::to_string(spec.n_seq) + " x " + std::to_string(p.n_ctx) + " tokens"
                       : std::to_string(p.n_ctx) + "-token";
    return Status::InvalidArgument("cannot create a " + size + " context for model '" +
                                   model->path() + "'" +
                                   (why.empty() ? "" : " (llama.cpp: " + why + ")") +
                                   "; try a smaller -c, other cache types or fewer --parallel");
  }
  c->ctx_.reset(ctx);
  c->params_ = p;
  c->params_.n_seq_max = spec.n_seq;
  c->params_.n_ctx = llama_n_ctx(ctx) / spec.n_seq;  // llama.cpp rounds the size up
  if (spec.n_seq > 1) c->params_.kv_unified = false;
  c->n_stream_ = spec.n_seq > 1 ? llama_n_seq_max(ctx) : 1;
  c->invariant_ = WouldBeInvariant(*model, p);
  KVSTASH_RETURN_IF_ERROR(c->LearnRecurrentShape());
  return c;
}

bool InvariantBuild() { return std::strcmp(MatmulPath(), "llamafile") != 0; }

bool WouldBeInvariant(const Model& model, const format::ContextParams& params) {
  const ModelImpl& m = *ImplOf(model);
  // The IQ panel is off only if GGML_NO_IQ_PANEL was set before the process's first product
  // (Model::Load sets it for unrepacked weights).
  return !params.flash_attn && InvariantBuild() && !m.on_gpu && !m.repack_weights &&
         std::getenv("GGML_NO_IQ_PANEL") != nullptr;
}

std::string Context::WhyNotInvariant() const {
  if (invariant_) return "";
  if (params_.flash_attn) return "flash attention is on";
  if (!InvariantBuild()) {
    return "this llama.cpp computes one-row products with vec_dot and others with llamafile's "
           "tinyBLAS (build kvstash's pinned llama.cpp with -DKVSTASH_BATCH_INVARIANT=ON)";
  }
  if (ImplOf(*model_)->on_gpu) return "layers run on a GPU";
  return "the model's weights are repacked";
}

Status Context::LearnRecurrentShape() {
  if (memory_ != format::MemoryKind::kRecurrent && memory_ != format::MemoryKind::kHybrid) {
    return Status::Ok();
  }
  std::vector<uint8_t> empty;
  KVSTASH_RETURN_IF_ERROR(PartialState(*this, 0, &empty));
  auto shape = format::ParseRecurrentShape(empty.data(), empty.size(), memory_, /*partial=*/true,
                                           "model '" + model_->path() + "'");
  if (!shape.ok()) return shape.status();
  rs_shape_ = *shape;
  return Status::Ok();
}

Status Context::CheckRecurrentShape(const format::RecurrentLayout& rs,
                                    const std::string& what) const {
  if (!rs_shape_ || rs.SameShape(*rs_shape_)) return Status::Ok();
  const auto describe = [](const format::RecurrentLayout& l) {
    return std::to_string(l.n_layer) + " layers, " + std::to_string(l.n_r) + " R records of " +
           std::to_string(l.r_row_bytes) + " bytes and " + std::to_string(l.n_s) +
           " S records of " + std::to_string(l.s_row_bytes) + " bytes";
  };
  return Status::Corruption(what + " has a recurrent state of " + describe(rs) + ", but model '" +
                            model_->path() + "' keeps " + describe(*rs_shape_) +
                            "; re-create it with 'kvstash save'");
}

Result<const StateShape*> Context::Shape(llama_seq_id seq) {
  if (memory_ == format::MemoryKind::kKv) return static_cast<const StateShape*>(nullptr);
  if (shape_) return &*shape_;
  llama_memory_t mem = llama_get_memory(ctx_.get());
  const bool probe = llama_memory_seq_pos_max(mem, seq) < 0;
  if (probe) {
    llama_batch batch = llama_batch_init(1, 0, 1);
    batch.n_tokens = 1;
    batch.token[0] = 0;
    batch.pos[0] = 0;
    batch.n_seq_id[0] = 1;
    batch.seq_id[0][0] = seq;
    batch.logits[0] = 1;
    ClearLlamaError();
    const int32_t rc = llama_decode(ctx_.get(), batch);
    llama_batch_free(batch);
    if (rc != 0) {
      llama_memory_seq_rm(mem, seq, -1, -1);
      return Status::Internal("llama.cpp could not decode one token to learn the state's layout: " +
                              LastLlamaError());
    }
  }
  SeqState state;
  Status status = GetSeqState(ctx_.get(), seq, n_stream_, &state, memory_, n_swa_);
  std::vector<uint8_t> snapshot;
  if (status.ok()) status = PartialState(*this, seq, &snapshot);
  if (probe) llama_memory_seq_rm(mem, seq, -1, -1);
  if (!status.ok()) return status;
  StateShape learnt;
  learnt.layout = state.seq;
  learnt.snapshot_bytes = snapshot.size();
  shape_ = learnt;
  return &*shape_;
}

void Context::SetCancelFlag(const std::atomic<bool>* cancel) {
  cancel_ = cancel;
  // ggml checks the callback between graph nodes, so a long prefill stops within milliseconds.
  llama_set_abort_callback(
      ctx_.get(),
      cancel == nullptr ? nullptr
                        : +[](void* flag) { return static_cast<std::atomic<bool>*>(flag)->load(); },
      const_cast<std::atomic<bool>*>(cancel));
}

}  // namespace kvstash::engine
