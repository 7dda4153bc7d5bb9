// The asynchronous read path (docs/architecture.md, "The read path"): an
// image and a local disk over a chunk store whose reads complete later, on
// another thread, as RADOS reads do. Nothing may wait for them, every chunk is
// asked for at once, and the bytes that arrive are the right ones.
#include <catch2/catch.hpp>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "blockstore/disk.h"
#include "blockstore/image.h"
#include "blockstore/manifest.h"
#include "blockstore/mem_backend.h"
#include "tests/blockstore/disk_test_util.h"

using namespace imgfs;
using namespace imgfs::testing;

namespace {

constexpr uint32_t kCs = 16 * 1024;

// A memory chunk backend whose asynchronous reads are held until Release,
// then served, each on a thread of its own (or served at once while Hold is
// off).
class HeldBackend : public MemChunkBackend {
 public:
  ~HeldBackend() override { Release(); }

  void Hold(bool on) {
    std::lock_guard lock(mu_);
    hold_ = on;
  }

  void ReadAsync(ObjectKind kind, std::string_view id, MutableByteView buf,
                 std::function<void(Result<size_t>)> done) override {
    std::unique_lock lock(mu_);
    if (!hold_) {
      lock.unlock();
      return done(Read(kind, id, buf));
    }
    held_.push_back([this, kind, id = std::string(id), buf, done = std::move(done)] {
      done(Read(kind, id, buf));
    });
  }

  size_t Held() {
    std::lock_guard lock(mu_);
    return held_.size();
  }

  // Serves every held read, each on its own thread, and waits for them.
  void Release() {
    std::deque<std::function<void()>> held;
    {
      std::lock_guard lock(mu_);
      held.swap(held_);
    }
    std::vector<std::thread> threads;
    for (auto& fn : held) threads.emplace_back(std::move(fn));
    for (auto& t : threads) t.join();
  }

 private:
  std::mutex mu_;
  bool hold_ = true;
  std::deque<std::function<void()>> held_;
};

// Images in a store over a HeldBackend, for disks to clone.
class HeldImages : public TestImages {
 public:
  HeldImages() : HeldImages(std::make_shared<HeldBackend>()) {}

  HeldBackend& backend() { return *backend_; }

  // Stores `data` as an image; returns its manifest.
  Manifest AddImage(const Bytes& data) {
    auto id = Add(data);
    REQUIRE(id.ok());
    auto reader = OpenImage(*id);
    REQUIRE(reader.ok());
    return (*reader)->manifest();
  }
  std::shared_ptr<ImageReader> Reader(const Manifest& m) { return OpenImage(m.Id()).value(); }

 private:
  explicit HeldImages(std::shared_ptr<HeldBackend> backend)
      : TestImages(std::make_shared<ChunkStore>(backend, kCs, /*cache_bytes=*/0)),
        backend_(std::move(backend)) {}
  std::shared_ptr<HeldBackend> backend_;
};

// A callback's result, and whether it came yet.
struct Outcome {
  std::promise<Status> promise;
  std::future<Status> future = promise.get_future();
  std::function<void(Status)> Callback() {
    return [this](Status s) { promise.set_value(std::move(s)); };
  }
  bool Arrived() { return future.wait_for(std::chrono::seconds(0)) == std::future_status::ready; }
};

}  // namespace

TEST_CASE("image: ReadAsync asks for every chunk at once and waits for none", "[image][async]") {
  HeldImages images;
  std::mt19937_64 rng(21);
  Bytes data = RandomBytes(rng, 8 * kCs + 500);
  std::fill_n(data.data() + 2 * kCs, kCs, 0);  // a hole: never asked for
  Manifest m = images.AddImage(data);
  auto reader = images.Reader(m);

  // Chunks 1 (from its middle) to the short last one, 8.
  uint64_t off = kCs + 100;
  Bytes got(data.size() - off + 300, 0xee);  // 300 bytes past the end read as zeros
  Outcome out;
  reader->ReadAsync(off, MutableByteView(got), out.Callback());
  CHECK_FALSE(out.Arrived());
  CHECK(images.backend().Held() == 7);  // chunks 1, 3, 4, 5, 6, 7 and 8
  images.backend().Release();
  Status s = out.future.get();
  INFO(s.ToString());
  REQUIRE(s.ok());
  Bytes want(data.begin() + static_cast<ptrdiff_t>(off), data.end());
  want.resize(got.size(), 0);
  CHECK(Diff(got, want) == "");
}

