// Text for messages written as kvstash writes its own (kvstash/status.h): strings read from files
// made safe for a terminal, and the operating system's errors by name.
#ifndef KVSTASH_MESSAGES_H_
#define KVSTASH_MESSAGES_H_

#include <string>
#include <string_view>

namespace kvstash {

// `text` with every control character (and DEL) written as \xNN, so that a string read from a
// file (a session's writer or model description, a store's namespace) can be printed in a message
// or on a terminal without reaching it as an escape sequence. Other bytes are kept as they are.
std::string PrintableText(std::string_view text);

// strerror(err) with the errno name, e.g. "No space left on device (ENOSPC)".
std::string ErrnoText(int err);

}  // namespace kvstash

#endif  // KVSTASH_MESSAGES_H_
