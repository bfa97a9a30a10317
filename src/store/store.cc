// Store: opening a store directory, reading chunks (LoadPrefix, Verify, Stats, List) and handing
// new ones to the background writer. docs/STORE.md describes the protocol.
#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include "format/session_format.h"
#include "store/chain_hash.h"
#include "store/chunk_writer.h"
#include "store/gc.h"
#include "store/namespace_text.h"
#include "store/redis_tier.h"
#include "store/store_files.h"
#include "store/store_impl.h"

namespace kvstash {
namespace {

using store::ChunkEntry;
using store::StorePaths;

constexpr uint32_t kDefaultChunkTokens = 256;
constexpr uint32_t kManifestVersion = 1;
constexpr size_t kManifestMaxBytes = 4096;
// Verify reads chunks of any layout, so it cannot bound a file by this context's chunk size. The
// header (file size included) is checked before the rest is read; this bound keeps a forged,
// sparse file from costing more than a pass over 64 GiB (a 256-token chunk of a 70B f16 model
// is ~80 MiB).
constexpr uint64_t kMaxAnyChunkBytes = uint64_t{1} << 36;

Status CheckChunkTokens(uint32_t c, const std::string& where) {
  if (c < format::kMinChunkTokens || c > format::kMaxChunkTokens || c % 16 != 0) {
    return Status::InvalidArgument(where + ": chunk size " + std::to_string(c) +
                                   " tokens is not allowed; use a multiple of 16 from " +
                                   std::to_string(format::kMinChunkTokens) + " to " +
                                   std::to_string(format::kMaxChunkTokens));
  }
  return Status::Ok();
}

std::string ManifestText(uint32_t chunk_tokens) {
  return "kvstash store\nversion " + std::to_string(kManifestVersion) + "\nchunk_tokens " +
         std::to_string(chunk_tokens) + "\n";
}

// "key N" with N decimal, at most 9 digits.
bool ParseLine(const std::string& line, const std::string& key, uint32_t* value) {
  if (line.compare(0, key.size() + 1, key + " ") != 0) return false;
  const std::string digits = line.substr(key.size() + 1);
  return digits.size() <= 9 && store::ParseDecimal(digits, value);
}

// The chunk size recorded in `path`; kNotFound when there is no manifest.
Result<uint32_t> ReadManifest(Env* env, const std::string& path) {
  auto info = env->LinkStat(path);
  if (!info.ok()) return info.status();
  const std::string fix = "; restore it, or use another directory for a new store";
  if (info->type != FileInfo::Type::kRegular || info->size > kManifestMaxBytes) {
    return Status::Corruption("store manifest '" + path + "' is not a small regular file" + fix);
  }
  auto text = env->ReadFilePrefix(path, kManifestMaxBytes);
  if (!text.ok()) return text.status();
  if (!text->empty() && text->back() != '\n') {
    return Status::Corruption("store manifest '" + path + "' is truncated" + fix);
  }
  std::vector<std::string> lines;
  std::istringstream in(*text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  uint32_t version = 0, chunk_tokens = 0;
  if (lines.empty() || lines[0] != "kvstash store" || lines.size() < 2 ||
      !ParseLine(lines[1], "version", &version)) {
    return Status::Corruption("'" + path + "' is not a kvstash store manifest" + fix);
  }
  if (version != kManifestVersion) {
    return Status::Incompatible("store '" + DirName(path) + "' has format version " +
                                std::to_string(version) + "; this kvstash reads version " +
                                std::to_string(kManifestVersion) +
                                ": use a kvstash that reads it, or another directory");
  }
  if (lines.size() != 3 || !ParseLine(lines[2], "chunk_tokens", &chunk_tokens)) {
    return Status::Corruption("store manifest '" + path + "' has no valid chunk_tokens line" + fix);
  }
  Status range = CheckChunkTokens(chunk_tokens, "store manifest '" + path + "'");
  if (!range.ok()) return Status::Corruption(range.message());
  return chunk_tokens;
}

// Makes the manifest of a new store, or reads the one a racing creator linked first.
Result<uint32_t> CreateManifest(Env* env, const StorePaths& paths, uint32_t chunk_tokens,
                                bool sync) {
  bool existed = false;
  Status made = store::PublishFile(env, paths, {ManifestText(chunk_tokens)}, paths.Manifest(),
                                   /*replace=*/false, sync, &existed);
  if (!made.ok()) {
    return Status::IOError("cannot create the store in '" + paths.dir + "': " + made.message());
  }
  if (!existed) return chunk_tokens;
  return ReadManifest(env, paths.Manifest());
}

Status MakeSubdirs(Env* env, const StorePaths& paths) {
  for (const std::string& sub : {paths.Chunks(), paths.Namespaces(), paths.Temp(), paths.Tails()}) {
    KVSTASH_RETURN_IF_ERROR(env->CreateDir(sub));
    // CreateDir accepts a symbolic link to a directory; the writer must not write through one.
    KVSTASH_RETURN_IF_ERROR(store::RealSubdir(env, sub));
  }
  if (!env->LinkStat(paths.GcLock()).ok()) {
    auto lock = env->NewWritableFile(paths.GcLock());  // EEXIST from a racing opener is fine
    if (lock.ok()) (void)(*lock)->Close();
  }
  return Status::Ok();
}

}  // namespace

// A tail file that may continue a prompt: its path, name and lstat.
struct TailCandidate {
  std::string path;
  store::TailName name;
  FileInfo info;
};

class LocalStore : public StoreImpl {
 public:
  LocalStore(Env* env, std::string dir, uint32_t chunk_tokens, const StoreOptions& options)
      : env_(env),
        paths_{std::move(dir)},
        chunk_tokens_(chunk_tokens),
        warn_(paths_.dir, options.warn),
        writer_(store::ChunkWriter::Options{env, paths_, chunk_tokens, options.sync,
                                            options.max_pending_bytes, options.max_bytes, &warn_}) {
  }
  ~LocalStore() override {
    // The Redis publisher first: it reads nothing of the writer's, but the process may exit
    // right after the Store, and queued chunks should reach Redis (bounded by its timeouts).
    redis_.reset();
  }

