// The rados chunk backend on the real test cluster (IMGFS_CEPH_CONF etc., set
// by tools/test.sh): what the conformance suite cannot show — races between
// writers resolved by RADOS, many asynchronous operations at once, and the
// errors an operator sees for a bad pool or an unreachable cluster. Each run
// works in its own namespace of the pool, so runs do not see each other.
#include "blockstore/rados_backend.h"

#include <rados/librados.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "blockstore/chunk_store.h"
#include "blockstore/countdown.h"
#include "blockstore/image.h"
#include "blockstore/manifest.h"

namespace imgfs {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

bool HaveCluster() {
  if (!Env("IMGFS_CEPH_CONF").empty()) return true;
  WARN("IMGFS_CEPH_CONF is not set: rados backend tests skipped (tools/test.sh sets it)");
  return false;
}

CephOptions TestCeph() {
  CephOptions o;
  o.conf_file = Env("IMGFS_CEPH_CONF");
  o.client_id = Env("IMGFS_CEPH_ID");
  o.keyring = Env("IMGFS_CEPH_KEYRING");
  return o;
}

std::string TestPool() {
  std::string pool = Env("IMGFS_CEPH_CHUNK_POOL");
  return pool.empty() ? Env("IMGFS_CEPH_POOL") : pool;
}

std::string UniqueNamespace() {
  std::random_device rd;
  return "test-" + std::to_string(getpid()) + "-" + std::to_string(rd());
}

std::shared_ptr<ChunkBackend> Open(const std::string& ns = UniqueNamespace()) {
  auto b = CreateRadosBackend(TestPool() + "/" + ns, TestCeph());
  REQUIRE(b.ok());
  return *b;
}

// A valid object id (32 hex digits) made from `i`.
std::string HexId(int i) {
  char buf[33];
  std::snprintf(buf, sizeof(buf), "%032x", i);
  return buf;
}

Bytes Pattern(size_t n, uint32_t seed) {
  Bytes b(n);
  std::mt19937 rng(seed);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

TEST_CASE("rados: racing PutIfAbsent of one object: exactly one writer wins", "[rados]") {
  if (!HaveCluster()) return;
  auto b = Open();
  Bytes data = Pattern(64 * 1024, 1);
  std::atomic<int> won{0}, lost{0}, other{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      Status s = b->PutIfAbsent(ObjectKind::kChunk, "00112233445566778899aabbccddeeff", data);
      if (s.ok()) {
        ++won;
      } else if (s.IsAlreadyExists()) {
        ++lost;
      } else {
        ++other;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(won == 1);
  CHECK(lost == 7);
  CHECK(other == 0);
  Bytes got;
  REQUIRE(b->Get(ObjectKind::kChunk, "00112233445566778899aabbccddeeff", &got).ok());
  CHECK(got == data);
}

TEST_CASE("rados: many asynchronous puts and reads at once", "[rados]") {
  if (!HaveCluster()) return;
  auto b = Open();
  constexpr int kN = 300;
  std::vector<Bytes> data;
  std::vector<std::string> ids;
  for (int i = 0; i < kN; ++i) {
    data.push_back(Pattern(16 * 1024 + i, 100 + i));
    ids.push_back(HexId(i));
  }
  std::atomic<int> put_failures{0};
  Countdown puts(kN);
  for (int i = 0; i < kN; ++i) {
    b->PutIfAbsentAsync(ObjectKind::kChunk, ids[i], data[i], [&](Status s) {
      if (!s.ok()) ++put_failures;
      puts.CountDown();
    });
  }
  puts.Wait();
  CHECK(put_failures == 0);

  std::vector<Bytes> bufs(kN, Bytes(64 * 1024));
  std::vector<Result<size_t>> results(kN, Status::IOError("not done"));
  Countdown reads(kN + 1);
  for (int i = 0; i < kN; ++i) {
    b->ReadAsync(ObjectKind::kChunk, ids[i], bufs[i], [&, i](Result<size_t> r) {
      results[i] = std::move(r);
      reads.CountDown();
    });
  }
  Bytes missing_buf(1024);
  Result<size_t> missing = Status::OK();
  b->ReadAsync(ObjectKind::kChunk, "ffffffffffffffffffffffffffffffff", missing_buf,
               [&](Result<size_t> r) {
                 missing = std::move(r);
                 reads.CountDown();
               });
  reads.Wait();
  for (int i = 0; i < kN; ++i) {
    REQUIRE(results[i].ok());
    REQUIRE(*results[i] == data[i].size());
    CHECK(std::equal(data[i].begin(), data[i].end(), bufs[i].begin()));
  }
  CHECK(missing.status().IsNotFound());

  // A second asynchronous put of an existing object reports AlreadyExists.
  Countdown again(1);
  Status again_status;
  b->PutIfAbsentAsync(ObjectKind::kChunk, ids[0], data[0], [&](Status s) {
    again_status = s;
    again.CountDown();
  });
  again.Wait();
  CHECK(again_status.IsAlreadyExists());
}

TEST_CASE("rados: compare-and-swap updates of a record lose nothing under contention", "[rados]") {
  if (!HaveCluster()) return;
  std::string ns = UniqueNamespace();
  constexpr int kThreads = 6, kIncrements = 20;
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      auto b = Open(ns);  // one connection per "host"
      for (int i = 0; i < kIncrements;) {
        std::string cur;
        Status s = b->GetRecord("counters/c", &cur);
        if (s.IsNotFound()) {
          s = b->PutRecord("counters/c", "1", RecordCondition::Absent());
          if (s.ok()) {
            ++i;
          } else if (!s.IsAlreadyExists()) {
            ++errors;
            return;
          }
          continue;
        }
        if (!s.ok()) {
          ++errors;
          return;
        }
        s = b->PutRecord("counters/c", std::to_string(std::stoi(cur) + 1),
                         RecordCondition::Equals(cur));
        if (s.ok()) {
          ++i;
        } else if (!s.IsBusy()) {
          ++errors;
          return;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(errors == 0);
  auto b = Open(ns);
  std::string final_value;
  REQUIRE(b->GetRecord("counters/c", &final_value).ok());
  CHECK(final_value == std::to_string(kThreads * kIncrements));
}

TEST_CASE("rados: records are shared by every connection to the same pool and namespace",
          "[rados]") {
  if (!HaveCluster()) return;
  std::string ns = UniqueNamespace();
  auto host1 = Open(ns);
  auto host2 = Open(ns);
  auto elsewhere = Open();
  REQUIRE(host1->PutRecord("names/ubuntu", "abc", RecordCondition::Absent()).ok());
  std::string v;
  REQUIRE(host2->GetRecord("names/ubuntu", &v).ok());
  CHECK(v == "abc");
  CHECK(host2->PutRecord("names/ubuntu", "def", RecordCondition::Absent()).IsAlreadyExists());
  CHECK(host2->PutRecord("names/ubuntu", "def", RecordCondition::Equals("xyz")).IsBusy());
  CHECK(elsewhere->GetRecord("names/ubuntu", &v).IsNotFound());
  REQUIRE(host2->PutRecord("names/ubuntu", "", RecordCondition::Equals("abc")).ok());
  REQUIRE(host1->GetRecord("names/ubuntu", &v).ok());
  CHECK(v.empty());
  REQUIRE(host1->PutRecord("images/1", "{}", RecordCondition::Any()).ok());
  std::set<std::string> keys;
  REQUIRE(host2
              ->ListRecords("names/",
                            [&](std::string_view k) {
                              keys.emplace(k);
                              return Status::OK();
                            })
              .ok());
  CHECK(keys == std::set<std::string>{"names/ubuntu"});
  CHECK(host2->RemoveRecord("names/ubuntu", RecordCondition::Equals("zzz")).IsBusy());
  REQUIRE(host2->RemoveRecord("names/ubuntu", RecordCondition::Equals("")).ok());
  CHECK(host1->RemoveRecord("names/ubuntu", RecordCondition::Equals("")).IsNotFound());
  CHECK(host1->RemoveRecord("names/ubuntu", RecordCondition::Any()).IsNotFound());
  CHECK(elsewhere->RemoveRecord("images/1", RecordCondition::Any()).IsNotFound());
}

TEST_CASE("rados: List names only the objects of the kind asked for", "[rados]") {
  if (!HaveCluster()) return;
  auto b = Open();
  Bytes one = Pattern(100, 7);
  REQUIRE(b->PutIfAbsent(ObjectKind::kChunk, "c1c1", one).ok());
  REQUIRE(b->PutIfAbsent(ObjectKind::kChunk, "c2c2", one).ok());
  REQUIRE(b->PutIfAbsent(ObjectKind::kManifest, "abab", one).ok());
  REQUIRE(b->PutRecord("images/m1", "{}", RecordCondition::Absent()).ok());
  std::set<std::string> chunks, manifests;
  REQUIRE(b->List(ObjectKind::kChunk, [&](std::string_view id) {
             chunks.emplace(id);
             return Status::OK();
           }).ok());
  REQUIRE(b->List(ObjectKind::kManifest, [&](std::string_view id) {
             manifests.emplace(id);
             return Status::OK();
           }).ok());
  CHECK(chunks == std::set<std::string>{"c1c1", "c2c2"});
  CHECK(manifests == std::set<std::string>{"abab"});
  Bytes small(10);
  CHECK(b->Read(ObjectKind::kChunk, "c1c1", small).status().IsInvalidArgument());
  CHECK(b->Exists(ObjectKind::kChunk, "c1c1").value());
  REQUIRE(b->Remove(ObjectKind::kChunk, "c1c1").ok());
  CHECK_FALSE(b->Exists(ObjectKind::kChunk, "c1c1").value());
  CHECK(b->Remove(ObjectKind::kChunk, "c1c1").IsNotFound());
  // Larger than one RADOS write op may be: refused, nothing written.
  Bytes huge(91u << 20, 1);
  CHECK(b->PutIfAbsent(ObjectKind::kManifest, "cdcd", huge).code() == Code::kNotSupported);
  CHECK_FALSE(b->Exists(ObjectKind::kManifest, "cdcd").value());
  auto space = b->Space();
  REQUIRE(space.ok());
  CHECK(space->capacity_bytes > 0);
  CHECK(space->available_bytes <= space->capacity_bytes);
  CHECK(b->Describe().starts_with("rados:" + TestPool() + "/test-"));
}

TEST_CASE("rados: a bad pool spec or a missing pool is a clear error", "[rados]") {
  if (!HaveCluster()) return;
  CHECK(CreateRadosBackend("", TestCeph()).status().IsInvalidArgument());
  CHECK(CreateRadosBackend("pool/", TestCeph()).status().IsInvalidArgument());
  CHECK(CreateRadosBackend("pool/a/b", TestCeph()).status().IsInvalidArgument());
  auto missing = CreateRadosBackend("imgfs-no-such-pool", TestCeph());
  CHECK(missing.status().IsNotFound());
  CHECK(missing.status().message().find("imgfs-no-such-pool") != std::string::npos);
}

// Creates (or fetches) a key for `entity` with `osd_caps` through the monitors
// and writes its keyring to `path`.
void MakeKey(const std::string& entity, const std::string& osd_caps, const std::string& path) {
  rados_t cluster;
  REQUIRE(rados_create(&cluster,
                       TestCeph().client_id.empty() ? nullptr : TestCeph().client_id.c_str()) == 0);
  REQUIRE(rados_conf_read_file(cluster, TestCeph().conf_file.c_str()) == 0);
  if (!TestCeph().keyring.empty()) {
    REQUIRE(rados_conf_set(cluster, "keyring", TestCeph().keyring.c_str()) == 0);
  }
  REQUIRE(rados_connect(cluster) == 0);
  std::string cmd = R"({"prefix": "auth get-or-create", "entity": ")" + entity +
                    R"(", "caps": ["mon", "allow r", "osd", ")" + osd_caps + R"("]})";
  const char* cmds[] = {cmd.c_str()};
  char *out = nullptr, *outs = nullptr;
  size_t out_len = 0, outs_len = 0;
  int r = rados_mon_command(cluster, cmds, 1, nullptr, 0, &out, &out_len, &outs, &outs_len);
  std::string keyring = out ? std::string(out, out_len) : "";
  std::string err = outs ? std::string(outs, outs_len) : "";
  if (out) rados_buffer_free(out);
  if (outs) rados_buffer_free(outs);
  rados_shutdown(cluster);
  INFO(err);
  REQUIRE(r == 0);
  std::ofstream(path) << keyring;
}

TEST_CASE("rados: a key without access to the pool is PermissionDenied, naming client and pool",
          "[rados]") {
  if (!HaveCluster()) return;
  char dir[] = "/tmp/imgfs-rados-test.XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string keyring = std::string(dir) + "/keyring";
  MakeKey("client.imgfs-test-nopool", "allow rw pool=imgfs-no-such-pool", keyring);
  CephOptions o = TestCeph();
  o.client_id = "imgfs-test-nopool";
  o.keyring = keyring;
  auto b = CreateRadosBackend(TestPool(), o);
  std::remove(keyring.c_str());
  rmdir(dir);
  REQUIRE_FALSE(b.ok());
  CHECK(b.status().IsPermissionDenied());
  CHECK(b.status().message().find("client.imgfs-test-nopool") != std::string::npos);
  CHECK(b.status().message().find(TestPool()) != std::string::npos);
}

TEST_CASE("rados: chunk store async puts and an image read spanning many chunks", "[rados]") {
  if (!HaveCluster()) return;
  constexpr uint32_t kCs = 16 * 1024;
  auto chunks = std::make_shared<ChunkStore>(Open(), kCs, /*cache_bytes=*/0);
  // 40 chunks: data, a hole, a repeated chunk (dedup hit in flight), a short tail.
  Bytes image = Pattern(40 * kCs - 1000, 42);
  std::fill(image.begin() + 3 * kCs, image.begin() + 4 * kCs, 0);
  std::copy(image.begin(), image.begin() + kCs, image.begin() + 7 * kCs);
  Manifest m;
  m.size = image.size();
  m.chunk_size = kCs;
  m.chunks.resize(40);
  std::atomic<int> stored{0}, errors{0};
  Countdown puts(40);
  for (size_t i = 0; i < 40; ++i) {
    ByteView piece(image.data() + i * kCs, std::min<size_t>(kCs, image.size() - i * kCs));
    chunks->PutAsync(piece, [&, i](Result<ChunkStore::PutResult> r) {
      if (!r.ok()) {
        ++errors;
      } else {
        m.chunks[i] = r->id;
        if (r->stored) ++stored;
      }
      puts.CountDown();
    });
  }
  puts.Wait();
  REQUIRE(errors == 0);
  CHECK(stored == 38);  // not the hole, and one of the two equal chunks
  REQUIRE(PutManifest(chunks->backend(), m).ok());

  ImageReader reader(chunks, m.Id(), m);
  Bytes all(image.size() + 5000, 0xEE);
  REQUIRE(reader.Read(0, all).ok());
  CHECK(std::equal(image.begin(), image.end(), all.begin()));
  CHECK(std::all_of(all.begin() + image.size(), all.end(), [](uint8_t b) { return b == 0; }));
  // Ranges starting and ending inside chunks.
  for (auto [off, len] : {std::pair<size_t, size_t>{100, 3 * kCs},
                          {kCs - 1, 2},
                          {5 * kCs + 7, 10 * kCs},
                          {39 * kCs - 5, 200}}) {
    Bytes part(len);
    REQUIRE(reader.Read(off, part).ok());
    CHECK(std::equal(part.begin(), part.end(), image.begin() + off));
  }
  // A chunk object removed under the image: reads of its range are an I/O
  // error (EIO), other ranges still read.
  REQUIRE(chunks->backend().Remove(ObjectKind::kChunk, m.chunks[20].Hex()).ok());
  Bytes range(4 * kCs);
  Status s = reader.Read(18 * kCs, range);
  CHECK(s.ToErrno() == EIO);
  CHECK(s.message().find(m.chunks[20].Hex()) != std::string::npos);
  CHECK(reader.Read(0, range).ok());
}

TEST_CASE("rados: an unreachable cluster is an error after the configured timeout", "[rados]") {
  if (!HaveCluster()) return;
  char dir[] = "/tmp/imgfs-rados-test.XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  std::string conf = std::string(dir) + "/ceph.conf";
  {
    // Port 9 (discard) on localhost: nothing listens there.
    std::ofstream f(conf);
    f << "[global]\nmon_host = 127.0.0.1:9\n";
  }
  CephOptions o = TestCeph();
  o.conf_file = conf;
  o.timeout_seconds = 3;
  auto b = CreateRadosBackend(TestPool(), o);
  std::remove(conf.c_str());
  rmdir(dir);
  REQUIRE_FALSE(b.ok());
  CHECK(b.status().IsRetryable());
  CHECK(b.status().message().find("connect to Ceph cluster") != std::string::npos);
}

TEST_CASE("rados: the lock excludes across connections, and a broken lease is lost and says so",
          "[rados][lock]") {
  if (!HaveCluster()) return;
  const std::string ns = UniqueNamespace();
  CephOptions o = TestCeph();
  o.timeout_seconds = 2;  // lease 6 s, renewed every 1.5 s
  auto h1 = CreateRadosBackend(TestPool() + "/" + ns, o);
  auto h2 = CreateRadosBackend(TestPool() + "/" + ns, o);
  REQUIRE(h1.ok());
  REQUIRE(h2.ok());
  auto shared1 = (*h1)->Lock("gc", LockMode::kShared);
  auto shared2 = (*h2)->Lock("gc", LockMode::kShared);
  REQUIRE(shared1.ok());
  REQUIRE(shared2.ok());
  // An exclusive locker on host 2 waits for both shared holders.
  std::mutex mu;
  std::condition_variable cv;
  bool waiting = false;
  std::atomic<bool> granted{false};
  std::unique_ptr<BackendLock> exclusive;
  std::thread gc([&] {
    auto x = (*h2)->Lock("gc", LockMode::kExclusive, [&] {
      std::lock_guard lock(mu);
      waiting = true;
      cv.notify_all();
    });
    REQUIRE(x.ok());
    exclusive = std::move(*x);
    granted = true;
  });
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return waiting; });
  }
  CHECK_FALSE(granted.load());
  shared2->reset();
  CHECK_FALSE(granted.load());
  // Break host 1's lease behind its back (as `rados lock break` would): its
  // next renewal finds it gone, and Check says so from then on.
  CHECK((*shared1)->Check().ok());
  {
    rados_t cluster;
    REQUIRE(rados_create(&cluster, o.client_id.empty() ? nullptr : o.client_id.c_str()) == 0);
    REQUIRE(rados_conf_read_file(cluster, o.conf_file.c_str()) == 0);
    if (!o.keyring.empty()) rados_conf_set(cluster, "keyring", o.keyring.c_str());
    REQUIRE(rados_connect(cluster) == 0);
    rados_ioctx_t io;
    REQUIRE(rados_ioctx_create(cluster, TestPool().c_str(), &io) == 0);
    rados_ioctx_set_namespace(io, ns.c_str());
    int exclusive_flag = 0;
    char tag[256], clients[1024], cookies[1024], addrs[1024];
    size_t tag_len = sizeof tag, clients_len = sizeof clients, cookies_len = sizeof cookies,
           addrs_len = sizeof addrs;
    ssize_t n = rados_list_lockers(io, "imgfs.lock.gc", "imgfs", &exclusive_flag, tag, &tag_len,
                                   clients, &clients_len, cookies, &cookies_len, addrs, &addrs_len);
    REQUIRE(n == 1);
    CHECK(rados_break_lock(io, "imgfs.lock.gc", "imgfs", clients, cookies) == 0);
    rados_ioctx_destroy(io);
    rados_shutdown(cluster);
  }
  // Waits for the renewal thread, which runs every quarter lease.
  for (int i = 0; i < 200 && (*shared1)->Check().ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  Status lost = (*shared1)->Check();
  CHECK(!lost.ok());
  CHECK(lost.IsRetryable());  // Unavailable
  CHECK(lost.message().find("imgfs.lock.gc") != std::string::npos);
  gc.join();
  CHECK(granted.load());
  CHECK(exclusive->Check().ok());
  shared1->reset();
}

}  // namespace
}  // namespace imgfs
