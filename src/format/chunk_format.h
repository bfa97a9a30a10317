// The bytes of a prefix-store chunk file, and the cutting of llama.cpp sequence states into chunks
// and back (docs/STORE.md is the specification; keep them in step). No llama.h here.
//
// A chunk holds the KV of C consecutive tokens, positions [(i-1)C, iC), of one sequence in one
// namespace. It is immutable and self-checking:
//
//   offset size  field
//   0      8     magic "\x89KVC\r\n\x1a\n"
//   8      4     format version (1)
//   12     4     header size (256)
//   16     32    hash: this chunk's chained hash h_i (also its file name)
//   48     32    parent: h_{i-1} (the namespace hash h_0 for the first chunk)
//   80     32    namespace hash h_0
//   112    4     index i (1-based)
//   116    4     n_tokens C (the store's chunk size)
//   120    4     n_layer
//   124    4     v_trans (0 or 1)
//   128    4     k_type (ggml type id)
//   132    4     v_type
//   136    8     k_row_bytes
//   144    8     v_row_bytes (v_trans 0; else 0)
//   152    4     v_elem_bytes (v_trans 1; else 0)
//   156    4     n_embd_v (v_trans 1; else 0)
//   160    8     payload bytes (tokens + KV)
//   168    8     payload checksum (SectionChecksum of the payload)
//   176    4     memory kind (format/llama_state.h MemoryKind; 0 for a plain KV cache)
//   180    4     swa_cells W: iSWA only, window cells the chunk carries, min(C, n_swa)
//   184    4     swa_n_layer      (iSWA: the sliding-window layers' KV layout; same types and
//   188    4     swa_n_embd_v      v_trans as the full-attention layers above; else 0)
//   192    8     swa_k_row_bytes
//   200    8     swa_v_row_bytes
//   208    4     swa_v_elem_bytes
//   212    4     snapshot_every P: recurrent and hybrid only; chunks whose index is a multiple of
//                P carry a snapshot (else 0)
//   216    8     snapshot_bytes: a snapshot's size in this namespace (recurrent and hybrid only)
//   224    24    reserved, zero
//   248    8     header checksum (XXH3-64 of bytes 0..247)
//   256          payload: tokens (C x u32), then the main KV cells (a plain cache's, an iSWA
//                model's full-attention layers', a hybrid's attention layers'; none for a
//                recurrent model), positions [(i-1)C, iC):
//                K: n_layer x C x k_row_bytes (cell rows, layer after layer)
//                V: v_trans 0: n_layer x C x v_row_bytes
//                   v_trans 1: n_layer x n_embd_v x C x v_elem_bytes (per layer, per V row,
//                              the C cells' elements)
//                then iSWA: the sliding-window layers' cells of positions [iC - W, iC), in the
//                same order (W cells instead of C);
//                then recurrent and hybrid, when snapshot_bytes > 0: the state after position
//                iC - 1 as llama.cpp's partial sequence state (LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)
//
// A tail file ("\x89KVT\r\n\x1a\n", docs/STORE.md "Tails") has the same layout for the
// T < C tokens a prompt holds after its last whole chunk: index i, n_tokens T, positions
// [(i-1)C, (i-1)C + T), parent h_{i-1}, hash the tail hash (store/chain_hash.h TailHash), a plain
// KV cache only (memory kind 0), and at offset 224 the store's chunk size C (4 bytes; the
// reserved bytes are then 228..247).
//
// Full-attention cells are cut anywhere, so every chunk boundary is a restore point. A window
// cannot be cut, but each chunk keeps its own window cells, so the window at any boundary is
// gathered from the chunks before it. A recurrent state can only be restored where a snapshot was
// taken: at chunks whose index is a multiple of P (chosen per namespace so that snapshots cost
// about as much as the chunks' own KV, StoreSnapshotEvery).
#ifndef KVSTASH_FORMAT_CHUNK_FORMAT_H_
#define KVSTASH_FORMAT_CHUNK_FORMAT_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "format/llama_state.h"
#include "kvstash/status.h"

namespace kvstash::format {

inline constexpr uint8_t kChunkMagic[8] = {0x89, 'K', 'V', 'C', '\r', '\n', 0x1A, '\n'};
inline constexpr uint8_t kTailMagic[8] = {0x89, 'K', 'V', 'T', '\r', '\n', 0x1A, '\n'};
inline constexpr uint32_t kChunkFormatVersion = 1;
inline constexpr size_t kChunkHeaderSize = 256;
// Chunk sizes a store may use (tokens). Multiples of 16 keep the KV payload 64-byte aligned.
inline constexpr uint32_t kMinChunkTokens = 16;
inline constexpr uint32_t kMaxChunkTokens = 16384;

using Hash256 = std::array<uint8_t, 32>;
std::string HashHex(const Hash256& hash);  // 64 lowercase hex digits
bool ParseHashHex(std::string_view hex, Hash256* out);

// What every chunk of one namespace shares: the per-cell layout of llama.cpp's sequence state.
struct ChunkLayout {
  MemoryKind kind = MemoryKind::kKv;
  // The main KV cells (none for kRecurrent: n_layer 0).
  uint32_t n_layer = 0;
  bool v_trans = false;
  int32_t k_type = -1;
  int32_t v_type = -1;
  uint64_t k_row_bytes = 0;
  uint64_t v_row_bytes = 0;   // v_trans == false
  uint32_t v_elem_bytes = 0;  // v_trans == true
  uint32_t n_embd_v = 0;      // v_trans == true
  // kIswa: the window cells each chunk carries and their layers' layout.
  uint32_t swa_cells = 0;
  uint32_t swa_n_layer = 0;
  uint64_t swa_k_row_bytes = 0;
  uint64_t swa_v_row_bytes = 0;
  uint32_t swa_v_elem_bytes = 0;
  uint32_t swa_n_embd_v = 0;
  // kRecurrent, kHybrid: every how many chunks a snapshot is kept, and its size.
  uint32_t snapshot_every = 0;
  uint64_t snapshot_bytes = 0;

