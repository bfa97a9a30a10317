#include "kvstash/import.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>

#include "engine/llama_runtime.h"
#include "engine/model_impl.h"
#include "engine/session_impl.h"
#include "engine/session_internals.h"
#include "env/env.h"
#include "format/compat.h"
#include "format/llama_file.h"
#include "format/llama_state.h"
#include "llama.h"

namespace kvstash::engine {
namespace {

// How far the recomputed last cell may be from the file's: ||file - recomputed|| / ||file||
// over all its keys and values. Another batch size changes at most the last bits (exactly 0 with
// kvstash's batch-invariant CPU build, f16 and q8_0 caches alike; other kernels round differently,
// coarse quantized caches most); another model's values are unrelated to the file's (1.3 for the
// tests' seed-7 model), and so are large damaged ones.
constexpr double kMaxCellDistance = 0.1;

// Without a model's context size to bound it (llama.cpp's files do not record one), any file
// that kvstash could hold: 64 GiB, as for `kvstash inspect`.
constexpr uint64_t kMaxFileBytes = uint64_t{64} << 30;

Result<std::vector<float>> ToFloats(const std::vector<uint8_t>& bytes, int32_t type,
                                    uint64_t n_values) {
  std::vector<float> out(n_values);
  if (type == GGML_TYPE_F32) {
    std::memcpy(out.data(), bytes.data(), n_values * 4);
    return out;
  }
  const ggml_type_traits* traits = ggml_get_type_traits(static_cast<ggml_type>(type));
  if (traits == nullptr || traits->to_float == nullptr) {
    return Status::Internal("ggml has no conversion to float for cache type " +
                            std::to_string(type));
  }
  traits->to_float(bytes.data(), out.data(), static_cast<int64_t>(n_values));
  return out;
}

// The relative distance between the cell at `pos` in two payloads of the same layout.
Result<double> CellDistance(const std::vector<uint8_t>& a, const format::KvLayout& la,
                            const std::vector<uint8_t>& b, const format::KvLayout& lb, int32_t pos,
                            const format::ModelFacts& facts) {
  std::vector<uint8_t> ka, va, kb, vb;
  KVSTASH_RETURN_IF_ERROR(format::CellBytes(a.data(), a.size(), la, pos, &ka, &va));
  KVSTASH_RETURN_IF_ERROR(format::CellBytes(b.data(), b.size(), lb, pos, &kb, &vb));
  double diff = 0, norm = 0;
  const uint64_t n_layer = la.n_layer;
  for (auto [x, y, type, width] : {std::tuple{&ka, &kb, la.k_type, uint64_t(facts.n_embd_k_gqa)},
                                   std::tuple{&va, &vb, la.v_type, uint64_t(facts.n_embd_v_gqa)}}) {
    auto fx = ToFloats(*x, type, n_layer * width);
    if (!fx.ok()) return fx.status();
    auto fy = ToFloats(*y, type, n_layer * width);
    if (!fy.ok()) return fy.status();
    for (size_t i = 0; i < fx->size(); ++i) {
      const double d = double((*fx)[i]) - double((*fy)[i]);
      diff += d * d;
      norm += double((*fx)[i]) * double((*fx)[i]);
    }
  }
  // NaN (a non-finite value in the file) compares false below and is refused with the rest.
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
}

// Replaces whatever the session's cache holds with the payload and checks what llama.cpp made of
// it: positions 0..cells-1 of the sequence.
Status RestorePayload(SessionInternals::Impl& s, const format::LlamaFile& file,
                      const std::string& path) {
  s.seq->Clear();
  llama_memory_t mem = llama_get_memory(s.ctx());
  ClearLlamaError();
  const size_t read = llama_state_seq_set_data(s.ctx(), file.kv.data(), file.kv.size(), 0);
  const uint32_t cells = file.layout.cell_count;
  if (read != file.kv.size() || llama_memory_seq_pos_min(mem, 0) != 0 ||
      llama_memory_seq_pos_max(mem, 0) != llama_pos(cells) - 1) {
    llama_memory_seq_rm(mem, 0, -1, -1);
    const std::string why = LastLlamaError();
    return Status::Internal("llama.cpp refused the KV cache of '" + path + "'" +
                            (why.empty() ? "" : " (" + why + ")"));
  }
  s.seq->Restored(std::vector<Token>(file.tokens.begin(), file.tokens.begin() + cells));
  s.logits_valid = false;
  return Status::Ok();
}

// Decodes the token of the file's last cell again, alone, and compares the keys and values it
// gets with the file's; then puts the file's bytes back. Leaves the logits of that decode.
Status CheckLastCell(SessionInternals::Impl& s, const format::LlamaFile& file,
                     const std::string& path) {
  const uint32_t cells = file.layout.cell_count;
  KVSTASH_RETURN_IF_ERROR(s.Truncate(cells - 1));
  s.tokens().push_back(file.tokens[cells - 1]);
  Status decoded = s.Flush();  // also refuses non-finite logits
  if (!decoded.ok()) {
    return Status::Corruption(std::string(format::LlamaFileKindName(file.kind)) + " '" + path +
                              "' cannot be continued: " + decoded.message());
  }
  const std::vector<float> logits = s.logits;
  const size_t size = llama_state_seq_get_size(s.ctx(), 0);
  std::vector<uint8_t> mine(size);
  if (llama_state_seq_get_data(s.ctx(), mine.data(), size, 0) != size) {
    return Status::Internal("llama.cpp could not copy the KV cache: " + LastLlamaError());
  }
  auto layout = format::ParseLlamaSeqState(mine.data(), size, "(recomputed)");
  if (!layout.ok()) return layout.status();
  const format::ModelFacts facts = FactsOf(s.model());
  auto distance = CellDistance(file.kv, file.layout, mine, *layout, llama_pos(cells) - 1, facts);
  if (!distance.ok()) return distance.status();
  KVSTASH_RETURN_IF_ERROR(RestorePayload(s, file, path));
  if (!(*distance <= kMaxCellDistance)) {
    return Status::Incompatible(
        std::string(format::LlamaFileKindName(file.kind)) + " '" + path +
        "' was not computed by model '" + s.model().path() + "': decoding its last token " +
        "again gives keys and values " + std::to_string(*distance * 100) + "% away from the " +
        "file's (at most " + std::to_string(kMaxCellDistance * 100) + "%; a damaged file does " +
        "this too): import it with the model that wrote it");
  }
  s.logits = logits;
  s.logits_valid = true;
  return Status::Ok();
}

}  // namespace
}  // namespace kvstash::engine

