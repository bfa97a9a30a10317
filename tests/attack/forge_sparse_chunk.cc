// forge OUT_DIR N_LAYER N_TOKENS ROW: plants chunks/<hh>/<hash>.1.kvc with a valid header (header
// checksum right, payload checksum wrong) and a sparse payload of the size the header claims.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#define XXH_INLINE_ALL
#include "xxhash.h"
int main(int argc, char** argv) {
  std::string dir = argv[1];
  uint32_t n_layer = atoi(argv[2]), n_tokens = atoi(argv[3]);
  uint64_t row = strtoull(argv[4], 0, 10);
  uint8_t h[256] = {0};
  const uint8_t magic[8] = {0x89, 'K', 'V', 'C', '\r', '\n', 0x1A, '\n'};
  memcpy(h, magic, 8);
  auto p32 = [&](size_t o, uint32_t v) { memcpy(h + o, &v, 4); };
  auto p64 = [&](size_t o, uint64_t v) { memcpy(h + o, &v, 8); };
  p32(8, 1);
  p32(12, 256);
  for (int i = 0; i < 32; ++i) h[16 + i] = 0xab;  // hash
  p32(112, 1);
  p32(116, n_tokens);
  p32(120, n_layer);
  p32(124, 0);
  p32(128, 1);
  p32(132, 1);
  p64(136, row);
  p64(144, row);
  uint64_t payload = uint64_t(n_tokens) * 4 + uint64_t(n_layer) * n_tokens * (row + row);
  p64(160, payload);
  p64(168, 12345);
  p64(248, XXH3_64bits(h, 248));
  std::string hex(64, 'a');
  for (int i = 0; i < 32; ++i) {
    hex[2 * i] = 'a';
    hex[2 * i + 1] = 'b';
  }
  std::string sub = dir + "/chunks/ab";
  mkdir(sub.c_str(), 0755);
  std::string path = sub + "/" + hex + ".1.kvc";
  int fd = open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  write(fd, h, 256);
  ftruncate(fd, 256 + payload);
  close(fd);
  printf("%s %llu bytes\n", path.c_str(), (unsigned long long)(256 + payload));
}
