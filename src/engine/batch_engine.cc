#include "engine/batch_engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <optional>
#include <thread>

#include "engine/context.h"
#include "engine/sampler.h"
#include "engine/sequence.h"
#include "engine/store_chain.h"
#include "kvstash/store.h"
#include "store/store_impl.h"

namespace kvstash::engine {
namespace {

uint32_t RoundUp256(uint32_t n) { return (n + 255) / 256 * 256; }

}  // namespace

struct Slot {
  bool busy = false;
  std::unique_ptr<Sequence> seq;  // the request's tokens: prompt, then sampled
  size_t n_prompt = 0;
  SamplerPtr sampler;
  SlotReport report;
  uint64_t last_used = 0;
  std::future<Fetched> fetch;  // the store lookup in flight
};

struct BatchEngine::Impl {
  std::shared_ptr<Store> store;
  BatchEngineOptions options;
  std::unique_ptr<Context> context;
  std::vector<Slot> slots;
  uint64_t clock = 0;
  bool prompt_turn = false;  // not invariant: steps alternate generation and one prompt group

  bool invariant() const { return context->invariant(); }
  uint32_t chunk() const { return options.chunk_tokens; }
  Sequence& seq(int i) const { return *slots[i].seq; }

  // A finished lookup: restore what it found beyond what the slot kept of its own.
  void FinishFetch(int i) {
    Slot& s = slots[i];
    Fetched fetched = s.fetch.get();
    const size_t restored = s.seq->ApplyFetched(fetched);
    if (restored > 0) s.report.n_restored = restored;
    s.report.n_reused = s.seq->n_cached();
  }

  // Drops slot i's request after a failure.
  void Fail(int i, std::vector<int>* failed) {
    failed->push_back(i);
    slots[i].seq->Clear();
  }

