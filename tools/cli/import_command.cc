#include "import_command.h"

#include <cstdio>
#include <nlohmann/json.hpp>

#include "kvstash/import.h"

namespace kvstash::cli {

int RunImport(const ImportFlags& flags) {
  // The output is checked before the model loads, as for save: never the model or the input,
  // never a file that is not a session without --force.
  Status usable = CheckSessionOutput(
      flags.output, flags.force,
      {{flags.common.model, "the model file"}, {flags.input, "the file to import"}});
  if (!usable.ok()) return Fail(usable);
  auto model = LoadModel(flags.common);
  if (!model.ok()) return Fail(model.status());
  ImportOptions options;
  options.n_ctx = flags.context.n_ctx.value_or(options.n_ctx);
  options.n_threads = flags.context.n_threads;
  options.n_batch = flags.context.n_batch.value_or(options.n_batch);
  options.n_ubatch = flags.context.n_ubatch.value_or(options.n_ubatch);
  auto session = ImportLlamaFile(*model, flags.input, options);
  if (!session.ok()) return Fail(session.status());
  SaveOptions save;
  save.sync = !flags.no_sync;
  save.replace_any = flags.force;
  Status saved = (*session)->Save(flags.output, save);
  if (!saved.ok()) return Fail(saved);
  const size_t n_tokens = (*session)->tokens().size();
  if (flags.common.json) {
    std::printf("%s\n", nlohmann::json({{"input", flags.input},
                                        {"session", flags.output},
                                        {"n_tokens", n_tokens},
                                        {"n_ctx", (*session)->n_ctx()}})
                            .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                            .c_str());
  } else {
    std::fprintf(stderr, "imported %zu tokens from '%s' to '%s'\n", n_tokens, flags.input.c_str(),
                 flags.output.c_str());
  }
  return 0;
}

}  // namespace kvstash::cli
