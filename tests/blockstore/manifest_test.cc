#include "blockstore/manifest.h"

#include <catch2/catch.hpp>

#include "tests/blockstore/test_util.h"

namespace imgfs {
namespace {

ChunkId SomeId(int i) { return Hash128(testing::RandomBytes(16, 500 + i)); }

Manifest Sample() {
  Manifest m;
  m.chunk_size = 64 * 1024;
  m.size = 10 * uint64_t{m.chunk_size} - 100;
  m.chunks = {ChunkId::Hole(), SomeId(1), SomeId(2),       ChunkId::Hole(), ChunkId::Hole(),
              SomeId(3),       SomeId(1), ChunkId::Hole(), SomeId(4),       ChunkId::Hole()};
  return m;
}

void CheckRoundTrip(const Manifest& m) {
  REQUIRE(m.Validate() == Status::OK());
  Bytes enc = m.Encode();
  auto dec = Manifest::Decode(enc);
  REQUIRE(dec.status() == Status::OK());
  CHECK(dec->size == m.size);
  CHECK(dec->chunk_size == m.chunk_size);
  CHECK(dec->chunks == m.chunks);
  CHECK(dec->Encode() == enc);
  CHECK(dec->Id() == m.Id());
}

TEST_CASE("manifest: encode/decode round trip", "[manifest]") {
  CheckRoundTrip(Sample());
  Manifest empty;
  empty.chunk_size = 4096;
  CheckRoundTrip(empty);
  Manifest holes;
  holes.chunk_size = 4 << 20;
  holes.size = uint64_t{1} << 40;  // 1 TiB of holes: a few bytes encoded
  holes.chunks.resize(holes.size / holes.chunk_size);
  CheckRoundTrip(holes);
  CHECK(holes.Encode().size() < 32);
  Manifest dense;
  dense.chunk_size = 4096;
  dense.size = 1000 * 4096 + 1;
  for (int i = 0; i < 1001; ++i) dense.chunks.push_back(SomeId(i));
  CheckRoundTrip(dense);
  CHECK(dense.Encode().size() < 1001 * 16 + 40);
}

TEST_CASE("manifest: the image id is the hash of the encoding and depends on everything",
          "[manifest]") {
  Manifest m = Sample();
  CHECK(m.Id() == Hash128(m.Encode()));
  Manifest other = m;
  other.size -= 1;
  CHECK(other.Id() != m.Id());
  other = m;
  other.chunks[1] = SomeId(9);
  CHECK(other.Id() != m.Id());
  other = m;
  other.chunks[0] = SomeId(9);
  CHECK(other.Id() != m.Id());
}

TEST_CASE("manifest: DataBytes counts non-hole chunks, the last one short", "[manifest]") {
  Manifest m = Sample();
  CHECK(m.DataBytes() == 5 * uint64_t{m.chunk_size});  // the last chunk is a hole
  m.chunks[9] = SomeId(5);
  CHECK(m.DataBytes() == 6 * uint64_t{m.chunk_size} - 100);
}

TEST_CASE("manifest: Validate refuses inconsistent manifests", "[manifest]") {
  Manifest m = Sample();
  m.chunks.pop_back();
  CHECK(m.Validate().IsInvalidArgument());
  m = Sample();
  m.chunk_size = 3000;
  CHECK(m.Validate().IsInvalidArgument());
  m = Sample();
  m.chunk_size = 4096;
  m.size = (kMaxManifestChunks + 1) * 4096;
  m.chunks.clear();
  CHECK(m.Validate().IsTooLarge());
}

TEST_CASE("manifest: the largest image is 2^26 chunks", "[manifest]") {
  CHECK(CheckImageSize(kMaxManifestChunks * 65536, 65536).ok());
  Status s = CheckImageSize(kMaxManifestChunks * 65536 + 1, 65536);
  CHECK(s.IsTooLarge());
  CHECK(s.message().find("at most 4T") != std::string::npos);
  CHECK(CheckImageSize(kMaxManifestChunks * (4u << 20), 4u << 20).ok());
  CHECK(CheckImageSize(~uint64_t{0}, 4096).IsTooLarge());
}

TEST_CASE("manifest: every truncation is rejected with Corruption", "[manifest]") {
  Bytes enc = Sample().Encode();
  for (size_t n = 0; n < enc.size(); ++n) {
    auto dec = Manifest::Decode(ByteView(enc).first(n));
    INFO("length " << n);
    CHECK(dec.status().IsCorruption());
  }
  Bytes longer = enc;
  longer.push_back(0);
  CHECK(Manifest::Decode(longer).status().IsCorruption());
}

TEST_CASE("manifest: every single-bit flip is rejected with Corruption", "[manifest]") {
  Bytes enc = Sample().Encode();
  for (size_t i = 0; i < enc.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      Bytes bad = enc;
      bad[i] ^= static_cast<uint8_t>(1 << bit);
      INFO("byte " << i << " bit " << bit);
      CHECK(Manifest::Decode(bad).status().IsCorruption());
    }
  }
}

TEST_CASE("manifest: a wrong version is rejected with a clear error", "[manifest]") {
  Bytes enc = Sample().Encode();
  enc[4] = 2;
  auto dec = Manifest::Decode(enc);
  CHECK(dec.status().IsCorruption());
  CHECK_THAT(dec.status().message(), Catch::Contains("version 2"));
  Bytes garbage = testing::RandomBytes(100, 1);
  CHECK_THAT(Manifest::Decode(garbage).status().message(), Catch::Contains("magic"));
}

}  // namespace
}  // namespace imgfs
