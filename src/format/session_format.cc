#include "format/session_format.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <type_traits>

#include "format/coding.h"
#include "format/meta_check.h"

namespace kvstash::format {
namespace {

size_t AlignUp(size_t n) { return (n + kSectionAlign - 1) / kSectionAlign * kSectionAlign; }

// --- META: a list of (u16 field, u16 flags, u32 length, value) records ---------------------
//
// One visitor lists every field once; the encoder and decoder both walk it, so the two cannot
// drift apart. Field numbers are forever; a new field gets a new number.
constexpr uint16_t kFlagCritical = 1;  // a reader that does not know this field must refuse
constexpr uint16_t kMemoryKindField = 23;

template <typename Visitor>
void VisitMeta(SessionMeta& m, Visitor& v) {
  v(1, m.writer);
  v(2, m.llama_build);
  v(3, m.llama_state_version);
  v(10, m.model_fingerprint);
  v(11, m.model_description);
  v(12, m.model_arch);
  v(13, m.model_n_params);
  v(14, m.n_vocab);
  v(15, m.n_layer);
  v(16, m.n_embd);
  v(17, m.n_head);
  v(18, m.n_head_kv);
  v(19, m.n_embd_k_gqa);
  v(20, m.n_embd_v_gqa);
  v(21, m.n_swa);
  v(22, m.n_ctx_train);
  v(kMemoryKindField, m.memory_kind);
  v(30, m.n_ctx);
  v(31, m.n_batch);
  v(32, m.n_ubatch);
  v(33, m.n_seq_max);
  v(34, m.type_k);
  v(35, m.type_v);
  v(36, m.type_k_name);
  v(37, m.type_v_name);
  v(38, m.flash_attn);
  v(39, m.rope_scaling_type);
  v(40, m.rope_freq_base);
  v(41, m.rope_freq_scale);
  v(42, m.yarn_ext_factor);
  v(43, m.yarn_attn_factor);
  v(44, m.yarn_beta_fast);
  v(45, m.yarn_beta_slow);
  v(46, m.yarn_orig_ctx);
  v(47, m.swa_full);
  v(48, m.kv_unified);
  v(60, m.n_tokens);
  v(61, m.has_logits);
  v(62, m.preview);
}

struct MetaEncoder {
  std::string* out;
  void Record(uint16_t id, const void* value, uint32_t size) {
    // A plain KV cache (memory kind 0, the default) is written without the field (docs/FORMAT.md,
    // META field 23).
    if (id == kMemoryKindField && size == 4 &&
        DecodeFixed32(static_cast<const uint8_t*>(value)) == 0)
      return;
    PutFixed16(out, id);
    PutFixed16(out, kFlagCritical);
    PutFixed32(out, size);
    out->append(static_cast<const char*>(value), size);
  }
  void operator()(uint16_t id, const std::string& s) {
    Record(id, s.data(), static_cast<uint32_t>(s.size()));
  }
  void operator()(uint16_t id, const ModelFingerprint& f) { Record(id, f.bytes, sizeof(f.bytes)); }
  void operator()(uint16_t id, bool b) {
    const uint8_t byte = b ? 1 : 0;
    Record(id, &byte, 1);
  }
  template <typename T>
  void operator()(uint16_t id, T value) {
    static_assert(std::is_arithmetic_v<T> && (sizeof(T) == 4 || sizeof(T) == 8));
    // The host is little-endian (checked in CMake), so the value's bytes are its encoding.
    Record(id, &value, sizeof(T));
  }
};

// Decodes one record into the field with the same number, checking its length.
struct MetaFieldDecoder {
  uint16_t id;
  const uint8_t* value;
  uint32_t size;
  bool matched = false;
  bool bad_size = false;

