#include "engine/inspect.h"

#include "engine/memory_support.h"

namespace kvstash::engine {

SessionMemory DescribeSessionMemory(const SessionFileInfo& info, const format::SeqLayout& layout) {
  SessionMemory memory;
  memory.layout = layout;
  memory.parts = DescribeParts(layout);
  memory.reuse = ReuseRule(layout.kind, info.meta.n_swa);
  return memory;
}

}  // namespace kvstash::engine
