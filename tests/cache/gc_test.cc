#include "cache/gc.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "cache/fsck.h"
#include "cache/import.h"
#include "cache/verify.h"

using namespace imgfs;
namespace fs = std::filesystem;

namespace {

struct Fixture {
  fs::path dir;
  int64_t now = 1'000'000;
  std::unique_ptr<Store> store;

  explicit Fixture(const std::string& chunks = "dir", const std::string& disks = "local") {
    char tmpl[] = "/tmp/imgfs-gc-test.XXXXXX";
    dir = ::mkdtemp(tmpl);
    StoreConfig c;
    c.chunks = chunks;
    c.disks = disks;
    c.chunk_size = 4096;
    REQUIRE(Store::Init((dir / "s").string(), c).ok());
    auto s = Store::Open((dir / "s").string(), [this] { return now; });
    REQUIRE(s.ok());
    store = std::move(*s);
  }
  ~Fixture() {
    store.reset();
    fs::remove_all(dir);
  }

  ImageId Import(uint32_t seed, size_t size = 64 * 1024, std::vector<std::string> names = {}) {
    std::mt19937 rng(seed);
    Bytes data(size);
    for (auto& b : data) b = static_cast<uint8_t>(rng());
    int fd = ::memfd_create("img", MFD_CLOEXEC);
    REQUIRE(::write(fd, data.data(), data.size()) == static_cast<ssize_t>(size));
    ImportOptions o;
    o.names = std::move(names);
    auto r = ImportRawFd(*store, fd, true, size, o);
    ::close(fd);
    REQUIRE(r.ok());
    return r->id;
  }

  uint64_t CountChunks() {
    uint64_t n = 0;
    REQUIRE(store->chunks()
                .ListIds([&](const ChunkId&) {
                  ++n;
                  return Status::OK();
                })
                .ok());
    return n;
  }
};

GcOptions MinAge(int64_t seconds) {
  GcOptions o;
  o.min_age_seconds = seconds;
  return o;
}

}  // namespace

TEST_CASE("gc removes images older than the minimum age and keeps younger ones", "[gc]") {
  Fixture f;
  ImageId old_img = f.Import(1);
  f.now += 7200;
  ImageId young = f.Import(2);
  f.now += 1800;  // old: 2.5 h unused, young: 0.5 h
  auto r = CollectGarbage(*f.store, MinAge(3600));
  REQUIRE(r.ok());
  REQUIRE(r->images_removed.size() == 1);
  CHECK(r->images_removed[0].id == old_img);
  CHECK(r->chunks_removed == 16);
  CHECK(r->bytes_freed >= 16 * 4096);
  CHECK(f.store->GetImage(old_img).status().IsNotFound());
  CHECK(f.store->GetImage(young).ok());
  CHECK(f.CountChunks() == 16);
  auto v = VerifyImage(*f.store, young);
  REQUIRE(v.ok());
  CHECK(v->ok());
}

TEST_CASE("gc --dry-run reports and changes nothing", "[gc]") {
  Fixture f;
  ImageId a = f.Import(3);
  GcOptions o = MinAge(0);
  o.dry_run = true;
  auto r = CollectGarbage(*f.store, o);
  REQUIRE(r.ok());
  CHECK(r->images_removed.size() == 1);
  CHECK(r->chunks_removed == 16);
  CHECK(r->bytes_freed >= 16 * 4096);
  CHECK(f.store->GetImage(a).ok());
  CHECK(f.CountChunks() == 16);
}

