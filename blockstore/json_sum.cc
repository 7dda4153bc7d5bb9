#include "blockstore/json_sum.h"

#include <cstdio>

#include "blockstore/hash.h"

namespace imgfs {
namespace {

constexpr const char* kSumField = "xxh3";

std::string CanonicalSum(const nlohmann::json& j) {
  // `replace`: invalid UTF-8 in a damaged string must not throw; the sum
  // then just differs.
  std::string text = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(
                    Hash64(ByteView(reinterpret_cast<const uint8_t*>(text.data()), text.size()))));
  return hex;
}

}  // namespace

void SealJson(nlohmann::json& j) {
  j.erase(kSumField);
  j[kSumField] = CanonicalSum(j);
}

Status UnsealJson(nlohmann::json& j, const std::string& what) {
  if (!j.is_object() || !j.contains(kSumField)) return Status::OK();
  nlohmann::json stored = j[kSumField];
  j.erase(kSumField);
  if (!stored.is_string() || stored.get<std::string>() != CanonicalSum(j)) {
    return Status::Corruption(what + ": its checksum (\"" + std::string(kSumField) +
                              "\") does not match its content");
  }
  return Status::OK();
}

}  // namespace imgfs
