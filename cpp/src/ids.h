// Random identifiers (UUID4 strings) for idempotency keys. Fork-safe: a child
// process reseeds, so parent and child never generate the same key.
#pragma once

#include <string>

namespace cpcsync {

std::string NewUuid4();

}  // namespace cpcsync
