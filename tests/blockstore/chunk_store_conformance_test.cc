// One conformance suite for every chunk backend, through ChunkBackend and
// ChunkStore. A backend joins by adding one entry to AllBackends() below.
#include <rados/librados.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <thread>

#include "blockstore/chunk_store.h"
#include "blockstore/dir_backend.h"
#include "blockstore/manifest.h"
#include "blockstore/mem_backend.h"
#include "tests/blockstore/test_util.h"

namespace imgfs {
namespace {

using testing::AsBytes;
using testing::RandomBytes;

// What the suite needs from a backend beyond the ChunkBackend interface.
class BackendHarness {
 public:
  virtual ~BackendHarness() = default;  // removes all storage it made
  virtual std::string name() const = 0;
  // A handle onto the harness's storage. Each call returns a handle as
  // another process would open it (dir: a new instance; mem: the same one).
  virtual std::shared_ptr<ChunkBackend> Open() = 0;
  // Replaces the stored bytes of object (kind, id) behind the backend's back,
  // as a failing disk or a careless operator would.
  virtual void Damage(ObjectKind kind, const std::string& id, ByteView bytes) = 0;
  // Leaves what a writer killed in the middle of putting (kind, id) leaves.
  virtual void LeaveStaleTemp(ObjectKind kind, const std::string& id, ByteView partial) = 0;
};

class MemHarness : public BackendHarness {
 public:
  std::string name() const override { return "mem"; }
  std::shared_ptr<ChunkBackend> Open() override { return backend_; }
  void Damage(ObjectKind kind, const std::string& id, ByteView bytes) override {
    backend_->OverwriteForTest(kind, id, bytes);
  }
  void LeaveStaleTemp(ObjectKind, const std::string&, ByteView) override {}  // nothing to leave

 private:
  std::shared_ptr<MemChunkBackend> backend_ = std::make_shared<MemChunkBackend>();
};

// The dir backend as it opens by default (O_TMPFILE + linkat where the file
// system has them), or forced to publish with temp files + rename (the
// fallback for file systems without O_TMPFILE).
class DirHarness : public BackendHarness {
 public:
  explicit DirHarness(bool rename = false)
      : mode_(rename ? DirChunkBackend::PublishMode::kRename
                     : DirChunkBackend::PublishMode::kAuto) {
    REQUIRE(DirChunkBackend::Open(root_, mode_).ok());
  }
  std::string name() const override {
    return mode_ == DirChunkBackend::PublishMode::kRename ? "dir-rename" : "dir";
  }
  std::shared_ptr<ChunkBackend> Open() override {
    if (mode_ == DirChunkBackend::PublishMode::kAuto) {
      auto b = CreateChunkBackend("dir:" + root_);
      REQUIRE(b.status() == Status::OK());
      return *b;
    }
    auto b = DirChunkBackend::Open(root_, mode_);
    REQUIRE(b.status() == Status::OK());
    return *b;
  }
  void Damage(ObjectKind kind, const std::string& id, ByteView bytes) override {
    auto b = DirChunkBackend::Open(root_);
    REQUIRE(b.ok());
    std::string path = (*b)->ObjectPath(kind, id);
    ::chmod(path.c_str(), 0644);
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
    REQUIRE(f.good());
  }
  void LeaveStaleTemp(ObjectKind, const std::string& id, ByteView partial) override {
    std::ofstream f(root_ + "/tmp/" + std::to_string(::getpid()) + ".999." + id + ".tmp",
                    std::ios::binary);
    f.write(reinterpret_cast<const char*>(partial.data()),
            static_cast<std::streamsize>(partial.size()));
    REQUIRE(f.good());
  }