TEST_CASE("gc keeps images in use and, with keep_named, named images", "[gc]") {
  Fixture f;
  ImageId used = f.Import(4);
  ImageId named = f.Import(5, 64 * 1024, {"ubuntu"});
  ImageId unused = f.Import(6);
  DiskCreateOptions opts;
  opts.image = used;
  REQUIRE(f.store->CreateDisk({"vm1", "disk"}, opts).ok());
  f.now += 10 * 86400;
  GcOptions o = MinAge(3600);
  o.keep_named = true;
  auto r = CollectGarbage(*f.store, o);
  REQUIRE(r.ok());
  REQUIRE(r->images_removed.size() == 1);
  CHECK(r->images_removed[0].id == unused);
  CHECK(f.store->GetImage(used).ok());
  CHECK(f.store->GetImage(named).ok());
  // Without keep_named the named image goes; the used one stays.
  r = CollectGarbage(*f.store, MinAge(3600));
  REQUIRE(r.ok());
  CHECK(f.store->GetImage(named).status().IsNotFound());
  CHECK(f.store->GetImage(used).ok());
  auto disk = f.store->disks().Open({"vm1", "disk"}, OpenMode::kReadOnly);
  REQUIRE(disk.ok());
  Bytes buf(64 * 1024);
  CHECK((*disk)->Read(0, buf).ok());
}

TEST_CASE("gc sweeps leftovers of interrupted imports", "[gc]") {
  Fixture f;
  ImageId keep = f.Import(7);
  // An import that died after storing chunks and a manifest, before its record.
  Bytes junk(4096, 0x5a);
  REQUIRE(f.store->chunks().Put(junk).ok());
  Manifest m;
  m.size = 4096;
  m.chunk_size = 4096;
  m.chunks = {ChunkIdOf(junk)};
  REQUIRE(PutManifest(f.store->backend(), m).ok());
  { std::ofstream((f.dir / "s/tmp/convert.999999.1.raw").string()) << "partial"; }
  auto fsck = CheckStore(*f.store);
  REQUIRE(fsck.ok());
  CHECK(fsck->clean());
  CHECK(fsck->orphans.size() == 2);
  auto r = CollectGarbage(*f.store, MinAge(86400));
  REQUIRE(r.ok());
  CHECK(r->images_removed.empty());
  CHECK(r->manifests_removed == 1);
  CHECK(r->chunks_removed == 1);
  CHECK(r->temp_files_removed == 1);
  CHECK(f.store->GetImage(keep).ok());
  fsck = CheckStore(*f.store);
  REQUIRE(fsck.ok());
  CHECK(fsck->orphans.empty());
}

TEST_CASE("gc running during imports never sweeps an import's chunks", "[gc][concurrency]") {
  Fixture f;
  for (uint32_t round = 0; round < 20; ++round) {
    ImageId id;
    std::thread importer([&] { id = f.Import(100 + round, 512 * 1024); });
    std::thread collector([&] {
      for (int i = 0; i < 3; ++i) REQUIRE(CollectGarbage(*f.store, MinAge(86400)).ok());
    });
    importer.join();
    collector.join();
    auto v = VerifyImage(*f.store, id);
    REQUIRE(v.ok());
    INFO("round " << round);
    REQUIRE(v->ok());
  }
}

TEST_CASE("gc running during disk creation never leaves a disk without its image",
          "[gc][concurrency]") {
  Fixture f;
  for (uint32_t round = 0; round < 20; ++round) {
    ImageId id = f.Import(200 + round);
    DiskRef ref{"vm" + std::to_string(round), "disk"};
    Status created;
    std::thread creator([&] {
      DiskCreateOptions o;
      o.image = id;
      created = f.store->CreateDisk(ref, o);
    });
    std::thread collector([&] { REQUIRE(CollectGarbage(*f.store, MinAge(0)).ok()); });
    creator.join();
    collector.join();
    if (created.ok()) {
      INFO("round " << round);
      CHECK(f.store->GetImage(id).ok());
      auto v = VerifyImage(*f.store, id);
      REQUIRE(v.ok());
      CHECK(v->ok());
    } else {
      CHECK(created.IsNotFound());
    }
  }
}

