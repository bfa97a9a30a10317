#include "engine/batch_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <optional>
#include <thread>

#include "engine/llama_runtime.h"
#include "engine/session_impl.h"
#include "engine/store_chain.h"
#include "ggml-cpu.h"
#include "kvstash/store.h"
#include "store/store_impl.h"

namespace kvstash::engine {
namespace {

struct SamplerDeleter {
  void operator()(llama_sampler* s) const { llama_sampler_free(s); }
};
using SamplerPtr = std::unique_ptr<llama_sampler, SamplerDeleter>;

SamplerPtr MakeSampler(const SlotSampling& s) {
  llama_sampler_chain_params params = llama_sampler_chain_default_params();
  params.no_perf = true;
  SamplerPtr chain(llama_sampler_chain_init(params));
  if (s.temperature <= 0) {
    llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
    return chain;
  }
  if (s.top_p < 1) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(s.top_p, 1));
  llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(s.temperature));
  llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(s.seed));
  return chain;
}

uint32_t RoundUp256(uint32_t n) { return (n + 255) / 256 * 256; }

}  // namespace

struct Slot {
  bool busy = false;
  std::vector<Token> tokens;  // the request's tokens: prompt, then sampled
  size_t n_cached = 0;        // tokens[0, n_cached) are in the slot's KV stream
  // tokens[0, n_exact) hold the KV bytes a cold chunk-aligned decode gives (all of n_cached when
  // the engine is batch-invariant): only those are reused or published.
  size_t n_exact = 0;
  size_t n_prompt = 0;
  int logits_index = -1;  // the slot's row of logits in the last step, -1: none
  SamplerPtr sampler;
  SlotReport report;
  uint64_t last_used = 0;
  // The store: the lookup in flight, what the store holds of the slot's tokens.
  std::future<Fetched> fetch;
  long first_bad = -1;   // a chunk that exists but was refused (its publish replaces it)
  size_t published = 0;  // chunks of the slot's tokens queued (or known) in the store
  // Every memory kind but kKv: what each chunk decoded here carries beyond its cells (window
  // cells or a snapshot), captured at its last token (engine/store_chain.h, BoundaryPart).
  BoundaryParts parts;
};

// Tokens at the start of `prompt` that slot `s` holds exactly (reusable KV).
size_t CommonPrefix(const Slot& s, const std::vector<Token>& prompt) {
  size_t common = 0;
  while (common < s.n_exact && common < prompt.size() && s.tokens[common] == prompt[common])
    ++common;
  return common;
}

struct BatchEngine::Impl {
  std::shared_ptr<const Model> model;
  std::shared_ptr<Store> store;
  BatchEngineOptions options;
  ContextPtr ctx;
  SessionMeta params;  // for the store's namespace (n_ctx: one slot's)
  bool v_trans = false;
  bool invariant = false;
  uint32_t n_stream = 1;
  format::MemoryKind memory = format::MemoryKind::kKv;
  uint32_t n_swa = 0;
  std::optional<StateShape> shape;  // every kind but kKv, for the store's chunk layout
  std::optional<format::RecurrentLayout> rs_shape;
  std::vector<Slot> slots;
  uint64_t clock = 0;
  bool prompt_turn = false;  // not invariant: steps alternate generation and one prompt group

  llama_memory_t mem() const { return llama_get_memory(ctx.get()); }
  uint32_t chunk() const { return options.chunk_tokens; }

  // Whether slot `s`'s memory can go back to its first `keep` tokens (Session::Impl::CanCut).
  bool CanCut(const Slot& s, size_t keep) const {
    if (keep == 0 || keep >= s.n_cached || memory == format::MemoryKind::kKv) return true;
    if (memory == format::MemoryKind::kIswa) return keep + 1 == s.n_cached || s.n_cached <= n_swa;
    return false;
  }

  // Keeps the slot's first `keep` cached tokens, or none where its memory cannot be cut there.
  void Drop(int i, size_t keep) {
    Slot& s = slots[i];
    if (!CanCut(s, keep)) keep = 0;
    if (keep < s.n_cached) {
      if (keep == 0 || !llama_memory_seq_rm(mem(), i, static_cast<llama_pos>(keep), -1)) {
        llama_memory_seq_rm(mem(), i, -1, -1);
        keep = 0;
      }
    }
    s.n_cached = std::min(s.n_cached, keep);
    s.n_exact = std::min(s.n_exact, keep);
    s.published = std::min(s.published, keep / chunk());
    s.parts.erase(s.parts.upper_bound(static_cast<uint32_t>(keep / chunk())), s.parts.end());
  }

