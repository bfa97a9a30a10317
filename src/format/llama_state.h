// A reader for the bytes llama_state_seq_get_data() produces for one sequence, for every kind of
// memory llama.cpp keeps (MemoryKind). kvstash walks them completely before llama.cpp sees them,
// because llama.cpp's own restore path trusts its input (asserts, exceptions, half-restored
// caches).
//
// The layout is llama.cpp's, not ours: u32 magic 0xaf143cd8, i32 seq_id, then the memory's parts
// (src/llama-context.cpp state_seq_write_data and each memory's state_write):
//   kKv:        KV part                    (llama-kv-cache.cpp)
//   kIswa:      KV part (full-attention layers), KV part (sliding-window layers;
//   llama-kv-cache-iswa) kRecurrent: recurrent part             (llama-memory-recurrent.cpp)
//   kHybrid:    KV part (attention layers), recurrent part (llama-memory-hybrid.cpp)
// With LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY (a "snapshot") iSWA and hybrid memories write only their
// last part; a recurrent memory writes its one part either way.
//
// A KV part:
//   u32 n_stream,
//   per stream: u32 cell_count; if cell_count > 0:
//     cell_count x { i32 pos, u32 n_seq_id (=1), i32 seq_id }
//     u32 v_trans, u32 n_layer,
//     n_layer x { i32 k_type, u64 k_row_bytes, cell_count * k_row_bytes bytes }
//     v_trans == 0: n_layer x { i32 v_type, u64 v_row_bytes, cell_count * v_row_bytes bytes }
//     v_trans == 1: n_layer x { i32 v_type, u32 v_elem_bytes, u32 n_embd_v,
//                               n_embd_v * cell_count * v_elem_bytes bytes }
// The sliding-window part holds only the cells the next token can see: for a sequence of n tokens
// and a window of n_swa, positions [n - min(n, n_swa), n).
//
// A recurrent part (the state after the sequence's last token, in one cell):
//   u32 cell_count (1), { i32 pos (n - 1), u32 n_seq_id (0) },
//   u32 s_trans (0), u32 n_layer (all of the model's layers),
//   for each layer with a state: { i32 r_type, u64 r_row_bytes, r_row_bytes bytes },
//   for each layer with a state: { i32 s_type, u64 s_row_bytes, s_row_bytes bytes }
//   (s_row_bytes may be 0: LFM2's short convolutions keep only R)
// (the layers with a state are not listed: the R and S records run to the end of the part, as
// many of each; the recurrent part is always the last one).
#ifndef KVSTASH_FORMAT_LLAMA_STATE_H_
#define KVSTASH_FORMAT_LLAMA_STATE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvstash/status.h"

namespace kvstash::format {

inline constexpr uint32_t kLlamaSeqStateMagic = 0xaf143cd8;
// The magic and the sequence id before the first part.
inline constexpr size_t kSeqStateHeaderBytes = 8;

// What memory a model keeps per sequence (llama.cpp decides it from the architecture). The
// numbers are stored in session files (META field 23) and chunk headers: they never change.
enum class MemoryKind : uint32_t {
  kKv = 0,         // one attention KV cache: llama, qwen, phi3, MoE models, ...
  kIswa = 1,       // interleaved sliding-window attention: gemma2/3, gpt-oss, ...
  kRecurrent = 2,  // a recurrent state: mamba, mamba2, rwkv, ...
  kHybrid = 3,     // attention layers and recurrent layers: jamba, granite-hybrid, lfm2, ...
};
inline constexpr uint32_t kMaxMemoryKind = 3;
const char* MemoryKindName(MemoryKind kind);  // "kv", "iswa", "recurrent", "hybrid"
// Whether the memory has a part that cannot be cut at an earlier position (a window or a state).
inline bool HasTrailingState(MemoryKind kind) { return kind != MemoryKind::kKv; }

struct KvLayout {
  uint32_t n_stream = 0;
  uint32_t cell_count = 0;
  int32_t first_pos = 0;  // the cells hold positions first_pos .. first_pos + cell_count - 1
  bool v_trans = false;
  uint32_t n_layer = 0;
  int32_t k_type = -1;
  uint64_t k_row_bytes = 0;
  int32_t v_type = -1;
  uint64_t v_row_bytes = 0;   // v_trans == false
  uint32_t v_elem_bytes = 0;  // v_trans == true
  uint32_t n_embd_v = 0;      // v_trans == true
  uint64_t bytes = 0;         // the part's size, from its n_stream field on
};

struct RecurrentLayout {
  int32_t pos = -1;      // of the one cell: the sequence's last position
  uint32_t n_layer = 0;  // as llama.cpp writes it: all of the model's layers
  // Records: one R per layer with a state, then as many S, or none (LFM2's short convolutions keep
  // only R). Each kind is alike in every layer.
  uint32_t n_r = 0;
  uint32_t n_s = 0;
  int32_t r_type = -1;
  uint64_t r_row_bytes = 0;
  int32_t s_type = -1;
  uint64_t s_row_bytes = 0;
  uint64_t bytes = 0;  // the part's size, from its cell_count field on

