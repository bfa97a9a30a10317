#include "engine/memory_support.h"

#include <cinttypes>
#include <cstdio>

namespace kvstash::engine {

using format::MemoryKind;

Result<MemoryKind> ClassifyMemory(const ModelMemoryKind& kind, const std::string& model_path,
                                  const std::string& arch) {
  if (kind.hybrid && kind.n_swa > 0) {
    return Status::Incompatible(
        "model '" + model_path + "' (" + arch + ") is a hybrid model whose attention layers " +
        "use a sliding window (" + std::to_string(kind.n_swa) + " tokens): kvstash cannot " +
        "save its memory yet; plain, sliding-window, recurrent and hybrid models are supported");
  }
  if (kind.hybrid) return MemoryKind::kHybrid;
  if (kind.recurrent) return MemoryKind::kRecurrent;
  if (kind.n_swa > 0) return MemoryKind::kIswa;
  return MemoryKind::kKv;
}

std::string ReuseRule(MemoryKind kind, int32_t n_swa) {
  switch (kind) {
    case MemoryKind::kKv:
      return "any prefix of the saved tokens";
    case MemoryKind::kIswa:
      return "the saved tokens, extended; a shorter prefix only within the " +
             std::to_string(n_swa) +
             "-token window's reach or at a stored snapshot (a prefix store's chunk boundary)";
    case MemoryKind::kRecurrent:
    case MemoryKind::kHybrid:
      return "the saved tokens, extended; a shorter prefix only at a stored snapshot (a prefix "
             "store's chunk boundary), else from the start";
  }
  return "none";
}

namespace {

// Exact below 1 KiB; tiny test models' parts are a few KiB, real ones many MiB.
std::string Bytes(uint64_t n) {
  char buf[48];
  if (n < 1024) {
    std::snprintf(buf, sizeof(buf), "%" PRIu64 " bytes", n);
  } else if (n < (uint64_t{1} << 20)) {
    std::snprintf(buf, sizeof(buf), "%.1f KiB", n / 1024.0);
  } else {
    std::snprintf(buf, sizeof(buf), "%.2f MiB", n / 1048576.0);
  }
  return buf;
}

std::string Cells(const char* what, const format::KvLayout& kv) {
  std::string s = std::string(what) + " " + std::to_string(kv.cell_count);
  if (kv.cell_count > 0) {
    s += " (positions " + std::to_string(kv.first_pos) + ".." +
         std::to_string(int64_t{kv.first_pos} + kv.cell_count - 1) + ", " + Bytes(kv.bytes) + ")";
  } else {
    s += " (" + Bytes(kv.bytes) + ")";
  }
  return s;
}

std::string Recurrent(const format::RecurrentLayout& rs) {
  std::string s = "recurrent state " + Bytes(rs.bytes) + " (" + std::to_string(rs.n_r) +
                  " layers with a state: R rows of " + Bytes(rs.r_row_bytes);
  // LFM2's short convolutions keep no S rows at all, or S rows of 0 bytes.
  s += rs.n_s == 0 ? ", no S rows)" : ", S rows of " + Bytes(rs.s_row_bytes) + ")";
  return s;
}

}  // namespace

std::string DescribeParts(const format::SeqLayout& layout) {
  using format::MemoryKind;
  const bool whole = !layout.partial;
  switch (layout.kind) {
    case MemoryKind::kKv:
      return Cells("KV cells", layout.kv);
    case MemoryKind::kIswa:
      return (whole ? Cells("KV cells", layout.kv) + ", " : "") + Cells("window cells", layout.swa);
    case MemoryKind::kRecurrent:
      return Recurrent(layout.rs);
    case MemoryKind::kHybrid:
      return (whole ? Cells("KV cells", layout.kv) + ", " : "") + Recurrent(layout.rs);
  }
  return "";
}

}  // namespace kvstash::engine