  void operator()(uint16_t field, std::string& s) {
    if (field != id) return;
    matched = true;
    s.assign(reinterpret_cast<const char*>(value), size);
  }
  void operator()(uint16_t field, ModelFingerprint& f) {
    if (field != id) return;
    matched = true;
    if (size != sizeof(f.bytes)) {
      bad_size = true;
      return;
    }
    std::memcpy(f.bytes, value, size);
  }
  void operator()(uint16_t field, bool& b) {
    if (field != id) return;
    matched = true;
    if (size != 1 || value[0] > 1) {
      bad_size = true;
      return;
    }
    b = value[0] == 1;
  }
  template <typename T>
  void operator()(uint16_t field, T& out) {
    if (field != id) return;
    matched = true;
    if (size != sizeof(T)) {
      bad_size = true;
      return;
    }
    std::memcpy(&out, value, sizeof(T));
  }
};

struct MetaFieldLister {
  std::vector<uint16_t> ids;
  template <typename T>
  void operator()(uint16_t id, T&) {
    ids.push_back(id);
  }
};

Status Bad(const std::string& name, const std::string& what) {
  return Status::Corruption("session file '" + name + "' is corrupt: " + what +
                            "; re-create it with 'kvstash save'");
}

}  // namespace

uint64_t SectionChecksum(const uint8_t* data, size_t size, int n_threads) {
  const size_t n_blocks = (size + kChecksumBlock - 1) / kChecksumBlock;
  std::vector<uint64_t> block_sums(n_blocks);
  auto hash_range = [&](size_t first, size_t last) {
    for (size_t b = first; b < last; ++b) {
      const size_t begin = b * kChecksumBlock;
      const size_t len = std::min(kChecksumBlock, size - begin);
      block_sums[b] = XXH3_64bits(data + begin, len);
    }
  };
  const size_t threads = std::max<size_t>(1, std::min<size_t>(n_threads, n_blocks / 4));
  if (threads <= 1) {
    hash_range(0, n_blocks);
  } else {
    std::vector<std::thread> workers;
    const size_t per = (n_blocks + threads - 1) / threads;
    for (size_t t = 1; t < threads; ++t) {
      workers.emplace_back(hash_range, std::min(n_blocks, t * per),
                           std::min(n_blocks, (t + 1) * per));
    }
    hash_range(0, std::min(n_blocks, per));
    for (auto& w : workers) w.join();
  }
  std::string le;
  le.reserve(n_blocks * 8);
  for (uint64_t s : block_sums) PutFixed64(&le, s);
  return XXH3_64bits(le.data(), le.size());
}

void SectionHasher::AddBlock(const uint8_t* data, size_t size) {
  PutFixed64(&block_sums_, XXH3_64bits(data, size));
}

uint64_t SectionHasher::Finish() const {
  return XXH3_64bits(block_sums_.data(), block_sums_.size());
}

std::string EncodeMeta(const SessionMeta& meta) {
  std::string out;
  MetaEncoder encoder{&out};
  VisitMeta(const_cast<SessionMeta&>(meta), encoder);  // the encoder only reads
  return out;
}

Result<SessionMeta> DecodeMeta(const uint8_t* data, size_t size, const std::string& name) {
  SessionMeta meta;
  MetaFieldLister lister;
  VisitMeta(meta, lister);
  std::vector<bool> seen(lister.ids.size(), false);
  ByteReader r(data, size);
  while (r.remaining() > 0) {
    uint16_t id, flags;
    uint32_t len;
    if (!r.ReadU16(&id) || !r.ReadU16(&flags) || !r.ReadU32(&len))
      return Bad(name, "a META record header is cut short");
    if (len > r.remaining())
      return Bad(name, "META field " + std::to_string(id) + " runs past its section");
    MetaFieldDecoder decoder{id, r.current(), len};
    VisitMeta(meta, decoder);
    // A plain cache is written without the field (MetaEncoder): an explicit 0 no writer produces.
    if (id == kMemoryKindField && decoder.matched && !decoder.bad_size && meta.memory_kind == 0) {
      return Bad(name, "META field 23 (memory_kind) is written with the value 0, which a writer " +
                           std::string("omits"));
    }
    if (decoder.bad_size) {
      return Bad(name, "META field " + std::to_string(id) + " has length " + std::to_string(len));
    }
    if (!decoder.matched) {
      if (flags & kFlagCritical) {
        return Status::Incompatible("session file '" + name + "' needs META field " +
                                    std::to_string(id) +
                                    " that this kvstash does not know; upgrade kvstash to read it");
      }
    } else {
      const size_t index = std::find(lister.ids.begin(), lister.ids.end(), id) - lister.ids.begin();
      if (seen[index]) return Bad(name, "META field " + std::to_string(id) + " appears twice");
      seen[index] = true;
    }
    r.Skip(len);
  }
  for (size_t i = 0; i < seen.size(); ++i) {
    // 62 (preview) is optional; 23 (memory kind) is absent for a plain KV cache (MetaEncoder).
    if (!seen[i] && lister.ids[i] != 62 && lister.ids[i] != kMemoryKindField) {
      return Bad(name, "META field " + std::to_string(lister.ids[i]) + " is missing");
    }
  }
  return meta;
}

std::string EncodeFilePrefix(const SessionMeta& meta, const std::vector<int32_t>& tokens,
                             const std::vector<float>& logits, uint64_t kv_size,
                             uint64_t kv_checksum) {
  const std::string meta_bytes = EncodeMeta(meta);
  struct Section {
    uint32_t type;
    const void* data;
    uint64_t size;
    uint64_t offset = 0;
    uint64_t checksum = 0;
  };
  std::vector<Section> sections = {
      {kSectionMeta, meta_bytes.data(), meta_bytes.size()},
      {kSectionTokens, tokens.data(), tokens.size() * sizeof(int32_t)},
  };
  if (!logits.empty()) sections.push_back({kSectionLogits, logits.data(), logits.size() * 4});
  sections.push_back({kSectionKv, nullptr, kv_size});

  const size_t table_size = sections.size() * kSectionEntrySize + 8;
  uint64_t offset = AlignUp(kHeaderSize + table_size);
  for (auto& s : sections) {
    s.offset = offset;
    offset = AlignUp(offset + s.size);
    if (s.data != nullptr) {
      s.checksum = SectionChecksum(static_cast<const uint8_t*>(s.data), s.size);
    }
  }
  sections.back().checksum = kv_checksum;
  const uint64_t file_size = sections.back().offset + kv_size;

  std::string out;
  out.reserve(sections.back().offset);
  out.append(reinterpret_cast<const char*>(kMagic), sizeof(kMagic));
  PutFixed32(&out, kFormatVersion);
  PutFixed32(&out, kMinReaderVersion);
  PutFixed32(&out, kHeaderSize);
  PutFixed32(&out, static_cast<uint32_t>(sections.size()));
  PutFixed64(&out, file_size);
  PutFixed64(&out, kHeaderSize);  // section table offset
  PutFixed64(&out, 0);            // flags
  PutFixed64(&out, 0);            // reserved
  PutFixed64(&out, XXH3_64bits(out.data(), out.size()));

  const size_t table_start = out.size();
  for (const auto& s : sections) {
    PutFixed32(&out, s.type);
    PutFixed32(&out, 0);  // section flags
    PutFixed64(&out, s.offset);
    PutFixed64(&out, s.size);
    PutFixed64(&out, s.checksum);
  }
  PutFixed64(&out, XXH3_64bits(out.data() + table_start, out.size() - table_start));

  for (const auto& s : sections) {
    if (s.data == nullptr) break;  // KV is last and written by the caller
    out.resize(s.offset, '\0');
    out.append(static_cast<const char*>(s.data), s.size);
  }
  out.resize(sections.back().offset, '\0');
  return out;
}

namespace {

// Where a section lies and what its table entry promises.
struct SectionRef {
  const uint8_t* data = nullptr;
  uint64_t size = 0;
  uint64_t checksum = 0;
  bool present = false;
};
using Sections = SectionRef[kSectionKv + 1];

const char* LlamaFileKind(const uint8_t* data, size_t size) {
  // llama.cpp writes its magics as little-endian u32s: 'ggsq' (LLAMA_STATE_SEQ_MAGIC, sequence and
  // slot files) starts the file with the bytes "qsgg", 'ggsn' (LLAMA_SESSION_MAGIC,
  // llama_state_save_file and llama-completion --prompt-cache) with "nsgg".
  if (size >= 4 && std::memcmp(data, "qsgg", 4) == 0) return "sequence-state (slot) file";
  if (size >= 4 && std::memcmp(data, "nsgg", 4) == 0) return "session (--prompt-cache) file";
  return nullptr;
}

Status CheckMagic(const uint8_t* data, size_t size, const std::string& name) {
  if (size == 0) return Bad(name, "the file is empty");
  if (size >= sizeof(kMagic) && std::memcmp(data, kMagic, sizeof(kMagic)) == 0) return Status::Ok();
  if (const char* kind = LlamaFileKind(data, size)) {
    return Status::InvalidArgument("'" + name + "' is a llama.cpp " + kind +
                                   ", not a kvstash session; decode its prompt again with " +
                                   "'kvstash save' to make one");
  }
  if (size >= 4 && std::memcmp(data, "GGUF", 4) == 0) {
    return Status::InvalidArgument("'" + name + "' is a GGUF model, not a session file; pass " +
                                   "it as the model and a .kvs file as the session");
  }
  return Status::Corruption("'" + name + "' is not a kvstash session file (wrong magic bytes)");
}

// The 64-byte header: every field is either checked against the file or must be what a writer
// writes (reserved fields zero).
Status CheckHeader(const uint8_t* data, size_t size, const std::string& name, ParsedFile* parsed,
                   uint32_t* n_sections) {
  if (size < kHeaderSize)
    return Bad(name, "the header is cut short (" + std::to_string(size) + " bytes)");
  parsed->format_version = DecodeFixed32(data + 8);
  parsed->min_reader_version = DecodeFixed32(data + 12);
  if (XXH3_64bits(data, 56) != DecodeFixed64(data + 56))
    return Bad(name, "the header checksum does not match");
  if (parsed->min_reader_version > kFormatVersion) {
    return Status::Incompatible("session file '" + name + "' needs a kvstash that reads format " +
                                std::to_string(parsed->min_reader_version) +
                                ", this one reads up to " + std::to_string(kFormatVersion) +
                                "; upgrade kvstash");
  }
  if (parsed->format_version < 1) return Bad(name, "format version 0 does not exist");
  if (parsed->min_reader_version < 1 || parsed->min_reader_version > parsed->format_version) {
    return Bad(name, "min_reader_version " + std::to_string(parsed->min_reader_version) +
                         " does not fit format version " + std::to_string(parsed->format_version));
  }
  const uint32_t header_size = DecodeFixed32(data + 16);
  *n_sections = DecodeFixed32(data + 20);
  const uint64_t file_size = DecodeFixed64(data + 24);
  if (header_size != kHeaderSize)
    return Bad(name, "unexpected header size " + std::to_string(header_size));
  if (file_size != size) {
    return file_size > size ? Bad(name, "the file is truncated (" + std::to_string(size) + " of " +
                                            std::to_string(file_size) + " bytes)")
                            : Bad(name, "it has " + std::to_string(size - file_size) +
                                            " unexpected trailing bytes");
  }
  if (DecodeFixed64(data + 32) != kHeaderSize)
    return Bad(name, "the section table is not at byte 64");
  if (DecodeFixed64(data + 40) != 0 || DecodeFixed64(data + 48) != 0) {
    return Bad(name, "reserved header fields (bytes 40..55) are not zero");
  }
  if (*n_sections == 0 || *n_sections > 64) {
    return Bad(name, "section count " + std::to_string(*n_sections) + " is out of range");
  }
  return Status::Ok();
}

bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

// The section table. Sections follow each other in table order, each at the first multiple of 64
// after the previous one, separated by zero bytes, the last one ending at the end of the file:
// the only layout a writer produces, so no byte of the file is without meaning.
Status CheckTable(const uint8_t* data, size_t size, const std::string& name, uint32_t n_sections,
                  Sections& sections) {
  const uint64_t table_size = uint64_t{n_sections} * kSectionEntrySize + 8;
  if (table_size > size - kHeaderSize) return Bad(name, "the section table lies outside the file");
  const uint8_t* table = data + kHeaderSize;
  if (XXH3_64bits(table, table_size - 8) != DecodeFixed64(table + table_size - 8)) {
    return Bad(name, "the section table checksum does not match");
  }
  uint64_t end = kHeaderSize + table_size;  // end of the previous part
  for (uint32_t i = 0; i < n_sections; ++i) {
    const uint8_t* e = table + i * kSectionEntrySize;
    const std::string which = "section " + std::to_string(i);
    const uint32_t type = DecodeFixed32(e);
    const uint64_t off = DecodeFixed64(e + 8);
    const uint64_t len = DecodeFixed64(e + 16);
    if (DecodeFixed32(e + 4) != 0) return Bad(name, which + " has non-zero flags");
    if (off != AlignUp(end) || off > size || len > size - off) {
      return Bad(name, which + " does not start right after the previous part (at a multiple " +
                           "of 64) or lies outside the file");
    }
    if (!AllZero(data + end, off - end))
      return Bad(name, "padding before " + which + " is not zero");
    end = off + len;
    if (type < kSectionMeta || type > kSectionKv) continue;  // optional sections of newer writers
    if (sections[type].present)
      return Bad(name, "section type " + std::to_string(type) + " appears twice");
    sections[type] = {data + off, len, DecodeFixed64(e + 24), true};
  }
  if (end != size) return Bad(name, "the last section does not end at the end of the file");
  if (!sections[kSectionMeta].present || !sections[kSectionTokens].present ||
      !sections[kSectionKv].present) {
    return Bad(name, "a required section (META, TOKENS or KV) is missing");
  }
  return Status::Ok();
}

Status VerifyChecksum(const SectionRef& s, int type, int n_threads, const std::string& name) {
  static const char* kNames[] = {"", "META", "TOKENS", "LOGITS", "KV"};
  if (!s.present || SectionChecksum(s.data, s.size, n_threads) == s.checksum) return Status::Ok();
  return Bad(name, std::string("the checksum of the ") + kNames[type] +
                       " section does not match (the bytes were altered or damaged)");
}

Status ReadTokensAndLogits(const Sections& sections, const std::string& name, ParsedFile* parsed) {
  const SessionMeta& m = parsed->meta;
  const SectionRef& tokens = sections[kSectionTokens];
  if (tokens.size != uint64_t{m.n_tokens} * sizeof(int32_t)) {
    return Bad(name, "the TOKENS section holds " + std::to_string(tokens.size) +
                         " bytes, META says " + std::to_string(m.n_tokens) + " tokens");
  }
  parsed->tokens.resize(m.n_tokens);
  std::memcpy(parsed->tokens.data(), tokens.data, tokens.size);
  for (size_t i = 0; i < parsed->tokens.size(); ++i) {
    const int32_t t = parsed->tokens[i];
    if (t < 0 || t >= m.n_vocab) {
      return Bad(name, "token " + std::to_string(i) + " has id " + std::to_string(t) +
                           ", outside the vocabulary of " + std::to_string(m.n_vocab));
    }
  }
  const SectionRef& logits = sections[kSectionLogits];
  if (m.has_logits != logits.present) {
    return Bad(name, "META and the section table disagree about the LOGITS section");
  }
  if (!logits.present) return Status::Ok();
  if (logits.size != uint64_t(m.n_vocab) * sizeof(float)) {
    return Bad(name, "the LOGITS section holds " + std::to_string(logits.size) +
                         " bytes, not one float per vocabulary entry");
  }
  parsed->logits.resize(m.n_vocab);
  std::memcpy(parsed->logits.data(), logits.data, logits.size);
  for (size_t i = 0; i < parsed->logits.size(); ++i) {
    if (!std::isfinite(parsed->logits[i])) {
      return Bad(name, "logit " + std::to_string(i) + " is not a finite number");
    }
  }
  return Status::Ok();
}

}  // namespace

Status CheckFileHead(const uint8_t* head, size_t n, uint64_t file_size, const std::string& name) {
  KVSTASH_RETURN_IF_ERROR(CheckMagic(head, n, name));
  if (n < kHeaderSize) {
    return Bad(name, "the header is cut short (" + std::to_string(n) + " bytes)");
  }
  ParsedFile scratch;
  uint32_t n_sections = 0;
  // CheckHeader reads bytes 0..63 only and compares its recorded size with the file's.
  KVSTASH_RETURN_IF_ERROR(CheckHeader(head, file_size, name, &scratch, &n_sections));
  const uint64_t table_size = uint64_t{n_sections} * kSectionEntrySize + 8;
  if (table_size > file_size - kHeaderSize) {
    return Bad(name, "the section table lies outside the file");
  }
  if (kHeaderSize + table_size > n) return Status::Ok();  // checked in full by ParseFile
  const uint8_t* table = head + kHeaderSize;
  if (XXH3_64bits(table, table_size - 8) != DecodeFixed64(table + table_size - 8)) {
    return Bad(name, "the section table checksum does not match");
  }
  for (uint32_t i = 0; i < n_sections; ++i) {
    const uint64_t off = DecodeFixed64(table + i * kSectionEntrySize + 8);
    const uint64_t len = DecodeFixed64(table + i * kSectionEntrySize + 16);
    if (off > file_size || len > file_size - off) {
      return Bad(name, "section " + std::to_string(i) + " lies outside the file");
    }
  }
  return Status::Ok();
}

Status ParseKvPayload(ParsedFile* parsed, const std::string& name) {
  // The META ranges were checked (ValidateMeta), so the kind is one ParseSeqState knows.
  auto layout =
      ParseSeqState(parsed->kv, parsed->kv_size, static_cast<MemoryKind>(parsed->meta.memory_kind),
                    static_cast<uint32_t>(parsed->meta.n_swa), /*partial=*/false, name);
  if (!layout.ok()) return layout.status();
  parsed->layout = *layout;
  return CheckPayloadMatchesMeta(parsed->meta, parsed->layout, name);
}

Status VerifyKvChecksum(ParsedFile* parsed, const std::string& name, int n_threads) {
  if (SectionChecksum(parsed->kv, parsed->kv_size, n_threads) != parsed->kv_checksum) {
    return Bad(name,
               "the checksum of the KV section does not match (the bytes were altered or "
               "damaged)");
  }
  parsed->checksums_verified = true;
  return Status::Ok();
}

Result<ParsedFile> ParseFile(const uint8_t* data, size_t size, const std::string& name,
                             bool verify_checksums, int n_threads, bool defer_kv_payload) {
  KVSTASH_RETURN_IF_ERROR(CheckMagic(data, size, name));
  ParsedFile parsed;
  uint32_t n_sections = 0;
  KVSTASH_RETURN_IF_ERROR(CheckHeader(data, size, name, &parsed, &n_sections));
  Sections sections;
  KVSTASH_RETURN_IF_ERROR(CheckTable(data, size, name, n_sections, sections));

  // Structure first, the large KV checksum last: a file whose parts do not fit together is refused
  // before its payload is read (a 5 GiB sparse file costs nothing). The KV payload's own headers
  // lie between its layers, all through the file: walking them first faults pages in one by one.
  if (verify_checksums) {
    for (int type : {int{kSectionMeta}, int{kSectionTokens}, int{kSectionLogits}}) {
      KVSTASH_RETURN_IF_ERROR(VerifyChecksum(sections[type], type, 1, name));
    }
  }
  if (sections[kSectionMeta].size > kMaxMetaBytes)
    return Bad(name, "the META section is too large");
  auto meta = DecodeMeta(sections[kSectionMeta].data, sections[kSectionMeta].size, name);
  if (!meta.ok()) return meta.status();
  parsed.meta = std::move(meta.value());
  KVSTASH_RETURN_IF_ERROR(ValidateMeta(parsed.meta, name));
  KVSTASH_RETURN_IF_ERROR(ReadTokensAndLogits(sections, name, &parsed));

  parsed.kv = sections[kSectionKv].data;
  parsed.kv_size = sections[kSectionKv].size;
  parsed.kv_checksum = sections[kSectionKv].checksum;
  if (defer_kv_payload) return parsed;
  KVSTASH_RETURN_IF_ERROR(ParseKvPayload(&parsed, name));
  if (verify_checksums) KVSTASH_RETURN_IF_ERROR(VerifyKvChecksum(&parsed, name, n_threads));
  return parsed;
}

}  // namespace kvstash::format