 private:
  testing::TempDir dir_;
  std::string root_ = dir_.path() + "/chunks";
  DirChunkBackend::PublishMode mode_;
};

// The rados backend on the test cluster (tools/test.sh exports IMGFS_CEPH_*),
// in a namespace of its own that is emptied on destruction.
class RadosHarness : public BackendHarness {
 public:
  RadosHarness() {
    pool_ = getenv("IMGFS_CEPH_CHUNK_POOL") ? getenv("IMGFS_CEPH_CHUNK_POOL")
                                            : getenv("IMGFS_CEPH_POOL");
    ceph_.conf_file = getenv("IMGFS_CEPH_CONF");
    ceph_.client_id = getenv("IMGFS_CEPH_ID") ? getenv("IMGFS_CEPH_ID") : "";
    ceph_.keyring = getenv("IMGFS_CEPH_KEYRING") ? getenv("IMGFS_CEPH_KEYRING") : "";
    ns_ = "conformance-" + std::to_string(::getpid()) + "-" + std::to_string(++counter_);
    REQUIRE(rados_create(&cluster_, ceph_.client_id.empty() ? nullptr : ceph_.client_id.c_str()) ==
            0);
    REQUIRE(rados_conf_read_file(cluster_, ceph_.conf_file.c_str()) == 0);
    if (!ceph_.keyring.empty())
      REQUIRE(rados_conf_set(cluster_, "keyring", ceph_.keyring.c_str()) == 0);
    REQUIRE(rados_connect(cluster_) == 0);
    REQUIRE(rados_ioctx_create(cluster_, pool_.c_str(), &io_) == 0);
    rados_ioctx_set_namespace(io_, ns_.c_str());
  }
  ~RadosHarness() override {
    std::vector<std::string> names;
    rados_list_ctx_t ctx;
    if (rados_nobjects_list_open(io_, &ctx) == 0) {
      const char* entry;
      while (rados_nobjects_list_next(ctx, &entry, nullptr, nullptr) == 0)
        names.emplace_back(entry);
      rados_nobjects_list_close(ctx);
    }
    for (const auto& n : names) rados_remove(io_, n.c_str());
    rados_ioctx_destroy(io_);
    rados_shutdown(cluster_);
  }
  std::string name() const override { return "rados"; }
  std::shared_ptr<ChunkBackend> Open() override {
    auto b = CreateChunkBackend("rados:" + pool_ + "/" + ns_, &ceph_);
    REQUIRE(b.status() == Status::OK());
    return *b;
  }
  void Damage(ObjectKind kind, const std::string& id, ByteView bytes) override {
    std::string oid = (kind == ObjectKind::kChunk ? "chunk." : "manifest.") + id;
    REQUIRE(rados_write_full(io_, oid.c_str(), reinterpret_cast<const char*>(bytes.data()),
                             bytes.size()) == 0);
  }
  // A put is one atomic RADOS op: an interrupted one leaves nothing.
  void LeaveStaleTemp(ObjectKind, const std::string&, ByteView) override {}

