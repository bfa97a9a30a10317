#include "engine/store_chain.h"

#include "engine/llama_runtime.h"
#include "format/compat.h"
#include "format/llama_state.h"
#include "store/chain_hash.h"
#include "store/store_impl.h"

namespace kvstash::engine {

format::ChunkLayout ExpectedLayout(const Model::Impl& m, const SessionMeta& params, bool v_trans) {
  format::ChunkLayout l;
  l.n_layer = static_cast<uint32_t>(llama_model_n_layer(m.model));
  l.v_trans = v_trans;
  l.k_type = params.type_k;
  l.v_type = params.type_v;
  l.k_row_bytes = ggml_row_size(static_cast<ggml_type>(params.type_k), m.n_embd_k_gqa);
  if (v_trans) {
    l.v_elem_bytes = static_cast<uint32_t>(ggml_type_size(static_cast<ggml_type>(params.type_v)));
    l.n_embd_v = static_cast<uint32_t>(m.n_embd_v_gqa);
  } else {
    l.v_row_bytes = ggml_row_size(static_cast<ggml_type>(params.type_v), m.n_embd_v_gqa);
  }
  return l;
}

Chain MakeChain(const Model& model, const SessionMeta& params, bool v_trans, uint32_t chunk,
                const std::vector<Token>& tokens) {
  Chain c;
  c.text = format::StoreNamespaceText(FactsOf(model), model.Description(), params, v_trans, chunk,
                                      LlamaBuildInfo());
  c.h0 = store::NamespaceHash(c.text);
  c.hashes = store::ChainHashes(c.h0, tokens.data(), tokens.size(), chunk);
  c.layout = ExpectedLayout(*model.impl(), params, v_trans);
  c.chunk = chunk;
  return c;
}

Fetched FetchPrefix(Store& store, const Chain& chain, const std::vector<Token>& tokens,
                    size_t max_chunks, int n_threads, bool huge_pages, uint32_t n_stream) {
  Fetched out;
  out.ns_text = chain.text;
  out.hashes = chain.hashes;
  LoadedPrefix loaded =
      store.impl()->LoadPrefix(chain.h0, chain.hashes, tokens.data(), max_chunks, chain.layout);
  out.n_found = loaded.chunks.size();
  out.first_bad = loaded.first_bad;
  if (loaded.chunks.empty()) return out;
  const uint32_t cells = static_cast<uint32_t>(loaded.chunks.size()) * chain.chunk;
  out.state_size = format::SeqStateSize(chain.layout, cells);
  out.state = std::make_unique<LargeBuffer>(out.state_size + 4 * size_t{n_stream - 1}, huge_pages);
  if (out.state->data() == nullptr) {
    out.status = Status::IOError("cannot allocate the restored KV cache");
    return out;
  }
  std::vector<const uint8_t*> kv;
  for (const auto& c : loaded.chunks) kv.push_back(c.kv);
  format::AssembleSeqState(chain.layout, chain.chunk, kv, out.state->data(), n_threads);
  // After the last read of the files: their bytes were the verified ones throughout.
  if (!loaded.Intact()) {
    out.status = Status::IOError("a chunk file changed while it was read");
    return out;
  }
  out.n_assembled = loaded.chunks.size();
  return out;
}

Status RestoreFetched(llama_context* ctx, llama_seq_id seq, uint32_t n_stream, Fetched& fetched,
                      uint32_t chunk) {
  KVSTASH_RETURN_IF_ERROR(fetched.status);
  const uint32_t cells = static_cast<uint32_t>(fetched.n_assembled) * chunk;
  llama_memory_t mem = llama_get_memory(ctx);
  size_t size = fetched.state_size;
  if (n_stream > 1) {
    format::ToStreams(fetched.state->data(), size, n_stream);
    size += 4 * size_t{n_stream - 1};
  }
  ClearLlamaError();
  const size_t read = llama_state_seq_set_data(ctx, fetched.state->data(), size, seq);
  if (read != size || llama_memory_seq_pos_min(mem, seq) != 0 ||
      llama_memory_seq_pos_max(mem, seq) != llama_pos(cells) - 1) {
    llama_memory_seq_rm(mem, seq, -1, -1);
    return Status::Internal("llama.cpp refused the restored chunks: " + LastLlamaError());
  }
  return Status::Ok();
}

Status GetSeqState(llama_context* ctx, llama_seq_id seq, uint32_t n_stream, SeqState* out) {
  const size_t size = llama_state_seq_get_size(ctx, seq);
  auto buffer = std::make_unique<LargeBuffer>(size);
  if (buffer->data() == nullptr)
    return Status::IOError("cannot allocate " + std::to_string(size) + " bytes for the KV cache");
  ClearLlamaError();
  if (llama_state_seq_get_data(ctx, buffer->data(), size, seq) != size)
    return Status::Internal("llama.cpp could not copy the KV cache: " + LastLlamaError());
  size_t offset = 0, one_size = size;
  if (n_stream > 1) {
    auto at = format::ToOneStream(buffer->data(), size, n_stream, static_cast<uint32_t>(seq));
    if (!at.ok()) return at.status();
    offset = *at;
    one_size = size - 4 * size_t{n_stream - 1};
  }
  auto parsed = format::ParseLlamaSeqState(buffer->data() + offset, one_size, "the KV cache");
  if (!parsed.ok()) return parsed.status();
  out->layout = *parsed;
  out->data = buffer->data() + offset;
  out->size = one_size;
  out->buffer = std::move(buffer);
  return Status::Ok();
}

size_t PublishChunks(Store& store, const Chain& chain, const std::vector<Token>& tokens,
                     const SeqState& state, size_t first_new, long bad) {
  const format::ChunkLayout& expected = chain.layout;
  const uint32_t chunk = chain.chunk;
  if (first_new >= chain.hashes.size()) return 0;
  Status status;
  if (format::ChunkLayout::From(state.layout) != expected)
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
    w.tokens.assign(tokens.begin() + j * chunk, tokens.begin() + (j + 1) * chunk);
    w.kv.resize(expected.KvBytes(chunk));
    status =
        format::CutChunkKv(state.data, state.size, state.layout, static_cast<uint32_t>(j * chunk),
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

}  // namespace kvstash::engine
