// Reads with a bounded number in flight, used in order (blockstore/read_ahead.h)
// and the chunk store calls built on them: ForEachManifest (gc's mark, fsck)
// and RecheckEach (fsck's chunk re-hashes).
#include <catch2/catch.hpp>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "blockstore/manifest.h"
#include "blockstore/mem_backend.h"
#include "blockstore/read_ahead.h"

using namespace imgfs;

namespace {

// Counts the reads in flight. The first `gate` reads wait until `gate` are in
// flight at once (so a test passes only if that many run together), the rest
// go straight through.
class InFlight {
 public:
  explicit InFlight(size_t gate) : gate_(gate) {}
  // Sets the gate and counts afresh (after a test's setup, whose own reads
  // must not wait at the gate).
  void Reset(size_t gate) {
    std::lock_guard lock(mu_);
    gate_ = gate;
    now_ = max_ = started_ = 0;
    opened_ = false;
  }
  void Enter() {
    std::unique_lock lock(mu_);
    ++now_;
    max_ = std::max(max_, now_);
    if (started_++ < gate_) {
      cv_.notify_all();
      cv_.wait(lock, [&] { return now_ >= gate_ || opened_; });
      opened_ = true;
      cv_.notify_all();
    }
  }
  void Leave() {
    std::lock_guard lock(mu_);
    --now_;
  }
  size_t max() {
    std::lock_guard lock(mu_);
    return max_;
  }
  size_t started() {
    std::lock_guard lock(mu_);
    return started_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  size_t gate_;
  size_t now_ = 0, max_ = 0, started_ = 0;
  bool opened_ = false;
};

// A memory backend whose object reads (Get) are counted by an InFlight.
class CountingBackend : public MemChunkBackend {
 public:
  CountingBackend() : in_flight(0) {}
  Status Get(ObjectKind kind, std::string_view id, Bytes* out) override {
    in_flight.Enter();
    Status s = MemChunkBackend::Get(kind, id, out);
    in_flight.Leave();
    return s;
  }
  InFlight in_flight;
};

// Replaces object `id` of `kind` with other bytes under the same name.
void Damage(ChunkBackend& b, ObjectKind kind, const Id128& id) {
  REQUIRE(b.Remove(kind, id.Hex()).ok());
  Bytes junk(100, 0x42);
  REQUIRE(b.PutIfAbsent(kind, id.Hex(), junk).ok());
}

}  // namespace

TEST_CASE("ReadAhead uses every result in order, with the window in flight") {
  constexpr size_t kN = 200, kWindow = 8;
  InFlight in_flight(kWindow);
  std::vector<size_t> used;
  Status s = ReadAhead<size_t>(
      kN, kWindow,
      [&](size_t i) {
        in_flight.Enter();
        in_flight.Leave();
        return i * i;
      },
      [&](size_t i, size_t v) {
        CHECK(v == i * i);
        used.push_back(i);
        return Status::OK();
      });
  CHECK(s.ok());
  REQUIRE(used.size() == kN);
  for (size_t i = 0; i < kN; ++i) CHECK(used[i] == i);
  CHECK(in_flight.max() == kWindow);  // all of the window at once, never more
}

TEST_CASE("ReadAhead: nothing to read, and a window of 0 or larger than the reads") {
  int calls = 0;
  auto read = [&](size_t i) { return static_cast<int>(i); };
  auto use = [&](size_t i, int v) {
    CHECK(static_cast<size_t>(v) == i);
    ++calls;
    return Status::OK();
  };
  CHECK(ReadAhead<int>(0, 4, read, use).ok());
  CHECK(calls == 0);
  CHECK(ReadAhead<int>(5, 0, read, use).ok());  // one at a time
  CHECK(calls == 5);
  CHECK(ReadAhead<int>(3, 1000, read, use).ok());  // three threads, not a thousand
  CHECK(calls == 8);
}

TEST_CASE("ReadAhead stops at the first error use returns") {
  constexpr size_t kN = 1000, kWindow = 4;
  InFlight in_flight(0);
  size_t used = 0;
  Status s = ReadAhead<size_t>(
      kN, kWindow,
      [&](size_t i) {
        in_flight.Enter();
        in_flight.Leave();
        return i;
      },
      [&](size_t i, size_t) {
        ++used;
        if (i == 10) return Status::Corruption("item 10 is bad");
        return Status::OK();
      });
  CHECK(s.IsCorruption());
  CHECK(s.message().find("item 10 is bad") != std::string::npos);
  CHECK(used == 11);
  // Reads beyond the window past the failed one never start.
  CHECK(in_flight.started() <= 11 + kWindow);
}

TEST_CASE("ForEachManifest: every manifest in order, a missing or damaged one as its result") {
  constexpr size_t kWindow = 4;
  auto backend = std::make_shared<CountingBackend>();
  ChunkStore store(backend, 4096, 0);
  std::vector<ImageId> ids;
  std::vector<uint64_t> sizes;
  for (uint64_t n = 1; n <= 12; ++n) {
    Manifest m;
    m.chunk_size = 4096;
    m.size = n * 4096;
    m.chunks.assign(n, ChunkId::Hole());
    auto id = PutManifest(*backend, m);
    REQUIRE(id.ok());
    ids.push_back(*id);
    sizes.push_back(m.size);
  }
  Damage(*backend, ObjectKind::kManifest, ids[7]);
  Manifest absent;
  absent.chunk_size = 4096;
  absent.size = 99 * 4096;
  absent.chunks.assign(99, ChunkId::Hole());
  ids.insert(ids.begin() + 3, absent.Id());  // never stored
  sizes.insert(sizes.begin() + 3, 0);

  backend->in_flight.Reset(kWindow);
  std::vector<std::string> seen;
  Status s = store.ForEachManifest(ids, kWindow, [&](size_t i, Result<Manifest> m) {
    if (m.ok()) {
      CHECK(m->size == sizes[i]);
      seen.push_back("ok");
    } else {
      seen.push_back(m.status().IsNotFound()     ? "missing"
                     : m.status().IsCorruption() ? "damaged"
                                                 : m.status().ToString());
    }
    return Status::OK();
  });
  CHECK(s.ok());
  CHECK(seen == std::vector<std::string>{"ok", "ok", "ok", "missing", "ok", "ok", "ok", "ok",
                                         "damaged", "ok", "ok", "ok", "ok"});
  CHECK(backend->in_flight.max() == kWindow);

  // An error from fn is the result, and nothing after it is used.
  size_t used = 0;
  s = store.ForEachManifest(ids, kWindow, [&](size_t, Result<Manifest> m) -> Status {
    ++used;
    return m.status();
  });
  CHECK(s.IsNotFound());
  CHECK(used == 4);
}

TEST_CASE("RecheckEach: every chunk in order; missing and damaged ones named") {
  constexpr size_t kWindow = 3;
  auto backend = std::make_shared<CountingBackend>();
  ChunkStore store(backend, 4096, 1 << 20);
  std::vector<ChunkId> ids;
  for (int n = 0; n < 10; ++n) {
    Bytes data(4096, static_cast<uint8_t>(n + 1));
    auto put = store.Put(data);
    REQUIRE(put.ok());
    ids.push_back(put->id);
  }
  Bytes cached;
  REQUIRE(store.Get(ids[2], &cached).ok());  // a recheck reads what is stored, not the cache
  Damage(*backend, ObjectKind::kChunk, ids[2]);
  REQUIRE(backend->Remove(ObjectKind::kChunk, ids[6].Hex()).ok());
  ids.push_back(ChunkId::Hole());  // nothing to read

  backend->in_flight.Reset(kWindow);
  std::vector<std::string> seen;
  Status s = store.RecheckEach(ids, kWindow, [&](size_t, Status r) {
    seen.push_back(r.ok() ? "ok" : r.IsNotFound() ? "missing" : r.IsCorruption() ? "damaged" : r.ToString());
    return Status::OK();
  });
  CHECK(s.ok());
  CHECK(seen == std::vector<std::string>{"ok", "ok", "damaged", "ok", "ok", "ok", "missing",
                                         "ok", "ok", "ok", "ok"});
  CHECK(backend->in_flight.max() == kWindow);
}
