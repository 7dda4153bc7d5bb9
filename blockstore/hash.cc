#include "blockstore/hash.h"

#include <xxhash.h>
#if defined(__x86_64__) && __has_include(<xxh_x86dispatch.h>)
#define XXH_DISPATCH_DISABLE_REPLACE
#include <xxh_x86dispatch.h>
#define IMGFS_XXH3_64 XXH3_64bits_dispatch
#define IMGFS_XXH3_64_SEED XXH3_64bits_withSeed_dispatch
#define IMGFS_XXH3_128 XXH3_128bits_dispatch
#else
#define IMGFS_XXH3_64 XXH3_64bits
#define IMGFS_XXH3_64_SEED XXH3_64bits_withSeed
#define IMGFS_XXH3_128 XXH3_128bits
#endif

#include <cstring>

namespace imgfs {

bool Id128::IsHole() const { return IsAllZero(ByteView(bytes.data(), bytes.size())); }

std::string Id128::Hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(32, '0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = kDigits[bytes[i] >> 4];
    out[2 * i + 1] = kDigits[bytes[i] & 0xf];
  }
  return out;
}

namespace {
int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

Result<Id128> Id128::FromHex(std::string_view hex) {
  if (hex.size() != 32 || !IsHexString(hex)) {
    std::string shown(hex.substr(0, 40));
    return Status::InvalidArgument("not a 32-hex-digit id: '" + shown + "'");
  }
  Id128 id;
  for (size_t i = 0; i < id.bytes.size(); ++i) {
    id.bytes[i] = static_cast<uint8_t>(HexValue(hex[2 * i]) << 4 | HexValue(hex[2 * i + 1]));
  }
  return id;
}

Id128 Hash128(ByteView data) {
  XXH128_hash_t h = IMGFS_XXH3_128(data.data(), data.size());
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, h);
  Id128 id;
  static_assert(sizeof(canonical.digest) == sizeof(id.bytes));
  std::memcpy(id.bytes.data(), canonical.digest, id.bytes.size());
  return id;
}

uint64_t Hash64(ByteView data, uint64_t seed) {
  if (seed == 0) return IMGFS_XXH3_64(data.data(), data.size());
  return IMGFS_XXH3_64_SEED(data.data(), data.size(), seed);
}

ChunkId ChunkIdOf(ByteView data) {
  if (IsAllZero(data)) return Id128::Hole();
  return Hash128(data);
}

bool IsAllZero(ByteView data) {
  const uint8_t* p = data.data();
  size_t n = data.size();
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    if (*p != 0) return false;
    ++p;
    --n;
  }
  while (n >= 32) {
    uint64_t w[4];
    std::memcpy(w, p, sizeof w);
    if ((w[0] | w[1] | w[2] | w[3]) != 0) return false;
    p += 32;
    n -= 32;
  }
  while (n > 0) {
    if (*p != 0) return false;
    ++p;
    --n;
  }
  return true;
}

bool IsHexString(std::string_view text) {
  if (text.empty() || text.size() > 32) return false;
  for (char c : text) {
    if (HexValue(c) < 0) return false;
  }
  return true;
}

}  // namespace imgfs
