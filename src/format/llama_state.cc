#include "format/llama_state.h"

#include <cstring>
#include <vector>

namespace kvstash::format {
namespace {

// A bounds-checked cursor: every read either succeeds or marks the reader failed.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), left_(size) {}
  template <typename T>
  bool Get(T* out) {
    if (left_ < sizeof(T)) return false;
    std::memcpy(out, p_, sizeof(T));
    p_ += sizeof(T);
    left_ -= sizeof(T);
    return true;
  }
  // Skips count * unit bytes without overflowing.
  bool Skip(uint64_t count, uint64_t unit) {
    if (unit != 0 && count > left_ / unit) return false;
    p_ += count * unit;
    left_ -= count * unit;
    return true;
  }
  size_t left() const { return left_; }

 private:
  const uint8_t* p_;
  size_t left_;
};

}  // namespace

Result<KvLayout> ParseLlamaSeqState(const uint8_t* data, size_t size, const std::string& name,
                                    const std::string& file_kind, const std::string& fix) {
  const auto Bad = [&](const std::string&, const std::string& what) {
    return Status::Corruption(file_kind + " '" + name + "' has a corrupt KV payload: " + what +
                              "; " + fix);
  };
  Reader r(data, size);
  uint32_t magic;
  int32_t seq_id;
  KvLayout layout;
  if (!r.Get(&magic) || magic != kLlamaSeqStateMagic)
    return Bad(name, "wrong llama.cpp state magic");
  if (!r.Get(&seq_id)) return Bad(name, "cut short");
  if (!r.Get(&layout.n_stream) || layout.n_stream == 0 || layout.n_stream > 1) {
    return Bad(name, "expected one KV stream, found " + std::to_string(layout.n_stream));
  }
  uint32_t cell_count;
  if (!r.Get(&cell_count)) return Bad(name, "cut short before the cell count");
  if (cell_count == 0) return Bad(name, "it holds no cells");
  layout.cell_count = cell_count;

  // A cell record is 12 bytes; refuse counts the payload cannot hold before allocating.
  if (cell_count > r.left() / 12)
    return Bad(name, "cell count " + std::to_string(cell_count) + " exceeds the payload");
  std::vector<bool> seen(cell_count, false);
  for (uint32_t i = 0; i < cell_count; ++i) {
    int32_t pos;
    uint32_t n_seq;
    int32_t cell_seq;
    if (!r.Get(&pos) || !r.Get(&n_seq)) return Bad(name, "cut short in the cell table");
    if (n_seq != 1)
      return Bad(name, "cell " + std::to_string(i) + " belongs to " + std::to_string(n_seq) +
                           " sequences");
    if (!r.Get(&cell_seq)) return Bad(name, "cut short in the cell table");
    if (pos < 0 || static_cast<uint32_t>(pos) >= cell_count || seen[pos]) {
      return Bad(name, "cell positions are not exactly 0.." + std::to_string(cell_count - 1));
    }
    seen[pos] = true;
  }

  uint32_t v_trans;
  if (!r.Get(&v_trans) || v_trans > 1) return Bad(name, "bad V layout flag");
  layout.v_trans = v_trans == 1;
  if (!r.Get(&layout.n_layer) || layout.n_layer == 0 || layout.n_layer > 4096) {
    return Bad(name, "layer count " + std::to_string(layout.n_layer) + " is out of range");
  }
  for (uint32_t il = 0; il < layout.n_layer; ++il) {
    int32_t type;
    uint64_t row;
    if (!r.Get(&type) || !r.Get(&row))
      return Bad(name, "cut short in layer " + std::to_string(il) + " K");
    if (il == 0) {
      layout.k_type = type;
      layout.k_row_bytes = row;
    } else if (type != layout.k_type || row != layout.k_row_bytes) {
      return Bad(name, "layer " + std::to_string(il) + " K differs from layer 0");
    }
    if (row == 0 || !r.Skip(cell_count, row))
      return Bad(name, "layer " + std::to_string(il) + " K data is cut short");
  }
  for (uint32_t il = 0; il < layout.n_layer; ++il) {
    int32_t type;
    if (!r.Get(&type)) return Bad(name, "cut short in layer " + std::to_string(il) + " V");
    if (!layout.v_trans) {
      uint64_t row;
      if (!r.Get(&row)) return Bad(name, "cut short in layer " + std::to_string(il) + " V");
      if (il == 0) {
        layout.v_type = type;
        layout.v_row_bytes = row;
      } else if (type != layout.v_type || row != layout.v_row_bytes) {
        return Bad(name, "layer " + std::to_string(il) + " V differs from layer 0");
      }
      if (row == 0 || !r.Skip(cell_count, row))
        return Bad(name, "layer " + std::to_string(il) + " V data is cut short");
    } else {
      uint32_t elem, n_embd_v;
      if (!r.Get(&elem) || !r.Get(&n_embd_v))
        return Bad(name, "cut short in layer " + std::to_string(il) + " V");
      if (il == 0) {
        layout.v_type = type;
        layout.v_elem_bytes = elem;
        layout.n_embd_v = n_embd_v;
      } else if (type != layout.v_type || elem != layout.v_elem_bytes ||
                 n_embd_v != layout.n_embd_v) {
        return Bad(name, "layer " + std::to_string(il) + " V differs from layer 0");
      }
      if (elem == 0 || n_embd_v == 0 || !r.Skip(uint64_t{n_embd_v} * cell_count, elem)) {
        return Bad(name, "layer " + std::to_string(il) + " V data is cut short");
      }
    }
  }
  if (r.left() != 0)
    return Bad(name, std::to_string(r.left()) + " unexpected bytes after the last layer");
  return layout;
}