  LoadedPrefix LoadPrefix(const format::Hash256& ns, const std::vector<format::Hash256>& chain,
                          const int32_t* tokens, size_t max_chunks,
                          const format::ChunkLayout& layout) override;
  size_t Publish(const format::Hash256& ns, const std::string& ns_text,
                 std::vector<ChunkWrite> writes,
                 const std::vector<format::Hash256>& chain) override;
  void Warn(const std::string& message) override { warn_.Say(message); }
  LoadedTail LoadTail(const format::Hash256& ns, const format::Hash256& parent, uint32_t j,
                      const int32_t* rest, size_t n_rest, const format::ChunkLayout& layout,
                      int64_t touched_ns) override;
  bool HasFile(const std::string& path) override { return env_->LinkStat(path).ok(); }
  std::string TailPath(const format::Hash256& parent, uint32_t j, uint32_t n_tokens,
                       const format::Hash256& tail) const override {
    return paths_.TailPath(parent, j, n_tokens, tail);
  }

  // Why a tail named `name` is not one this store would load after parent `name.parent` in
  // namespace `ns` with `layout` (unset ns/layout: any, as Verify reads it), or "".
  std::string CheckTail(const format::ChunkHeader& h, const int32_t* tokens,
                        const store::TailName& name, const format::Hash256* ns,
                        const format::ChunkLayout* layout) const;
  // The tails of `parent` after whole chunk j whose name and lstat fit (a regular file of the size
  // its T gives), newest first, at most 64: one document asked many questions must not make a
  // lookup read them all. The first that does not fit is named in *refused.
  std::vector<TailCandidate> TailCandidates(const format::Hash256& parent, uint32_t j,
                                            const format::ChunkLayout& layout,
                                            std::string* refused);
  // The head (header and tokens) of tail candidate `path` of `name` and `info`, checked; or why
  // not in *why.
  std::optional<format::ChunkView> ReadTailHead(const std::string& path,
                                                const store::TailName& name, const FileInfo& info,
                                                const format::Hash256& ns,
                                                const format::ChunkLayout& layout,
                                                std::string* why);

  // Why chunk j (0-based) of the request is refused, or "" when it is accepted.
  std::string CheckLoaded(const format::ChunkView& view, const format::Hash256& ns,
                          const std::vector<format::Hash256>& chain, size_t j,
                          const int32_t* tokens, const format::ChunkLayout& layout) const;
  // Why a chunk read on its own (Verify) is not one this store would load, or "".
  std::string CheckAlone(const format::ChunkView& view, const ChunkEntry& entry) const;
  Result<std::unique_ptr<StableFile>> OpenChunk(const std::string& path, uint64_t max_size,
                                                bool tail = false);
  // The namespace of a chunk file, from its header ("" when unreadable).
  std::string ReadNamespace(const ChunkEntry& entry) const;

  // The Redis tier's part of LoadPrefix: chunks j >= out->chunks.size() of the request, checked
  // as files are (CheckLoaded, the payload checksum), appended to `out` and queued for the
  // directory.
  void LoadFromRedis(const format::Hash256& ns, const std::vector<format::Hash256>& chain,
                     const int32_t* tokens, size_t k, const format::ChunkLayout& layout,
                     LoadedPrefix* out);
  // The new chunks of `writes` to Redis (encoded as files are).
  void PublishToRedis(const std::vector<ChunkWrite>& writes);

