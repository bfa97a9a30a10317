// Session::Sync through a prefix store: restore the longest stored prefix of whole chunks, decode
// the rest in chunk-aligned groups, publish the new chunks (docs/STORE.md, "Syncing a session").
#include <algorithm>
#include <chrono>

#include "engine/session_impl.h"
#include "format/chunk_format.h"
#include "format/compat.h"
#include "format/llama_state.h"
#include "kvstash/store.h"
#include "store/chain_hash.h"
#include "store/store_impl.h"

namespace kvstash {
namespace {

using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// The layout llama_state_seq_get_data uses for this session's cache (format/llama_state.h).
format::ChunkLayout ExpectedLayout(const Session::Impl& s, bool v_trans) {
  const Model::Impl& m = s.m();
  format::ChunkLayout l;
  l.n_layer = static_cast<uint32_t>(llama_model_n_layer(m.model));
  l.v_trans = v_trans;
  l.k_type = s.params.type_k;
  l.v_type = s.params.type_v;
  l.k_row_bytes = ggml_row_size(static_cast<ggml_type>(s.params.type_k), m.n_embd_k_gqa);
  if (v_trans) {
    l.v_elem_bytes = static_cast<uint32_t>(ggml_type_size(static_cast<ggml_type>(s.params.type_v)));
    l.n_embd_v = static_cast<uint32_t>(m.n_embd_v_gqa);
  } else {
    l.v_row_bytes = ggml_row_size(static_cast<ggml_type>(s.params.type_v), m.n_embd_v_gqa);
  }
  return l;
}

// Copies the whole sequence out of llama.cpp and checks it with our own reader.
Status GetSeqState(Session::Impl& s, std::unique_ptr<LargeBuffer>* out, format::KvLayout* layout) {
  const size_t size = llama_state_seq_get_size(s.ctx.get(), kSeq);
  auto buffer = std::make_unique<LargeBuffer>(size);
  if (buffer->data() == nullptr)
    return Status::IOError("cannot allocate " + std::to_string(size) + " bytes for the KV cache");
  engine::ClearLlamaError();
  if (llama_state_seq_get_data(s.ctx.get(), buffer->data(), size, kSeq) != size)
    return Status::Internal("llama.cpp could not copy the KV cache: " + engine::LastLlamaError());
  auto parsed = format::ParseLlamaSeqState(buffer->data(), size, "the KV cache");
  if (!parsed.ok()) return parsed.status();
  *layout = *parsed;
  *out = std::move(buffer);
  return Status::Ok();
}

// Flash attention "auto" is resolved inside llama.cpp, which does not say what it chose; the V
// layout of one decoded token tells (V is transposed exactly when flash attention is off).
Result<bool> ResolveVTrans(Session::Impl& s) {
  if (s.v_trans) return *s.v_trans;
  const bool probe = s.n_cached == 0;
  if (probe) {
    llama_token token = 0;
    llama_batch batch = llama_batch_get_one(&token, 1);
    engine::ClearLlamaError();
    if (llama_decode(s.ctx.get(), batch) != 0) {
      llama_memory_seq_rm(llama_get_memory(s.ctx.get()), kSeq, -1, -1);
      return Status::Internal("llama.cpp could not decode one token to learn the KV layout: " +
                              engine::LastLlamaError());
    }
  }
  std::unique_ptr<LargeBuffer> state;
  format::KvLayout layout;
  const Status status = GetSeqState(s, &state, &layout);
  if (probe) {
    llama_memory_seq_rm(llama_get_memory(s.ctx.get()), kSeq, -1, -1);
    s.logits_valid = false;
  }
  if (!status.ok()) return status;
  s.v_trans = layout.v_trans;
  return layout.v_trans;
}

// Decodes tokens[n_cached..] in groups that end at multiples of `chunk` (and at the end), each
// split at n_batch from its start, as a cold sync would. Rolled back entirely on failure.
Status FlushAligned(Session::Impl& s, uint32_t chunk) {
  const size_t start = s.n_cached, n = s.tokens.size();
  if (start == n) return Status::Ok();
  Status status;
  for (size_t begin = start; begin < n && status.ok();) {
    const size_t end = std::min(n, (begin / chunk + 1) * chunk);
    status = s.DecodeGroup(begin, end - begin);
    begin = end;
    if (status.ok() && s.progress && begin < n) status = s.ReportProgress(begin - start, n - start);
  }
  const float* out = status.ok() ? llama_get_logits_ith(s.ctx.get(), -1) : nullptr;
  if (status.ok() && out == nullptr)
    status = Status::Internal("llama.cpp returned no logits for the last token");
  if (status.ok()) status = s.CheckFinite(out, n);
  if (!status.ok()) {
    llama_memory_seq_rm(llama_get_memory(s.ctx.get()), kSeq, static_cast<llama_pos>(start), -1);
    s.tokens.resize(start);
    return status;
  }
  s.logits.assign(out, out + s.model->n_vocab());
  s.logits_valid = true;
  s.n_cached = n;
  s.n_decoded_total += n - start;
  return Status::Ok();
}

// Hands the chunks to llama.cpp as one sequence state (set_data erases the sequence first, so all
// of them at once). On failure the session is empty and the caller decodes from the start.
Status RestoreChunks(Session::Impl& s, const LoadedPrefix& loaded, const std::vector<Token>& tokens,
                     uint32_t chunk, const format::ChunkLayout& layout) {
  const uint32_t cells = static_cast<uint32_t>(loaded.chunks.size()) * chunk;
  LargeBuffer state(format::SeqStateSize(layout, cells));
  if (state.data() == nullptr) return Status::IOError("cannot allocate the restored KV cache");
  std::vector<const uint8_t*> kv;
  for (const auto& c : loaded.chunks) kv.push_back(c.kv);
  format::AssembleSeqState(layout, chunk, kv, state.data(), std::min(s.n_threads, 2));
  if (!loaded.Intact()) return Status::IOError("a chunk file changed while it was read");
  llama_memory_t mem = llama_get_memory(s.ctx.get());
  s.tokens.clear();
  s.n_cached = 0;
  s.n_aligned = 0;
  s.logits_valid = false;
  engine::ClearLlamaError();
  const size_t read = llama_state_seq_set_data(s.ctx.get(), state.data(), state.size(), kSeq);
  if (read != state.size() || llama_memory_seq_pos_min(mem, kSeq) != 0 ||
      llama_memory_seq_pos_max(mem, kSeq) != llama_pos(cells) - 1) {
    llama_memory_seq_rm(mem, kSeq, -1, -1);
    return Status::Internal("llama.cpp refused the restored chunks: " + engine::LastLlamaError());
  }
  s.tokens.assign(tokens.begin(), tokens.begin() + cells);
  s.n_cached = cells;
  s.n_aligned = cells;
  s.aligned_chunk = chunk;
  return Status::Ok();
}

struct Chain {
  format::Hash256 h0;
  std::string text;
  std::vector<format::Hash256> hashes;  // h_1..h_k of the full chunks
};

// Queues chunks first_new+1..k (1-based) of the session's tokens. Returns tokens queued.
size_t PublishChunks(Session::Impl& s, Store& store, const Chain& chain, size_t first_new,
                     long bad, const format::ChunkLayout& expected, uint32_t chunk) {
  if (first_new >= chain.hashes.size()) return 0;
  std::unique_ptr<LargeBuffer> state;
  format::KvLayout kv;
  Status status = GetSeqState(s, &state, &kv);
  if (status.ok() && format::ChunkLayout::From(kv) != expected)
    status = Status::Internal("the KV cache's layout is not the one the namespace assumes");
  std::vector<ChunkWrite> writes;
  for (size_t j = first_new; j < chain.hashes.size() && status.ok(); ++j) {
    ChunkWrite w;
    w.header.hash = chain.hashes[j];
    w.header.parent = j == 0 ? chain.h0 : chain.hashes[j - 1];
    w.header.ns = chain.h0;
    w.header.index = static_cast<uint32_t>(j + 1);
    w.header.n_tokens = chunk;
    w.header.layout = expected;
    w.tokens.assign(s.tokens.begin() + j * chunk, s.tokens.begin() + (j + 1) * chunk);
    w.kv.resize(expected.KvBytes(chunk));
    status = format::CutChunkKv(state->data(), state->size(), kv, static_cast<uint32_t>(j * chunk),
                                chunk, reinterpret_cast<uint8_t*>(w.kv.data()));
    w.replace_bad = static_cast<long>(j) == bad;
    writes.push_back(std::move(w));
  }
  if (!status.ok()) {
    store.impl()->Warn("kvstash: the new chunks were not saved to store '" + store.dir() +
                       "': " + status.message());
    return 0;
  }
  return store.impl()->Publish(chain.h0, chain.text, std::move(writes), chain.hashes) * chunk;
}

}  // namespace

Result<SyncResult> Session::Sync(const std::vector<Token>& tokens, Store& store) {
  Impl& s = *impl_;
  KVSTASH_RETURN_IF_ERROR(s.CheckTokens(tokens));
  if (tokens.size() > s.n_ctx()) {
    return Status::ContextFull("cannot sync to " + std::to_string(tokens.size()) + " tokens: the " +
                               "context holds " + std::to_string(s.n_ctx()) +
                               "; the session is unchanged; use a larger -c");
  }
  if (tokens.empty()) return Sync(tokens);
  const uint32_t chunk = store.chunk_tokens();
  auto v_trans = ResolveVTrans(s);
  if (!v_trans.ok()) return v_trans.status();
  const format::ChunkLayout layout = ExpectedLayout(s, *v_trans);
  Chain chain;
  chain.text = format::StoreNamespaceText(FactsOf(*s.model), s.model->Description(), s.params,
                                          *v_trans, chunk, engine::LlamaBuildInfo());
  chain.h0 = store::NamespaceHash(chain.text);
  chain.hashes = store::ChainHashes(chain.h0, tokens.data(), tokens.size(), chunk);

  // Whole chunks that may be reused: never the one holding the last token, whose logits a cold
  // run computes by decoding it.
  const size_t usable = (tokens.size() - 1) / chunk;
  size_t common = 0;
  while (common < s.n_cached && common < tokens.size() && s.tokens[common] == tokens[common])
    ++common;
  const size_t own =
      s.aligned_chunk == chunk ? std::min({common, s.n_aligned, usable * chunk}) / chunk : 0;
  const auto t_restore = Clock::now();
  LoadedPrefix loaded;
  if (usable > own) {
    loaded = store.impl()->LoadPrefix(chain.h0, chain.hashes, tokens.data(), usable, layout);
  }
  SyncResult result;
  size_t keep = own * chunk;
  if (loaded.chunks.size() > own) {
    const Status restored = RestoreChunks(s, loaded, tokens, chunk, layout);
    if (restored.ok()) {
      keep = s.n_cached;
      result.n_restored = keep;
    } else {
      store.impl()->Warn("kvstash: chunks of store '" + store.dir() + "' were not used: " +
                         restored.message());
      keep = 0;
    }
  }
  const size_t known = usable > own ? loaded.chunks.size() : 0;
  const long first_bad = loaded.first_bad;
  loaded = LoadedPrefix();  // the chunk files are closed: the restored bytes are llama.cpp's
  result.restore_ms = MsSince(t_restore);
  KVSTASH_RETURN_IF_ERROR(s.Truncate(std::min(keep, s.n_cached)));
  keep = s.n_cached;
  s.tokens.assign(tokens.begin(), tokens.end());
  const auto t_decode = Clock::now();
  KVSTASH_RETURN_IF_ERROR(FlushAligned(s, chunk));
  result.decode_ms = MsSince(t_decode);
  s.n_aligned = tokens.size();
  s.aligned_chunk = chunk;
  result.n_reused = keep;
  result.n_decoded = tokens.size() - keep;
  // The store holds chunks 1..loaded.chunks.size() (all verified); the rest are new to it, as far
  // as this lookup knows (the writer skips any that another writer published meanwhile).
  const auto t_publish = Clock::now();
  result.n_published = PublishChunks(s, store, chain, known, first_bad, layout, chunk);
  result.publish_ms = MsSince(t_publish);
  return result;
}

}  // namespace kvstash