namespace kvstash {

using engine::CheckLastCell;
using engine::kMaxFileBytes;
using engine::RestorePayload;

Result<std::unique_ptr<Session>> ImportLlamaFile(std::shared_ptr<const Model> model,
                                                 const std::string& path,
                                                 const ImportOptions& options) {
  if (!model) return Status::InvalidArgument("import needs a loaded model");
  auto opened = Env::Default()->OpenStableFile(path, kMaxFileBytes,
                                               [&path](const uint8_t* head, size_t n, uint64_t) {
                                                 return format::CheckLlamaFileHead(head, n, path);
                                               });
  if (!opened.ok() && opened.status().code() == Status::Code::kNotFound) {
    // Env's message is about session files ("create it with 'kvstash save'").
    return Status::NotFound("llama.cpp file '" + path + "' does not exist; check the path");
  }
  if (!opened.ok()) return opened.status();
  // llama.cpp's files of other memory kinds hold a window or a recurrent state that kvstash's
  // import does not translate yet; said before the file is parsed as a plain cache.
  auto memory = engine::MemoryKindOf(*model);
  if (!memory.ok()) return memory.status();
  if (*memory != format::MemoryKind::kKv) {
    return Status::Incompatible("cannot import '" + path + "': kvstash import reads llama.cpp " +
                                "files of attention-cache models, and model '" + model->path() +
                                "' keeps memory of kind " + format::MemoryKindName(*memory) +
                                ": save the prompt again with 'kvstash save', or pass " +
                                "--prompt-cache a new file name");
  }
  const StableFile& file = **opened;
  const format::ModelFacts facts = FactsOf(*model);
  const uint32_t max_tokens = options.n_ctx != 0 ? options.n_ctx - 1 : format::kMaxTokens - 1;
  auto parsed = format::ParseLlamaFile(file.data(), file.size(), path, facts.n_vocab, max_tokens);
  if (!file.Intact()) {
    return Status::IOError("'" + path + "' was changed by another process while it was read; " +
                           "import it again once the writer is done");
  }
  if (!parsed.ok()) return parsed.status();
  auto kv = format::CheckLlamaFileFitsModel(*parsed, facts, path);
  if (!kv.ok()) return kv.status();

  SessionOptions session;
  const uint32_t n_tokens = static_cast<uint32_t>(parsed->tokens.size());
  session.n_ctx = options.n_ctx != 0
                      ? options.n_ctx
                      : std::max<uint32_t>(4096, format::PaddedContextSize(n_tokens + 1));
  session.n_threads = options.n_threads;
  session.n_batch = options.n_batch;
  session.n_ubatch = options.n_ubatch;
  session.flash_attn = kv->flash_attn ? FlashAttention::kOn : FlashAttention::kOff;
  session.cache_type_k = kv->type_k_name;
  session.cache_type_v = kv->type_v_name;
  auto created = Session::Create(model, session);
  if (!created.ok()) return created.status();
  SessionInternals::Impl& s = SessionInternals::Of(**created);
  KVSTASH_RETURN_IF_ERROR(RestorePayload(s, *parsed, path));
  KVSTASH_RETURN_IF_ERROR(CheckLastCell(s, *parsed, path));
  if (n_tokens == parsed->layout.cell_count + 1) {
    // llama-completion's file: its prompt's last token is decoded at the next call, alone.
    s.tokens().push_back(parsed->tokens.back());
    s.logits_valid = false;
  }
  return std::move(created.value());
}

}  // namespace kvstash