TEST_CASE("verify and fsck name a corrupted and a missing chunk", "[gc][verify]") {
  Fixture f;
  ImageId id = f.Import(9, 8 * 4096);
  auto m = GetManifest(f.store->backend(), id);
  REQUIRE(m.ok());
  ChunkId gone = m->chunks[2];
  ChunkId bad = m->chunks[5];
  REQUIRE(f.store->backend().Remove(ObjectKind::kChunk, gone.Hex()).ok());
  // Corrupt one by replacing its object with other bytes of the same size.
  REQUIRE(f.store->backend().Remove(ObjectKind::kChunk, bad.Hex()).ok());
  Bytes other(4096, 0x11);
  REQUIRE(f.store->backend().PutIfAbsent(ObjectKind::kChunk, bad.Hex(), other).ok());
  f.store->chunks().DropFromCache(bad);

  auto v = VerifyImage(*f.store, id);
  REQUIRE(v.ok());
  REQUIRE(v->problems.size() == 2);
  std::string all = v->problems[0].chunk.Hex() + v->problems[0].problem +
                    v->problems[1].chunk.Hex() + v->problems[1].problem;
  CHECK(all.find(gone.Hex()) != std::string::npos);
  CHECK(all.find(bad.Hex()) != std::string::npos);
  CHECK(all.find("missing") != std::string::npos);
  CHECK(all.find("corrupt") != std::string::npos);

  auto fsck = CheckStore(*f.store);
  REQUIRE(fsck.ok());
  CHECK_FALSE(fsck->clean());
  bool names_missing = false;
  for (const auto& p : fsck->problems) names_missing |= p.find(gone.Hex()) != std::string::npos;
  CHECK(names_missing);
  bool names_corrupt = false;
  for (const auto& p : fsck->problems) {
    names_corrupt |=
        p.find(bad.Hex()) != std::string::npos && p.find("corrupt") != std::string::npos;
  }
  CHECK(names_corrupt);

  // Reads of the damaged ranges fail; other ranges still read.
  auto reader = f.store->OpenImage(id);
  REQUIRE(reader.ok());
  Bytes buf(4096);
  CHECK_FALSE((*reader)->Read(2 * 4096, buf).ok());
  CHECK_FALSE((*reader)->Read(5 * 4096, buf).ok());
  CHECK((*reader)->Read(0, buf).ok());
  CHECK((*reader)->Read(7 * 4096, buf).ok());
}

TEST_CASE("the GC lock: shared holders exclude an exclusive one, which waits", "[gc][lock]") {
  for (const char* chunks : {"dir", "mem"}) {
    INFO(chunks);
    Fixture f(chunks);
    auto a = f.store->LockShared();
    auto b = f.store->LockShared();
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK((*a)->Check().ok());
    std::mutex mu;
    std::condition_variable cv;
    bool waiting = false;
    std::atomic<bool> granted{false};
    std::thread gc([&] {
      auto x = f.store->LockExclusive([&] {
        std::lock_guard lock(mu);
        waiting = true;
        cv.notify_all();
      });
      REQUIRE(x.ok());
      granted = true;
    });
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return waiting; });
    }
    CHECK_FALSE(granted.load());
    a->reset();
    CHECK_FALSE(granted.load());
    b->reset();
    gc.join();
    CHECK(granted.load());
  }
}

TEST_CASE("gc and image rm keep images that disks of other stores use (use records)",
          "[gc][shared]") {
  Fixture f;
  ImageId mine = f.Import(20);
  ImageId theirs = f.Import(21);
  DiskCreateOptions o;
  o.image = mine;
  REQUIRE(f.store->CreateDisk({"vm1", "disk"}, o).ok());
  auto me = f.store->StoreId();
  REQUIRE(me.ok());
  CHECK(me->size() == 16);
  std::string own_key = "uses/" + mine.Hex() + "/" + *me + "/vm1/disk";
  std::string value;
  CHECK(f.store->backend().GetRecord(own_key, &value).ok());
  // A disk of another host sharing the chunk backend.
  std::string their_key = "uses/" + theirs.Hex() + "/0123456789abcdef/vm9/disk";
  REQUIRE(f.store->backend().PutRecord(their_key, "vm9/disk", RecordCondition::Any()).ok());
  f.now += 10 * 86400;
  auto r = CollectGarbage(*f.store, MinAge(0));
  REQUIRE(r.ok());
  CHECK(r->images_removed.empty());
  Status rm = f.store->RemoveImage(theirs);
  CHECK(rm.IsBusy());
  CHECK(rm.message().find("0123456789abcdef:vm9/disk") != std::string::npos);
  // Its own disk gone, this store's gc drops its own record and the image.
  REQUIRE(f.store->disks().Remove({"vm1", "disk"}).ok());
  r = CollectGarbage(*f.store, MinAge(0));
  REQUIRE(r.ok());
  REQUIRE(r->images_removed.size() == 1);
  CHECK(r->images_removed[0].id == mine);
  CHECK(f.store->backend().GetRecord(own_key, &value).IsNotFound());
  // The other store's record is not this store's to drop.
  CHECK(f.store->backend().GetRecord(their_key, &value).ok());
  CHECK(f.store->GetImage(theirs).ok());
}