Status CellBytes(const uint8_t* data, size_t size, const KvLayout& layout, int32_t pos,
                 std::vector<uint8_t>* k, std::vector<uint8_t>* v) {
  // The layout was walked to the last byte, so every offset below lies inside `size` bytes.
  const uint64_t cells = layout.cell_count;
  size_t at = 16;  // magic, seq_id, n_stream, cell_count
  if (size < at + cells * 12) return Status::Internal("CellBytes: payload shorter than its layout");
  uint64_t index = cells;
  for (uint64_t i = 0; i < cells; ++i) {
    int32_t p;
    std::memcpy(&p, data + at + i * 12, 4);
    if (p == pos) index = i;
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

Result<size_t> ToOneStream(uint8_t* data, size_t size, uint32_t n_stream, uint32_t stream) {
  const auto bad = [&](const std::string& what) -> Result<size_t> {
    return Status::Internal("llama.cpp's state of the sequence in KV stream " +
                            std::to_string(stream) + " of " + std::to_string(n_stream) + " " +
                            what);
  };
  if (n_stream == 0 || stream >= n_stream) return bad("names no stream");
  const size_t empty = 4 * size_t{n_stream - 1};
  if (size < 16 + empty) return bad("is too short");
  uint32_t magic, count;
  std::memcpy(&magic, data, 4);
  std::memcpy(&count, data + 8, 4);
  if (magic != kLlamaSeqStateMagic || count != n_stream) return bad("has another header");
  const size_t before = 4 * size_t{stream}, after = empty - before;
  for (size_t i = 0; i < before; ++i)
    if (data[12 + i] != 0) return bad("has cells in another stream");
  for (size_t i = 0; i < after; ++i)
    if (data[size - after + i] != 0) return bad("has cells in another stream");
  // The header moves forward over the empty blocks before the sequence's own.
  uint8_t header[12];
  std::memcpy(header, data, 8);
  const uint32_t one = 1;
  std::memcpy(header + 8, &one, 4);
  std::memcpy(data + before, header, 12);
  return before;
}

void ToStreams(uint8_t* data, size_t size, uint32_t n_stream) {
  std::memcpy(data + 8, &n_stream, 4);
  std::memset(data + size, 0, 4 * size_t{n_stream - 1});
}

}  // namespace kvstash::format
