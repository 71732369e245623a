// MemoryStorage: a QueueStorage in process memory. Nothing survives the process.
//
// Same semantics as SqliteStorage (docs/queue-semantics.md), checked side by side
// by the model-based tests. Thread-safety: internally synchronised.
#pragma once

#include <memory>

#include "cpcsync/storage.h"

namespace cpcsync {

std::unique_ptr<QueueStorage> NewMemoryStorage();

}  // namespace cpcsync