TEST_CASE("gc and fsck over many images: each unused image goes, exactly its bytes are freed",
          "[gc][fsck]") {
  Fixture f;
  // 8 KiB images: a chunk of their own, one chunk every image shares, a hole.
  Bytes shared(4096, 0x5a);
  auto import = [&](int i, std::vector<std::string> names) {
    Bytes data(3 * 4096, 0);
    std::mt19937 rng(1000 + i);
    for (size_t k = 0; k < 4096; ++k) data[k] = static_cast<uint8_t>(rng());
    std::copy(shared.begin(), shared.end(), data.begin() + 4096);
    int fd = ::memfd_create("img", MFD_CLOEXEC);
    REQUIRE(::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()));
    ImportOptions o;
    o.names = std::move(names);
    auto r = ImportRawFd(*f.store, fd, true, data.size(), o);
    ::close(fd);
    REQUIRE(r.ok());
    return r->id;
  };
  constexpr int kOld = 300;
  std::vector<ImageId> ids;
  for (int i = 0; i < kOld; ++i) {
    ids.push_back(import(i, i % 3 == 0 ? std::vector<std::string>{"n" + std::to_string(i)}
                                       : std::vector<std::string>{}));
  }
  // Ten unnamed images used by disks.
  for (int i = 1; i <= 10; ++i) {
    DiskCreateOptions o;
    o.image = ids[3 * i + 1];
    REQUIRE(f.store->CreateDisk({"vm" + std::to_string(i), "disk"}, o).ok());
  }
  f.now += 7200;
  for (int i = kOld; i < kOld + 20; ++i) import(i, {});  // young
  // What the unused, unnamed old images hold: their own chunk and manifest.
  uint64_t expect_bytes = 0;
  int expect_removed = 0;
  for (int i = 0; i < kOld; ++i) {
    bool used = i % 3 == 1 && i >= 4 && i <= 31;
    if (i % 3 == 0 || used) continue;
    ++expect_removed;
    auto m = f.store->chunks().GetManifest(ids[i]);
    REQUIRE(m.ok());
    auto chunk = f.store->chunks().StoredSize(ObjectKind::kChunk, m->chunks[0]);
    auto manifest = f.store->chunks().StoredSize(ObjectKind::kManifest, ids[i]);
    REQUIRE(chunk.ok());
    REQUIRE(manifest.ok());
    CHECK(*chunk == 4096);
    expect_bytes += *chunk + *manifest;
  }

  GcOptions o = MinAge(3600);
  o.keep_named = true;
  o.dry_run = true;
  auto dry = CollectGarbage(*f.store, o);
  REQUIRE(dry.ok());
  CHECK(dry->images_removed.size() == static_cast<size_t>(expect_removed));
  CHECK(dry->bytes_freed == expect_bytes);
  o.dry_run = false;
  auto r = CollectGarbage(*f.store, o);
  REQUIRE(r.ok());
  CHECK(r->images_removed.size() == static_cast<size_t>(expect_removed));
  CHECK(r->manifests_removed == static_cast<uint64_t>(expect_removed));
  CHECK(r->chunks_removed == static_cast<uint64_t>(expect_removed));
  CHECK(r->bytes_freed == expect_bytes);

  const int kept = kOld + 20 - expect_removed;
  auto images = f.store->ListImages();
  REQUIRE(images.ok());
  CHECK(images->size() == static_cast<size_t>(kept));
  auto fsck = CheckStore(*f.store);
  REQUIRE(fsck.ok());
  CHECK(fsck->clean());
  CHECK(fsck->orphans.empty());
  CHECK(fsck->images == static_cast<uint64_t>(kept));
  CHECK(fsck->manifests == static_cast<uint64_t>(kept));
  CHECK(fsck->chunks == static_cast<uint64_t>(kept + 1));  // and the shared one
  CHECK(fsck->names == 100);
  CHECK(fsck->disks == 10);
  // A second run finds nothing.
  auto again = CollectGarbage(*f.store, o);
  REQUIRE(again.ok());
  CHECK(again->images_removed.empty());
  CHECK(again->chunks_removed == 0);
  CHECK(again->bytes_freed == 0);
}

