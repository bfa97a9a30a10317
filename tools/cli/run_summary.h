// The line `kvstash run` prints on stderr after an answer, as llama.cpp prints its timings.
#ifndef KVSTASH_TOOLS_CLI_RUN_SUMMARY_H_
#define KVSTASH_TOOLS_CLI_RUN_SUMMARY_H_

#include <string>

#include "kvstash/runner.h"

namespace kvstash::cli {

// "kvstash: reused 1141 of 2274 prompt tokens (session), decoded 1133 in 812 ms (1395 t/s);
// load 41 ms; generated 64 tokens in 900 ms (71 t/s)". The load part only when something was
// loaded; a saved prompt cache adds "; saved prompt cache in N ms". No newline.
std::string RunSummary(const RunReport& report);

// The note for a prompt that repeated the session's tokens (RunReport::prompt_repeats_session).
std::string RepeatedSessionNote(const RunReport& report);

}  // namespace kvstash::cli

#endif  // KVSTASH_TOOLS_CLI_RUN_SUMMARY_H_
