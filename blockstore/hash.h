// 128-bit content ids (XXH3-128), printed as 32 lowercase hex digits.
//
// A chunk id is the hash of the chunk's bytes; an image id is the hash of the
// image's canonical manifest encoding. The all-zero id is the hole id: it names
// an all-zero chunk, which is never stored.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "blockstore/status.h"

namespace imgfs {

struct Id128 {
  std::array<uint8_t, 16> bytes{};  // big-endian canonical form of the hash

  static Id128 Hole() { return Id128{}; }
  bool IsHole() const;
  std::string Hex() const;
  // Parses exactly 32 hex digits (either case).
  static Result<Id128> FromHex(std::string_view hex);

  auto operator<=>(const Id128&) const = default;
};

using ChunkId = Id128;
using ImageId = Id128;

// XXH3-128 of data. Does not special-case zeros; see ChunkIdOf.
Id128 Hash128(ByteView data);

// XXH3-64 of data with `seed` (0: plain XXH3-64): the checksums of local
// disks' blocks, of their allocation map's pages and of JSON files. Both
// hashes use libxxhash's runtime dispatch on x86-64 (its AVX2 or AVX-512
// code where the CPU has it; the same values as its SSE2 default).
uint64_t Hash64(ByteView data, uint64_t seed = 0);

// The id under which `data` is stored: the hole id when every byte is zero,
// else Hash128(data).
ChunkId ChunkIdOf(ByteView data);

// True when every byte is zero. Fast (word-at-a-time).
bool IsAllZero(ByteView data);

// True for a string of 1..32 lowercase or uppercase hex digits.
bool IsHexString(std::string_view text);

}  // namespace imgfs

template <>
struct std::hash<imgfs::Id128> {
  size_t operator()(const imgfs::Id128& id) const noexcept {
    size_t h;
    static_assert(sizeof(h) <= sizeof(id.bytes));
    __builtin_memcpy(&h, id.bytes.data(), sizeof(h));
    return h;
  }
};
