// A checksum inside a JSON object (docs/formats.md, "Checksummed JSON"), so
// that a flipped bit which leaves valid JSON (one digit of a size turned into
// another) is an error, not a silent change. The field "xxh3" holds the
// XXH3-64, as 16 lowercase hex digits, of the object's canonical form without
// that field: nlohmann's compact dump (keys sorted, no spaces), which does
// not depend on how the file was indented.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "blockstore/status.h"

namespace imgfs {

// Sets j["xxh3"] (j is an object).
void SealJson(nlohmann::json& j);

// Checks and removes j["xxh3"]. OK when it matches, and when it is absent (a
// file written before the field; its next rewrite adds it). Corruption,
// naming `what`, when it does not match or is not 16 hex digits.
Status UnsealJson(nlohmann::json& j, const std::string& what);

}  // namespace imgfs
