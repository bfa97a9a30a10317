#include "engine/store_chain.h"

#include <algorithm>
#include <cstring>

#include "engine/llama_runtime.h"
#include "format/compat.h"
#include "format/llama_state.h"
#include "store/chain_hash.h"
#include "store/namespace_text.h"
#include "store/store_files.h"
#include "store/store_impl.h"

namespace kvstash::engine {

format::ChunkLayout ExpectedLayout(const ModelImpl& m, const format::ContextParams& params,
                                   bool v_trans) {
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

format::ChunkLayout ShapedLayout(const StateShape& shape, const format::ChunkLayout& plain,
                                 uint32_t chunk, uint32_t n_swa) {
  using format::MemoryKind;
  const format::SeqLayout& l = shape.layout;
  format::ChunkLayout c;
  c.kind = l.kind;
  c.k_type = plain.k_type;
  c.v_type = plain.v_type;
  c.v_trans = plain.v_trans;
  if (l.kind != MemoryKind::kRecurrent) {
    const format::ChunkLayout main = format::ChunkLayout::From(l.kv);
    c.n_layer = main.n_layer;
    c.v_trans = main.v_trans;
    c.k_row_bytes = main.k_row_bytes;
    c.v_row_bytes = main.v_row_bytes;
    c.v_elem_bytes = main.v_elem_bytes;
    c.n_embd_v = main.n_embd_v;
  } else {
    c.v_trans = false;  // no KV cells: the chunk header records none
  }
  if (l.kind == MemoryKind::kIswa) {
    const format::ChunkLayout swa = format::ChunkLayout::From(l.swa);
    c.swa_cells = std::min(chunk, n_swa);
    c.swa_n_layer = swa.n_layer;
    c.swa_k_row_bytes = swa.k_row_bytes;
    c.swa_v_row_bytes = swa.v_row_bytes;
    c.swa_v_elem_bytes = swa.v_elem_bytes;
    c.swa_n_embd_v = swa.n_embd_v;
  }
  if (l.kind == MemoryKind::kRecurrent || l.kind == MemoryKind::kHybrid) {
    // A snapshot every P chunks, P such that snapshots cost about the chunks' own KV, or 8 MiB a
    // chunk at least (what a plain model of ~0.5B parameters costs for 256 tokens; a recurrent
    // model has no KV of its own), 1 to 64.
    const uint64_t own = std::max<uint64_t>(c.KvBytes(chunk), uint64_t{8} << 20);
    c.snapshot_bytes = shape.snapshot_bytes;
    c.snapshot_every =
        static_cast<uint32_t>(std::clamp<uint64_t>((shape.snapshot_bytes + own - 1) / own, 1, 64));
  }
  return c;
}

Chain MakeChain(const Model& model, const format::ContextParams& params, bool v_trans,
                uint32_t chunk, const std::vector<Token>& tokens, const StateShape* shape) {
  Chain c;
  store::NamespaceParams ns{FactsOf(model), model.Description(), params, v_trans,
                            chunk,          LlamaBuildInfo(),    {}};
  c.layout = ExpectedLayout(*ImplOf(model), params, v_trans);
  c.chunk = chunk;
  c.n_swa = static_cast<uint32_t>(std::max(0, llama_model_n_swa(ImplOf(model)->model)));
  if (shape != nullptr && shape->layout.kind != format::MemoryKind::kKv) {
    c.layout = ShapedLayout(*shape, c.layout, chunk, c.n_swa);
    ns.memory = {format::MemoryKindName(c.layout.kind), c.n_swa, c.layout.snapshot_every};
  }
  c.text = store::NamespaceText(ns);
  c.h0 = store::NamespaceHash(c.text);
  c.hashes = store::ChainHashes(c.h0, tokens.data(), tokens.size(), chunk);
  return c;
}

bool TailsFor(const Context& ctx) {
  return ctx.invariant() && ctx.memory() == format::MemoryKind::kKv;
}

namespace {

// How many of `found` verified chunks a state can be assembled from: all of them, but for a
// recurrent state only up to the last chunk that keeps a snapshot.
size_t RestorableChunks(const format::ChunkLayout& l, size_t found) {
  if (l.kind != format::MemoryKind::kRecurrent && l.kind != format::MemoryKind::kHybrid) {
    return found;
  }
  return found / l.snapshot_every * l.snapshot_every;
}

// The window of an iSWA state of `chunks.size()` chunks: positions [kC - w, kC), gathered from
// the window cells the last chunks carry (each its own [jC - W, jC)).
std::vector<format::CellRun> WindowRuns(const format::ChunkLayout& l, uint32_t chunk,
                                        const std::vector<const uint8_t*>& windows, uint32_t n_swa,
                                        int32_t* first_pos) {
  const uint64_t end = uint64_t{windows.size()} * chunk;
  const uint64_t w = std::min<uint64_t>(end, n_swa);
  *first_pos = static_cast<int32_t>(end - w);
  std::vector<format::CellRun> runs;
  uint64_t need_from = end - w;  // first position still to gather
  for (size_t j = 0; j < windows.size(); ++j) {
    const uint64_t block_end = uint64_t{j + 1} * chunk;
    const uint64_t block_begin = block_end - l.swa_cells;
    if (block_end <= need_from) continue;
    const uint64_t from = std::max(need_from, block_begin);
    runs.push_back({windows[j], l.swa_cells, static_cast<uint32_t>(from - block_begin),
                    static_cast<uint32_t>(block_end - from)});
    need_from = block_end;
  }
  return runs;
}

// The whole llama.cpp state of the first `k` of `loaded` chunks (format/llama_state.h): the main
// cells, then the window or the k-th chunk's snapshot. The result is walked by the state reader.
Status AssembleState(const Chain& chain, const LoadedPrefix& loaded, size_t k, int n_threads,
                     bool huge_pages, uint32_t n_stream, Fetched* out) {
  using format::MemoryKind;
  const format::ChunkLayout& l = chain.layout;
  const uint32_t cells = static_cast<uint32_t>(k) * chain.chunk;
  const uint64_t main_kv = l.KvBytes(chain.chunk);
  const bool has_main = l.kind != MemoryKind::kRecurrent;
  uint64_t size = has_main ? format::SeqStateSize(l, cells) : format::kSeqStateHeaderBytes;
  std::vector<format::CellRun> window;
  int32_t window_first = 0;
  if (l.kind == MemoryKind::kIswa) {
    std::vector<const uint8_t*> windows;
    for (size_t j = 0; j < k; ++j) windows.push_back(loaded.chunks[j].kv + main_kv);
    window = WindowRuns(l, chain.chunk, windows, chain.n_swa, &window_first);
    size += format::KvPartSize(l.Swa(), std::min<uint32_t>(cells, chain.n_swa));
  }
  const bool snapshot = l.kind == MemoryKind::kRecurrent || l.kind == MemoryKind::kHybrid;
  if (snapshot) size += l.snapshot_bytes - format::kSeqStateHeaderBytes;
  out->state_size = size;
  const size_t spare = 4 * size_t{n_stream - 1} * format::KvPartCount(l.kind, false);
  out->state = std::make_unique<LargeBuffer>(size + spare, huge_pages);
  uint8_t* p = out->state->data();
  if (p == nullptr) return Status::IOError("cannot allocate the restored KV cache");
  std::vector<const uint8_t*> kv;
  for (size_t j = 0; j < k; ++j) kv.push_back(loaded.chunks[j].kv);
  if (has_main) {
    format::AssembleSeqState(l, chain.chunk, kv, p, n_threads);
  } else {
    const uint32_t header[2] = {format::kLlamaSeqStateMagic, 0};
    std::memcpy(p, header, sizeof header);
  }
  uint8_t* tail = p + (has_main ? format::SeqStateSize(l, cells) : format::kSeqStateHeaderBytes);
  if (l.kind == MemoryKind::kIswa) format::AssembleKvPart(l.Swa(), window, window_first, tail);
  if (snapshot) {
    const uint8_t* snap = loaded.chunks[k - 1].kv + main_kv;
    std::memcpy(tail, snap + format::kSeqStateHeaderBytes,
                l.snapshot_bytes - format::kSeqStateHeaderBytes);
  }
  if (l.kind == MemoryKind::kKv) return Status::Ok();  // assembled from verified cells only
  // The window and the snapshot came as bytes: walk the whole state as a session file's payload.
  auto parsed = format::ParseSeqState(p, size, l.kind, chain.n_swa, /*partial=*/false,
                                      "the chunks of " + format::HashHex(chain.h0), "store",
                                      "they are not used");
  if (!parsed.ok()) return parsed.status();
  if (parsed->n_tokens != cells) {
    return Status::Corruption("the assembled state stands for " + std::to_string(parsed->n_tokens) +
                              " tokens, not " + std::to_string(cells));
  }
  out->layout = *parsed;
  return Status::Ok();
}

}  // namespace

namespace {

// FetchPrefix for a token-exact chain (Chain::tails): the found chunks, the last one cut at the
// chain's limit, or else the best tail after them, as one plain state. When the sequence holds
// every whole chunk already (Chain::own), only a tail can add to it: the tail is probed first and
// the chunks are read only when it beats what the sequence holds.
void FetchExact(Store& store, const Chain& chain, const std::vector<Token>& tokens,
                size_t max_chunks, int n_threads, bool huge_pages, uint32_t n_stream,
                Fetched* out) {
  const format::ChunkLayout& l = chain.layout;
  const size_t c = chain.chunk;
  const size_t k = std::min(max_chunks, chain.hashes.size());
  StoreImpl* impl = ImplOf(store);
  LoadedTail tail;
  auto probe = [&](size_t whole, int64_t touched_ns) {
    const format::Hash256& parent = whole == 0 ? chain.h0 : chain.hashes[whole - 1];
    tail = impl->LoadTail(chain.h0, parent, static_cast<uint32_t>(whole), tokens.data() + whole * c,
                          chain.limit - whole * c, l, touched_ns);
    out->tail_refused = tail.refused;
  };
  const bool tail_only = k * c <= chain.own && k * c < chain.limit;
  if (tail_only) {
    // Untouched: if it wins, the chunks read below get a newer time than the tail (eviction takes
    // it first); if it loses, the store was not used.
    probe(k, 0);
    if (!tail.file || k * c + tail.usable <= chain.own) return;
  }
  LoadedPrefix loaded = impl->LoadPrefix(chain.h0, chain.hashes, tokens.data(), k, l);
  out->n_found = loaded.chunks.size();
  out->first_bad = loaded.first_bad;
  const size_t whole = loaded.chunks.size();
  if (whole < k) tail = LoadedTail();  // its parent is not in the store (any more)
  std::vector<format::CellRun> runs;
  for (const format::ChunkView& chunk : loaded.chunks)
    runs.push_back({chunk.kv, chain.chunk, 0, chain.chunk});
  size_t cells = whole * c;
  if (cells > chain.limit) {  // the prompt ends on a chunk boundary: all but its last token
    runs.back().count = static_cast<uint32_t>(chain.limit - (whole - 1) * c);
    cells = chain.limit;
  } else if (cells < chain.limit && !tail_only) {
    probe(whole, loaded.touched_ns != 0 ? loaded.touched_ns : store::NowNs());
  }
  if (tail.file) {
    runs.push_back({tail.view.kv, tail.view.header.n_tokens, 0, tail.usable});
    cells += tail.usable;
    out->tail_tokens = tail.usable;
  }
  if (cells == 0) return;
  const uint64_t size = format::SeqStateSize(l, static_cast<uint32_t>(cells));
  const size_t spare = 4 * size_t{n_stream - 1} * format::KvPartCount(l.kind, false);
  out->state = std::make_unique<LargeBuffer>(size + spare, huge_pages);
  if (out->state->data() == nullptr) {
    out->status = Status::IOError("cannot allocate the restored KV cache");
    return;
  }
  out->state_size = size;
  format::AssembleSeqStateRuns(l, runs, out->state->data(), n_threads);
  if (!loaded.Intact() || (tail.file && !tail.file->Intact())) {
    out->status = Status::IOError("a chunk or tail file changed while it was read");
    return;
  }
  out->n_assembled = whole;
  out->n_tokens = cells;
}

}  // namespace

Fetched FetchPrefix(Store& store, const Chain& chain, const std::vector<Token>& tokens,
                    size_t max_chunks, int n_threads, bool huge_pages, uint32_t n_stream) {
  Fetched out;
  out.ns_text = chain.text;
  out.hashes = chain.hashes;
  out.tails = chain.tails;
  out.limit = chain.limit;
  if (chain.tails && chain.layout.kind == format::MemoryKind::kKv) {
    FetchExact(store, chain, tokens, max_chunks, n_threads, huge_pages, n_stream, &out);
    return out;
  }
  LoadedPrefix loaded =
      ImplOf(store)->LoadPrefix(chain.h0, chain.hashes, tokens.data(), max_chunks, chain.layout);
  out.n_found = loaded.chunks.size();
  out.first_bad = loaded.first_bad;
  const size_t k = RestorableChunks(chain.layout, loaded.chunks.size());
  if (k == 0) return out;
  out.status = AssembleState(chain, loaded, k, n_threads, huge_pages, n_stream, &out);
  if (!out.status.ok()) return out;
  // After the last read of the files: their bytes were the verified ones throughout.
  if (!loaded.Intact()) {
    out.status = Status::IOError("a chunk file changed while it was read");
    return out;
  }
  out.n_assembled = k;
  out.n_tokens = k * chain.chunk;
  return out;
}

Status RestoreFetched(llama_context* ctx, llama_seq_id seq, uint32_t n_stream, Fetched& fetched) {
  KVSTASH_RETURN_IF_ERROR(fetched.status);
  if (fetched.n_tokens == 0 || fetched.state == nullptr) {
    return Status::Internal("no stored chunks were assembled to restore");
  }
  const uint32_t cells = static_cast<uint32_t>(fetched.n_tokens);
  llama_memory_t mem = llama_get_memory(ctx);
  size_t size = fetched.state_size;
  if (n_stream > 1) {
    const format::MemoryKind kind = fetched.layout.kind;
    format::StateToStreams(fetched.state->data(), size, kind, false, n_stream);
    size += 4 * size_t{n_stream - 1} * format::KvPartCount(kind, false);
  }
  ClearLlamaError();
  const size_t read = llama_state_seq_set_data(ctx, fetched.state->data(), size, seq);
  // The lowest position then held: 0 for KV cells, the window's first, or the state's (the last).
  const format::MemoryKind kind = fetched.layout.kind;
  const llama_pos pos_min = kind == format::MemoryKind::kKv     ? 0
                            : kind == format::MemoryKind::kIswa ? fetched.layout.swa.first_pos
                                                                : llama_pos(cells) - 1;
  if (read != size || llama_memory_seq_pos_min(mem, seq) != pos_min ||
      llama_memory_seq_pos_max(mem, seq) != llama_pos(cells) - 1) {
    llama_memory_seq_rm(mem, seq, -1, -1);
    return Status::Internal("llama.cpp refused the restored chunks: " + LastLlamaError());
  }
  return Status::Ok();
}

Status GetSeqState(llama_context* ctx, llama_seq_id seq, uint32_t n_stream, SeqState* out,
                   format::MemoryKind kind, uint32_t n_swa) {
  const size_t size = llama_state_seq_get_size(ctx, seq);
  auto buffer = std::make_unique<LargeBuffer>(size);
  if (buffer->data() == nullptr)
    return Status::IOError("cannot allocate " + std::to_string(size) + " bytes for the KV cache");
  ClearLlamaError();
  if (llama_state_seq_get_data(ctx, buffer->data(), size, seq) != size)
    return Status::Internal("llama.cpp could not copy the KV cache: " + LastLlamaError());
  size_t offset = 0, one_size = size;
  if (n_stream > 1 && kind == format::MemoryKind::kKv) {
    auto at = format::ToOneStream(buffer->data(), size, n_stream, static_cast<uint32_t>(seq));
    if (!at.ok()) return at.status();
    offset = *at;
    one_size = size - 4 * size_t{n_stream - 1};
  } else if (n_stream > 1) {
    auto one = format::StateToOneStream(buffer->data(), size, kind, false, n_stream,
                                        static_cast<uint32_t>(seq));
    if (!one.ok()) return one.status();
    one_size = *one;
  }
  auto parsed = format::ParseSeqState(buffer->data() + offset, one_size, kind, n_swa,
                                      /*partial=*/false, "the KV cache");
  if (!parsed.ok()) return parsed.status();
  out->seq = *parsed;
  out->layout = parsed->kv;
  out->data = buffer->data() + offset;
  out->size = one_size;
  out->buffer = std::move(buffer);
  return Status::Ok();
}

Status BoundaryPart(const Chain& chain, uint32_t index, const std::vector<uint8_t>& snapshot,
                    BoundaryParts* parts) {
  using format::MemoryKind;
  const format::ChunkLayout& l = chain.layout;
  if (l.kind == MemoryKind::kKv) return Status::Ok();
  if (l.kind != MemoryKind::kIswa) {
    if (!l.HasSnapshot(index)) return Status::Ok();
    if (snapshot.size() != l.snapshot_bytes) {
      return Status::Internal("the state snapshot has " + std::to_string(snapshot.size()) +
                              " bytes, the namespace's have " + std::to_string(l.snapshot_bytes));
    }
    (*parts)[index] = snapshot;
    return Status::Ok();
  }
  // The window at the chunk's end holds its last W positions (and those before, up to n_swa).
  auto window = format::ParseSeqState(snapshot.data(), snapshot.size(), l.kind, chain.n_swa,
                                      /*partial=*/true, "the window");
  if (!window.ok()) return window.status();
  const int64_t end = int64_t{index} * chain.chunk;
  if (window->n_tokens != end || format::ChunkLayout::From(window->swa) != l.Swa()) {
    return Status::Internal("the window snapshot does not end at chunk " + std::to_string(index) +
                            " or has another layout");
  }
  const uint32_t begin = static_cast<uint32_t>(end - l.swa_cells - window->swa.first_pos);
  std::vector<uint8_t> cells(l.Swa().KvBytes(l.swa_cells));
  KVSTASH_RETURN_IF_ERROR(format::CutChunkKv(snapshot.data(), snapshot.size(), window->swa, begin,
                                             l.swa_cells, cells.data()));
  (*parts)[index] = std::move(cells);
  return Status::Ok();
}

namespace {

// The write of `tail` (its end inside the chain's hashes and the plain `state`).
Status CutTail(const Chain& chain, const std::vector<Token>& tokens, const SeqState& state,
               const TailToPublish& tail, ChunkWrite* w) {
  const size_t j = tail.end / chain.chunk;
  const uint32_t n = static_cast<uint32_t>(tail.end - j * chain.chunk);
  w->header.tail = true;
  w->header.parent = j == 0 ? chain.h0 : chain.hashes[j - 1];
  w->header.hash = store::TailHash(w->header.parent, tokens.data() + j * chain.chunk, n);
  w->header.ns = chain.h0;
  w->header.index = static_cast<uint32_t>(j + 1);
  w->header.n_tokens = n;
  w->header.chunk_tokens = chain.chunk;
  w->header.layout = chain.layout;
  w->tokens.assign(tokens.begin() + j * chain.chunk, tokens.begin() + tail.end);
  w->kv.resize(chain.layout.KvBytes(n));
  w->replace_bad = tail.replace_bad;
  return format::CutChunkKv(state.data, state.size, state.layout,
                            static_cast<uint32_t>(j * chain.chunk), n,
                            reinterpret_cast<uint8_t*>(w->kv.data()));
}

}  // namespace

size_t PublishChunks(Store& store, const Chain& chain, const std::vector<Token>& tokens,
                     const SeqState& state, size_t first_new, long bad, const BoundaryParts* parts,
                     const std::vector<TailToPublish>& tails) {
  const format::ChunkLayout& expected = chain.layout;
  const uint32_t chunk = chain.chunk;
  if (first_new >= chain.hashes.size() && tails.empty()) return 0;
  const bool plain = expected.kind == format::MemoryKind::kKv;
  const bool has_main = expected.kind != format::MemoryKind::kRecurrent;
  Status status;
  format::ChunkLayout main = format::ChunkLayout::From(state.layout);
  main.kind = expected.kind;
  if (has_main && (main.n_layer != expected.n_layer || main.k_row_bytes != expected.k_row_bytes ||
                   main.v_trans != expected.v_trans || main.v_row_bytes != expected.v_row_bytes ||
                   main.n_embd_v != expected.n_embd_v || main.k_type != expected.k_type ||
                   main.v_type != expected.v_type))
    status = Status::Internal("the KV cache's layout is not the one the namespace assumes");
  // The main part of the state: its first (a whole plain state).
  const size_t main_size = plain ? state.size : state.seq.first_part_end;
  std::vector<ChunkWrite> writes;
  for (size_t j = first_new; j < chain.hashes.size() && status.ok(); ++j) {
    const uint32_t index = static_cast<uint32_t>(j + 1);
    const std::vector<uint8_t>* part = nullptr;
    if (!plain && (expected.kind == format::MemoryKind::kIswa || expected.HasSnapshot(index))) {
      auto it = parts != nullptr ? parts->find(index) : BoundaryParts::const_iterator();
      if (parts == nullptr || it == parts->end()) break;  // not captured: the chain stops here
      part = &it->second;
    }
    ChunkWrite w;
    w.header.hash = chain.hashes[j];
    w.header.parent = j == 0 ? chain.h0 : chain.hashes[j - 1];
    w.header.ns = chain.h0;
    w.header.index = index;
    w.header.n_tokens = chunk;
    w.header.layout = expected;
    w.tokens.assign(tokens.begin() + j * chunk, tokens.begin() + (j + 1) * chunk);
    w.kv.resize(expected.ChunkKvBytes(chunk, index));
    const uint64_t main_bytes = expected.KvBytes(chunk);
    if (has_main) {
      status =
          format::CutChunkKv(state.data, main_size, state.layout, static_cast<uint32_t>(j * chunk),
                             chunk, reinterpret_cast<uint8_t*>(w.kv.data()));
    }
    if (part != nullptr) {
      if (part->size() != w.kv.size() - main_bytes) {
        status = Status::Internal("chunk " + std::to_string(index) + "'s captured part has " +
                                  std::to_string(part->size()) + " bytes");
        break;
      }
      std::memcpy(w.kv.data() + main_bytes, part->data(), part->size());
    }
    w.replace_bad = static_cast<long>(j) == bad;
    writes.push_back(std::move(w));
  }
  const size_t n_chunks = writes.size();
  size_t tail_tokens = 0;
  for (size_t t = 0; t < tails.size() && status.ok() && plain; ++t) {
    const size_t j = tails[t].end / chunk;
    if (tails[t].end % chunk == 0 || j > chain.hashes.size() ||
        tails[t].end > state.layout.cell_count) {
      continue;
    }
    ChunkWrite w;
    status = CutTail(chain, tokens, state, tails[t], &w);
    tail_tokens += w.tokens.size();
    writes.push_back(std::move(w));
  }
  if (!status.ok()) {
    ImplOf(store)->Warn("kvstash: the new chunks were not saved to store '" + store.dir() +
                        "': " + status.message());
    return 0;
  }
  if (writes.empty()) return 0;
  const size_t queued =
      ImplOf(store)->Publish(chain.h0, chain.text, std::move(writes), chain.hashes);
  return std::min(queued, n_chunks) * chunk + (queued > n_chunks ? tail_tokens : 0);
}

}  // namespace kvstash::engine
