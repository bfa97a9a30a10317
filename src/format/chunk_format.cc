#include "format/chunk_format.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "format/coding.h"
#include "format/meta_check.h"
#include "format/session_format.h"

namespace kvstash::format {
namespace {

// Field offsets of the header (chunk_format.h has the table).
enum : size_t {
  kOffVersion = 8,
  kOffHeaderSize = 12,
  kOffHash = 16,
  kOffParent = 48,
  kOffNs = 80,
  kOffIndex = 112,
  kOffNTokens = 116,
  kOffNLayer = 120,
  kOffVTrans = 124,
  kOffKType = 128,
  kOffVType = 132,
  kOffKRow = 136,
  kOffVRow = 144,
  kOffVElem = 152,
  kOffNEmbdV = 156,
  kOffPayloadBytes = 160,
  kOffPayloadSum = 168,
  kOffKind = 176,
  kOffSwaCells = 180,
  kOffSwaNLayer = 184,
  kOffSwaNEmbdV = 188,
  kOffSwaKRow = 192,
  kOffSwaVRow = 200,
  kOffSwaVElem = 208,
  kOffSnapshotEvery = 212,
  kOffSnapshotBytes = 216,
  kOffReserved = 224,
  kOffTailChunkTokens = 224,  // tails only; their reserved bytes start at 228
  kOffTailReserved = 228,
  kOffHeaderSum = 248,
};

Status Bad(const std::string& name, const std::string& what) {
  return Status::Corruption(
      "chunk file '" + name + "' is corrupt: " + what +
      "; it is not used ('kvstash cache verify' lists such files; the next " +
      "run that needs the chunk replaces it, 'kvstash cache rm' removes all)");
}

// The payload checksum over the tokens and the KV bytes, as if they were one buffer.
uint64_t PayloadChecksum(const uint8_t* tokens, size_t token_bytes, const uint8_t* kv,
                         size_t kv_size) {
  SectionHasher hasher;
  // Blocks of kChecksumBlock bytes across the two pieces: the tokens are small (C * 4 bytes), so
  // the first block is the tokens and the start of the KV bytes.
  std::string first(reinterpret_cast<const char*>(tokens), token_bytes);
  size_t taken = std::min(kv_size, kChecksumBlock - std::min(kChecksumBlock, token_bytes));
  first.append(reinterpret_cast<const char*>(kv), taken);
  hasher.AddBlock(reinterpret_cast<const uint8_t*>(first.data()), first.size());
  while (taken < kv_size) {
    const size_t n = std::min(kChecksumBlock, kv_size - taken);
    hasher.AddBlock(kv + taken, n);
    taken += n;
  }
  return hasher.Finish();
}

// A KV layout's sizes within what any model produces.
Status CheckKvSizes(const ChunkLayout& l, const std::string& name, const char* part) {
  const auto bad = [&](const std::string& what) { return Bad(name, part + (" " + what)); };
  if (l.n_layer == 0 || l.n_layer > 4096)
    return bad("layer count " + std::to_string(l.n_layer) + " is out of range");
  // A row is at most 64 Ki elements of at most 4 bytes: far beyond any model's KV width.
  constexpr uint64_t kMaxRow = uint64_t{1} << 18;
  if (l.k_row_bytes == 0 || l.k_row_bytes > kMaxRow) return bad("K row size out of range");
  if (!l.v_trans) {
    if (l.v_row_bytes == 0 || l.v_row_bytes > kMaxRow || l.v_elem_bytes != 0 || l.n_embd_v != 0)
      return bad("V row size out of range");
  } else if (l.v_row_bytes != 0 || l.v_elem_bytes == 0 || l.v_elem_bytes > 4 || l.n_embd_v == 0 ||
             l.n_embd_v > (1u << 16)) {
    return bad("transposed V sizes out of range");
  }
  return Status::Ok();
}

Status CheckLayout(const ChunkLayout& l, uint32_t n_tokens, const std::string& name) {
  if (static_cast<uint32_t>(l.kind) > kMaxMemoryKind) return Bad(name, "unknown memory kind");
  const CacheType* k = FindCacheType(l.k_type);
  const CacheType* v = FindCacheType(l.v_type);
  if (k == nullptr || v == nullptr) return Bad(name, "unknown K or V type id");
  if (l.kind == MemoryKind::kRecurrent) {
    if (l.n_layer != 0 || l.k_row_bytes != 0 || l.v_row_bytes != 0 || l.v_elem_bytes != 0 ||
        l.n_embd_v != 0)
      return Bad(name, "a recurrent model's chunk has KV sizes");
  } else {
    KVSTASH_RETURN_IF_ERROR(CheckKvSizes(l, name, "main KV"));
  }
  if (l.kind == MemoryKind::kIswa) {
    if (l.swa_cells == 0 || l.swa_cells > n_tokens)
      return Bad(name, "window cell count " + std::to_string(l.swa_cells) + " is out of range");
    KVSTASH_RETURN_IF_ERROR(CheckKvSizes(l.Swa(), name, "window KV"));
  } else if (l.swa_cells != 0 || l.swa_n_layer != 0 || l.swa_k_row_bytes != 0 ||
             l.swa_v_row_bytes != 0 || l.swa_v_elem_bytes != 0 || l.swa_n_embd_v != 0) {
    return Bad(name, "window fields are set for a model without a window");
  }
  const bool stateful = l.kind == MemoryKind::kRecurrent || l.kind == MemoryKind::kHybrid;
  // A snapshot is a few records per layer: 1 GiB is far beyond any model's state.
  if (stateful ? l.snapshot_every == 0 || l.snapshot_every > 1024 || l.snapshot_bytes == 0 ||
                     l.snapshot_bytes > (1u << 30)
               : l.snapshot_every != 0 || l.snapshot_bytes != 0) {
    return Bad(name, "snapshot fields are out of range");
  }
  return Status::Ok();
}

}  // namespace

std::string HashHex(const Hash256& hash) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out(64, '0');
  for (size_t i = 0; i < 32; ++i) {
    out[2 * i] = kDigits[hash[i] >> 4];
    out[2 * i + 1] = kDigits[hash[i] & 15];
  }
  return out;
}