  static ChunkLayout From(const KvLayout& kv);
  // The window layers' layout as a ChunkLayout of their own (kIswa).
  ChunkLayout Swa() const;
  // KV bytes of `n_cells` main cells in chunk order (K of every layer, then V).
  uint64_t KvBytes(uint32_t n_cells) const;
  // Whether chunk `index` (1-based) carries a snapshot.
  bool HasSnapshot(uint32_t index) const {
    return snapshot_every != 0 && index % snapshot_every == 0;
  }
  // All KV bytes of chunk `index` of `n_tokens` tokens: main cells, window cells, snapshot.
  uint64_t ChunkKvBytes(uint32_t n_tokens, uint32_t index) const;
  bool operator==(const ChunkLayout& o) const;
  bool operator!=(const ChunkLayout& o) const { return !(*this == o); }
};

struct ChunkHeader {
  Hash256 hash{};
  Hash256 parent{};
  Hash256 ns{};
  uint32_t index = 0;         // 1-based
  uint32_t n_tokens = 0;      // C (a tail: T, 1..C-1)
  bool tail = false;          // a tail file: its magic, and chunk_tokens at offset 224
  uint32_t chunk_tokens = 0;  // C (equal to n_tokens for a chunk)
  ChunkLayout layout;
  uint64_t payload_bytes = 0;
  uint64_t payload_checksum = 0;
};

// The 256 header bytes and the tokens; the writer appends `kv` (layout.KvBytes(n_tokens) bytes)
// right after them. Fills payload_bytes and payload_checksum from `tokens` and `kv`.
std::string EncodeChunkHead(ChunkHeader header, const int32_t* tokens, const uint8_t* kv,
                            size_t kv_size);

// Checks the first `n` bytes (at least kChunkHeaderSize, else Corruption) of a file of
// `file_size` bytes: magic (a tail's when `tail`), version, header checksum, reserved bytes, every
// field's range and file_size == header + payload. `name` is used in errors.
Result<ChunkHeader> ParseChunkHeader(const uint8_t* head, size_t n, uint64_t file_size,
                                     const std::string& name, bool tail = false);

// The file size a chunk header claims (header + payload), from its first `n` bytes; 0 when they
// are no chunk header (too short, another magic). Nothing else is checked: ParseChunk does.
uint64_t ChunkFileSizeFromHead(const uint8_t* head, size_t n);

struct ChunkView {
  ChunkHeader header;
  std::vector<int32_t> tokens;
  const uint8_t* kv = nullptr;  // points into the caller's buffer
  size_t kv_size = 0;
};

// The whole file: ParseChunkHeader, then (with verify_checksum) the payload checksum, and token
// ids >= 0.
Result<ChunkView> ParseChunk(const uint8_t* data, size_t size, const std::string& name,
                             bool verify_checksum, bool tail = false);

// Cutting and assembling llama.cpp sequence states (format/llama_state.h).

// Writes the KV bytes of cells [begin, begin + n) of the sequence state `state` (already accepted
// by ParseLlamaSeqState, giving `layout`) to `out` (ChunkLayout::From(layout).KvBytes(n) bytes),
// in chunk order. Refuses (InvalidArgument) a state whose cell i does not hold position
// layout.first_pos + i: only KV in position order can be cut by cell index. `state` is the KV
// part's start minus kSeqStateHeaderBytes (a whole state, or a snapshot of an iSWA window) and
// `size` that many bytes more than the part.
Status CutChunkKv(const uint8_t* state, size_t size, const KvLayout& layout, uint32_t begin,
                  uint32_t n, uint8_t* out);

// Size of the sequence state of `n_cells` cells in `layout` (one stream, sequence 0).
uint64_t SeqStateSize(const ChunkLayout& layout, uint32_t n_cells);

// Size of a KV part (from its n_stream field on) of `n_cells` cells in `layout`.
uint64_t KvPartSize(const ChunkLayout& layout, uint32_t n_cells);

// Cells of a KV part gathered from blocks in chunk order: `count` cells from cell `from` of a
// block of `block_cells` cells.
struct CellRun {
  const uint8_t* block = nullptr;
  uint32_t block_cells = 0;
  uint32_t from = 0;
  uint32_t count = 0;
};
// Writes a one-stream KV part (KvPartSize(layout, total) bytes) whose cells are the runs' cells in
// order, at positions first_pos, first_pos + 1, ... of sequence 0.
void AssembleKvPart(const ChunkLayout& layout, const std::vector<CellRun>& runs, int32_t first_pos,
                    uint8_t* out);

// Writes to `out` (SeqStateSize(layout, chunks.size() * chunk_tokens) bytes) the llama.cpp
// sequence state whose cells are the chunks' cells in order, positions 0..N-1 in sequence 0:
// what llama_state_seq_get_data would have produced for those tokens. Each chunks[j] points at
// layout.KvBytes(chunk_tokens) bytes. Layers are split among `n_threads` threads.
void AssembleSeqState(const ChunkLayout& layout, uint32_t chunk_tokens,
                      const std::vector<const uint8_t*>& chunks, uint8_t* out, int n_threads = 1);
// The same for cells gathered by `runs` (positions 0..N-1, N the runs' cells): SeqStateSize(layout,
// N) bytes.
void AssembleSeqStateRuns(const ChunkLayout& layout, const std::vector<CellRun>& runs, uint8_t* out,
                          int n_threads = 1);

}  // namespace kvstash::format

#endif  // KVSTASH_FORMAT_CHUNK_FORMAT_H_
