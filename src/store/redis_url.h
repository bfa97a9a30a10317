// `redis://[user:password@]host:port[/db]`, parsed and printed without its secret. Pure: no
// sockets, tested on its own.
#ifndef KVSTASH_STORE_REDIS_URL_H_
#define KVSTASH_STORE_REDIS_URL_H_

#include <string>

#include "kvstash/status.h"

namespace kvstash::store {

struct RedisUrl {
  std::string host;
  int port = 6379;
  std::string user;      // empty: AUTH with the password alone (Redis < 6, or the default user)
  std::string password;  // empty: no AUTH
  int db = 0;            // SELECT when not 0

  // "redis://user:***@host:port/db": what logs and errors show (never the password).
  std::string Redacted() const;
};

// InvalidArgument naming what is wrong, never echoing the password: an unknown scheme, no host, a
// port outside 1..65535, a db outside 0..65535, characters a URL cannot hold. Percent-escapes in
// the user and password are decoded (a password may contain '@' or ':').
Result<RedisUrl> ParseRedisUrl(const std::string& url);

}  // namespace kvstash::store

#endif  // KVSTASH_STORE_REDIS_URL_H_
