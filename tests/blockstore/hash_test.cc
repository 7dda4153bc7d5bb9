#include "blockstore/hash.h"

#include <xxhash.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <random>

#include "tests/blockstore/test_util.h"

namespace imgfs {
namespace {

TEST_CASE("hash: ids print as 32 lowercase hex digits and parse back", "[hash]") {
  Id128 id = Hash128(testing::AsBytes("hello"));
  std::string hex = id.Hex();
  CHECK(hex.size() == 32);
  CHECK(hex.find_first_not_of("0123456789abcdef") == std::string::npos);
  auto parsed = Id128::FromHex(hex);
  REQUIRE(parsed.ok());
  CHECK(*parsed == id);
  std::string upper = hex;
  for (char& c : upper) c = static_cast<char>(std::toupper(c));
  CHECK(*Id128::FromHex(upper) == id);
}

TEST_CASE("hash: XXH3-128 known value, big-endian canonical form", "[hash]") {
  // XXH3_128bits of the empty input is 99aa06d3014798d86001c324468d497f.
  CHECK(Hash128({}).Hex() == "99aa06d3014798d86001c324468d497f");
}

TEST_CASE("hash: the dispatched XXH3 gives libxxhash's default values", "[hash]") {
  // Hash64 and Hash128 use the runtime dispatch (AVX2, AVX-512): every id and
  // checksum ever stored must hash the same.
  std::mt19937_64 rng(5);
  Bytes data(70000);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  for (size_t n : {0, 1, 3, 16, 17, 128, 129, 240, 241, 504, 4096, 65536, 70000}) {
    INFO(n << " bytes");
    ByteView v(data.data(), n);
    CHECK(Hash64(v) == XXH3_64bits(v.data(), n));
    CHECK(Hash64(v, 12345) == XXH3_64bits_withSeed(v.data(), n, 12345));
    XXH128_hash_t h = XXH3_128bits(v.data(), n);
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    Id128 want;
    std::memcpy(want.bytes.data(), c.digest, 16);
    CHECK(Hash128(v) == want);
  }
}

TEST_CASE("hash: FromHex rejects malformed input", "[hash]") {
  for (std::string bad :
       std::vector<std::string>{"", "abc", std::string(31, 'a'), std::string(33, 'a'),
                                std::string(31, 'a') + "g", std::string(31, 'a') + " "}) {
    CHECK(Id128::FromHex(bad).status().IsInvalidArgument());
  }
}

TEST_CASE("hash: the hole id and zero detection", "[hash]") {
  CHECK(Id128::Hole().IsHole());
  CHECK(Id128::Hole().Hex() == std::string(32, '0'));
  Bytes zeros(65536 + 3, 0);
  CHECK(IsAllZero(zeros));
  CHECK(IsAllZero({}));
  CHECK(ChunkIdOf(zeros).IsHole());
  for (size_t pos :
       {size_t{0}, size_t{1}, size_t{7}, size_t{31}, size_t{32}, size_t{4095}, zeros.size() - 1}) {
    Bytes b = zeros;
    b[pos] = 0x80;
    CHECK_FALSE(IsAllZero(b));
    CHECK_FALSE(IsAllZero(ByteView(b).subspan(1)) == (pos != 0));
    CHECK(ChunkIdOf(b) == Hash128(b));
    CHECK_FALSE(ChunkIdOf(b).IsHole());
  }
  CHECK_FALSE(Hash128(zeros).IsHole());  // Hash128 does not special-case zeros
}

TEST_CASE("hash: IsHexString", "[hash]") {
  CHECK(IsHexString("0"));
  CHECK(IsHexString("deadBEEF"));
  CHECK(IsHexString(std::string(32, 'f')));
  CHECK_FALSE(IsHexString(""));
  CHECK_FALSE(IsHexString(std::string(33, 'f')));
  CHECK_FALSE(IsHexString("xyz"));
}

}  // namespace
}  // namespace imgfs
