// A reader for the bytes llama_state_seq_get_data() produces for a plain (non-recurrent,
// non-SWA) KV cache. kvstash walks them completely before llama.cpp sees them, because llama.cpp's
// own restore path trusts its input (asserts, exceptions, half-restored caches).
//
// The layout is llama.cpp's, not ours (src/llama-kv-cache.cpp, state_write):
//   u32 magic 0xaf143cd8, i32 seq_id, u32 n_stream,
//   per stream: u32 cell_count; if cell_count > 0:
//     cell_count x { i32 pos, u32 n_seq_id (=1), i32 seq_id }
//     u32 v_trans, u32 n_layer,
//     n_layer x { i32 k_type, u64 k_row_bytes, cell_count * k_row_bytes bytes }
//     v_trans == 0: n_layer x { i32 v_type, u64 v_row_bytes, cell_count * v_row_bytes bytes }
//     v_trans == 1: n_layer x { i32 v_type, u32 v_elem_bytes, u32 n_embd_v,
//                               n_embd_v * cell_count * v_elem_bytes bytes }
#ifndef KVSTASH_FORMAT_LLAMA_STATE_H_
#define KVSTASH_FORMAT_LLAMA_STATE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kvstash/status.h"

namespace kvstash::format {

inline constexpr uint32_t kLlamaSeqStateMagic = 0xaf143cd8;

struct KvLayout {
  uint32_t n_stream = 0;
  uint32_t cell_count = 0;
  bool v_trans = false;
  uint32_t n_layer = 0;
  int32_t k_type = -1;
  uint64_t k_row_bytes = 0;
  int32_t v_type = -1;
  uint64_t v_row_bytes = 0;   // v_trans == false
  uint32_t v_elem_bytes = 0;  // v_trans == true
  uint32_t n_embd_v = 0;      // v_trans == true
};

// Parses the whole payload and checks that: the sizes add up to exactly `size` bytes; exactly one
// stream holds cells; every cell belongs to one sequence; the positions are exactly 0..count-1;
// and every layer has the same K and V types and row sizes. Errors name the `what` '`name`' and
// end with `fix` (import passes its own: its payloads come from llama.cpp's files).
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
// own: streams before `stream` precede it, the rest follow. These two convert in place, without
// copying the KV bytes, so that the one-stream reader, chunk cutter and assembler serve both.
//
// Rewrites the n_stream-stream state of the sequence in stream `stream` (`size` bytes at `data`)
// as a one-stream state; returns its offset in `data` (its size is size - 4 * (n_stream - 1)).
// Refused when the other streams' blocks are not empty or the sizes do not add up.
Result<size_t> ToOneStream(uint8_t* data, size_t size, uint32_t n_stream, uint32_t stream);
// Rewrites a one-stream state of `size` bytes at `data`, followed by 4 * (n_stream - 1) spare
// bytes, as an n_stream-stream state (llama.cpp restores a block into the destination sequence's
// own stream whichever block it is, so the non-empty one comes first).
void ToStreams(uint8_t* data, size_t size, uint32_t n_stream);

}  // namespace kvstash::format

#endif  // KVSTASH_FORMAT_LLAMA_STATE_H_