TEST_CASE("image: ReadAsync of a missing chunk fails, naming it; a dropped reader is no harm",
          "[image][async]") {
  HeldImages images;
  std::mt19937_64 rng(22);
  Bytes data = RandomBytes(rng, 4 * kCs);
  Manifest m = images.AddImage(data);

  SECTION("missing") {
    REQUIRE(images.backend().Remove(ObjectKind::kChunk, m.chunks[2].Hex()).ok());
    auto reader = images.Reader(m);
    Bytes got(data.size());
    Outcome out;
    reader->ReadAsync(0, MutableByteView(got), out.Callback());
    images.backend().Release();
    Status s = out.future.get();
    CHECK(s.IsIOError());
    CHECK_THAT(s.message(), Catch::Contains("chunk #2"));
    CHECK_THAT(s.message(), Catch::Contains(m.Id().Hex()));
  }
  SECTION("the reader is dropped while its chunks are on their way") {
    Bytes got(data.size());
    Outcome out;
    images.Reader(m)->ReadAsync(0, MutableByteView(got), out.Callback());
    CHECK_FALSE(out.Arrived());
    images.backend().Release();
    REQUIRE(out.future.get().ok());
    CHECK(Diff(got, data) == "");
  }
}

TEST_CASE("local disk: ReadAsync reads its own chunks at once and its parent's without waiting",
          "[disk][async]") {
  HeldImages images;
  TempDir dir;
  auto backend = CreateDiskBackend("local", dir.path(), &images);
  REQUIRE(backend.ok());
  std::mt19937_64 rng(23);
  Bytes image = RandomBytes(rng, 12 * kCs);
  Manifest m = images.AddImage(image);
  DiskRef ref{"i1", "disk"};
  DiskCreateOptions o;
  o.image = m.Id();
  o.size = 16 * kCs;  // 4 chunks past the parent read as zeros
  REQUIRE((*backend)->Create(ref, o).ok());
  auto disk = (*backend)->Open(ref, OpenMode::kReadWrite);
  REQUIRE(disk.ok());
  Disk& d = **disk;

  // The disk owns chunks 2, 3 and 7 (copied up: 7 is written in part).
  images.backend().Hold(false);
  Bytes want = image;
  want.resize(16 * kCs, 0);
  Bytes w = RandomBytes(rng, 2 * kCs);
  REQUIRE(d.Write(2 * kCs, ByteView(w)).ok());
  std::memcpy(want.data() + 2 * kCs, w.data(), w.size());
  Bytes part = RandomBytes(rng, 1000);
  REQUIRE(d.Write(7 * kCs + 10, ByteView(part)).ok());
  std::memcpy(want.data() + 7 * kCs + 10, part.data(), part.size());
  images.backend().Hold(true);

  SECTION("owned chunks only: answered before ReadAsync returns") {
    Bytes got(2 * kCs);
    Outcome out;
    d.ReadAsync(2 * kCs, MutableByteView(got), out.Callback());
    REQUIRE(out.Arrived());
    REQUIRE(out.future.get().ok());
    CHECK(images.backend().Held() == 0);
    CHECK(Diff(got, Bytes(want.begin() + 2 * kCs, want.begin() + 4 * kCs)) == "");
  }
  SECTION("a range over owned chunks, the parent and past the parent's end") {
    uint64_t off = kCs / 2;
    Bytes got(15 * kCs, 0xee);
    Outcome out;
    d.ReadAsync(off, MutableByteView(got), out.Callback());
    CHECK_FALSE(out.Arrived());
    // Chunks 0, 1, 4, 5, 6, 8-11 of the parent; nothing for 12-15.
    CHECK(images.backend().Held() == 9);
    // The owned chunks are in the buffer already.
    CHECK(std::memcmp(got.data() + (2 * kCs - off), want.data() + 2 * kCs, 2 * kCs) == 0);
    images.backend().Release();
    Status s = out.future.get();
    INFO(s.ToString());
    REQUIRE(s.ok());
    CHECK(Diff(got, Bytes(want.begin() + static_cast<ptrdiff_t>(off),
                          want.begin() + static_cast<ptrdiff_t>(off + got.size()))) == "");
    // The synchronous form reads the same bytes.
    images.backend().Hold(false);
    Bytes sync(got.size());
    REQUIRE(d.Read(off, MutableByteView(sync)).ok());
    CHECK(Diff(sync, got) == "");
  }
  SECTION("a parent chunk that fails fails the read, naming the disk") {
    REQUIRE(images.backend().Remove(ObjectKind::kChunk, m.chunks[5].Hex()).ok());
    Bytes got(4 * kCs);
    Outcome out;
    d.ReadAsync(4 * kCs, MutableByteView(got), out.Callback());
    images.backend().Release();
    Status s = out.future.get();
    CHECK(s.IsIOError());
    CHECK_THAT(s.message(), Catch::Contains("i1/disk"));
    CHECK_THAT(s.message(), Catch::Contains("chunk #5"));
  }
  SECTION("past the end is refused at once, and nothing is asked of the parent") {
    Bytes got(kCs);
    Outcome out;
    d.ReadAsync(16 * kCs - 10, MutableByteView(got), out.Callback());
    REQUIRE(out.Arrived());
    CHECK(out.future.get().IsInvalidArgument());
    CHECK(images.backend().Held() == 0);
  }
}