bool ParseHashHex(std::string_view hex, Hash256* out) {
  if (hex.size() != 64) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;  // upper case is not canonical: a name is the one spelling HashHex gives
  };
  for (size_t i = 0; i < 32; ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    (*out)[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

ChunkLayout ChunkLayout::From(const KvLayout& kv) {
  ChunkLayout l;
  l.n_layer = kv.n_layer;
  l.v_trans = kv.v_trans;
  l.k_type = kv.k_type;
  l.v_type = kv.v_type;
  l.k_row_bytes = kv.k_row_bytes;
  l.v_row_bytes = kv.v_trans ? 0 : kv.v_row_bytes;
  l.v_elem_bytes = kv.v_trans ? kv.v_elem_bytes : 0;
  l.n_embd_v = kv.v_trans ? kv.n_embd_v : 0;
  return l;
}

ChunkLayout ChunkLayout::Swa() const {
  ChunkLayout l;
  l.n_layer = swa_n_layer;
  l.v_trans = v_trans;
  l.k_type = k_type;
  l.v_type = v_type;
  l.k_row_bytes = swa_k_row_bytes;
  l.v_row_bytes = swa_v_row_bytes;
  l.v_elem_bytes = swa_v_elem_bytes;
  l.n_embd_v = swa_n_embd_v;
  return l;
}

uint64_t ChunkLayout::ChunkKvBytes(uint32_t n_tokens, uint32_t index) const {
  uint64_t bytes = KvBytes(n_tokens);
  if (kind == MemoryKind::kIswa) bytes += Swa().KvBytes(swa_cells);
  if (HasSnapshot(index)) bytes += snapshot_bytes;
  return bytes;
}

uint64_t ChunkLayout::KvBytes(uint32_t n_cells) const {
  const uint64_t v_per_cell = v_trans ? uint64_t{n_embd_v} * v_elem_bytes : v_row_bytes;
  return uint64_t{n_layer} * n_cells * (k_row_bytes + v_per_cell);
}

bool ChunkLayout::operator==(const ChunkLayout& o) const {
  return n_layer == o.n_layer && v_trans == o.v_trans && k_type == o.k_type && v_type == o.v_type &&
         k_row_bytes == o.k_row_bytes && v_row_bytes == o.v_row_bytes &&
         v_elem_bytes == o.v_elem_bytes && n_embd_v == o.n_embd_v && kind == o.kind &&
         swa_cells == o.swa_cells && swa_n_layer == o.swa_n_layer &&
         swa_k_row_bytes == o.swa_k_row_bytes && swa_v_row_bytes == o.swa_v_row_bytes &&
         swa_v_elem_bytes == o.swa_v_elem_bytes && swa_n_embd_v == o.swa_n_embd_v &&
         snapshot_every == o.snapshot_every && snapshot_bytes == o.snapshot_bytes;
}

std::string EncodeChunkHead(ChunkHeader h, const int32_t* tokens, const uint8_t* kv,
                            size_t kv_size) {
  const size_t token_bytes = size_t{h.n_tokens} * 4;
  h.payload_bytes = token_bytes + kv_size;
  h.payload_checksum =
      PayloadChecksum(reinterpret_cast<const uint8_t*>(tokens), token_bytes, kv, kv_size);
  std::string out(kChunkHeaderSize + token_bytes, '\0');
  uint8_t* p = reinterpret_cast<uint8_t*>(out.data());
  std::memcpy(p, h.tail ? kTailMagic : kChunkMagic, 8);
  if (h.tail) EncodeFixed32(p + kOffTailChunkTokens, h.chunk_tokens);
  EncodeFixed32(p + kOffVersion, kChunkFormatVersion);
  EncodeFixed32(p + kOffHeaderSize, kChunkHeaderSize);
  std::memcpy(p + kOffHash, h.hash.data(), 32);
  std::memcpy(p + kOffParent, h.parent.data(), 32);
  std::memcpy(p + kOffNs, h.ns.data(), 32);
  EncodeFixed32(p + kOffIndex, h.index);
  EncodeFixed32(p + kOffNTokens, h.n_tokens);
  EncodeFixed32(p + kOffNLayer, h.layout.n_layer);
  EncodeFixed32(p + kOffVTrans, h.layout.v_trans ? 1 : 0);
  EncodeFixed32(p + kOffKType, static_cast<uint32_t>(h.layout.k_type));
  EncodeFixed32(p + kOffVType, static_cast<uint32_t>(h.layout.v_type));
  EncodeFixed64(p + kOffKRow, h.layout.k_row_bytes);
  EncodeFixed64(p + kOffVRow, h.layout.v_row_bytes);
  EncodeFixed32(p + kOffVElem, h.layout.v_elem_bytes);
  EncodeFixed32(p + kOffNEmbdV, h.layout.n_embd_v);
  EncodeFixed32(p + kOffKind, static_cast<uint32_t>(h.layout.kind));
  EncodeFixed32(p + kOffSwaCells, h.layout.swa_cells);
  EncodeFixed32(p + kOffSwaNLayer, h.layout.swa_n_layer);
  EncodeFixed32(p + kOffSwaNEmbdV, h.layout.swa_n_embd_v);
  EncodeFixed64(p + kOffSwaKRow, h.layout.swa_k_row_bytes);
  EncodeFixed64(p + kOffSwaVRow, h.layout.swa_v_row_bytes);
  EncodeFixed32(p + kOffSwaVElem, h.layout.swa_v_elem_bytes);
  EncodeFixed32(p + kOffSnapshotEvery, h.layout.snapshot_every);
  EncodeFixed64(p + kOffSnapshotBytes, h.layout.snapshot_bytes);
  EncodeFixed64(p + kOffPayloadBytes, h.payload_bytes);
  EncodeFixed64(p + kOffPayloadSum, h.payload_checksum);
  EncodeFixed64(p + kOffHeaderSum, XXH3_64bits(p, kOffHeaderSum));
  std::memcpy(p + kChunkHeaderSize, tokens, token_bytes);  // little-endian host (CMakeLists.txt)
  return out;
}

Result<ChunkHeader> ParseChunkHeader(const uint8_t* p, size_t n, uint64_t file_size,
                                     const std::string& name, bool tail) {
  if (n < kChunkHeaderSize || file_size < kChunkHeaderSize)
    return Bad(name, "it is shorter than a chunk header (" + std::to_string(file_size) + " bytes)");
  if (std::memcmp(p, tail ? kTailMagic : kChunkMagic, 8) != 0)
    return Bad(name, tail ? "it is not a kvstash tail file" : "it is not a kvstash chunk file");
  if (DecodeFixed32(p + kOffVersion) != kChunkFormatVersion) {
    return Status::Incompatible("chunk file '" + name + "' has format version " +
                                std::to_string(DecodeFixed32(p + kOffVersion)) +
                                "; this kvstash reads " + "version " +
                                std::to_string(kChunkFormatVersion));
  }
  if (DecodeFixed32(p + kOffHeaderSize) != kChunkHeaderSize) return Bad(name, "wrong header size");
  if (DecodeFixed64(p + kOffHeaderSum) != XXH3_64bits(p, kOffHeaderSum))
    return Bad(name, "the header checksum does not match");
  for (size_t i = tail ? kOffTailReserved : kOffReserved; i < kOffHeaderSum; ++i)
    if (p[i] != 0) return Bad(name, "reserved header bytes are not zero");
  ChunkHeader h;
  h.tail = tail;
  std::memcpy(h.hash.data(), p + kOffHash, 32);
  std::memcpy(h.parent.data(), p + kOffParent, 32);
  std::memcpy(h.ns.data(), p + kOffNs, 32);
  h.index = DecodeFixed32(p + kOffIndex);
  h.n_tokens = DecodeFixed32(p + kOffNTokens);
  const uint32_t v_trans = DecodeFixed32(p + kOffVTrans);
  if (v_trans > 1) return Bad(name, "bad V layout flag");
  h.layout.n_layer = DecodeFixed32(p + kOffNLayer);
  h.layout.v_trans = v_trans == 1;
  h.layout.k_type = static_cast<int32_t>(DecodeFixed32(p + kOffKType));
  h.layout.v_type = static_cast<int32_t>(DecodeFixed32(p + kOffVType));
  h.layout.k_row_bytes = DecodeFixed64(p + kOffKRow);
  h.layout.v_row_bytes = DecodeFixed64(p + kOffVRow);
  h.layout.v_elem_bytes = DecodeFixed32(p + kOffVElem);
  h.layout.n_embd_v = DecodeFixed32(p + kOffNEmbdV);
  const uint32_t kind = DecodeFixed32(p + kOffKind);
  if (kind > kMaxMemoryKind) return Bad(name, "unknown memory kind " + std::to_string(kind));
  h.layout.kind = static_cast<MemoryKind>(kind);
  h.layout.swa_cells = DecodeFixed32(p + kOffSwaCells);
  h.layout.swa_n_layer = DecodeFixed32(p + kOffSwaNLayer);
  h.layout.swa_n_embd_v = DecodeFixed32(p + kOffSwaNEmbdV);
  h.layout.swa_k_row_bytes = DecodeFixed64(p + kOffSwaKRow);
  h.layout.swa_v_row_bytes = DecodeFixed64(p + kOffSwaVRow);
  h.layout.swa_v_elem_bytes = DecodeFixed32(p + kOffSwaVElem);
  h.layout.snapshot_every = DecodeFixed32(p + kOffSnapshotEvery);
  h.layout.snapshot_bytes = DecodeFixed64(p + kOffSnapshotBytes);
  h.payload_bytes = DecodeFixed64(p + kOffPayloadBytes);
  h.payload_checksum = DecodeFixed64(p + kOffPayloadSum);
  h.chunk_tokens = tail ? DecodeFixed32(p + kOffTailChunkTokens) : h.n_tokens;
  const uint32_t c = h.chunk_tokens;
  if (c < kMinChunkTokens || c > kMaxChunkTokens || c % 16 != 0)
    return Bad(name, "chunk size " + std::to_string(c) + " is out of range");
  if (tail && (h.n_tokens == 0 || h.n_tokens >= c))
    return Bad(name, "a tail of " + std::to_string(h.n_tokens) + " tokens is out of range");
  // Positions end at index * C, which must stay within the longest context kvstash supports.
  if (h.index == 0 || uint64_t{h.index} * c > kMaxTokens)
    return Bad(name, "chunk index " + std::to_string(h.index) + " is out of range");
  KVSTASH_RETURN_IF_ERROR(CheckLayout(h.layout, c, name));
  if (tail && h.layout.kind != MemoryKind::kKv)
    return Bad(name, "a tail of a model with a window or a recurrent state");
  const uint64_t expected = uint64_t{h.n_tokens} * 4 + h.layout.ChunkKvBytes(h.n_tokens, h.index);
  if (h.payload_bytes != expected)
    return Bad(name, "the payload size does not match the recorded layout");
  if (file_size != kChunkHeaderSize + h.payload_bytes) {
    return Bad(name, "it has " + std::to_string(file_size) + " bytes, the header says " +
                         std::to_string(kChunkHeaderSize + h.payload_bytes) +
                         " (cut short or extended)");
  }
  return h;
}

uint64_t ChunkFileSizeFromHead(const uint8_t* head, size_t n) {
  if (n < kChunkHeaderSize || std::memcmp(head, kChunkMagic, 8) != 0) return 0;
  const uint64_t payload = DecodeFixed64(head + kOffPayloadBytes);
  if (payload > (uint64_t{1} << 40)) return 0;
  return kChunkHeaderSize + payload;
}

Result<ChunkView> ParseChunk(const uint8_t* data, size_t size, const std::string& name,
                             bool verify_checksum, bool tail) {
  auto header = ParseChunkHeader(data, size, size, name, tail);
  if (!header.ok()) return header.status();
  ChunkView view;
  view.header = *header;
  const uint8_t* tokens = data + kChunkHeaderSize;
  const size_t token_bytes = size_t{header->n_tokens} * 4;
  view.kv = tokens + token_bytes;
  view.kv_size = size - kChunkHeaderSize - token_bytes;
  if (verify_checksum &&
      PayloadChecksum(tokens, token_bytes, view.kv, view.kv_size) != header->payload_checksum) {
    return Bad(name, "the payload checksum does not match (the bytes were altered or damaged)");
  }
  view.tokens.resize(header->n_tokens);
  std::memcpy(view.tokens.data(), tokens, token_bytes);
  for (int32_t t : view.tokens)
    if (t < 0) return Bad(name, "a token id is negative");
  return view;
}

// Offsets within a sequence state of `cells` cells (format/llama_state.h): the cell table, then
// v_trans and n_layer, then each layer's K (type, row size, rows), then each layer's V.
namespace {
struct StateOffsets {
  uint64_t k_first;  // first K row of layer 0
  uint64_t k_layer;  // from one layer's K rows to the next's
  uint64_t v_start;  // layer 0's V header
  uint64_t v_first;  // first V byte of layer 0
  uint64_t v_layer;
};

StateOffsets OffsetsOf(const ChunkLayout& l, uint64_t cells) {
  StateOffsets o;
  const uint64_t head = 4 + 4 + 4 + 4 + cells * 12 + 4 + 4;
  o.k_first = head + 4 + 8;
  o.k_layer = 4 + 8 + cells * l.k_row_bytes;
  o.v_start = head + l.n_layer * o.k_layer;
  if (!l.v_trans) {
    o.v_first = o.v_start + 4 + 8;
    o.v_layer = 4 + 8 + cells * l.v_row_bytes;
  } else {
    o.v_first = o.v_start + 4 + 4 + 4;
    o.v_layer = 4 + 4 + 4 + uint64_t{l.n_embd_v} * cells * l.v_elem_bytes;
  }
  return o;
}
}  // namespace

Status CutChunkKv(const uint8_t* state, size_t size, const KvLayout& kv, uint32_t begin, uint32_t n,
                  uint8_t* out) {
  const ChunkLayout l = ChunkLayout::From(kv);
  if (uint64_t{begin} + n > kv.cell_count || SeqStateSize(l, kv.cell_count) != size) {
    return Status::InvalidArgument(
        "cells [" + std::to_string(begin) + ", " + std::to_string(uint64_t{begin} + n) +
        ") are not in a state of " + std::to_string(kv.cell_count) + " cells");
  }
  for (uint32_t i = begin; i < begin + n; ++i) {
    if (static_cast<int64_t>(static_cast<int32_t>(DecodeFixed32(state + 16 + uint64_t{i} * 12))) !=
        int64_t{kv.first_pos} + i) {
      return Status::InvalidArgument("the KV cache does not hold its cells in position order " +
                                     std::string("(cell ") + std::to_string(i) + ")");
    }
  }
  const StateOffsets o = OffsetsOf(l, kv.cell_count);
  for (uint32_t il = 0; il < l.n_layer; ++il) {
    const size_t bytes = size_t{n} * l.k_row_bytes;
    std::memcpy(out, state + o.k_first + il * o.k_layer + begin * l.k_row_bytes, bytes);
    out += bytes;
  }
  for (uint32_t il = 0; il < l.n_layer; ++il) {
    const uint8_t* layer = state + o.v_first + il * o.v_layer;
    if (!l.v_trans) {
      const size_t bytes = size_t{n} * l.v_row_bytes;
      std::memcpy(out, layer + begin * l.v_row_bytes, bytes);
      out += bytes;
      continue;
    }
    const size_t row = size_t{kv.cell_count} * l.v_elem_bytes;
    const size_t bytes = size_t{n} * l.v_elem_bytes;
    for (uint32_t r = 0; r < l.n_embd_v; ++r) {
      std::memcpy(out, layer + r * row + size_t{begin} * l.v_elem_bytes, bytes);
      out += bytes;
    }
  }
  return Status::Ok();
}

uint64_t SeqStateSize(const ChunkLayout& l, uint32_t n_cells) {
  const StateOffsets o = OffsetsOf(l, n_cells);
  return o.v_start + l.n_layer * o.v_layer;
}

uint64_t KvPartSize(const ChunkLayout& l, uint32_t n_cells) {
  return SeqStateSize(l, n_cells) - kSeqStateHeaderBytes;
}

namespace {

// The cell table (positions first_pos, first_pos + 1, ... of sequence 0), v_trans and n_layer of
// a one-stream state of `cells` cells whose header starts at `base`.
void EncodeCells(const ChunkLayout& l, uint32_t cells, int32_t first_pos, uint8_t* base) {
  EncodeFixed32(base + 8, 1);       // n_stream
  EncodeFixed32(base + 12, cells);  // cell_count
  for (uint32_t i = 0; i < cells; ++i) {
    uint8_t* cell = base + 16 + uint64_t{i} * 12;
    EncodeFixed32(cell, static_cast<uint32_t>(first_pos + static_cast<int32_t>(i)));
    EncodeFixed32(cell + 4, 1);  // n_seq_id
    EncodeFixed32(cell + 8, 0);  // seq_id
  }
  EncodeFixed32(base + 16 + uint64_t{cells} * 12, l.v_trans ? 1 : 0);
  EncodeFixed32(base + 20 + uint64_t{cells} * 12, l.n_layer);
}

// Layers [first, first + step, ...) of a state of `cells` cells whose header starts at `base`: K,
// then V, each the runs' cells in order.
void AssembleLayers(const ChunkLayout& l, const std::vector<CellRun>& runs, uint32_t cells,
                    uint8_t* base, uint32_t first, uint32_t step) {
  const StateOffsets o = OffsetsOf(l, cells);
  for (uint32_t il = first; il < l.n_layer; il += step) {
    uint8_t* layer = base + o.k_first + il * o.k_layer;
    EncodeFixed32(layer - 12, static_cast<uint32_t>(l.k_type));
    EncodeFixed64(layer - 8, l.k_row_bytes);
    for (const CellRun& r : runs) {
      const uint8_t* from = r.block + (uint64_t{il} * r.block_cells + r.from) * l.k_row_bytes;
      std::memcpy(layer, from, uint64_t{r.count} * l.k_row_bytes);
      layer += uint64_t{r.count} * l.k_row_bytes;
    }
  }
  for (uint32_t il = first; il < l.n_layer; il += step) {
    uint8_t* layer = base + o.v_first + il * o.v_layer;
    EncodeFixed32(layer - 12, static_cast<uint32_t>(l.v_type));
    if (!l.v_trans) {
      EncodeFixed64(layer - 8, l.v_row_bytes);
      for (const CellRun& r : runs) {
        const uint64_t k_all = uint64_t{l.n_layer} * r.block_cells * l.k_row_bytes;
        const uint8_t* from =
            r.block + k_all + (uint64_t{il} * r.block_cells + r.from) * l.v_row_bytes;
        std::memcpy(layer, from, uint64_t{r.count} * l.v_row_bytes);
        layer += uint64_t{r.count} * l.v_row_bytes;
      }
      continue;
    }
    EncodeFixed32(layer - 8, l.v_elem_bytes);
    EncodeFixed32(layer - 4, l.n_embd_v);
    for (uint32_t row = 0; row < l.n_embd_v; ++row) {
      uint8_t* dst = layer + uint64_t{row} * cells * l.v_elem_bytes;
      for (const CellRun& r : runs) {
        const uint64_t k_all = uint64_t{l.n_layer} * r.block_cells * l.k_row_bytes;
        const uint64_t piece = uint64_t{r.block_cells} * l.v_elem_bytes;
        const uint8_t* from = r.block + k_all + (uint64_t{il} * l.n_embd_v + row) * piece +
                              uint64_t{r.from} * l.v_elem_bytes;
        std::memcpy(dst, from, uint64_t{r.count} * l.v_elem_bytes);
        dst += uint64_t{r.count} * l.v_elem_bytes;
      }
    }
  }
}

}  // namespace

void AssembleKvPart(const ChunkLayout& l, const std::vector<CellRun>& runs, int32_t first_pos,
                    uint8_t* out) {
  uint32_t cells = 0;
  for (const CellRun& r : runs) cells += r.count;
  // The offsets are those of a whole state; `base` is where its header would start.
  uint8_t* base = out - kSeqStateHeaderBytes;
  EncodeCells(l, cells, first_pos, base);
  AssembleLayers(l, runs, cells, base, 0, 1);
}

void AssembleSeqState(const ChunkLayout& l, uint32_t chunk_tokens,
                      const std::vector<const uint8_t*>& chunks, uint8_t* out, int n_threads) {
  std::vector<CellRun> runs;
  for (const uint8_t* chunk : chunks) runs.push_back({chunk, chunk_tokens, 0, chunk_tokens});
  AssembleSeqStateRuns(l, runs, out, n_threads);
}

void AssembleSeqStateRuns(const ChunkLayout& l, const std::vector<CellRun>& runs, uint8_t* out,
                          int n_threads) {
  uint32_t cells = 0;
  for (const CellRun& r : runs) cells += r.count;
  EncodeFixed32(out, kLlamaSeqStateMagic);
  EncodeFixed32(out + 4, 0);  // seq_id
  EncodeCells(l, cells, 0, out);
  // Memory-bound copies: a second thread on the other core nearly halves the time.
  const uint32_t step = static_cast<uint32_t>(std::clamp(n_threads, 1, 8));
  std::vector<std::thread> helpers;
  for (uint32_t t = 1; t < step; ++t)
    helpers.emplace_back(AssembleLayers, std::cref(l), std::cref(runs), cells, out, t, step);
  AssembleLayers(l, runs, cells, out, 0, step);
  for (auto& h : helpers) h.join();
}

}  // namespace kvstash::format
