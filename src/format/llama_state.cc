#include "format/llama_state.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <utility>
#include <vector>

#include "format/coding.h"

namespace kvstash::format {

const char* MemoryKindName(MemoryKind kind) {
  static const char* const kNames[] = {"kv", "iswa", "recurrent", "hybrid"};
  const auto i = static_cast<uint32_t>(kind);
  return i <= kMaxMemoryKind ? kNames[i] : "unknown";
}

namespace {

// The cell table of `cell_count` cells of one sequence at consecutive positions; sets *first_pos.
// "" or what is wrong.
std::string ReadCells(ByteReader& r, uint32_t cell_count, int32_t* first_pos) {
  // A cell record is 12 bytes; refuse counts the payload cannot hold before allocating.
  if (cell_count > r.remaining() / 12)
    return "cell count " + std::to_string(cell_count) + " exceeds the payload";
  std::vector<int32_t> positions(cell_count);
  int32_t first = INT32_MAX;
  for (uint32_t i = 0; i < cell_count; ++i) {
    uint32_t n_seq;
    int32_t cell_seq;
    if (!r.ReadI32(&positions[i]) || !r.ReadU32(&n_seq)) return "cut short in the cell table";
    if (n_seq != 1)
      return "cell " + std::to_string(i) + " belongs to " + std::to_string(n_seq) + " sequences";
    if (!r.ReadI32(&cell_seq)) return "cut short in the cell table";
    first = std::min(first, positions[i]);
  }
  std::vector<bool> seen(cell_count, false);
  for (int32_t pos : positions) {
    const int64_t at = int64_t{pos} - first;
    if (first < 0 || at >= int64_t{cell_count} || seen[at]) {
      return "cell positions are not " + std::to_string(cell_count) + " consecutive ones";
    }
    seen[at] = true;
  }
  *first_pos = first;
  return "";
}

// Every layer's K rows (type, row size, data), each layer like layer 0. "" or what is wrong.
std::string ReadKRows(ByteReader& r, KvLayout* layout) {
  for (uint32_t il = 0; il < layout->n_layer; ++il) {
    int32_t type;
    uint64_t row;
    if (!r.ReadI32(&type) || !r.ReadU64(&row))
      return "cut short in layer " + std::to_string(il) + " K";
    if (il == 0) {
      layout->k_type = type;
      layout->k_row_bytes = row;
    } else if (type != layout->k_type || row != layout->k_row_bytes) {
      return "layer " + std::to_string(il) + " K differs from layer 0";
    }
    if (row == 0 || !r.Skip(layout->cell_count, row))
      return "layer " + std::to_string(il) + " K data is cut short";
  }
  return "";
}

// Every layer's V: rows per cell, or (transposed) elements per embedding column. "" or what is
// wrong.
std::string ReadVRows(ByteReader& r, KvLayout* layout) {
  for (uint32_t il = 0; il < layout->n_layer; ++il) {
    const std::string at = "layer " + std::to_string(il) + " V";
    int32_t type;
    uint64_t row = 0;
    uint32_t elem = 0, n_embd_v = 0;
    if (!r.ReadI32(&type)) return "cut short in " + at;
    const bool read = layout->v_trans ? r.ReadU32(&elem) && r.ReadU32(&n_embd_v) : r.ReadU64(&row);
    if (!read) return "cut short in " + at;
    if (il == 0) {
      layout->v_type = type;
      layout->v_row_bytes = row;
      layout->v_elem_bytes = elem;
      layout->n_embd_v = n_embd_v;
    } else if (type != layout->v_type || row != layout->v_row_bytes ||
               elem != layout->v_elem_bytes || n_embd_v != layout->n_embd_v) {
      return at + " differs from layer 0";
    }
    const bool whole = layout->v_trans ? elem != 0 && n_embd_v != 0 &&
                                             r.Skip(uint64_t{n_embd_v} * layout->cell_count, elem)
                                       : row != 0 && r.Skip(layout->cell_count, row);
    if (!whole) return at + " data is cut short";
  }
  return "";
}

// Walks one KV part (llama_kv_cache::state_write) from its n_stream field. On failure returns
// what is wrong, for the caller's message. Positions must be consecutive; which ones is the
// caller's to check (first_pos).
Result<KvLayout> ParseKvPart(ByteReader& r, const char* part) {
  const auto bad = [part](const std::string& what) -> Result<KvLayout> {
    return Status::Corruption(std::string(part) + ": " + what);
  };
  const size_t start = r.remaining();
  KvLayout layout;
  // A payload that ends where a part should begin (a plain file read as iSWA) is cut short, not a
  // part with 0 streams.
  if (!r.ReadU32(&layout.n_stream)) return bad("cut short before the stream count");
  if (layout.n_stream == 0 || layout.n_stream > 1) {
    return bad("expected one KV stream, found " + std::to_string(layout.n_stream));
  }
  if (!r.ReadU32(&layout.cell_count)) return bad("cut short before the cell count");
  if (layout.cell_count == 0) return bad("it holds no cells");
  std::string wrong = ReadCells(r, layout.cell_count, &layout.first_pos);
  if (!wrong.empty()) return bad(wrong);
  uint32_t v_trans;
  if (!r.ReadU32(&v_trans) || v_trans > 1) return bad("bad V layout flag");
  layout.v_trans = v_trans == 1;
  if (!r.ReadU32(&layout.n_layer) || layout.n_layer == 0 || layout.n_layer > 4096) {
    return bad("layer count " + std::to_string(layout.n_layer) + " is out of range");
  }
  wrong = ReadKRows(r, &layout);
  if (wrong.empty()) wrong = ReadVRows(r, &layout);
  if (!wrong.empty()) return bad(wrong);
  layout.bytes = start - r.remaining();
  return layout;
}

// Reads R and S records to the end of the state, each with `rows` rows, into `layout`: the R
// records are those alike the first one; the rest, if any, must be as many and alike each other.
// (Records all alike read as R only; a model whose S records equal its R ones would read as twice
// the layers, which the model's own shape then refuses: never a misread accepted.)
Status GetStateRecords(ByteReader& r, uint32_t rows, RecurrentLayout* layout) {
  std::vector<std::pair<int32_t, uint64_t>> records;
  while (r.remaining() > 0) {
    int32_t type;
    uint64_t row;
    // A row may be empty: LFM2's short convolutions keep S records of 0 bytes.
    if (records.size() >= 2 * size_t{layout->n_layer} || !r.ReadI32(&type) || !r.ReadU64(&row) ||
        !r.Skip(rows, row)) {
      return Status::Corruption("state record " + std::to_string(records.size()) +
                                " is cut short or one too many");
    }
    records.emplace_back(type, row);
  }
  if (records.empty()) return Status::Corruption("no state records");
  size_t n_r = 1;
  while (n_r < records.size() && records[n_r] == records[0]) ++n_r;
  const size_t n_s = records.size() - n_r;
  if (n_s != 0 && n_s != n_r) {
    return Status::Corruption(std::to_string(n_r) + " R records and " + std::to_string(n_s) +
                              " S records: not one of each per layer");
  }
  for (size_t i = n_r; i < records.size(); ++i) {
    if (records[i] != records[n_r]) {
      return Status::Corruption("state record " + std::to_string(i) + " differs from the first S");
    }
  }
  layout->n_r = static_cast<uint32_t>(n_r);
  layout->n_s = static_cast<uint32_t>(n_s);
  layout->r_type = records[0].first;
  layout->r_row_bytes = records[0].second;
  if (n_s > 0) {
    layout->s_type = records[n_r].first;
    layout->s_row_bytes = records[n_r].second;
  }
  return Status::Ok();
}

// Walks a recurrent part (llama_memory_recurrent::state_write) to the end of the state: one cell
// (`cells` 1) or, for an empty sequence's shape, none (`cells` 0).
Result<RecurrentLayout> ParseRecurrentPart(ByteReader& r, uint32_t cells = 1) {
  const auto bad = [](const std::string& what) -> Result<RecurrentLayout> {
    return Status::Corruption("recurrent state: " + what);
  };
  const size_t start = r.remaining();
  RecurrentLayout layout;
  uint32_t cell_count, n_seq, s_trans;
  if (!r.ReadU32(&cell_count)) return bad("cut short before the cell count");
  // One sequence's state is one cell: llama.cpp asserts on anything else when restoring it.
  if (cell_count != cells) return bad("holds " + std::to_string(cell_count) + " cells, not 1");
  if (cells == 1) {
    if (!r.ReadI32(&layout.pos) || !r.ReadU32(&n_seq)) return bad("cut short in the cell");
    if (layout.pos < 0) return bad("its cell has position " + std::to_string(layout.pos));
    if (n_seq != 0) return bad("its cell names " + std::to_string(n_seq) + " sequences, not 0");
  }
  if (!r.ReadU32(&s_trans) || s_trans != 0) return bad("bad S layout flag");
  if (!r.ReadU32(&layout.n_layer) || layout.n_layer == 0 || layout.n_layer > 4096) {
    return bad("layer count " + std::to_string(layout.n_layer) + " is out of range");
  }
  const Status records = GetStateRecords(r, cells, &layout);
  if (!records.ok()) return bad(records.message());
  layout.bytes = start - r.remaining();
  return layout;
}

// The checks ParseSeqState makes across parts, once each part was walked.
Status CheckPositions(const SeqLayout& l, uint32_t n_swa) {
  const uint32_t n = l.n_tokens;
  if (!l.partial && l.kind != MemoryKind::kRecurrent && l.kv.first_pos != 0) {
    return Status::Corruption("the cell positions do not start at 0");
  }
  if (l.kind == MemoryKind::kIswa) {
    const uint32_t window = std::min(n, n_swa);
    if (n_swa == 0 || l.swa.cell_count != window ||
        int64_t{l.swa.first_pos} != int64_t{n} - window) {
      return Status::Corruption("the sliding-window cache holds " +
                                std::to_string(l.swa.cell_count) + " cells from position " +
                                std::to_string(l.swa.first_pos) + ", not the last " +
                                std::to_string(window) + " of " + std::to_string(n) + " tokens");
    }
  }
  if ((l.kind == MemoryKind::kRecurrent || l.kind == MemoryKind::kHybrid) &&
      int64_t{l.rs.pos} != int64_t{n} - 1) {
    return Status::Corruption("the recurrent state is at position " + std::to_string(l.rs.pos) +
                              ", not at the last token's " + std::to_string(int64_t{n} - 1));
  }
  if (l.kind == MemoryKind::kHybrid && !l.partial && l.rs.n_r >= l.rs.n_layer) {
    return Status::Corruption("every layer has a recurrent state, so none is left for attention");
  }
  return Status::Ok();
}

}  // namespace

Result<SeqLayout> ParseSeqState(const uint8_t* data, size_t size, MemoryKind kind, uint32_t n_swa,
                                bool partial, const std::string& name, const std::string& file_kind,
                                const std::string& fix) {
  const auto Bad = [&](const std::string& what) {
    return Status::Corruption(file_kind + " '" + name + "' has a corrupt " +
                              (partial ? "state snapshot" : "KV payload") + ": " + what + "; " +
                              fix);
  };
  ByteReader r(data, size);
  uint32_t magic;
  int32_t seq_id;
  if (!r.ReadU32(&magic) || magic != kLlamaSeqStateMagic) return Bad("wrong llama.cpp state magic");
  if (!r.ReadI32(&seq_id)) return Bad("cut short");
  SeqLayout l;
  l.kind = kind;
  l.partial = partial;
  const bool first_kv = !partial && (kind == MemoryKind::kKv || kind == MemoryKind::kIswa ||
                                     kind == MemoryKind::kHybrid);
  if (partial && kind == MemoryKind::kKv) {
    return Bad("a full-attention cache has no snapshot");
  }
  if (first_kv) {
    auto kv = ParseKvPart(r, kind == MemoryKind::kKv ? "KV cache" : "full-attention cache");
    if (!kv.ok()) return Bad(kv.status().message());
    l.kv = *kv;
    l.n_tokens = kv->cell_count;
    l.first_part_end = kSeqStateHeaderBytes + kv->bytes;
  }
  if (kind == MemoryKind::kIswa) {
    auto swa = ParseKvPart(r, "sliding-window cache");
    if (!swa.ok()) return Bad(swa.status().message());
    l.swa = *swa;
    if (partial) l.n_tokens = static_cast<uint32_t>(int64_t{swa->first_pos} + swa->cell_count);
  }
  if (kind == MemoryKind::kRecurrent || kind == MemoryKind::kHybrid) {
    auto rs = ParseRecurrentPart(r);
    if (!rs.ok()) return Bad(rs.status().message());
    l.rs = *rs;
    if (kind == MemoryKind::kRecurrent || partial) l.n_tokens = static_cast<uint32_t>(rs->pos) + 1;
  }
  if (r.remaining() != 0) {
    return Bad(std::to_string(r.remaining()) + " unexpected bytes after the last layer");
  }
  const Status positions = CheckPositions(l, n_swa);
  if (!positions.ok()) return Bad(positions.message());
  return l;
}

Result<RecurrentLayout> ParseRecurrentShape(const uint8_t* data, size_t size, MemoryKind kind,
                                            bool partial, const std::string& name) {
  const auto bad = [&name](const std::string& what) -> Result<RecurrentLayout> {
    return Status::Internal("the recurrent state of " + name +
                            " has an unexpected layout: " + what);
  };
  ByteReader r(data, size);
  uint32_t magic, n_stream, cells;
  int32_t seq_id;
  if (!r.ReadU32(&magic) || magic != kLlamaSeqStateMagic || !r.ReadI32(&seq_id))
    return bad("no header");
  // A hybrid's empty attention cache: its stream count, and no cells.
  if (kind == MemoryKind::kHybrid && !partial &&
      (!r.ReadU32(&n_stream) || n_stream != 1 || !r.ReadU32(&cells) || cells != 0)) {
    return bad("the attention cache is not empty");
  }
  auto rs = ParseRecurrentPart(r, /*cells=*/0);
  if (!rs.ok()) return bad(rs.status().message());
  return *rs;
}

Result<KvLayout> ParseLlamaSeqState(const uint8_t* data, size_t size, const std::string& name,
                                    const std::string& file_kind, const std::string& fix) {
  auto parsed = ParseSeqState(data, size, MemoryKind::kKv, 0, false, name, file_kind, fix);
  if (!parsed.ok()) return parsed.status();
  return parsed->kv;
}

Status CellBytes(const uint8_t* data, size_t size, const KvLayout& layout, int32_t pos,
                 std::vector<uint8_t>* k, std::vector<uint8_t>* v) {
  // The layout was walked to the last byte, so every offset below lies inside `size` bytes.
  const uint64_t cells = layout.cell_count;
  size_t at = 16;  // magic, seq_id, n_stream, cell_count
  if (size < at + cells * 12) return Status::Internal("CellBytes: payload shorter than its layout");
  uint64_t index = cells;
  for (uint64_t i = 0; i < cells; ++i) {
    if (static_cast<int32_t>(DecodeFixed32(data + at + i * 12)) == pos) index = i;
  }
  if (index == cells) {
    return Status::Incompatible("the KV cache holds no cell at position " + std::to_string(pos));
  }
  at += cells * 12 + 8;  // the cell table, v_trans and n_layer
  k->clear();
  v->clear();
  for (uint32_t il = 0; il < layout.n_layer; ++il) {
    at += 12;  // type, row bytes
    const uint8_t* row = data + at + index * layout.k_row_bytes;
    k->insert(k->end(), row, row + layout.k_row_bytes);
    at += cells * layout.k_row_bytes;
  }
  for (uint32_t il = 0; il < layout.n_layer; ++il) {
    at += 12;  // type, row bytes (or type, element bytes, n_embd_v)
    if (!layout.v_trans) {
      const uint8_t* row = data + at + index * layout.v_row_bytes;
      v->insert(v->end(), row, row + layout.v_row_bytes);
      at += cells * layout.v_row_bytes;
      continue;
    }
    const uint64_t elem = layout.v_elem_bytes;
    for (uint64_t j = 0; j < layout.n_embd_v; ++j) {
      const uint8_t* value = data + at + (j * cells + index) * elem;
      v->insert(v->end(), value, value + elem);
    }
    at += uint64_t{layout.n_embd_v} * cells * elem;
  }
  return Status::Ok();
}

namespace {

// Bytes of one stream's block of a KV part, from its cell_count on (0 cells: just the count).
// Only walks sizes: the one-stream state it becomes is parsed in full afterwards.
Result<size_t> KvBlockBytes(const uint8_t* p, size_t left) {
  ByteReader r(p, left);
  uint32_t cells, v_trans, n_layer;
  const auto bad = []() -> Result<size_t> {
    return Status::Internal("a KV stream block of llama.cpp's state is cut short");
  };
  if (!r.ReadU32(&cells)) return bad();
  if (cells == 0) return size_t{4};
  if (!r.Skip(cells, 12) || !r.ReadU32(&v_trans) || !r.ReadU32(&n_layer) || n_layer > 4096)
    return bad();
  for (uint32_t il = 0; il < n_layer; ++il) {
    int32_t type;
    uint64_t row;
    if (!r.ReadI32(&type) || !r.ReadU64(&row) || !r.Skip(cells, row)) return bad();
  }
  for (uint32_t il = 0; il < n_layer; ++il) {
    int32_t type;
    if (!r.ReadI32(&type)) return bad();
    if (v_trans == 0) {
      uint64_t row;
      if (!r.ReadU64(&row) || !r.Skip(cells, row)) return bad();
    } else {
      uint32_t elem, n_embd_v;
      if (!r.ReadU32(&elem) || !r.ReadU32(&n_embd_v) || !r.Skip(uint64_t{n_embd_v} * cells, elem))
        return bad();
    }
  }
  return left - r.remaining();
}

}  // namespace

int KvPartCount(MemoryKind kind, bool partial) {
  switch (kind) {
    case MemoryKind::kKv:
      return 1;
    case MemoryKind::kIswa:
      return partial ? 1 : 2;
    case MemoryKind::kRecurrent:
      return 0;
    case MemoryKind::kHybrid:
      return partial ? 0 : 1;
  }
  return 0;
}

Result<size_t> StateToOneStream(uint8_t* data, size_t size, MemoryKind kind, bool partial,
                                uint32_t n_stream, uint32_t stream) {
  if (n_stream == 0 || stream >= n_stream) {
    return Status::Internal("stream " + std::to_string(stream) + " of " + std::to_string(n_stream) +
                            " names no stream");
  }
  size_t in = kSeqStateHeaderBytes, out = kSeqStateHeaderBytes;
  for (int part = 0; part < KvPartCount(kind, partial); ++part) {
    if (size - in < 4) return Status::Internal("llama.cpp's state is cut short");
    if (DecodeFixed32(data + in) != n_stream)
      return Status::Internal("llama.cpp's state has another stream count");
    EncodeFixed32(data + out, 1);
    in += 4;
    out += 4;
    for (uint32_t st = 0; st < n_stream; ++st) {
      auto bytes = KvBlockBytes(data + in, size - in);
      if (!bytes.ok()) return bytes.status();
      if (st != stream && *bytes != 4) {
        return Status::Internal("llama.cpp's state of one sequence has cells in another stream");
      }
      if (st == stream) {
        std::memmove(data + out, data + in, *bytes);
        out += *bytes;
      }
      in += *bytes;
    }
  }
  // The rest (a recurrent part) has no streams.
  std::memmove(data + out, data + in, size - in);
  return out + (size - in);
}

void StateToStreams(uint8_t* data, size_t size, MemoryKind kind, bool partial, uint32_t n_stream) {
  // The parts' ends in the one-stream state (it was walked by ParseSeqState: sizes are sound).
  std::vector<size_t> ends;
  size_t at = kSeqStateHeaderBytes;
  for (int part = 0; part < KvPartCount(kind, partial); ++part) {
    at += 4 + *KvBlockBytes(data + at + 4, size - at - 4);
    ends.push_back(at);
  }
  const size_t grow = 4 * size_t{n_stream - 1};
  // From the last segment back, each moves right by the growth of the parts before it; every KV
  // part gets empty blocks after its own (llama.cpp restores a block into the destination
  // sequence's stream whichever block it is).
  for (size_t k = ends.size() + 1; k-- > 0;) {
    const size_t begin = k == 0 ? 0 : ends[k - 1];
    const size_t end = k == ends.size() ? size : ends[k];
    std::memmove(data + begin + grow * k, data + begin, end - begin);
    if (k > 0) std::memset(data + ends[k - 1] + grow * (k - 1), 0, grow);
  }
  at = kSeqStateHeaderBytes;
  for (size_t k = 0; k < ends.size(); ++k) {
    EncodeFixed32(data + at + grow * k, n_stream);
    at = ends[k];
  }
}

Result<size_t> ToOneStream(uint8_t* data, size_t size, uint32_t n_stream, uint32_t stream) {
  const auto bad = [&](const std::string& what) -> Result<size_t> {
    return Status::Internal("llama.cpp's state of the sequence in KV stream " +
                            std::to_string(stream) + " of " + std::to_string(n_stream) + " " +
                            what);
  };
  if (n_stream == 0 || stream >= n_stream) return bad("names no stream");
  const size_t empty = 4 * size_t{n_stream - 1};
  if (size < 16 + empty) return bad("is too short");
  if (DecodeFixed32(data) != kLlamaSeqStateMagic || DecodeFixed32(data + 8) != n_stream)
    return bad("has another header");
  const size_t before = 4 * size_t{stream}, after = empty - before;
  for (size_t i = 0; i < before; ++i)
    if (data[12 + i] != 0) return bad("has cells in another stream");
  for (size_t i = 0; i < after; ++i)
    if (data[size - after + i] != 0) return bad("has cells in another stream");
  // The header moves forward over the empty blocks before the sequence's own.
  uint8_t header[12];
  std::memcpy(header, data, 8);
  EncodeFixed32(header + 8, 1);
  std::memcpy(data + before, header, 12);
  return before;
}

}  // namespace kvstash::format