  Env* env_;
  StorePaths paths_;
  uint32_t chunk_tokens_;
  store::WarnOnce warn_;
  std::unique_ptr<store::RedisTier> redis_;  // null without --cache-redis
  store::ChunkWriter writer_;  // last: its thread uses the members above until it is joined
};

bool LoadedPrefix::Intact() const {
  return std::all_of(files.begin(), files.end(), [](const auto& file) { return file->Intact(); });
}

Result<std::unique_ptr<StableFile>> LocalStore::OpenChunk(const std::string& path,
                                                          uint64_t max_size, bool tail) {
  // The header (file size included) is checked before the payload is read; links are refused,
  // FIFOs are opened without blocking and refused (Env::OpenStableFile).
  return env_->OpenStableFile(
      path, max_size,
      [&path, tail](const uint8_t* head, size_t n, uint64_t size) {
        auto header = format::ParseChunkHeader(head, n, size, path, tail);
        return header.ok() ? Status::Ok() : header.status();
      },
      /*follow_links=*/false);
}

std::string LocalStore::CheckLoaded(const format::ChunkView& view, const format::Hash256& ns,
                                    const std::vector<format::Hash256>& chain, size_t j,
                                    const int32_t* tokens,
                                    const format::ChunkLayout& layout) const {
  const format::ChunkHeader& h = view.header;
  const format::Hash256& parent = j == 0 ? ns : chain[j - 1];
  if (h.hash != chain[j]) return "its header names another chunk than its file name or key";
  if (h.index != j + 1) return "its header gives index " + std::to_string(h.index);
  if (h.ns != ns) return "it belongs to another namespace (" + format::HashHex(h.ns) + ")";
  if (h.parent != parent) return "its parent is not the previous chunk of this prompt";
  if (h.n_tokens != chunk_tokens_ || view.tokens.size() != chunk_tokens_) {
    return "it holds " + std::to_string(h.n_tokens) + " tokens, the store's chunks hold " +
           std::to_string(chunk_tokens_);
  }
  if (h.layout != layout) return "its KV layout (cache types, layers) differs from this context's";
  if (view.kv_size != layout.ChunkKvBytes(chunk_tokens_, h.index))
    return "its KV size does not fit its layout";
  if (!std::equal(view.tokens.begin(), view.tokens.end(), tokens + j * chunk_tokens_)) {
    return "its tokens are not this prompt's";
  }
  return "";
}

namespace {

// The payload checksum of a chunk held by `file`, read through ReadBlocks: at disk speed when the
// file is not in the page cache (a pass over the mapping would fault it in page by page).
Status VerifyPayload(const StableFile& file, const format::ChunkHeader& header,
                     const std::string& path) {
  format::SectionHasher hasher;
  KVSTASH_RETURN_IF_ERROR(
      file.ReadBlocks(format::kChunkHeaderSize, header.payload_bytes, format::kChecksumBlock,
                      [&hasher](const uint8_t* block, size_t n) { hasher.AddBlock(block, n); }));
  if (hasher.Finish() != header.payload_checksum) {
    return Status::Corruption("chunk file '" + path + "' is corrupt: the payload checksum does " +
                              "not match (the bytes were altered or damaged)");
  }
  return Status::Ok();
}

}  // namespace

LoadedPrefix LocalStore::LoadPrefix(const format::Hash256& ns,
                                    const std::vector<format::Hash256>& chain,
                                    const int32_t* tokens, size_t max_chunks,
                                    const format::ChunkLayout& layout) {
  LoadedPrefix out;
  const size_t k = std::min(max_chunks, chain.size());
  const uint64_t bound = store::ChunkFileBytes(layout, chunk_tokens_);
  // First every check that needs only the header and the tokens, chunk after chunk (cheap: the
  // first pages of each file); then the payload checksums, the one pass over all the bytes, on two
  // threads. The prefix is cut at the first chunk that fails either.
  std::vector<std::string> paths;
  for (size_t j = 0; j < k; ++j) {
    paths.push_back(paths_.ChunkPath(chain[j], uint32_t(j + 1)));
    const std::string& path = paths.back();
    auto file = OpenChunk(path, bound);
    if (!file.ok()) {
      if (file.status().code() != Status::Code::kNotFound) {
        out.first_bad = long(j);
        out.first_bad_reason = file.status().message();
      }
      break;
    }
    auto view = format::ParseChunk((*file)->data(), (*file)->size(), path, false);
    std::string why =
        view.ok() ? CheckLoaded(*view, ns, chain, j, tokens, layout) : view.status().message();
    if (!why.empty()) {
      out.first_bad = long(j);
      out.first_bad_reason = view.ok() ? "chunk '" + path + "' is refused: " + why : why;
      break;
    }
    out.chunks.push_back(std::move(view.value()));
    out.files.push_back(std::move(file.value()));
  }
  std::vector<Status> verified(out.chunks.size());
  auto verify = [&](size_t first, size_t step) {
    for (size_t j = first; j < out.chunks.size(); j += step)
      verified[j] = VerifyPayload(*out.files[j], out.chunks[j].header, paths[j]);
  };
  if (out.chunks.size() > 1) {
    std::thread other(verify, 1, 2);
    verify(0, 2);
    other.join();
  } else {
    verify(0, 1);
  }
  for (size_t j = 0; j < verified.size(); ++j) {
    if (verified[j].ok()) continue;
    out.first_bad = long(j);
    out.first_bad_reason = verified[j].message();
    out.chunks.resize(j);
    out.files.resize(j);
    break;
  }
  // One time for the whole prefix: parents never older than children (eviction is leaf first).
  // Failures (a read-only store) only cost LRU precision.
  const int64_t now = store::NowNs();
  out.touched_ns = now;
  for (size_t j = 0; j < out.chunks.size(); ++j) {
    (void)env_->SetMtime(paths[j], now);
  }
  if (redis_ && out.chunks.size() < k) LoadFromRedis(ns, chain, tokens, k, layout, &out);
  return out;
}

void LocalStore::LoadFromRedis(const format::Hash256& ns, const std::vector<format::Hash256>& chain,
                               const int32_t* tokens, size_t k, const format::ChunkLayout& layout,
                               LoadedPrefix* out) {
  const size_t first = out->chunks.size();
  const std::string ns_hex = format::HashHex(ns);
  std::vector<std::string> keys;
  for (size_t j = first; j < k; ++j) {
    keys.push_back(store::RedisChunkKey(ns_hex, format::HashHex(chain[j])));
  }
  const uint64_t bound = store::ChunkFileBytes(layout, chunk_tokens_);
  // A value's size is in its header (everything else is checked once its parts are joined).
  auto size_of = [](const std::string& head) -> uint64_t {
    return format::ChunkFileSizeFromHead(reinterpret_cast<const uint8_t*>(head.data()),
                                         head.size());
  };
  std::vector<std::string> values = redis_->FetchConsecutive(keys, bound, size_of);
  uint64_t hits = 0, bad = 0;
  const int64_t check_start = store::NowNs();
  std::vector<ChunkWrite> local;
  for (size_t i = 0; i < values.size(); ++i) {
    const size_t j = first + i;
    auto owned = std::make_unique<std::string>(std::move(values[i]));
    const std::string name = "redis value " + keys[i];
    auto view = format::ParseChunk(reinterpret_cast<const uint8_t*>(owned->data()), owned->size(),
                                   name, /*verify_checksum=*/true);
    const std::string why =
        view.ok() ? CheckLoaded(*view, ns, chain, j, tokens, layout) : view.status().message();
    if (!why.empty()) {
      ++bad;  // never restored, whatever else is behind it
      Warn("kvstash: " + name + " is refused: " + why);
      break;
    }
    ++hits;
    // Into the directory, so the next lookup here is local (not sent back to Redis).
    ChunkWrite w;
    w.header = view->header;
    w.tokens = view->tokens;
    w.kv.assign(reinterpret_cast<const char*>(view->kv), view->kv_size);
    w.replace_bad = long(j) == out->first_bad;
    local.push_back(std::move(w));
    out->chunks.push_back(std::move(view.value()));
    out->remote.push_back(std::move(owned));
  }
  redis_->Counted(hits, bad, store::NowNs() - check_start);
  if (!local.empty()) {
    store::PublishItem item;
    item.ns = ns;
    item.writes = std::move(local);
    item.touch = chain;
    (void)writer_.Enqueue(std::move(item));
  }
}

void LocalStore::PublishToRedis(const std::vector<ChunkWrite>& writes) {
  for (const ChunkWrite& w : writes) {
    if (w.header.tail) continue;  // tails are kept in the directory only (docs/STORE.md)
    std::string bytes = format::EncodeChunkHead(
        w.header, w.tokens.data(), reinterpret_cast<const uint8_t*>(w.kv.data()), w.kv.size());
    bytes += w.kv;
    redis_->Publish(
        store::RedisChunkKey(format::HashHex(w.header.ns), format::HashHex(w.header.hash)),
        std::move(bytes));
  }
}

size_t LocalStore::Publish(const format::Hash256& ns, const std::string& ns_text,
                           std::vector<ChunkWrite> writes,
                           const std::vector<format::Hash256>& chain) {
  if (redis_) PublishToRedis(writes);
  store::PublishItem item;
  item.ns = ns;
  item.ns_text = ns_text;
  item.writes = std::move(writes);
  item.touch = chain;
  return writer_.Enqueue(std::move(item));
}

std::string LocalStore::CheckTail(const format::ChunkHeader& h, const int32_t* tokens,
                                  const store::TailName& name, const format::Hash256* ns,
                                  const format::ChunkLayout* layout) const {
  if (!h.tail) return "it is not a tail";
  if (h.hash != name.hash) return "its header names another tail than its file name";
  if (h.parent != name.parent) return "its header names another parent than its file name";
  if (h.index != name.j + 1) return "its header gives index " + std::to_string(h.index);
  if (h.n_tokens != name.n_tokens)
    return "its header gives " + std::to_string(h.n_tokens) + " tokens";
  if (h.chunk_tokens != chunk_tokens_) {
    return "it follows chunks of " + std::to_string(h.chunk_tokens) + " tokens, the store's hold " +
           std::to_string(chunk_tokens_);
  }
  if (name.j == 0 && h.parent != h.ns) return "tail 0's parent is not its namespace";
  if (ns != nullptr && h.ns != *ns) return "it belongs to another namespace";
  if (layout != nullptr && h.layout != *layout)
    return "its KV layout (cache types, layers) differs from this context's";
  if (store::TailHash(h.parent, tokens, h.n_tokens) != h.hash)
    return "its name is not the hash of its parent and tokens (planted or damaged)";
  for (uint32_t i = 0; i < h.n_tokens; ++i)
    if (tokens[i] < 0) return "a token id is negative";
  return "";
}

std::optional<format::ChunkView> LocalStore::ReadTailHead(
    const std::string& path, const store::TailName& name, const FileInfo& info,
    const format::Hash256& ns, const format::ChunkLayout& layout, std::string* why) {
  const size_t head_bytes = format::kChunkHeaderSize + size_t{name.n_tokens} * 4;
  auto head = env_->ReadFilePrefix(path, head_bytes, /*follow_links=*/false);
  if (!head.ok()) {
    *why = head.status().message();
    return std::nullopt;
  }
  if (head->size() != head_bytes) {
    *why = "tail file '" + path + "' is cut short";
    return std::nullopt;
  }
  const auto* bytes = reinterpret_cast<const uint8_t*>(head->data());
  auto header = format::ParseChunkHeader(bytes, head->size(), info.size, path, /*tail=*/true);
  if (!header.ok()) {
    *why = header.status().message();
    return std::nullopt;
  }
  format::ChunkView view;
  view.header = *header;
  view.tokens.resize(name.n_tokens);
  std::memcpy(view.tokens.data(), bytes + format::kChunkHeaderSize,
              head_bytes - format::kChunkHeaderSize);
  const std::string reason = CheckTail(view.header, view.tokens.data(), name, &ns, &layout);
  if (!reason.empty()) {
    *why = "tail file '" + path + "' is refused: " + reason;
    return std::nullopt;
  }
  return view;
}

std::vector<TailCandidate> LocalStore::TailCandidates(const format::Hash256& parent, uint32_t j,
                                                      const format::ChunkLayout& layout,
                                                      std::string* refused) {
  std::vector<TailCandidate> candidates;
  auto names = env_->ListDir(paths_.TailDir(parent));
  if (!names.ok()) return candidates;  // no tail under this parent yet
  const std::string prefix = format::HashHex(parent) + "." + std::to_string(j) + ".";
  for (const std::string& file : *names) {
    store::TailName name;
    if (file.compare(0, prefix.size(), prefix) != 0 || !store::ParseTailName(file, &name) ||
        name.n_tokens >= chunk_tokens_) {
      continue;
    }
    TailCandidate c{paths_.TailDir(parent) + "/" + file, name, {}};
    auto info = env_->LinkStat(c.path);
    if (!info.ok()) continue;
    if (info->type != FileInfo::Type::kRegular ||
        info->size != store::TailFileBytes(layout, name.n_tokens)) {
      if (refused->empty()) *refused = c.path;  // a publish of this tail replaces it
      continue;
    }
    c.info = *info;
    candidates.push_back(std::move(c));
  }
  std::sort(candidates.begin(), candidates.end(),
            [](const TailCandidate& a, const TailCandidate& b) {
              return a.info.mtime_ns > b.info.mtime_ns;
            });
  constexpr size_t kMaxCandidates = 64;
  if (candidates.size() > kMaxCandidates) candidates.resize(kMaxCandidates);
  return candidates;
}

LoadedTail LocalStore::LoadTail(const format::Hash256& ns, const format::Hash256& parent,
                                uint32_t j, const int32_t* rest, size_t n_rest,
                                const format::ChunkLayout& layout, int64_t touched_ns) {
  LoadedTail out;
  if (n_rest == 0 || layout.kind != format::MemoryKind::kKv) return out;
  const std::vector<TailCandidate> candidates = TailCandidates(parent, j, layout, &out.refused);
  // The heads first (header and tokens), keeping the one that shares the most (the shorter on a
  // tie); then the winner's payload.
  const TailCandidate* best = nullptr;
  size_t best_m = 0;
  for (const TailCandidate& c : candidates) {
    if (std::min<size_t>(c.name.n_tokens, n_rest) <= best_m) continue;
    std::string why;
    auto view = ReadTailHead(c.path, c.name, c.info, ns, layout, &why);
    if (!view) {
      if (out.refused.empty()) out.refused = c.path;
      Warn("kvstash: " + why);
      continue;
    }
    size_t m = 0;
    const size_t n = std::min<size_t>(c.name.n_tokens, n_rest);
    while (m < n && view->tokens[m] == rest[m]) ++m;
    if (m > best_m ||
        (m == best_m && m > 0 && best != nullptr && c.name.n_tokens < best->name.n_tokens)) {
      best = &c;
      best_m = m;
    }
  }
  if (best == nullptr || best_m == 0) return out;
  auto file = OpenChunk(best->path, best->info.size, /*tail=*/true);
  std::string why;
  if (file.ok()) {
    auto view = format::ParseChunk((*file)->data(), (*file)->size(), best->path, false, true);
    if (!view.ok()) {
      why = view.status().message();
    } else if (std::string reason =
                   CheckTail(view->header, view->tokens.data(), best->name, &ns, &layout);
               !reason.empty()) {
      why = "tail file '" + best->path + "' is refused: " + reason;
    } else if (!std::equal(view->tokens.begin(), view->tokens.begin() + best_m, rest)) {
      why = "tail file '" + best->path + "' changed while it was read";
    } else if (Status verified = VerifyPayload(**file, view->header, best->path); !verified.ok()) {
      why = verified.message();
    } else {
      out.view = std::move(view.value());
      out.file = std::move(file.value());
      out.usable = static_cast<uint32_t>(best_m);
      if (touched_ns != 0) (void)env_->SetMtime(best->path, touched_ns);
      return out;
    }
  } else if (file.status().code() != Status::Code::kNotFound) {
    why = file.status().message();
  }
  if (!why.empty()) {
    out.refused = best->path;
    Warn("kvstash: " + why);
  }
  return out;
}

std::string LocalStore::CheckAlone(const format::ChunkView& view, const ChunkEntry& entry) const {
  const format::ChunkHeader& h = view.header;
  if (h.hash != entry.hash) return "its header names chunk " + format::HashHex(h.hash);
  if (h.index != entry.index) return "its header gives index " + std::to_string(h.index);
  if (h.n_tokens != chunk_tokens_ || view.tokens.size() != chunk_tokens_) {
    return "it holds " + std::to_string(h.n_tokens) + " tokens, the store's chunks hold " +
           std::to_string(chunk_tokens_);
  }
  if (view.kv_size != h.layout.ChunkKvBytes(h.n_tokens, h.index))
    return "its KV size does not fit its layout";
  if (h.index == 1 && h.parent != h.ns) return "chunk 1's parent is not its namespace";
  if (store::ChunkHash(h.parent, view.tokens.data(), view.tokens.size()) != h.hash) {
    return "its name is not the hash of its parent and tokens (planted or damaged)";
  }
  return "";
}

std::string LocalStore::ReadNamespace(const ChunkEntry& entry) const {
  auto head = env_->ReadFilePrefix(entry.path, format::kChunkHeaderSize, /*follow_links=*/false);
  if (!head.ok()) return "";
  auto header = format::ParseChunkHeader(reinterpret_cast<const uint8_t*>(head->data()),
                                         head->size(), entry.info.size, entry.path, entry.tail);
  return header.ok() ? format::HashHex(header->ns) : "";
}

// Store's public methods.

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;  // LocalStore's writer drains and joins

namespace {
LocalStore* Concrete(StoreImpl* impl) { return static_cast<LocalStore*>(impl); }
}  // namespace

const std::string& Store::dir() const { return Concrete(impl_.get())->paths_.dir; }
uint32_t Store::chunk_tokens() const { return Concrete(impl_.get())->chunk_tokens_; }
void Store::WaitForWrites() {
  LocalStore* impl = Concrete(impl_.get());
  impl->writer_.WaitIdle();
  if (impl->redis_) impl->redis_->WaitIdle();
}
WriterStats Store::writer_stats() const { return Concrete(impl_.get())->writer_.stats(); }
RedisStats Store::redis_stats() const {
  const LocalStore* impl = Concrete(impl_.get());
  return impl->redis_ ? impl->redis_->stats() : RedisStats();
}

Result<std::shared_ptr<Store>> Store::Open(const std::string& dir, const StoreOptions& options) {
  return StoreInternals::Open(dir, options, Env::Default());
}

Result<std::shared_ptr<Store>> StoreInternals::Open(const std::string& dir,
                                                    const StoreOptions& options, Env* env) {
  if (dir.empty()) return Status::InvalidArgument("store directory name is empty; pass a path");
  if (options.chunk_tokens != 0) {
    KVSTASH_RETURN_IF_ERROR(CheckChunkTokens(options.chunk_tokens, "store '" + dir + "'"));
  }
  const StorePaths paths{dir};
  if (options.create) {
    // Private by default: chunks hold the prompts' tokens, and whoever can write them decides the
    // answers (docs/STORE.md, "Trust"). An existing directory keeps its mode (a shared store).
    Status made = env->CreateDir(dir, 0700);
    auto info = env->Stat(dir);
    if (!made.ok() && !(info.ok() && info->type == FileInfo::Type::kDirectory)) return made;
  }
  auto found = ReadManifest(env, paths.Manifest());
  bool writable = true;
  if (!found.ok() && found.status().code() == Status::Code::kNotFound) {
    if (!options.create) {
      return Status::NotFound("'" + dir + "' is not a kvstash store (it has no STORE file); " +
                              "check the path, or let it be created");
    }
    Status subdirs = MakeSubdirs(env, paths);
    if (!subdirs.ok()) {
      return Status::IOError("cannot create the store in '" + dir + "': " + subdirs.message());
    }
    const uint32_t c = options.chunk_tokens != 0 ? options.chunk_tokens : kDefaultChunkTokens;
    found = CreateManifest(env, paths, c, options.sync);
  } else if (found.ok()) {
    // A store on a read-only mount (or someone else's directory) still serves reads.
    writable = MakeSubdirs(env, paths).ok();
  }
  if (!found.ok()) return found.status();
  if (options.chunk_tokens != 0 && options.chunk_tokens != *found) {
    return Status::InvalidArgument("store '" + dir + "' holds chunks of " + std::to_string(*found) +
                                   " tokens, but " + std::to_string(options.chunk_tokens) +
                                   " were asked for; omit the chunk size or use another directory");
  }
  auto impl = std::make_unique<LocalStore>(env, dir, *found, options);
  if (!writable) impl->writer_.set_read_only("read-only");
  if (!options.redis_url.empty()) {
    auto url = store::ParseRedisUrl(options.redis_url);
    if (!url.ok()) return url.status();
    store::RedisTierOptions ro;
    ro.url = *url;
    ro.connect_timeout_ms = options.redis_connect_timeout_ms;
    ro.command_timeout_ms = options.redis_command_timeout_ms;
    ro.max_pending_bytes = options.max_pending_bytes;  // the same bound as the directory's writer
    store::WarnOnce* warn = &impl->warn_;
    ro.warn = [warn](const std::string& line) { warn->SayAlways(line); };
    impl->redis_ = std::make_unique<store::RedisTier>(std::move(ro));
  }
  return std::shared_ptr<Store>(new Store(std::move(impl)));
}

namespace {
// Says so (once) before waiting for another process's collector: a wait on gc.lock can be long
// (a large eviction), or forever (someone holds the lock): the user should know which file.
bool LockIsBusy(const Status& status) {  // Env::LockFile(wait = false) on a lock held elsewhere
  return status.code() == Status::Code::kIOError &&
         status.message().find("in use") != std::string::npos;
}

void SayWaitingForCollector(store::WarnOnce& warn, const StorePaths& paths) {
  warn.Say("kvstash: store '" + paths.dir + "': waiting for another process's garbage " +
           "collector (it holds an flock on '" + paths.dir + "/gc.lock')");
}
}  // namespace

Result<GcReport> Store::Gc(uint64_t max_bytes) {
  LocalStore* impl = Concrete(impl_.get());
  // Only to say why it may wait: CollectGarbage takes the lock again, waiting.
  if (auto probe = store::LockGc(impl->env_, impl->paths_, /*wait=*/false);
      !probe.ok() && LockIsBusy(probe.status())) {
    SayWaitingForCollector(impl->warn_, impl->paths_);
  }
  return store::CollectGarbage(impl->env_, impl->paths_, max_bytes, /*wait=*/true);
}

Result<VerifyReport> Store::Verify() const {
  LocalStore* impl = Concrete(impl_.get());
  auto entries = store::ListChunkEntries(impl->env_, impl->paths_);
  if (!entries.ok()) return entries.status();
  VerifyReport report;
  for (const ChunkEntry& entry : *entries) {
    std::string why = entry.bad;
    if (why.empty()) {
      auto file = impl->OpenChunk(entry.path, kMaxAnyChunkBytes, entry.tail);
      if (!file.ok() && file.status().code() == Status::Code::kNotFound) continue;  // evicted
      if (!file.ok()) {
        why = file.status().message();
      } else {
        auto view =
            format::ParseChunk((*file)->data(), (*file)->size(), entry.path, true, entry.tail);
        if (!view.ok()) {
          why = view.status().message();
        } else if (entry.tail) {
          why =
              impl->CheckTail(view->header, view->tokens.data(), entry.tail_name, nullptr, nullptr);
        } else {
          why = impl->CheckAlone(*view, entry);
        }
      }
    }
    if (why.empty()) {
      ++report.chunks_ok;
    } else {
      report.bad.push_back(entry.path + ": " + why);
    }
  }
  std::sort(report.bad.begin(), report.bad.end());
  return report;
}

Result<std::vector<ChunkInfo>> Store::List() const {
  LocalStore* impl = Concrete(impl_.get());
  auto entries = store::ListChunkEntries(impl->env_, impl->paths_);
  if (!entries.ok()) return entries.status();
  std::vector<ChunkInfo> out;
  for (const ChunkEntry& entry : *entries) {
    if (!entry.bad.empty() || entry.tail) continue;
    ChunkInfo info;
    info.path = entry.path;
    info.hash = format::HashHex(entry.hash);
    info.ns = impl->ReadNamespace(entry);
    info.index = entry.index;
    info.bytes = entry.info.size;
    info.last_use_ns = entry.info.mtime_ns;
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(),
            [](const ChunkInfo& a, const ChunkInfo& b) { return a.path < b.path; });
  return out;
}

Result<StoreStats> Store::Stats() const {
  LocalStore* impl = Concrete(impl_.get());
  auto chunks = List();
  if (!chunks.ok()) return chunks.status();
  StoreStats stats;
  stats.chunk_tokens = impl->chunk_tokens_;
  auto entries = store::ListChunkEntries(impl->env_, impl->paths_);
  if (!entries.ok()) return entries.status();
  for (const ChunkEntry& entry : *entries) {
    if (!entry.bad.empty() || !entry.tail) continue;
    ++stats.tails;
    stats.tail_bytes += entry.info.size;
  }
  std::map<std::string, NamespaceStats> by_ns;
  for (const ChunkInfo& c : *chunks) {
    ++stats.chunks;
    stats.bytes += c.bytes;
    if (c.ns.empty()) continue;  // unreadable header: counted, but in no namespace
    NamespaceStats& ns = by_ns[c.ns];
    ns.hash = c.ns;
    ++ns.chunks;
    ns.bytes += c.bytes;
  }
  for (auto& [hex, ns] : by_ns) {
    // Only a regular file written there: a symbolic link planted under the name could make stats
    // print any file the caller can read.
    const std::string path = impl->paths_.Namespaces() + "/" + hex + ".txt";
    auto info = impl->env_->LinkStat(path);
    if (info.ok() && info->type == FileInfo::Type::kRegular) {
      auto text = impl->env_->ReadFilePrefix(path, 4096);
      if (text.ok()) ns.description = *text;
    }
    ns.summary = store::NamespaceSummary(ns.description);
    stats.namespaces.push_back(std::move(ns));
  }
  auto temps = impl->env_->ListDir(impl->paths_.Temp());
  if (temps.ok()) stats.temp_files = temps->size();
  return stats;
}

Result<uint64_t> Store::Clear(const std::string& ns_hash) {
  LocalStore* impl = Concrete(impl_.get());
  format::Hash256 wanted{};
  if (!ns_hash.empty() && !format::ParseHashHex(ns_hash, &wanted)) {
    return Status::InvalidArgument("'" + ns_hash + "' is not a namespace hash (64 hex digits); " +
                                   "see the store's stats for the namespaces it holds");
  }
  // As a collector: one at a time, so two clears or a clear and an eviction do not race.
  auto lock = store::LockGc(impl->env_, impl->paths_, /*wait=*/false);
  if (!lock.ok() && LockIsBusy(lock.status())) {
    SayWaitingForCollector(impl->warn_, impl->paths_);
    lock = store::LockGc(impl->env_, impl->paths_, /*wait=*/true);
  }
  if (!lock.ok()) return lock.status();
  auto entries = store::ListChunkEntries(impl->env_, impl->paths_);
  if (!entries.ok()) return entries.status();
  uint64_t removed = 0;
  for (const ChunkEntry& entry : *entries) {
    if (!entry.bad.empty()) continue;  // not ours to judge: Verify reports it
    if (!ns_hash.empty() && impl->ReadNamespace(entry) != format::HashHex(wanted)) continue;
    if (impl->env_->RemoveFile(entry.path).ok()) ++removed;
  }
  if (impl->redis_) {
    auto unlinked = impl->redis_->Unlink(
        "kvs:" + (ns_hash.empty() ? std::string("*") : format::HashHex(wanted) + ":*"));
    if (!unlinked.ok()) return unlinked.status();
    removed += *unlinked;
  }
  return removed;
}

}  // namespace kvstash