  void PlanStep(std::vector<Group>* work);
  void CheckFirstLogits(std::vector<int>* ready, std::vector<int>* failed);
};

// Generation tokens first (one each), then prompt tokens while the batch has room. Without batch
// invariance a prompt group is decoded alone, in steps that alternate with generation.
void BatchEngine::Impl::PlanStep(std::vector<Group>* work) {
  std::vector<Group> gen, prompt;
  size_t budget = options.n_batch;
  for (Slot& s : slots) {
    if (!s.busy || s.fetch.valid() || s.seq->n_cached() >= s.seq->tokens().size()) continue;
    if (s.seq->n_cached() >= s.n_prompt) gen.push_back({s.seq.get(), s.seq->n_cached() + 1, false});
  }
  budget -= std::min(budget, gen.size());
  for (Slot& s : slots) {
    if (budget == 0) break;
    if (!s.busy || s.fetch.valid() || s.seq->n_cached() >= s.n_prompt) continue;
    // Without invariance the groups are the ones a cold aligned decode makes, whatever the budget.
    const size_t end = s.seq->GroupEnd(invariant() ? budget : options.n_batch, /*aligned=*/true);
    if (end - s.seq->n_cached() > budget && !prompt.empty()) break;
    prompt.push_back({s.seq.get(), end, true});
    budget -= std::min(budget, end - s.seq->n_cached());
    if (!invariant()) break;
  }
  if (invariant()) {
    *work = gen;
    work->insert(work->end(), prompt.begin(), prompt.end());
    // Consecutive sequence ids share a micro-batch.
    std::sort(work->begin(), work->end(),
              [](const Group& a, const Group& b) { return a.seq->id() < b.seq->id(); });
    return;
  }
  const bool take_prompt = !prompt.empty() && (gen.empty() || prompt_turn);
  *work = take_prompt ? prompt : gen;
  prompt_turn = !take_prompt;
}

// Non-finite logits (a NaN in a restored or computed cache) would poison every sample. They show
// at the first logits after the prompt, so only those are checked (not every token's).
void BatchEngine::Impl::CheckFirstLogits(std::vector<int>* ready, std::vector<int>* failed) {
  for (auto it = ready->begin(); it != ready->end();) {
    const Sequence& sq = seq(*it);
    if (sq.tokens().size() != slots[*it].n_prompt) {
      ++it;
      continue;
    }
    const float* logits = llama_get_logits_ith(context->get(), sq.logits_row());
    if (logits != nullptr && CheckFinite(context->model(), logits, sq.n_cached()).ok()) {
      ++it;
      continue;
    }
    Fail(*it, failed);
    it = ready->erase(it);
  }
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
  auto impl = std::make_unique<Impl>();
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
  ContextSpec spec;
  auto params = ParamsFor(*model, so);
  if (!params.ok()) return params.status();
  spec.params = *params;
  spec.n_seq = options.n_slots;
  spec.n_threads = spec.n_threads_batch = options.n_threads;
  auto context = Context::Create(model, spec);
  if (!context.ok()) return context.status();
  impl->context = std::move(*context);
  impl->slots.resize(options.n_slots);
  for (uint32_t i = 0; i < options.n_slots; ++i)
    impl->slots[i].seq = std::make_unique<Sequence>(impl->context.get(), static_cast<int>(i));
  return std::unique_ptr<BatchEngine>(new BatchEngine(std::move(impl)));
}

uint32_t BatchEngine::n_slots() const { return static_cast<uint32_t>(impl_->slots.size()); }
uint32_t BatchEngine::n_ctx_slot() const { return impl_->options.n_ctx_slot; }
bool BatchEngine::batch_invariant() const { return impl_->invariant(); }
const Model& BatchEngine::model() const { return impl_->context->model(); }

std::string BatchEngine::Describe() const {
  const Impl& m = *impl_;
  return std::to_string(m.slots.size()) + " sequence(s) of " +
         std::to_string(m.options.n_ctx_slot) + " tokens, flash attention " +
         (m.context->v_trans() ? "off" : "on") + ", KV " + m.options.cache_type_k + "/" +
         m.options.cache_type_v + ", prompt groups of " + std::to_string(m.chunk()) +
         " tokens; answers " +
         (m.invariant() ? "independent of load (batch-invariant decoding)"
                        : "may depend on load: " + m.context->WhyNotInvariant());
}

int BatchEngine::PickSlot(const std::vector<Token>& prompt, const std::vector<bool>& busy) const {
  int best = -1;
  size_t best_common = 0;
  uint64_t best_used = UINT64_MAX;
  for (size_t i = 0; i < impl_->slots.size(); ++i) {
    if (i < busy.size() && busy[i]) continue;
    const Slot& s = impl_->slots[i];
    const size_t common = CommonPrefix(s.seq->tokens(), prompt, s.seq->n_exact());
    if (best < 0 || common > best_common || (common == best_common && s.last_used < best_used)) {
      best = static_cast<int>(i);
      best_common = common;
      best_used = s.last_used;
    }
  }
  return best;
}

void BatchEngine::Begin(int i, std::vector<Token> prompt, const SampleOptions& sampling) {
  Impl& m = *impl_;
  Slot& s = m.slots[i];
  s.busy = true;
  s.last_used = ++m.clock;
  s.report = SlotReport();
  s.report.n_prompt = s.n_prompt = prompt.size();
  s.sampler = MakeSampler(sampling, m.context->model(), {}, m.context->n_ctx_seq());
  auto chain = s.seq->Begin(std::move(prompt), m.chunk(), m.store.get());
  if (!chain.ok()) {
    ImplOf(*m.store)->Warn("kvstash: the store is not used for a prompt: " +
                           chain.status().message());
  }
  s.report.n_reused = s.seq->n_cached();
  if (!chain.ok() || !chain->Lookup()) return;
  std::shared_ptr<Store> store = m.store;
  std::vector<Token> tokens = s.seq->tokens();
  const uint32_t n_stream = m.context->n_stream();
  s.fetch = std::async(std::launch::async, [store, chain = *chain, tokens, n_stream] {
    return FetchPrefix(*store, chain, tokens, chain.hashes.size(), 1, /*huge_pages=*/false,
                       n_stream);
  });
}

bool BatchEngine::HasWork() const {
  for (const Slot& s : impl_->slots)
    if (s.busy && (s.fetch.valid() || s.seq->n_cached() < s.seq->tokens().size())) return true;
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
  std::vector<Group> work;
  m.PlanStep(&work);
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
  const Status status = DecodeGroups(*m.context, work);
  if (!status.ok()) {
    for (const Group& g : work) m.Fail(g.seq->id(), failed);
    return status;
  }
  for (const Group& g : work)
    if (g.seq->logits_row() >= 0) ready->push_back(g.seq->id());
  m.CheckFirstLogits(ready, failed);
  if (!failed->empty())
    return Status::Corruption("the model produced non-finite logits; the sequence was dropped");
  return Status::Ok();
}

Token BatchEngine::Sample(int i) {
  Sequence& seq = impl_->seq(i);
  const Token t =
      llama_sampler_sample(impl_->slots[i].sampler.get(), impl_->context->get(), seq.logits_row());
  seq.tokens().push_back(t);
  return t;
}

const float* BatchEngine::Logits(int i) const {
  return llama_get_logits_ith(impl_->context->get(), impl_->seq(i).logits_row());
}

const std::vector<Token>& BatchEngine::tokens(int i) const { return impl_->seq(i).tokens(); }
const SlotReport& BatchEngine::report(int i) const { return impl_->slots[i].report; }

void BatchEngine::PublishPrompt(int i) {
  Slot& s = impl_->slots[i];
  // The prompt's tail waits for End, which copies the sequence once for both tails.
  s.seq->QueuePublish(s.n_prompt, /*tail=*/false);
  s.report.n_published += s.seq->RunPendingPublish();
}

void BatchEngine::End(int i) {
  Impl& m = *impl_;
  Slot& s = m.slots[i];
  if (s.fetch.valid()) m.FinishFetch(i);
  // Tails at the prompt's end (another question after the same prompt) and at the answer's (the
  // conversation's next turn).
  if (s.n_prompt <= s.seq->n_cached()) s.seq->QueuePublish(s.n_prompt);
  s.seq->QueuePublish(s.seq->n_cached());
  s.report.n_published += s.seq->RunPendingPublish();
  // Tokens sampled but never decoded are not in the cache.
  s.seq->tokens().resize(s.seq->n_cached());
  s.sampler.reset();
  s.busy = false;
  s.last_used = ++m.clock;
}

}  // namespace kvstash::engine
