#include "blockstore/image.h"

#include <catch2/catch.hpp>
#include <thread>

#include "blockstore/mem_backend.h"
#include "tests/blockstore/test_util.h"

namespace imgfs {
namespace {

constexpr uint32_t kCs = 4096;

struct Fixture {
  std::shared_ptr<MemChunkBackend> backend = std::make_shared<MemChunkBackend>();
  std::shared_ptr<ChunkStore> store = std::make_shared<ChunkStore>(backend, kCs);
  Bytes image;  // the expected bytes
  Manifest manifest;

  // An image of `chunks` chunks plus `tail` bytes; every third chunk a hole.
  void Build(size_t chunks, size_t tail) {
    image = testing::RandomBytes(chunks * kCs + tail, 99);
    for (size_t i = 0; i < chunks; i += 3) std::fill_n(image.begin() + i * kCs, kCs, 0);
    manifest.chunk_size = kCs;
    manifest.size = image.size();
    for (size_t off = 0; off < image.size(); off += kCs) {
      size_t n = std::min<size_t>(kCs, image.size() - off);
      auto put = store->Put(ByteView(image).subspan(off, n));
      REQUIRE(put.ok());
      manifest.chunks.push_back(put->id);
    }
  }
  ImageReader Reader() { return ImageReader(store, manifest.Id(), manifest); }
};

TEST_CASE("image: reads any range, zeros for holes and past the end", "[image]") {
  Fixture f;
  f.Build(10, 123);
  ImageReader r = f.Reader();
  CHECK(r.size() == f.image.size());
  for (uint64_t off : {uint64_t{0}, uint64_t{1}, uint64_t{kCs - 1}, uint64_t{kCs},
                       uint64_t{3 * kCs + 17}, uint64_t{f.image.size() - 1}}) {
    for (size_t len :
         {size_t{1}, size_t{100}, size_t{kCs}, size_t{3 * kCs + 5}, size_t{20 * kCs}}) {
      INFO("offset " << off << " length " << len);
      Bytes buf(len, 0xEE);
      REQUIRE(r.Read(off, buf) == Status::OK());
      for (size_t i = 0; i < len; ++i) {
        uint8_t want = off + i < f.image.size() ? f.image[off + i] : 0;
        if (buf[i] != want) {
          FAIL("byte " << off + i << " differs");
        }
      }
    }
  }
  Bytes far(100, 0xEE);
  REQUIRE(r.Read(uint64_t{1} << 50, far) == Status::OK());
  CHECK(std::all_of(far.begin(), far.end(), [](uint8_t b) { return b == 0; }));
  CHECK(r.IsHoleAt(0));
  CHECK_FALSE(r.IsHoleAt(kCs));
  CHECK(r.IsHoleAt(3 * kCs + 5));
  CHECK(r.IsHoleAt(f.image.size()));
}

TEST_CASE("image: many threads read at once", "[image]") {
  Fixture f;
  f.Build(64, 1000);
  f.store = std::make_shared<ChunkStore>(f.backend, kCs, 8 * kCs);  // a small cache: evictions
  ImageReader r = f.Reader();
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      Bytes buf;
      for (int i = 0; i < 300; ++i) {
        uint64_t off = rng() % f.image.size();
        buf.assign(1 + rng() % (3 * kCs), 0);
        if (!r.Read(off, buf).ok()) {
          bad.fetch_add(1);
          continue;
        }
        for (size_t k = 0; k < buf.size(); ++k) {
          uint8_t want = off + k < f.image.size() ? f.image[off + k] : 0;
          if (buf[k] != want) {
            bad.fetch_add(1);
            break;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(bad.load() == 0);
}

TEST_CASE("image: a damaged chunk fails the read, a missing one is an IOError", "[image]") {
  Fixture f;
  f.Build(4, 0);
  ChunkId victim = f.manifest.chunks[1];
  Bytes bad = testing::RandomBytes(kCs, 5);
  f.backend->OverwriteForTest(ObjectKind::kChunk, victim.Hex(), bad);
  ImageReader r = f.Reader();
  Bytes buf(4 * kCs);
  Status s = r.Read(0, buf);
  CHECK(s.IsCorruption());
  CHECK_THAT(s.message(), Catch::Contains(victim.Hex()));
  // Reading the intact chunk around it still works.
  Bytes ok(kCs);
  REQUIRE(r.Read(2 * kCs, ok) == Status::OK());
  CHECK(std::equal(ok.begin(), ok.end(), f.image.begin() + 2 * kCs));

  // Parts of the damaged chunk, alone or across its neighbours, fail too.
  for (auto [off, len] : {std::pair<uint64_t, size_t>{kCs + 10, 100},
                          {kCs - 50, 100},
                          {2 * kCs - 1, 2},
                          {kCs / 2, 2 * kCs}}) {
    INFO("offset " << off << " length " << len);
    Bytes part(len, 0xEE);
    CHECK(r.Read(off, part).IsCorruption());
  }

  REQUIRE(f.backend->Remove(ObjectKind::kChunk, victim.Hex()) == Status::OK());
  s = r.Read(kCs, ok);
  CHECK(s.IsIOError());
  CHECK_THAT(s.message(), Catch::Contains(victim.Hex()));
}

TEST_CASE("image: partial reads of cached chunks copy only the range asked for", "[image]") {
  Fixture f;
  f.Build(4, 100);
  ImageReader r = f.Reader();
  Bytes all(f.image.size());
  REQUIRE(r.Read(0, all) == Status::OK());  // every chunk now cached
  // Damage the stored chunks: the cached, verified copies serve the reads.
  for (const auto& id : f.manifest.chunks) {
    if (!id.IsHole()) f.backend->OverwriteForTest(ObjectKind::kChunk, id.Hex(), Bytes(kCs, 1));
  }
  for (auto [off, len] : {std::pair<uint64_t, size_t>{kCs + 1, 4000},
                          {4 * kCs + 90, 20},
                          {2 * kCs - 8, 16},
                          {4 * kCs + 50, 100}}) {
    INFO("offset " << off << " length " << len);
    Bytes buf(len, 0xEE);
    REQUIRE(r.Read(off, buf) == Status::OK());
    for (size_t i = 0; i < len; ++i) {
      uint8_t want = off + i < f.image.size() ? f.image[off + i] : 0;
      REQUIRE(buf[i] == want);
    }
  }
}

TEST_CASE("image: a chunk of the wrong length is Corruption", "[image]") {
  Fixture f;
  f.Build(2, 10);
  // Point the short last chunk's slot at a full-size chunk.
  f.manifest.chunks[2] = f.manifest.chunks[1];
  ImageReader r = f.Reader();
  Bytes buf(10);
  CHECK(r.Read(2 * kCs, buf).IsCorruption());
}

}  // namespace
}  // namespace imgfs