 private:
  static inline std::atomic<int> counter_{0};
  std::string pool_, ns_;
  CephOptions ceph_;
  rados_t cluster_ = nullptr;
  rados_ioctx_t io_ = nullptr;
};
std::unique_ptr<BackendHarness> MakeRadosHarness() { return std::make_unique<RadosHarness>(); }

using HarnessFactory = std::function<std::unique_ptr<BackendHarness>()>;

const std::vector<std::pair<std::string, HarnessFactory>>& AllBackends() {
  static const auto* backends = [] {
    auto* v = new std::vector<std::pair<std::string, HarnessFactory>>{
        {"mem", [] { return std::make_unique<MemHarness>(); }},
        {"dir", [] { return std::make_unique<DirHarness>(); }},
        {"dir-rename", [] { return std::make_unique<DirHarness>(/*rename=*/true); }},
    };
    if (getenv("IMGFS_CEPH_CONF")) v->push_back({"rados", [] { return MakeRadosHarness(); }});
    return v;
  }();
  return *backends;
}

// Runs the enclosing test case once per backend; `h` is a fresh harness.
#define FOR_EACH_BACKEND(h)                                                       \
  const size_t backend_index_ = GENERATE(range(size_t{0}, AllBackends().size())); \
  auto h = AllBackends()[backend_index_].second();                                \
  INFO("backend: " << h->name())

constexpr uint32_t kChunk = 16 * 1024;

ChunkStore FreshStore(BackendHarness& h, size_t cache = 0) {
  return ChunkStore(h.Open(), kChunk, cache);
}

std::set<std::string> ListAll(ChunkBackend& b, ObjectKind kind) {
  std::set<std::string> ids;
  REQUIRE(b.List(kind, [&](std::string_view id) {
    ids.insert(std::string(id));
    return Status::OK();
  }) == Status::OK());
  return ids;
}

// ReadSharedAsync, waiting for its callback (which may run on another thread).
Result<SharedChunk> ReadSharedAndWait(ChunkStore& store, const ChunkId& id) {
  std::promise<Result<SharedChunk>> done;
  auto result = done.get_future();
  store.ReadSharedAsync(id, [&done](Result<SharedChunk> r) { done.set_value(std::move(r)); });
  return result.get();
}

TEST_CASE("chunk store: put, get, read and exists round trip", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  ChunkStore store(h->Open(), kChunk);
  for (size_t size : {size_t{kChunk}, size_t{1}, size_t{kChunk - 1}, size_t{4096}}) {
    INFO("size " << size);
    Bytes data = RandomBytes(size, size);
    auto put = store.Put(data);
    REQUIRE(put.status() == Status::OK());
    CHECK(put->stored);
    CHECK(put->id == Hash128(data));
    CHECK(put->id.Hex().size() == 32);
    CHECK(*store.Exists(put->id));

    Bytes got;
    REQUIRE(store.Get(put->id, &got) == Status::OK());
    CHECK(got == data);

    Bytes buf(kChunk, 0xAA);
    auto n = store.Read(put->id, buf);
    REQUIRE(n.status() == Status::OK());
    CHECK(*n == size);
    CHECK(std::equal(data.begin(), data.end(), buf.begin()));
    CHECK(std::all_of(buf.begin() + size, buf.end(), [](uint8_t b) { return b == 0; }));

    auto shared = store.ReadShared(put->id);
    REQUIRE(shared.status() == Status::OK());
    CHECK(**shared == data);
    Result<SharedChunk> async = ReadSharedAndWait(store, put->id);
    REQUIRE(async.status() == Status::OK());
    CHECK(**async == data);
    // Cached read gives the same.
    Bytes buf2(kChunk, 0x55);
    REQUIRE(*store.Read(put->id, buf2) == size);
    CHECK(buf2 == buf);
  }
  CHECK(ListAll(store.backend(), ObjectKind::kChunk).size() == 4);
  CHECK(store.Sync() == Status::OK());
  CHECK(store.Sync() == Status::OK());  // nothing new: still OK
}

TEST_CASE("chunk store: an oversized chunk and a small read buffer are refused", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  ChunkStore store(h->Open(), kChunk);
  CHECK(store.Put(RandomBytes(kChunk + 1, 1)).status().IsInvalidArgument());
  CHECK(ListAll(store.backend(), ObjectKind::kChunk).empty());
  auto put = store.Put(RandomBytes(100, 2));
  REQUIRE(put.ok());
  Bytes small(kChunk - 1);
  CHECK(store.Read(put->id, small).status().IsInvalidArgument());
}

TEST_CASE("chunk store: all-zero chunks are holes and never stored", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  ChunkStore store(h->Open(), kChunk);
  for (size_t size : {size_t{kChunk}, size_t{1}, size_t{0}}) {
    auto put = store.Put(Bytes(size, 0));
    REQUIRE(put.status() == Status::OK());
    CHECK(put->id.IsHole());
    CHECK(put->id == ChunkId::Hole());
    CHECK_FALSE(put->stored);
  }
  CHECK(ListAll(store.backend(), ObjectKind::kChunk).empty());
  CHECK(*store.Exists(ChunkId::Hole()));
  Bytes got{1, 2, 3};
  REQUIRE(store.Get(ChunkId::Hole(), &got) == Status::OK());
  CHECK(got.empty());
  Bytes buf(kChunk, 0xff);
  CHECK(*store.Read(ChunkId::Hole(), buf) == 0);
  CHECK(std::all_of(buf.begin(), buf.end(), [](uint8_t b) { return b == 0; }));
  // A chunk with one non-zero byte is data.
  Bytes almost(kChunk, 0);
  almost[kChunk - 1] = 1;
  auto put = store.Put(almost);
  REQUIRE(put.ok());
  CHECK(put->stored);
  CHECK_FALSE(put->id.IsHole());
}

TEST_CASE("chunk store: a dedup hit shares the stored chunk", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  ChunkStore store(h->Open(), kChunk);
  Bytes data = RandomBytes(kChunk, 7);
  auto first = store.Put(data);
  auto second = store.Put(data);
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  CHECK(first->stored);
  CHECK_FALSE(second->stored);
  CHECK(first->id == second->id);
  // Another handle (another process) sees the same chunk and dedups too.
  ChunkStore other(h->Open(), kChunk);
  auto third = other.Put(data);
  REQUIRE(third.ok());
  CHECK_FALSE(third->stored);
  CHECK(ListAll(store.backend(), ObjectKind::kChunk).size() == 1);
}

TEST_CASE("chunk store: a put over a damaged stored chunk repairs it", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  ChunkStore store(h->Open(), kChunk);
  Bytes data = RandomBytes(kChunk, 8);
  auto put = store.Put(data);
  REQUIRE(put.ok());
  std::string hex = put->id.Hex();
  // Same id, bytes that do not hash to it: what a crash before Sync or a bad
  // disk leaves. (A true collision, valid bytes with the same id, cannot be
  // made with XXH3-128 in a test; Put refuses it with Corruption.)
  Bytes bad = data;
  bad[77] ^= 0x10;
  for (const Bytes& damage : {bad, Bytes(data.begin(), data.begin() + 100), Bytes{}}) {
    h->Damage(ObjectKind::kChunk, hex, damage);
    auto again = store.Put(data);
    REQUIRE(again.status() == Status::OK());
    CHECK(again->id == put->id);
    CHECK(again->stored);
    Bytes raw;
    REQUIRE(h->Open()->Get(ObjectKind::kChunk, hex, &raw) == Status::OK());
    CHECK(raw == data);
  }
  CHECK(store.Sync() == Status::OK());
  CHECK(ListAll(store.backend(), ObjectKind::kChunk).size() == 1);
}

TEST_CASE("chunk store: a corrupted chunk is detected, never returned", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  Bytes data = RandomBytes(kChunk, 10);
  ChunkId id;
  {
    ChunkStore store(h->Open(), kChunk);
    auto put = store.Put(data);
    REQUIRE(put.ok());
    id = put->id;
  }
  std::string hex = id.Hex();
  Bytes flipped = data;
  flipped[1234] ^= 0x01;
  Bytes truncated(data.begin(), data.begin() + kChunk / 2);
  Bytes oversized = data;
  oversized.push_back(1);
  for (const Bytes* damage : {&flipped, &truncated, &oversized, &data}) {
    bool intact = damage == &data;
    h->Damage(ObjectKind::kChunk, hex, *damage);
    ChunkStore store = FreshStore(*h, 1 << 20);
    Bytes got;
    Status s = store.Get(id, &got);
    Bytes buf(kChunk, 0x77);
    auto r = store.Read(id, buf);
    auto shared = store.ReadShared(id);
    if (intact) {
      CHECK(s == Status::OK());
      CHECK(got == data);
      CHECK(r.ok());
      REQUIRE(shared.ok());
      CHECK(**shared == data);
      continue;
    }
    CHECK(shared.status().IsCorruption());
    CHECK(shared.status().ToErrno() == EIO);
    CHECK(ReadSharedAndWait(store, id).status().IsCorruption());
    CHECK(s.IsCorruption());
    CHECK_THAT(s.message(), Catch::Contains(hex));
    CHECK(got.empty());
    CHECK(r.status().IsCorruption());
    CHECK_THAT(r.status().message(), Catch::Contains(hex));
    CHECK(r.status().ToErrno() == EIO);
    // Nothing of the bad bytes is left in the buffer.
    CHECK_FALSE(std::equal(truncated.begin(), truncated.end(), buf.begin()));
  }
}

TEST_CASE("chunk store: a missing chunk is NotFound", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  ChunkStore store(h->Open(), kChunk);
  ChunkId id = Hash128(RandomBytes(kChunk, 11));
  Bytes got;
  CHECK(store.Get(id, &got).IsNotFound());
  Bytes buf(kChunk);
  CHECK(store.Read(id, buf).status().IsNotFound());
  CHECK_FALSE(*store.Exists(id));
  CHECK(store.Remove(id).IsNotFound());
}

TEST_CASE("chunk store: a stale temp file is invisible", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  Bytes data = RandomBytes(kChunk, 12);
  ChunkId id = Hash128(data);
  h->LeaveStaleTemp(ObjectKind::kChunk, id.Hex(), ByteView(data).first(kChunk / 3));
  ChunkStore store(h->Open(), kChunk);
  CHECK_FALSE(*store.Exists(id));
  Bytes got;
  CHECK(store.Get(id, &got).IsNotFound());
  CHECK(ListAll(store.backend(), ObjectKind::kChunk).empty());
  auto put = store.Put(data);
  REQUIRE(put.ok());
  CHECK(put->stored);
  REQUIRE(store.Get(id, &got) == Status::OK());
  CHECK(got == data);
  CHECK(ListAll(store.backend(), ObjectKind::kChunk) == std::set<std::string>{id.Hex()});
}

TEST_CASE("chunk store: 8 threads putting overlapping chunks store each one exactly once",
          "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  constexpr int kThreads = 8;
  constexpr int kDistinct = 48;
  std::vector<Bytes> chunks;
  for (int i = 0; i < kDistinct; ++i) chunks.push_back(RandomBytes(4096 + i, 100 + i));
  std::map<ChunkId, int> index;
  for (int i = 0; i < kDistinct; ++i) index[Hash128(chunks[i])] = i;

  std::vector<std::atomic<int>> stored(kDistinct);
  std::vector<std::atomic<int>> hits(kDistinct);
  std::atomic<int> errors{0};
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ChunkStore store(h->Open(), kChunk);  // per thread: as separate processes would
      ready.fetch_add(1);
      while (ready.load() < kThreads) std::this_thread::yield();
      // Every thread puts every chunk, each in its own order.
      for (int k = 0; k < kDistinct; ++k) {
        int i = (k * 7 + t * 13) % kDistinct;
        auto put = store.Put(chunks[i]);
        if (!put.ok() || put->id != Hash128(chunks[i])) {
          errors.fetch_add(1);
          continue;
        }
        (put->stored ? stored : hits)[i].fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(errors.load() == 0);
  for (int i = 0; i < kDistinct; ++i) {
    INFO("chunk " << i);
    CHECK(stored[i].load() == 1);
    CHECK(hits[i].load() == kThreads - 1);
  }
  auto backend = h->Open();
  auto listed = ListAll(*backend, ObjectKind::kChunk);
  CHECK(listed.size() == kDistinct);
  ChunkStore store(backend, kChunk);
  for (const auto& [id, i] : index) {
    CHECK(listed.count(id.Hex()) == 1);
    Bytes got;
    REQUIRE(store.Get(id, &got) == Status::OK());
    CHECK(got == chunks[i]);
  }
}

TEST_CASE("chunk store: removal", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  ChunkStore store(h->Open(), kChunk);
  Bytes a = RandomBytes(kChunk, 20), b = RandomBytes(kChunk, 21);
  ChunkId ia = store.Put(a)->id, ib = store.Put(b)->id;
  Bytes buf(kChunk);
  REQUIRE(store.Read(ia, buf).ok());  // now cached
  REQUIRE(store.Remove(ia) == Status::OK());
  CHECK_FALSE(*store.Exists(ia));
  CHECK(*store.Exists(ib));
  Bytes got;
  CHECK(store.Get(ia, &got).IsNotFound());
  CHECK(store.Read(ia, buf).status().IsNotFound());
  CHECK(store.Remove(ia).IsNotFound());
  CHECK(store.Remove(ChunkId::Hole()).IsInvalidArgument());
  std::set<ChunkId> ids;
  REQUIRE(store.ListIds([&](const ChunkId& id) {
    ids.insert(id);
    return Status::OK();
  }) == Status::OK());
  CHECK(ids == std::set<ChunkId>{ib});
  // Putting it again stores it again.
  auto put = store.Put(a);
  REQUIRE(put.ok());
  CHECK(put->stored);
  REQUIRE(store.Get(ia, &got) == Status::OK());
  CHECK(got == a);
}

TEST_CASE("chunk store: the read cache holds verified chunks up to its size", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  ChunkStore store(h->Open(), kChunk, 4 * kChunk);  // room for 4 chunks
  std::vector<Bytes> data;
  std::vector<ChunkId> ids;
  for (int i = 0; i < 6; ++i) {
    data.push_back(RandomBytes(kChunk, 300 + i));
    ids.push_back(store.Put(data.back())->id);
  }
  Bytes buf(kChunk);
  for (int i = 0; i < 6; ++i) REQUIRE(*store.Read(ids[i], buf) == kChunk);
  // Damage every stored chunk: cached ones still read right (they were
  // verified), evicted ones are detected; none reads wrong.
  for (int i = 0; i < 6; ++i) h->Damage(ObjectKind::kChunk, ids[i].Hex(), RandomBytes(kChunk, 1));
  int cached = 0;
  for (int i = 5; i >= 0; --i) {
    auto r = store.Read(ids[i], buf);
    if (r.ok()) {
      ++cached;
      CHECK(buf == data[i]);
    } else {
      CHECK(r.status().IsCorruption());
    }
  }
  CHECK(cached == 4);  // the 4 most recently used
  // ReadShared serves the same cache, without copying.
  for (int i = 2; i < 6; ++i) {
    auto shared = store.ReadShared(ids[i]);
    REQUIRE(shared.ok());
    CHECK(**shared == data[i]);
  }
  store.DropFromCache(ids[5]);
  CHECK(store.Read(ids[5], buf).status().IsCorruption());
  CHECK(store.ReadShared(ids[5]).status().IsCorruption());
}

TEST_CASE("chunk store: a disabled cache re-reads and re-verifies every time", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  ChunkStore store(h->Open(), kChunk, 0);
  CHECK(store.cache_bytes() == 0);
  Bytes data = RandomBytes(kChunk, 400);
  ChunkId id = store.Put(data)->id;
  auto first = store.ReadShared(id);
  REQUIRE(first.ok());
  CHECK(**first == data);
  h->Damage(ObjectKind::kChunk, id.Hex(), RandomBytes(kChunk, 401));
  CHECK(store.ReadShared(id).status().IsCorruption());
  CHECK(**first == data);  // what was handed out stays intact
}

TEST_CASE("chunk store: the default cache size is a bounded share of RAM", "[chunk_store]") {
  size_t bytes = DefaultChunkCacheBytes();
  CHECK(bytes >= size_t{64} << 20);
  CHECK(bytes <= size_t{1} << 30);
  ChunkStore store(std::make_shared<MemChunkBackend>(), kChunk);
  CHECK(store.cache_bytes() == bytes);
}

TEST_CASE("chunk store: ListIds visits every chunk and stops on error", "[chunk_store]") {
  FOR_EACH_BACKEND(h);
  ChunkStore store(h->Open(), kChunk);
  std::set<ChunkId> put_ids;
  for (int i = 0; i < 300; ++i) put_ids.insert(store.Put(RandomBytes(64, 1000 + i))->id);
  std::set<ChunkId> seen;
  REQUIRE(store.ListIds([&](const ChunkId& id) {
    seen.insert(id);
    return Status::OK();
  }) == Status::OK());
  CHECK(seen == put_ids);
  int calls = 0;
  Status s = store.ListIds([&](const ChunkId&) {
    ++calls;
    return calls == 5 ? Status::Busy("stop") : Status::OK();
  });
  CHECK(s.IsBusy());
  CHECK(calls == 5);
}

TEST_CASE("chunk backend: objects", "[chunk_backend]") {
  FOR_EACH_BACKEND(h);
  auto b = h->Open();
  std::string id(32, 'a');
  Bytes data = RandomBytes(1000, 30);
  REQUIRE(b->PutIfAbsent(ObjectKind::kChunk, id, data) == Status::OK());
  CHECK(b->PutIfAbsent(ObjectKind::kChunk, id, RandomBytes(10, 31)).IsAlreadyExists());
  Bytes got;
  REQUIRE(b->Get(ObjectKind::kChunk, id, &got) == Status::OK());
  CHECK(got == data);  // the second put changed nothing
  // Kinds are separate namespaces.
  CHECK_FALSE(*b->Exists(ObjectKind::kManifest, id));
  CHECK(b->Get(ObjectKind::kManifest, id, &got).IsNotFound());
  REQUIRE(b->PutIfAbsent(ObjectKind::kManifest, id, AsBytes("manifest")) == Status::OK());
  CHECK(ListAll(*b, ObjectKind::kManifest) == std::set<std::string>{id});
  CHECK(ListAll(*b, ObjectKind::kChunk) == std::set<std::string>{id});
  // Read needs a large enough buffer.
  Bytes small(999), exact(1000);
  CHECK(b->Read(ObjectKind::kChunk, id, small).status().IsInvalidArgument());
  REQUIRE(*b->Read(ObjectKind::kChunk, id, exact) == 1000);
  CHECK(exact == data);
  // Empty objects are fine.
  std::string empty_id(32, 'b');
  REQUIRE(b->PutIfAbsent(ObjectKind::kChunk, empty_id, {}) == Status::OK());
  REQUIRE(b->Get(ObjectKind::kChunk, empty_id, &got) == Status::OK());
  CHECK(got.empty());
  // Async forms call back exactly once with the result.
  std::atomic<int> calls{0};
  b->ReadAsync(ObjectKind::kChunk, id, exact, [&](Result<size_t> r) {
    ++calls;
    CHECK(r.ok());
  });
  b->PutIfAbsentAsync(ObjectKind::kChunk, id, data, [&](Status s) {
    ++calls;
    CHECK(s.IsAlreadyExists());
  });
  // Async backends may call back on another thread; wait for both.
  for (int i = 0; i < 10000 && calls < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(calls == 2);
  REQUIRE(b->Remove(ObjectKind::kChunk, id) == Status::OK());
  CHECK(b->Remove(ObjectKind::kChunk, id).IsNotFound());
  CHECK(*b->Exists(ObjectKind::kManifest, id));
}

TEST_CASE("chunk backend: malformed object ids are refused", "[chunk_backend]") {
  FOR_EACH_BACKEND(h);
  auto b = h->Open();
  for (std::string bad : std::vector<std::string>{
           "", "a", "../../etc/passwd", "ABCDEF0123456789ABCDEF0123456789",
           "0123456789abcdef0123456789abcdeg", "ab/cd", std::string(65, 'a')}) {
    INFO("id '" << bad << "'");
    CHECK(b->PutIfAbsent(ObjectKind::kChunk, bad, AsBytes("x")).IsInvalidArgument());
    Bytes got;
    CHECK(b->Get(ObjectKind::kChunk, bad, &got).IsInvalidArgument());
    CHECK(b->Exists(ObjectKind::kChunk, bad).status().IsInvalidArgument());
    CHECK(b->Remove(ObjectKind::kChunk, bad).IsInvalidArgument());
  }
  CHECK(ListAll(*b, ObjectKind::kChunk).empty());
}

TEST_CASE("chunk backend: records", "[chunk_backend][records]") {
  FOR_EACH_BACKEND(h);
  auto b = h->Open();
  std::string v;
  CHECK(b->GetRecord("names/ubuntu", &v).IsNotFound());
  REQUIRE(b->PutRecord("names/ubuntu", "id1", RecordCondition::Any()) == Status::OK());
  REQUIRE(b->GetRecord("names/ubuntu", &v) == Status::OK());
  CHECK(v == "id1");
  REQUIRE(b->PutRecord("names/ubuntu", "id2", RecordCondition::Any()) == Status::OK());
  REQUIRE(b->GetRecord("names/ubuntu", &v) == Status::OK());
  CHECK(v == "id2");
  // Another handle sees it.
  REQUIRE(h->Open()->GetRecord("names/ubuntu", &v) == Status::OK());
  CHECK(v == "id2");
  // Values may be empty or large, with any bytes.
  std::string big(100000, 'x');
  big[5] = '\0';
  REQUIRE(b->PutRecord("images/abc", big, RecordCondition::Any()) == Status::OK());
  REQUIRE(b->GetRecord("images/abc", &v) == Status::OK());
  CHECK(v == big);
  REQUIRE(b->PutRecord("images/empty", "", RecordCondition::Any()) == Status::OK());
  REQUIRE(b->GetRecord("images/empty", &v) == Status::OK());
  CHECK(v.empty());
  REQUIRE(b->PutRecord("toplevel", "t", RecordCondition::Any()) == Status::OK());
  REQUIRE(b->PutRecord("names/debian 12.1 (bookworm)", "id3", RecordCondition::Any()) ==
          Status::OK());

  auto list = [&](std::string_view prefix) {
    std::set<std::string> keys;
    REQUIRE(b->ListRecords(prefix, [&](std::string_view k) {
      keys.insert(std::string(k));
      return Status::OK();
    }) == Status::OK());
    return keys;
  };
  CHECK(list("names/") == std::set<std::string>{"names/ubuntu", "names/debian 12.1 (bookworm)"});
  CHECK(list("names/u") == std::set<std::string>{"names/ubuntu"});
  CHECK(list("images/") == std::set<std::string>{"images/abc", "images/empty"});
  CHECK(list("nothing/") == std::set<std::string>{});
  CHECK(list("").size() == 5);

  REQUIRE(b->RemoveRecord("names/ubuntu", RecordCondition::Any()) == Status::OK());
  CHECK(b->GetRecord("names/ubuntu", &v).IsNotFound());
  CHECK(b->RemoveRecord("names/ubuntu", RecordCondition::Any()).IsNotFound());
  CHECK(list("names/") == std::set<std::string>{"names/debian 12.1 (bookworm)"});
}

TEST_CASE("chunk backend: record compare-and-swap", "[chunk_backend][records]") {
  FOR_EACH_BACKEND(h);
  auto b = h->Open();
  std::string v;
  REQUIRE(b->PutRecord("names/a", "1", RecordCondition::Absent()) == Status::OK());
  CHECK(b->PutRecord("names/a", "2", RecordCondition::Absent()).IsAlreadyExists());
  REQUIRE(b->GetRecord("names/a", &v) == Status::OK());
  CHECK(v == "1");
  CHECK(b->PutRecord("names/a", "2", RecordCondition::Equals("0")).IsBusy());
  REQUIRE(b->GetRecord("names/a", &v) == Status::OK());
  CHECK(v == "1");
  REQUIRE(b->PutRecord("names/a", "2", RecordCondition::Equals("1")) == Status::OK());
  REQUIRE(b->GetRecord("names/a", &v) == Status::OK());
  CHECK(v == "2");
  CHECK(b->PutRecord("names/missing", "x", RecordCondition::Equals("")).IsBusy());
  CHECK(b->GetRecord("names/missing", &v).IsNotFound());

  CHECK(b->RemoveRecord("names/a", RecordCondition::Equals("1")).IsBusy());
  REQUIRE(b->GetRecord("names/a", &v) == Status::OK());
  CHECK(b->RemoveRecord("names/a", RecordCondition::Absent()).IsInvalidArgument());
  REQUIRE(b->RemoveRecord("names/a", RecordCondition::Equals("2")) == Status::OK());
  CHECK(b->GetRecord("names/a", &v).IsNotFound());
  CHECK(b->RemoveRecord("names/a", RecordCondition::Equals("2")).IsNotFound());
}

TEST_CASE("chunk backend: malformed record keys are refused", "[chunk_backend][records]") {
  FOR_EACH_BACKEND(h);
  auto b = h->Open();
  for (std::string bad :
       std::vector<std::string>{"", "/", "/names/a", "names/", "names//a", "..", "names/..",
                                "../outside", "names/a/../../b", ".", "names/.", "a\nb",
                                std::string("a\0b", 3), "names/" + std::string(129, 'x')}) {
    INFO("key '" << bad << "'");
    std::string v;
    CHECK(b->GetRecord(bad, &v).IsInvalidArgument());
    CHECK(b->PutRecord(bad, "v", RecordCondition::Any()).IsInvalidArgument());
    CHECK(b->RemoveRecord(bad, RecordCondition::Any()).IsInvalidArgument());
  }
  int n = 0;
  REQUIRE(b->ListRecords("", [&](std::string_view) {
    ++n;
    return Status::OK();
  }) == Status::OK());
  CHECK(n == 0);
}

TEST_CASE("chunk backend: concurrent compare-and-swap loses no update",
          "[chunk_backend][records]") {
  FOR_EACH_BACKEND(h);
  constexpr int kThreads = 8;
  constexpr int kIncrements = 25;
  REQUIRE(h->Open()->PutRecord("counter", "0", RecordCondition::Absent()) == Status::OK());
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      auto b = h->Open();  // separate handles: separate processes for dir
      for (int i = 0; i < kIncrements; ++i) {
        while (true) {
          std::string v;
          if (!b->GetRecord("counter", &v).ok()) {
            errors.fetch_add(1);
            return;
          }
          Status s =
              b->PutRecord("counter", std::to_string(std::stoi(v) + 1), RecordCondition::Equals(v));
          if (s.ok()) break;
          if (!s.IsBusy()) {
            errors.fetch_add(1);
            return;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(errors.load() == 0);
  std::string v;
  REQUIRE(h->Open()->GetRecord("counter", &v) == Status::OK());
  CHECK(v == std::to_string(kThreads * kIncrements));
}

TEST_CASE("chunk backend: racing Absent puts have exactly one winner", "[chunk_backend][records]") {
  FOR_EACH_BACKEND(h);
  constexpr int kThreads = 8;
  for (int round = 0; round < 20; ++round) {
    std::string key = "names/race" + std::to_string(round);
    std::atomic<int> won{0}, lost{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        Status s = h->Open()->PutRecord(key, std::to_string(t), RecordCondition::Absent());
        (s.ok() ? won : lost).fetch_add(s.ok() || s.IsAlreadyExists() ? 1 : 1000);
      });
    }
    for (auto& t : threads) t.join();
    CHECK(won.load() == 1);
    CHECK(lost.load() == kThreads - 1);
  }
}

TEST_CASE("chunk backend: space", "[chunk_backend]") {
  FOR_EACH_BACKEND(h);
  auto space = h->Open()->Space();
  REQUIRE(space.status() == Status::OK());
  CHECK(space->capacity_bytes > 0);
  CHECK(space->available_bytes <= space->capacity_bytes);
}

TEST_CASE("chunk backend: manifests are stored, verified and loaded", "[chunk_backend][manifest]") {
  FOR_EACH_BACKEND(h);
  auto b = h->Open();
  ChunkStore store(b, kChunk);
  Manifest m;
  m.chunk_size = kChunk;
  m.size = 3 * uint64_t{kChunk} + 5;
  m.chunks = {store.Put(RandomBytes(kChunk, 40))->id, ChunkId::Hole(),
              store.Put(RandomBytes(kChunk, 41))->id, store.Put(RandomBytes(5, 42))->id};
  auto id = PutManifest(*b, m);
  REQUIRE(id.status() == Status::OK());
  CHECK(*id == m.Id());
  auto again = PutManifest(*h->Open(), m);  // idempotent
  REQUIRE(again.ok());
  CHECK(*again == *id);
  auto loaded = GetManifest(*h->Open(), *id);
  REQUIRE(loaded.status() == Status::OK());
  CHECK(loaded->size == m.size);
  CHECK(loaded->chunk_size == m.chunk_size);
  CHECK(loaded->chunks == m.chunks);
  CHECK(ListAll(*b, ObjectKind::kManifest) == std::set<std::string>{id->Hex()});

  // Damaged: Corruption naming the image.
  Bytes enc = m.Encode();
  enc[enc.size() / 2] ^= 0x40;
  h->Damage(ObjectKind::kManifest, id->Hex(), enc);
  auto bad = GetManifest(*h->Open(), *id);
  CHECK(bad.status().IsCorruption());
  CHECK_THAT(bad.status().message(), Catch::Contains(id->Hex()));
  // Missing: NotFound.
  CHECK(GetManifest(*b, Hash128(AsBytes("nothing"))).status().IsNotFound());
  // An invalid manifest is refused before anything is written.
  Manifest wrong = m;
  wrong.chunks.pop_back();
  CHECK(PutManifest(*b, wrong).status().IsInvalidArgument());
  CHECK(ListAll(*b, ObjectKind::kManifest).size() == 1);
}

}  // namespace
}  // namespace imgfs
