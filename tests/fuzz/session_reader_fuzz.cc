// libFuzzer harness for everything kvstash reads from an untrusted session file or prefix-store
// chunk before llama.cpp sees a byte: the container (header, table, META, tokens, logits),
// llama.cpp's KV payload of every memory kind (whole states and snapshots), chunk files (header,
// payload, assembling them into a state), and llama.cpp's own session and sequence files
// (`kvstash import`).
//
// The payload parser is reached two ways: through a session file, whose META says the kind and
// window (seeds of each kind come from scripts/fuzz.sh), and on raw bytes, as a payload of the kind
// the input's first byte says (bits 0-1: MemoryKind; bit 2: a snapshot) with a window of its second
// byte's value, so that mutations of the payload itself need no container around them.
#include <xxhash.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "format/chunk_format.h"
#include "format/llama_file.h"
#include "format/llama_state.h"
#include "format/session_format.h"

namespace {

namespace f = kvstash::format;

// An accepted whole state's header and last part are the snapshot llama.cpp writes with
// LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY (format/llama_state.h): it must be accepted as one, for the
// same tokens, with the same last part.
void CheckSnapshotOf(const uint8_t* state, size_t size, const f::SeqLayout& whole, uint32_t n_swa) {
  if (whole.kind == f::MemoryKind::kKv) return;  // a full-attention cache has no snapshot
  if (whole.first_part_end < f::kSeqStateHeaderBytes || whole.first_part_end > size) {
    __builtin_trap();
  }
  std::vector<uint8_t> snap(state, state + f::kSeqStateHeaderBytes);
  snap.insert(snap.end(), state + whole.first_part_end, state + size);
  auto part =
      f::ParseSeqState(snap.data(), snap.size(), whole.kind, n_swa, /*partial=*/true, "snapshot");
  if (!part.ok() || part->n_tokens != whole.n_tokens) __builtin_trap();
  if (whole.kind == f::MemoryKind::kIswa &&
      (part->swa.cell_count != whole.swa.cell_count || part->swa.first_pos != whole.swa.first_pos ||
       part->swa.bytes != whole.swa.bytes)) {
    __builtin_trap();
  }
  if (whole.kind != f::MemoryKind::kIswa &&
      (!part->rs.SameShape(whole.rs) || part->rs.pos != whole.rs.pos ||
       part->rs.bytes != whole.rs.bytes)) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // With and without checksums: without, the fuzzer reaches the semantic checks behind them.
  for (bool verify : {true, false}) {
    auto parsed = f::ParseFile(data, size, "fuzz.kvs", verify, 1);
    if (!parsed.ok()) continue;
    // ParseFile walked the payload as the kind META records (ParseKvPayload); a plain one must
    // read the same through the kKv-only entry point import and chunks use.
    const auto kind = static_cast<f::MemoryKind>(parsed->meta.memory_kind);
    if (kind == f::MemoryKind::kKv &&
        !f::ParseLlamaSeqState(parsed->kv, parsed->kv_size, "fuzz.kvs").ok()) {
      __builtin_trap();
    }
    CheckSnapshotOf(parsed->kv, parsed->kv_size, parsed->layout,
                    static_cast<uint32_t>(parsed->meta.n_swa));
  }
  // A llama.cpp file, as `kvstash import` reads it with the tiny test model's vocabulary: an
  // accepted one must hold a payload our own parser accepts again, with a last cell to compare.
  {
    auto file = f::ParseLlamaFile(data, size, "fuzz.bin", 32000, 4095);
    if (file.ok()) {
      auto again = f::ParseLlamaSeqState(file->kv.data(), file->kv.size(), "again");
      if (!again.ok()) __builtin_trap();
      std::vector<uint8_t> k, v;
      if (!f::CellBytes(file->kv.data(), file->kv.size(), *again,
                        static_cast<int32_t>(again->cell_count) - 1, &k, &v)
               .ok()) {
        __builtin_trap();
      }
      f::ModelFacts tiny;
      tiny.arch = "llama";
      tiny.n_layer = 2;
      tiny.n_embd_k_gqa = 32;
      tiny.n_embd_v_gqa = 32;
      auto fits = f::CheckLlamaFileFitsModel(*file, tiny, "fuzz.bin");
      (void)fits;
    }
  }
  // The payload parser on raw bytes too: as a plain state, and as the kind the first byte says.
  auto layout = f::ParseLlamaSeqState(data, size, "fuzz.kvs");
  (void)layout;
  if (size >= 2) {
    const auto kind = static_cast<f::MemoryKind>(data[0] & 3);
    const bool partial = (data[0] & 4) != 0;
    const uint32_t n_swa = data[1];
    auto state = f::ParseSeqState(data + 2, size - 2, kind, n_swa, partial, "fuzz.bin");
    if (state.ok() && !partial) CheckSnapshotOf(data + 2, size - 2, *state, n_swa);
    // The shape a context's empty sequence has (what a state is compared with).
    if (kind == f::MemoryKind::kRecurrent || kind == f::MemoryKind::kHybrid) {
      auto shape = f::ParseRecurrentShape(data + 2, size - 2, kind, partial, "fuzz.bin");
      (void)shape;
    }
  }
  // A chunk file: whatever its header says must be safe to assemble into a sequence state that
  // our own state parser accepts, and to cut back into the same bytes.
  // The same bytes with the header checksum made valid, so mutations reach the range checks behind
  // it (the payload checksum is skipped below with verify = false).
  std::vector<uint8_t> fixed(data, data + size);
  if (size >= f::kChunkHeaderSize) {
    const uint64_t sum = XXH3_64bits(fixed.data(), 248);
    std::memcpy(fixed.data() + 248, &sum, 8);
  }
  for (int pass = 0; pass < 3; ++pass) {
    const bool verify = pass == 0;
    const uint8_t* bytes = pass == 2 ? fixed.data() : data;
    auto chunk = f::ParseChunk(bytes, size, "fuzz.kvc", verify);
    if (!chunk.ok() || verify) continue;
    const f::ChunkLayout& l = chunk->header.layout;
    std::vector<uint8_t> state(f::SeqStateSize(l, chunk->header.n_tokens));
    f::AssembleSeqState(l, chunk->header.n_tokens, {chunk->kv}, state.data(), 2);
    auto parsed = f::ParseLlamaSeqState(state.data(), state.size(), "assembled");
    if (!parsed.ok()) __builtin_trap();  // an accepted chunk must assemble into a valid state
    std::vector<uint8_t> cut(chunk->kv_size);
    if (!f::CutChunkKv(state.data(), state.size(), *parsed, 0, chunk->header.n_tokens, cut.data())
             .ok() ||
        !std::equal(cut.begin(), cut.end(), chunk->kv)) {
      __builtin_trap();
    }
  }
  // The same bytes as a tail file (its magic, the header checksum fixed): an accepted tail, cut
  // anywhere, assembles into a valid state.
  if (size >= f::kChunkHeaderSize) {
    fixed[3] = 'T';
    const uint64_t sum = XXH3_64bits(fixed.data(), 248);
    std::memcpy(fixed.data() + 248, &sum, 8);
    auto tail = f::ParseChunk(fixed.data(), size, "fuzz.kvt", false, /*tail=*/true);
    if (tail.ok()) {
      const f::ChunkLayout& l = tail->header.layout;
      const uint32_t t = tail->header.n_tokens;
      if (tail->kv_size != l.KvBytes(t) || t == 0 || t >= tail->header.chunk_tokens)
        __builtin_trap();
      const uint32_t m = t / 2 + 1;
      std::vector<uint8_t> state(f::SeqStateSize(l, m));
      f::AssembleSeqStateRuns(l, {{tail->kv, t, 0, m}}, state.data(), 1);
      if (!f::ParseLlamaSeqState(state.data(), state.size(), "assembled").ok()) __builtin_trap();
    }
  }
  return 0;
}
