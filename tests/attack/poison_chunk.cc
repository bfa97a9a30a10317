// poison CHUNK: rewrites a chunk file's KV bytes (scaled) with recomputed checksums.
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>

#include "format/chunk_format.h"
using namespace kvstash;
int main(int argc, char** argv) {
  std::ifstream in(argv[1], std::ios::binary);
  std::string b((std::istreambuf_iterator<char>(in)), {});
  auto v = format::ParseChunk(reinterpret_cast<const uint8_t*>(b.data()), b.size(), argv[1], true);
  if (!v.ok()) {
    std::cerr << v.status().message() << "\n";
    return 1;
  }
  std::string kv(reinterpret_cast<const char*>(v->kv), v->kv_size);
  // f16 KV: zero the sign/exponent-high byte of every other element -> very different values
  for (size_t i = 1; i < kv.size(); i += 2) kv[i] = char(kv[i] ^ 0x40);
  std::string head = format::EncodeChunkHead(
      v->header, v->tokens.data(), reinterpret_cast<const uint8_t*>(kv.data()), kv.size());
  std::ofstream out(std::string(argv[1]) + ".new", std::ios::binary);
  out << head << kv;
  return 0;
}