  Chain ChainOf(const std::vector<Token>& tokens) const {
    return MakeChain(*model, params, v_trans, chunk(), tokens, shape ? &*shape : nullptr);
  }

  // Slot i's memory's trailing part (window or recurrent state) as a one-stream snapshot.
  Status SlotSnapshot(int i, std::vector<uint8_t>* out) const {
    const size_t size =
        llama_state_seq_get_size_ext(ctx.get(), i, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
    out->resize(size);
    ClearLlamaError();
    if (size == 0 || llama_state_seq_get_data_ext(ctx.get(), out->data(), size, i,
                                                  LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) != size) {
      return Status::Internal("llama.cpp could not copy a sequence's window or state: " +
                              LastLlamaError());
    }
    if (n_stream > 1) {
      auto one = format::StateToOneStream(out->data(), size, memory, /*partial=*/true, n_stream,
                                          static_cast<uint32_t>(i));
      if (!one.ok()) return one.status();
      out->resize(*one);
    }
    return Status::Ok();
  }

  // After slot i's prompt reached the end of chunk `index`: what the chunk carries beyond its
  // cells, for the store (nothing for kKv, or without a store).
  void CaptureBoundary(int i, uint32_t index) {
    if (!store || !shape) return;
    const Chain chain = ChainOf({});
    const format::ChunkLayout& l = chain.layout;
    if (l.kind != format::MemoryKind::kIswa && !l.HasSnapshot(index)) return;
    std::vector<uint8_t> snapshot;
    Status status = SlotSnapshot(i, &snapshot);
    if (status.ok()) status = BoundaryPart(chain, index, snapshot, &slots[i].parts);
    if (!status.ok()) {
      store->impl()->Warn("kvstash: chunk " + std::to_string(index) +
                          " of a prompt will not be saved: " + status.message());
    }
  }

  // Learns the state's shape from one token decoded in sequence 0 (then dropped): which layers
  // slide or keep a state is not in llama.h, and the store's chunk layout depends on it.
  Status LearnShape() {
    llama_token token = 0;
    llama_batch batch = llama_batch_get_one(&token, 1);
    ClearLlamaError();
    if (llama_decode(ctx.get(), batch) != 0) {
      llama_memory_seq_rm(mem(), 0, -1, -1);
      return Status::Internal("llama.cpp could not decode one token to learn the state's " +
                              std::string("layout: ") + LastLlamaError());
    }
    SeqState state;
    Status status = GetSeqState(ctx.get(), 0, n_stream, &state, memory, n_swa);
    std::vector<uint8_t> snapshot;
    if (status.ok()) status = SlotSnapshot(0, &snapshot);
    llama_memory_seq_rm(mem(), 0, -1, -1);
    if (!status.ok()) return status;
    StateShape learnt;
    learnt.layout = state.seq;
    learnt.snapshot_bytes = snapshot.size();
    shape = learnt;
    return Status::Ok();
  }

  // A finished lookup: restore what it found beyond what the slot kept of its own.
  void FinishFetch(int i) {
    Slot& s = slots[i];
    Fetched fetched = s.fetch.get();
    s.first_bad = fetched.first_bad;
    const size_t cells = fetched.n_assembled * chunk();
    if (cells <= s.n_cached) {
      s.published = std::max(s.published, std::min(fetched.n_found, s.n_cached / chunk()));
      return;
    }
    Status status = fetched.status;
    if (status.ok() && shape &&
        (memory == format::MemoryKind::kRecurrent || memory == format::MemoryKind::kHybrid)) {
      if (!fetched.layout.rs.SameShape(shape->layout.rs))
        status = Status::Corruption("the store's snapshot has another recurrent layout");
    }
    if (status.ok()) {
      s.parts.clear();
      status = RestoreFetched(ctx.get(), i, n_stream, fetched, chunk());
    }
    if (!status.ok()) {
      store->impl()->Warn("kvstash: chunks of store '" + store->dir() +
                          "' were not used: " + status.message());
      s.n_cached = s.n_exact = s.published = 0;
      s.report.n_reused = 0;
      llama_memory_seq_rm(mem(), i, -1, -1);
      return;
    }
    s.n_cached = s.n_exact = cells;
    s.report.n_reused = cells;
    s.report.n_restored = cells;
    s.published = fetched.n_found;
  }

  // The tokens slot i decodes in this step: [n_cached, end).
  size_t GroupEnd(const Slot& s, size_t budget) const {
    const size_t n = s.tokens.size();
    // A window or state is captured at chunk boundaries, so groups end there for those.
    if (invariant && memory == format::MemoryKind::kKv) return std::min(n, s.n_cached + budget);
    const size_t boundary = (s.n_cached / chunk() + 1) * chunk();
    return std::min(n, boundary);
  }

  Status Decode(const std::vector<std::pair<int, size_t>>& work, std::vector<int>* ready);
  void Publish(int i, size_t upto_tokens);
};

Status BatchEngine::Impl::Decode(const std::vector<std::pair<int, size_t>>& work,
                                 std::vector<int>* ready) {
  size_t total = 0;
  for (const auto& [i, end] : work) total += end - slots[i].n_cached;
  llama_batch batch = llama_batch_init(static_cast<int32_t>(total), 0, 1);
  int32_t row = 0;
  for (const auto& [i, end] : work) {
    Slot& s = slots[i];
    s.logits_index = -1;
    for (size_t p = s.n_cached; p < end; ++p, ++row) {
      batch.token[row] = s.tokens[p];
      batch.pos[row] = static_cast<llama_pos>(p);
      batch.n_seq_id[row] = 1;
      batch.seq_id[row][0] = i;
      batch.logits[row] = (p + 1 == s.tokens.size()) ? 1 : 0;
      if (batch.logits[row]) s.logits_index = row;
    }
  }
  batch.n_tokens = row;
  ClearLlamaError();
  const int32_t rc = llama_decode(ctx.get(), batch);
  llama_batch_free(batch);
  if (rc != 0) {
    const std::string why = LastLlamaError();
    return Status::Internal("llama.cpp failed to decode a batch of " + std::to_string(total) +
                            " tokens (code " + std::to_string(rc) + ")" +
                            (why.empty() ? "" : ": " + why));
  }
  for (const auto& [i, end] : work) {
    Slot& s = slots[i];
    const bool prompt = s.n_cached < s.n_prompt;
    s.n_cached = end;
    if (invariant || prompt) s.n_exact = std::max(s.n_exact, std::min(end, s.n_prompt));
    if (invariant) s.n_exact = end;
    if (prompt && end % chunk() == 0 && memory != format::MemoryKind::kKv)
      CaptureBoundary(i, static_cast<uint32_t>(end / chunk()));
    if (s.logits_index >= 0) ready->push_back(i);
  }
  return Status::Ok();
}

void BatchEngine::Impl::Publish(int i, size_t upto_tokens) {
  Slot& s = slots[i];
  if (!store) return;
  const size_t n_chunks = std::min(upto_tokens, s.n_exact) / chunk();
  if (n_chunks <= s.published) return;
  std::vector<Token> tokens(s.tokens.begin(), s.tokens.begin() + n_chunks * chunk());
  const Chain chain = ChainOf(tokens);
  SeqState state;
  const Status status = GetSeqState(ctx.get(), i, n_stream, &state, memory, n_swa);
  if (!status.ok()) {
    store->impl()->Warn("kvstash: the new chunks were not saved to store '" + store->dir() +
                        "': " + status.message());
    return;
  }
  const long bad = s.first_bad >= static_cast<long>(s.published) ? s.first_bad : -1;
  s.report.n_published += PublishChunks(*store, chain, tokens, state, s.published, bad, &s.parts);
  s.published = n_chunks;
}

BatchEngine::BatchEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

BatchEngine::~BatchEngine() {
  if (!impl_) return;
  for (auto& s : impl_->slots)
    if (s.fetch.valid()) s.fetch.wait();
}

Result<std::unique_ptr<BatchEngine>> BatchEngine::Create(std::shared_ptr<const Model> model,
                                                         const BatchEngineOptions& options,
                                                         std::shared_ptr<Store> store) {
  if (!model) return Status::InvalidArgument("the server needs a loaded model");
  if (options.n_slots < 1 || options.n_slots > 256) {
    return Status::InvalidArgument("--parallel " + std::to_string(options.n_slots) +
                                   " is out of range; use 1 to 256");
  }
  llama_model* lm = model->impl()->model;
  auto memory = MemoryKindOf(*model);
  if (!memory.ok()) return memory.status();
  auto impl = std::make_unique<Impl>();
  impl->model = model;
  impl->memory = *memory;
  impl->n_swa = static_cast<uint32_t>(std::max(0, llama_model_n_swa(lm)));
  impl->store = store;
  impl->options = options;
  if (store) impl->options.chunk_tokens = store->chunk_tokens();
  if (impl->options.chunk_tokens == 0) impl->options.chunk_tokens = 256;
  impl->options.n_ctx_slot = RoundUp256(std::max<uint32_t>(options.n_ctx_slot, 256));
  // A step holds every slot's generated token, and without batch invariance a whole prompt group.
  impl->options.n_batch = std::max({options.n_batch, options.n_slots, impl->options.chunk_tokens});
  SessionOptions so;
  so.n_ctx = impl->options.n_ctx_slot;
  so.n_batch = impl->options.n_batch;
  so.n_ubatch = options.n_ubatch;
  so.flash_attn = options.flash_attn;
  so.cache_type_k = options.cache_type_k;
  so.cache_type_v = options.cache_type_v;
  auto params = Session::Impl::ParamsFor(so);
  if (!params.ok()) return params.status();
  impl->params = *params;
  impl->params.n_seq_max = options.n_slots;
  impl->params.kv_unified = false;

  SessionMeta whole = impl->params;
  whole.n_ctx = impl->options.n_ctx_slot * options.n_slots;
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const int n_threads = options.n_threads > 0 ? options.n_threads : static_cast<int>(hw);
  KVSTASH_RETURN_IF_ERROR(Session::Impl::CheckContextFits(*model, whole));
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = whole.n_ctx;
  cp.n_batch = whole.n_batch;
  cp.n_ubatch = whole.n_ubatch;
  cp.n_seq_max = options.n_slots;
  cp.kv_unified = false;
  cp.n_threads = cp.n_threads_batch = n_threads;
  cp.type_k = static_cast<ggml_type>(whole.type_k);
  cp.type_v = static_cast<ggml_type>(whole.type_v);
  cp.flash_attn_type = options.flash_attn == FlashAttention::kOn    ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                       : options.flash_attn == FlashAttention::kOff ? LLAMA_FLASH_ATTN_TYPE_DISABLED
                                                                    : LLAMA_FLASH_ATTN_TYPE_AUTO;
  cp.no_perf = true;
  ClearLlamaError();
  ClearFlashAttnResolution();
  llama_context* ctx = llama_init_from_model(lm, cp);
  if (ctx == nullptr) {
    const std::string why = LastLlamaError();
    return Status::InvalidArgument(
        "cannot create a context of " + std::to_string(options.n_slots) + " x " +
        std::to_string(impl->options.n_ctx_slot) + " tokens for model '" + model->path() + "'" +
        (why.empty() ? "" : " (llama.cpp: " + why + ")") + "; try a smaller -c or --parallel");
  }
  impl->ctx.reset(ctx);
  impl->n_stream = llama_n_seq_max(ctx);  // one stream per sequence (kv_unified off)
  const int fa = LastFlashAttnResolution();
  const bool flash = options.flash_attn == FlashAttention::kOn ||
                     (options.flash_attn == FlashAttention::kAuto && fa != 0);
  impl->v_trans = !flash;
  impl->params.flash_attn = flash;
  impl->invariant =
      !flash && InvariantBuild() && !model->impl()->on_gpu && !model->impl()->repack_weights;
  impl->slots.resize(options.n_slots);
  if (impl->memory != format::MemoryKind::kKv) KVSTASH_RETURN_IF_ERROR(impl->LearnShape());
  return std::unique_ptr<BatchEngine>(new BatchEngine(std::move(impl)));
}

bool BatchEngine::InvariantBuild() { return !ggml_cpu_has_llamafile(); }

uint32_t BatchEngine::n_slots() const { return static_cast<uint32_t>(impl_->slots.size()); }
uint32_t BatchEngine::n_ctx_slot() const { return impl_->options.n_ctx_slot; }
bool BatchEngine::batch_invariant() const { return impl_->invariant; }
const Model& BatchEngine::model() const { return *impl_->model; }

std::string BatchEngine::Describe() const {
  const Impl& m = *impl_;
  return std::to_string(m.slots.size()) + " sequence(s) of " +
         std::to_string(m.options.n_ctx_slot) + " tokens, flash attention " +
         (m.v_trans ? "off" : "on") + ", KV " + m.options.cache_type_k + "/" +
         m.options.cache_type_v + ", prompt groups of " + std::to_string(m.chunk()) +
         " tokens; answers " +
         (m.invariant ? "independent of load (batch-invariant decoding)"
                      : std::string("may depend on load: ") +
                            (!m.v_trans ? "flash attention is on"
                             : ggml_cpu_has_llamafile()
                                 ? "this llama.cpp uses the llamafile matmul (GGML_LLAMAFILE)"
                             : m.model->impl()->on_gpu ? "layers run on a GPU"
                                                       : "the model's weights are repacked"));
}

int BatchEngine::PickSlot(const std::vector<Token>& prompt, const std::vector<bool>& busy) const {
  int best = -1;
  size_t best_common = 0;
  uint64_t best_used = UINT64_MAX;
  for (size_t i = 0; i < impl_->slots.size(); ++i) {
    if (i < busy.size() && busy[i]) continue;
    const Slot& s = impl_->slots[i];
    const size_t common = CommonPrefix(s, prompt);
    if (best < 0 || common > best_common || (common == best_common && s.last_used < best_used)) {
      best = static_cast<int>(i);
      best_common = common;
      best_used = s.last_used;
    }
  }
  return best;
}

void BatchEngine::Begin(int i, std::vector<Token> prompt, const SlotSampling& sampling) {
  Impl& m = *impl_;
  Slot& s = m.slots[i];
  s.busy = true;
  s.last_used = ++m.clock;
  s.report = SlotReport();
  s.report.n_prompt = prompt.size();
  s.sampler = MakeSampler(sampling);
  // Keep the common prefix the slot's cache holds exactly, never the last prompt token (its
  // logits come from decoding it); without batch invariance only whole chunks of it.
  size_t keep = std::min(CommonPrefix(s, prompt), prompt.size() - 1);
  if (!m.invariant) keep = keep / m.chunk() * m.chunk();
  m.Drop(i, keep);
  s.tokens = std::move(prompt);
  s.n_prompt = s.tokens.size();
  s.report.n_reused = s.n_cached;
  s.first_bad = -1;
  if (!m.store) return;
  // The store holds at most the chunks before the one with the last token.
  const size_t usable = (s.n_prompt - 1) / m.chunk();
  const Chain chain =
      m.ChainOf(std::vector<Token>(s.tokens.begin(), s.tokens.begin() + usable * m.chunk()));
  if (usable * m.chunk() <= s.n_cached) return;
  std::shared_ptr<Store> store = m.store;
  std::vector<Token> tokens = s.tokens;
  const uint32_t n_stream = m.n_stream;
  s.fetch = std::async(std::launch::async, [store, chain, tokens, usable, n_stream] {
    return FetchPrefix(*store, chain, tokens, usable, 1, /*huge_pages=*/false, n_stream);
  });
}

bool BatchEngine::HasWork() const {
  for (const Slot& s : impl_->slots)
    if (s.busy && (s.fetch.valid() || s.n_cached < s.tokens.size())) return true;
  return false;
}

Status BatchEngine::Step(std::vector<int>* ready, std::vector<int>* failed) {
  Impl& m = *impl_;
  ready->clear();
  failed->clear();
  // Lookups that finished: restore now, before the slot's first decode.
  for (size_t i = 0; i < m.slots.size(); ++i) {
    Slot& s = m.slots[i];
    if (s.busy && s.fetch.valid() &&
        s.fetch.wait_for(std::chrono::seconds(0)) == std::future_status::ready)
      m.FinishFetch(static_cast<int>(i));
  }
  // Generation tokens first (one each), then prompt tokens while the batch has room. Without
  // batch invariance a prompt group is decoded alone, in steps that alternate with generation.
  std::vector<std::pair<int, size_t>> gen, prompt;
  size_t budget = m.options.n_batch;
  for (size_t i = 0; i < m.slots.size(); ++i) {
    const Slot& s = m.slots[i];
    if (!s.busy || s.fetch.valid() || s.n_cached >= s.tokens.size()) continue;
    if (s.n_cached >= s.n_prompt) gen.push_back({static_cast<int>(i), s.n_cached + 1});
  }
  budget -= std::min(budget, gen.size());
  for (size_t i = 0; i < m.slots.size() && budget > 0; ++i) {
    const Slot& s = m.slots[i];
    if (!s.busy || s.fetch.valid() || s.n_cached >= s.n_prompt) continue;
    const size_t end = m.GroupEnd(s, budget);
    if (end - s.n_cached > budget && !prompt.empty()) break;
    prompt.push_back({static_cast<int>(i), end});
    budget -= std::min(budget, end - s.n_cached);
    if (!m.invariant) break;
  }
  std::vector<std::pair<int, size_t>> work;
  if (m.invariant) {
    work = gen;
    work.insert(work.end(), prompt.begin(), prompt.end());
    std::sort(work.begin(), work.end());  // consecutive sequence ids share a micro-batch
  } else {
    const bool take_prompt = !prompt.empty() && (gen.empty() || m.prompt_turn);
    work = take_prompt ? prompt : gen;
    m.prompt_turn = !take_prompt;
  }
  if (work.empty()) {
    // Only lookups in flight: wait a little for one instead of spinning.
    for (Slot& s : m.slots) {
      if (s.busy && s.fetch.valid()) {
        s.fetch.wait_for(std::chrono::milliseconds(5));
        break;
      }
    }
    return Status::Ok();
  }
  const Status status = m.Decode(work, ready);
  if (!status.ok()) {
    for (const auto& [i, end] : work) {
      failed->push_back(i);
      m.Drop(i, 0);
      m.slots[i].tokens.clear();
    }
    return status;
  }
  // Non-finite logits (a NaN in a restored or computed cache) would poison every sample. They
  // show at the first logits after the prompt, so only those are checked (not every token's).
  const int32_t n_vocab = m.model->n_vocab();
  for (auto it = ready->begin(); it != ready->end();) {
    if (m.slots[*it].tokens.size() != m.slots[*it].n_prompt) {
      ++it;
      continue;
    }
    const float* logits = llama_get_logits_ith(m.ctx.get(), m.slots[*it].logits_index);
    bool finite = logits != nullptr;
    for (int32_t t = 0; finite && t < n_vocab; ++t) finite = std::isfinite(logits[t]);
    if (finite) {
      ++it;
      continue;
    }
    failed->push_back(*it);
    m.Drop(*it, 0);
    m.slots[*it].tokens.clear();
    it = ready->erase(it);
  }
  if (!failed->empty())
    return Status::Corruption("the model produced non-finite logits; the sequence was dropped");
  return Status::Ok();
}

Token BatchEngine::Sample(int i) {
  Slot& s = impl_->slots[i];
  const Token t = llama_sampler_sample(s.sampler.get(), impl_->ctx.get(), s.logits_index);
  s.logits_index = -1;
  s.tokens.push_back(t);
  return t;
}

const std::vector<Token>& BatchEngine::tokens(int i) const { return impl_->slots[i].tokens; }
const SlotReport& BatchEngine::report(int i) const { return impl_->slots[i].report; }

void BatchEngine::PublishPrompt(int i) { impl_->Publish(i, impl_->slots[i].n_prompt); }

void BatchEngine::End(int i) {
  Impl& m = *impl_;
  Slot& s = m.slots[i];
  if (s.fetch.valid()) m.FinishFetch(i);
  m.Publish(i, s.n_cached);
  // Tokens sampled but never decoded are not in the cache.
  s.tokens.resize(s.n_cached);
  s.sampler.reset();
  s.busy = false;
  s.last_used = ++m.clock;
}

}  // namespace kvstash::engine