namespace kvstash::format {

SessionInfo InfoOf(const SessionMeta& m) {
  SessionInfo i;
  i.writer = m.writer;
  i.llama_build = m.llama_build;
  i.llama_state_version = m.llama_state_version;
  i.model_fingerprint = m.model_fingerprint;
  i.model_description = m.model_description;
  i.model_arch = m.model_arch;
  i.model_n_params = m.model_n_params;
  i.n_vocab = m.n_vocab;
  i.n_layer = m.n_layer;
  i.n_embd = m.n_embd;
  i.n_head = m.n_head;
  i.n_head_kv = m.n_head_kv;
  i.n_embd_k_gqa = m.n_embd_k_gqa;
  i.n_embd_v_gqa = m.n_embd_v_gqa;
  i.n_swa = m.n_swa;
  i.n_ctx_train = m.n_ctx_train;
  i.memory_kind = m.memory_kind <= 3 ? MemoryKindName(static_cast<MemoryKind>(m.memory_kind))
                                     : std::to_string(m.memory_kind);
  i.n_ctx = m.n_ctx;
  i.n_batch = m.n_batch;
  i.n_ubatch = m.n_ubatch;
  i.n_seq_max = m.n_seq_max;
  i.type_k = m.type_k_name;
  i.type_v = m.type_v_name;
  i.flash_attn = m.flash_attn;
  // llama_rope_scaling_type: -1 unspecified, 0 none, 1 linear, 2 yarn, 3 longrope.
  static const char* const kRope[] = {"unspecified", "none", "linear", "yarn", "longrope"};
  const int rope = m.rope_scaling_type + 1;
  i.rope_scaling = rope >= 0 && rope < 5 ? kRope[rope] : std::to_string(m.rope_scaling_type);
  i.rope_freq_base = m.rope_freq_base;
  i.rope_freq_scale = m.rope_freq_scale;
  i.yarn_ext_factor = m.yarn_ext_factor;
  i.yarn_attn_factor = m.yarn_attn_factor;
  i.yarn_beta_fast = m.yarn_beta_fast;
  i.yarn_beta_slow = m.yarn_beta_slow;
  i.yarn_orig_ctx = m.yarn_orig_ctx;
  i.swa_full = m.swa_full;
  i.kv_unified = m.kv_unified;
  i.n_tokens = m.n_tokens;
  i.has_logits = m.has_logits;
  i.preview = m.preview;
  return i;
}

}  // namespace kvstash::format