  // The same records (the shape a model's context has; positions and sizes aside).
  bool SameShape(const RecurrentLayout& o) const {
    return n_layer == o.n_layer && n_r == o.n_r && n_s == o.n_s && r_type == o.r_type &&
           r_row_bytes == o.r_row_bytes && s_type == o.s_type && s_row_bytes == o.s_row_bytes;
  }
};

// A walked sequence state. Parts a kind does not have are left empty.
struct SeqLayout {
  MemoryKind kind = MemoryKind::kKv;
  bool partial = false;   // a snapshot: only the last part (no `kv` for kIswa and kHybrid)
  uint32_t n_tokens = 0;  // the state stands for positions 0 .. n_tokens - 1
  KvLayout kv;            // kKv; kIswa: full-attention layers; kHybrid: attention layers
  KvLayout swa;           // kIswa: the sliding-window layers' last window
  RecurrentLayout rs;     // kRecurrent, kHybrid
  // Bytes of the state before its last part (header and `kv`): a snapshot's last part follows a
  // state's first part at this offset.
  uint64_t first_part_end = kSeqStateHeaderBytes;
};

// Walks a whole state of `kind` (or, with `partial`, a snapshot) and checks it: every size adds up
// to exactly `size` bytes; every KV part has one stream, cells of one sequence at consecutive
// positions, and the same K and V types and row sizes in every layer; the full-attention part holds
// exactly positions 0..n-1; an iSWA window holds exactly [n - min(n, n_swa), n); a recurrent part
// holds one cell at n - 1, R records then as many S records or none, each kind alike in every
// layer (which layers have a state the payload does not say: compare the result's `rs` with
// ParseRecurrentShape's from the model's own context, RecurrentLayout::SameShape). `n_swa` is the
// model's window (kIswa only). Errors as ParseLlamaSeqState's.
Result<SeqLayout> ParseSeqState(const uint8_t* data, size_t size, MemoryKind kind, uint32_t n_swa,
                                bool partial, const std::string& name,
                                const std::string& what = "session file",
                                const std::string& fix = "re-create it with 'kvstash save'");

// The recurrent records of an empty sequence's state (llama.cpp writes them with no rows and a cell
// count of 0): what a state of this context must have. kRecurrent or kHybrid `kind`, whole or
// partial state; `name` is used in errors.
Result<RecurrentLayout> ParseRecurrentShape(const uint8_t* data, size_t size, MemoryKind kind,
                                            bool partial, const std::string& name);

// ParseSeqState of a kKv state, returning its one KV part. Parses the whole payload and checks
// that: the sizes add up to exactly `size` bytes; exactly one stream holds cells; every cell
// belongs to one sequence; the positions are exactly 0..count-1; and every layer has the same K and
// V types and row sizes. Errors name the `what` '`name`' and end with `fix` (import passes its own:
// its payloads come from llama.cpp's files).
Result<KvLayout> ParseLlamaSeqState(const uint8_t* data, size_t size, const std::string& name,
                                    const std::string& what = "session file",
                                    const std::string& fix = "re-create it with 'kvstash save'");

// The bytes of the cell at position `pos` of a payload ParseLlamaSeqState accepted as `layout`:
// `k` gets its K row of every layer, `v` its V values of every layer (gathered from the columns
// when V is transposed), in layer order. kIncompatible when no cell has that position.
Status CellBytes(const uint8_t* data, size_t size, const KvLayout& layout, int32_t pos,
                 std::vector<uint8_t>* k, std::vector<uint8_t>* v);

// A context with a KV stream per sequence (kv_unified off, n_stream > 1) writes one sequence's
// state as the one-stream state with an empty block (u32 0) for every other stream around its
// own: streams before `stream` precede it, the rest follow. These convert in place, without
// copying the KV bytes, so that the one-stream reader, chunk cutter and assembler serve both.
//
// Rewrites the n_stream-stream state of the sequence in stream `stream` (`size` bytes at `data`)
// as a one-stream state; returns its offset in `data` (its size is size - 4 * (n_stream - 1)).
// Refused when the other streams' blocks are not empty or the sizes do not add up.
Result<size_t> ToOneStream(uint8_t* data, size_t size, uint32_t n_stream, uint32_t stream);

// The same for a state of any kind (a snapshot with `partial`): each KV part loses its other
// streams' empty blocks. Compacts `data` in place and returns the one-stream state's size.
Result<size_t> StateToOneStream(uint8_t* data, size_t size, MemoryKind kind, bool partial,
                                uint32_t n_stream, uint32_t stream);
// And back: a one-stream state of `size` bytes followed by 4 * (n_stream - 1) spare bytes per KV
// part becomes an n_stream one (its own block first in each part).
void StateToStreams(uint8_t* data, size_t size, MemoryKind kind, bool partial, uint32_t n_stream);
// KV parts in a state of `kind` (whole, or a snapshot with `partial`).
int KvPartCount(MemoryKind kind, bool partial);

}  // namespace kvstash::format

#endif  // KVSTASH_FORMAT_LLAMA_STATE_H_