TEST_CASE("fsck names every problem of many images in id order, the same on every run; gc "
          "stops before sweeping when a live manifest cannot be read",
          "[gc][fsck]") {
  Fixture f;
  // 60 images, each a chunk of its own (and a hole), read 16 at a time.
  std::vector<ImageId> ids;
  std::vector<ChunkId> own;
  for (uint32_t i = 0; i < 60; ++i) {
    ids.push_back(f.Import(5000 + i, 2 * 4096));
    auto m = f.store->chunks().GetManifest(ids.back());
    REQUIRE(m.ok());
    own.push_back(m->chunks[0]);
  }
  // Manifests gone of images 3 and 40; chunks missing of 7 and 21, damaged
  // of 8 and 55.
  REQUIRE(f.store->backend().Remove(ObjectKind::kManifest, ids[3].Hex()).ok());
  REQUIRE(f.store->backend().Remove(ObjectKind::kManifest, ids[40].Hex()).ok());
  for (int i : {7, 21}) REQUIRE(f.store->backend().Remove(ObjectKind::kChunk, own[i].Hex()).ok());
  for (int i : {8, 55}) {
    REQUIRE(f.store->backend().Remove(ObjectKind::kChunk, own[i].Hex()).ok());
    Bytes other(4096, 0x11);
    REQUIRE(f.store->backend().PutIfAbsent(ObjectKind::kChunk, own[i].Hex(), other).ok());
  }
  // What fsck must say: first the manifests, then the chunks, each in the
  // order of the image ids.
  auto by_hex = [&](std::vector<int> which) {
    std::sort(which.begin(), which.end(),
              [&](int a, int b) { return ids[a].Hex() < ids[b].Hex(); });
    return which;
  };
  std::vector<std::string> expect;
  for (int i : by_hex({3, 40})) {
    expect.push_back("image " + ids[i].Hex() + ": manifest: manifest of image " + ids[i].Hex() +
                     " not found");
  }
  for (int i : by_hex({7, 21, 8, 55})) {
    std::string what = i == 7 || i == 21 ? " is missing" : " is corrupt: ";
    expect.push_back("image " + ids[i].Hex() + ": chunk " + own[i].Hex() + what);
  }
  auto fsck = CheckStore(*f.store);
  REQUIRE(fsck.ok());
  CHECK(fsck->images == 60);
  REQUIRE(fsck->problems.size() == expect.size());
  for (size_t k = 0; k < expect.size(); ++k) {
    INFO(fsck->problems[k]);
    CHECK(fsck->problems[k].rfind(expect[k], 0) == 0);  // corrupt ones say why after
  }
  auto again = CheckStore(*f.store);
  REQUIRE(again.ok());
  CHECK(again->problems == fsck->problems);

  // gc: every image is young, so all are live; two manifests cannot be read.
  Bytes orphan(4096, 0x77);
  REQUIRE(f.store->chunks().Put(orphan).ok());
  const uint64_t chunks = f.CountChunks();
  auto gc = CollectGarbage(*f.store, MinAge(86400));
  REQUIRE_FALSE(gc.ok());
  CHECK(gc.status().IsNotFound());
  CHECK(gc.status().message().find("gc stopped before sweeping") != std::string::npos);
  const std::string& msg = gc.status().message();
  CHECK((msg.find(ids[3].Hex()) != std::string::npos ||
         msg.find(ids[40].Hex()) != std::string::npos));
  CHECK(f.CountChunks() == chunks);  // the orphan too: nothing was swept
}
