#include "engine/inspect.h"

#include "engine/memory_support.h"

namespace kvstash::engine {
namespace {

SessionKvPart KvPart(const format::KvLayout& kv) {
  SessionKvPart part;
  part.cells = kv.cell_count;
  part.first_pos = kv.first_pos;
  part.bytes = kv.bytes;
  return part;
}

}  // namespace

SessionMemoryInfo DescribeSessionMemory(const format::SeqLayout& layout, int32_t n_swa) {
  using format::MemoryKind;
  SessionMemoryInfo memory;
  memory.kind = format::MemoryKindName(layout.kind);
  memory.parts = DescribeParts(layout);
  memory.reuse = ReuseRule(layout.kind, n_swa);
  memory.has_kv = layout.kind != MemoryKind::kRecurrent;
  memory.has_window = layout.kind == MemoryKind::kIswa;
  memory.has_recurrent =
      layout.kind == MemoryKind::kRecurrent || layout.kind == MemoryKind::kHybrid;
  if (memory.has_kv) memory.kv = KvPart(layout.kv);
  if (memory.has_window) memory.window = KvPart(layout.swa);
  if (memory.has_recurrent) {
    const format::RecurrentLayout& rs = layout.rs;
    memory.recurrent.pos = rs.pos;
    memory.recurrent.r_records = rs.n_r;
    memory.recurrent.r_row_bytes = rs.r_row_bytes;
    memory.recurrent.s_records = rs.n_s;
    memory.recurrent.s_row_bytes = rs.s_row_bytes;
    memory.recurrent.bytes = rs.bytes;
  }
  return memory;
}

}  // namespace kvstash::engine
