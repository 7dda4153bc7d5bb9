// The disk backend conformance suite: the semantics of blockstore/disk.h,
// checked against every backend (mem:, local, and rbd:POOL when the test
// cluster is up).
#include <catch2/catch.hpp>
#include <cstring>
#include <future>
#include <iostream>
#include <random>
#include <thread>

#include "blockstore/disk.h"
#include "tests/blockstore/disk_test_util.h"

using namespace imgfs;
using namespace imgfs::testing;

namespace {

constexpr uint64_t KiB = 1024, MiB = 1024 * 1024;
constexpr uint32_t kImageChunk = 16 * 1024;

struct Fixture {
  explicit Fixture(const std::string& kind) : kind(kind) {
    std::mt19937_64 rng(std::random_device{}());
    instance = "t" + std::to_string(rng() % 1000000000);
    CephOptions ceph = TestCephOptions();
    auto r = CreateDiskBackend(kind, dir.path(), &images, &ceph);
    if (!r.ok()) {
      INFO(r.status().ToString());
      REQUIRE(r.ok());
    }
    backend = std::move(r).value();
  }
  ~Fixture() {
    if (!backend) return;
    auto disks = backend->List(instance);
    if (disks.ok()) {
      for (const auto& d : *disks) (void)backend->Remove(d);
    }
    (void)backend->RemoveInstance(instance);
  }

  DiskRef Ref(const std::string& disk) const { return DiskRef{instance, disk}; }

  void CreateBlank(const std::string& disk, uint64_t size) {
    DiskCreateOptions o;
    o.size = size;
    Status s = backend->Create(Ref(disk), o);
    INFO(s.ToString());
    REQUIRE(s.ok());
  }

  // Creates a disk from a new image of `image` bytes; returns the image id.
  ImageId CreateFrom(const std::string& disk, const Bytes& image,
                     std::optional<uint64_t> size = std::nullopt) {
    auto id = images.Add(image);
    REQUIRE(id.ok());
    DiskCreateOptions o;
    o.image = *id;
    o.size = size;
    Status s = backend->Create(Ref(disk), o);
    INFO(s.ToString());
    REQUIRE(s.ok());
    return *id;
  }

  std::unique_ptr<Disk> OpenRW(const std::string& disk) {
    auto r = backend->Open(Ref(disk), OpenMode::kReadWrite);
    INFO(r.status().ToString());
    REQUIRE(r.ok());
    return std::move(r).value();
  }

  std::string kind;
  TempDir dir;
  TestImages images{kImageChunk};
  std::string instance;
  std::unique_ptr<DiskBackend> backend;
};

Bytes ReadAll(Disk& d, uint64_t off, uint64_t len) {
  Bytes out(len, 0xee);
  Status s = d.Read(off, MutableByteView(out));
  INFO(s.ToString());
  REQUIRE(s.ok());
  return out;
}

bool AllZero(const Bytes& b) {
  for (uint8_t x : b) {
    if (x) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("Disk conformance: create, info, list and remove", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  f.CreateBlank("disk", 10 * MiB);
  f.CreateBlank("disk.eph0", 0);

  auto info = f.backend->Info(f.Ref("disk"));
  REQUIRE(info.ok());
  CHECK(info->size == 10 * MiB);
  CHECK(!info->parent);
  CHECK(info->owned_bytes == 0);
  CHECK(info->ref.ToString() == f.Ref("disk").ToString());

  auto list = f.backend->List(f.instance);
  REQUIRE(list.ok());
  REQUIRE(list->size() == 2);
  CHECK((*list)[0].disk == "disk");
  CHECK((*list)[1].disk == "disk.eph0");
  auto all = f.backend->List("");
  REQUIRE(all.ok());
  CHECK(all->size() >= 2);
  auto insts = f.backend->ListInstances();
  REQUIRE(insts.ok());
  CHECK(std::count(insts->begin(), insts->end(), f.instance) == 1);

  DiskCreateOptions o;
  o.size = MiB;
  CHECK(f.backend->Create(f.Ref("disk"), o).IsAlreadyExists());
  CHECK(f.backend->Info(f.Ref("disk"))->size == 10 * MiB);  // unchanged

  REQUIRE(f.backend->Remove(f.Ref("disk")).ok());
  CHECK(f.backend->Info(f.Ref("disk")).status().IsNotFound());
  CHECK(f.backend->Open(f.Ref("disk"), OpenMode::kReadOnly).status().IsNotFound());
  CHECK(f.backend->Remove(f.Ref("disk")).IsNotFound());
  CHECK(f.backend->Resize(f.Ref("disk"), 20 * MiB, false).IsNotFound());
}

TEST_CASE("Disk conformance: bad input is refused and changes nothing", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  DiskCreateOptions blank;
  CHECK(f.backend->Create(f.Ref("d"), blank).IsInvalidArgument());  // blank needs a size
  DiskCreateOptions o;
  o.size = MiB;
  CHECK(f.backend->Create(DiskRef{"a_b", "d"}, o).IsInvalidArgument());
  CHECK(f.backend->Create(DiskRef{f.instance, "a/b"}, o).IsInvalidArgument());
  CHECK(f.backend->Create(DiskRef{f.instance, ".."}, o).IsInvalidArgument());
  CHECK(f.backend->Create(DiskRef{f.instance, std::string("a\nb")}, o).IsInvalidArgument());
  CHECK(f.backend->Create(DiskRef{f.instance, std::string(129, 'x')}, o).IsInvalidArgument());
  CHECK(f.backend->Create(DiskRef{"", "d"}, o).IsInvalidArgument());
  CHECK(f.backend->Open(DiskRef{"..", "d"}, OpenMode::kReadOnly).status().IsInvalidArgument());
  CHECK(f.backend->Remove(DiskRef{f.instance, "../x"}).IsInvalidArgument());
  DiskCreateOptions huge;
  huge.size = ~uint64_t{0};
  CHECK(f.backend->Create(f.Ref("d"), huge).IsTooLarge());
  DiskCreateOptions missing;
  missing.image = ImageId{};
  missing.image->bytes[0] = 0x42;
  CHECK(f.backend->Create(f.Ref("d"), missing).IsNotFound());
  auto list = f.backend->List("");
  REQUIRE(list.ok());
  for (const auto& r : *list) CHECK(r.instance != f.instance);
}

TEST_CASE("Disk conformance: reads, writes and bounds", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  f.CreateBlank("d", 3 * MiB + 123);
  auto d = f.OpenRW("d");
  CHECK(d->size() == 3 * MiB + 123);
  CHECK(d->writable());
  CHECK(AllZero(ReadAll(*d, 0, d->size())));

  std::mt19937_64 rng(1);
  Bytes data = RandomBytes(rng, 300 * KiB + 7);
  uint64_t off = 64 * KiB - 5;  // crosses several chunk boundaries
  REQUIRE(d->Write(off, ByteView(data)).ok());
  CHECK(Diff(ReadAll(*d, off, data.size()), data) == "");
  CHECK(AllZero(ReadAll(*d, 0, off)));
  CHECK(AllZero(ReadAll(*d, off + data.size(), 4096)));
  Bytes tail = RandomBytes(rng, 1000);
  REQUIRE(d->Write(d->size() - tail.size(), ByteView(tail)).ok());
  CHECK(Diff(ReadAll(*d, d->size() - tail.size(), tail.size()), tail) == "");

  Bytes buf(10);
  CHECK(d->Read(d->size() - 5, MutableByteView(buf)).IsInvalidArgument());
  CHECK(d->Write(d->size() - 5, ByteView(buf)).IsInvalidArgument());
  CHECK(d->Write(~uint64_t{0} - 2, ByteView(buf)).IsInvalidArgument());
  CHECK(d->Read(d->size(), MutableByteView(buf).first(0)).ok());
  CHECK(d->size() == 3 * MiB + 123);

  REQUIRE(d->Flush().ok());
  d.reset();
  auto ro = f.backend->Open(f.Ref("d"), OpenMode::kReadOnly);
  REQUIRE(ro.ok());
  CHECK(!(*ro)->writable());
  CHECK(Diff(ReadAll(**ro, off, data.size()), data) == "");
  CHECK((*ro)->Write(0, ByteView(buf)).code() == Code::kReadOnly);
  CHECK((*ro)->Discard(0, 10).code() == Code::kReadOnly);
  CHECK((*ro)->Resize(10 * MiB, false).code() == Code::kReadOnly);
  auto info = f.backend->Info(f.Ref("d"));
  REQUIRE(info.ok());
  CHECK(info->owned_bytes >= data.size());
}

TEST_CASE("Disk conformance: discard reads back zeros", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  f.CreateBlank("d", 2 * MiB);
  auto d = f.OpenRW("d");
  std::mt19937_64 rng(2);
  Bytes data = RandomBytes(rng, 2 * MiB);
  REQUIRE(d->Write(0, ByteView(data)).ok());
  REQUIRE(d->Discard(100, 50).ok());                   // inside a chunk
  REQUIRE(d->Discard(64 * KiB - 10, 200 * KiB).ok());  // across chunks
  REQUIRE(d->Discard(2 * MiB - 10, 1000).ok());        // clipped at the end
  std::memset(data.data() + 100, 0, 50);
  std::memset(data.data() + 64 * KiB - 10, 0, 200 * KiB);
  std::memset(data.data() + 2 * MiB - 10, 0, 10);
  CHECK(Diff(ReadAll(*d, 0, 2 * MiB), data) == "");
  CHECK(d->Discard(3 * MiB, 10).ok());  // wholly beyond the end: nothing to do
  CHECK(d->size() == 2 * MiB);
  REQUIRE(d->Flush().ok());
  d.reset();
  d = f.OpenRW("d");
  CHECK(Diff(ReadAll(*d, 0, 2 * MiB), data) == "");
}

TEST_CASE("Disk conformance: grow is cheap and shows zeros; shrink needs permission", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  f.CreateBlank("d", MiB + 100);
  auto d = f.OpenRW("d");
  std::mt19937_64 rng(3);
  Bytes data = RandomBytes(rng, MiB + 100);
  REQUIRE(d->Write(0, ByteView(data)).ok());

  REQUIRE(d->Resize(64ull << 30, false).ok());
  CHECK(d->size() == 64ull << 30);
  CHECK(Diff(ReadAll(*d, 0, data.size()), data) == "");
  CHECK(AllZero(ReadAll(*d, data.size(), 2 * MiB)));
  CHECK(AllZero(ReadAll(*d, (64ull << 30) - MiB, MiB)));

  Status s = d->Resize(MiB, false);
  CHECK(s.IsPermissionDenied());
  CHECK(d->size() == 64ull << 30);
  CHECK(Diff(ReadAll(*d, 0, data.size()), data) == "");

  // Shrink into the middle of a chunk, then grow: the cut part reads zeros.
  REQUIRE(d->Resize(100 * KiB + 3, true).ok());
  CHECK(d->size() == 100 * KiB + 3);
  REQUIRE(d->Resize(2 * MiB, false).ok());
  Bytes want(2 * MiB, 0);
  std::memcpy(want.data(), data.data(), 100 * KiB + 3);
  CHECK(Diff(ReadAll(*d, 0, 2 * MiB), want) == "");
  REQUIRE(d->Flush().ok());
  d.reset();
  auto info = f.backend->Info(f.Ref("d"));
  REQUIRE(info.ok());
  CHECK(info->size == 2 * MiB);

  // The backend's Resize (the command line's `disk resize`).
  CHECK(f.backend->Resize(f.Ref("d"), MiB, false).IsPermissionDenied());
  REQUIRE(f.backend->Resize(f.Ref("d"), 3 * MiB, false).ok());
  CHECK(f.backend->Info(f.Ref("d"))->size == 3 * MiB);
  d = f.OpenRW("d");
  CHECK(Diff(ReadAll(*d, 0, 2 * MiB), want) == "");
  CHECK(AllZero(ReadAll(*d, 2 * MiB, MiB)));
}

TEST_CASE("Disk conformance: a size beyond MaxDiskSize is TooLarge and changes nothing", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  auto limit = f.backend->MaxDiskSize(64 * KiB);
  INFO(limit.status().ToString());
  REQUIRE(limit.ok());
  const uint64_t max = limit->max_bytes;
  CHECK(max >= (1ull << 40));
  CHECK(max % 4096 == 0);
  CHECK_FALSE(limit->reason.empty());

  DiskCreateOptions over;
  over.size = max + 4096;
  Status s = f.backend->Create(f.Ref("big"), over);
  CHECK(s.IsTooLarge());
  CHECK(s.message().find(std::to_string(max)) != std::string::npos);
  CHECK(f.backend->Info(f.Ref("big")).status().IsNotFound());
  // A clone: its size defaults to the image's, and a larger one is checked too.
  auto id = f.images.Add(Bytes(kImageChunk, 7));
  REQUIRE(id.ok());
  DiskCreateOptions clone;
  clone.image = *id;
  clone.size = max + 1;
  CHECK(f.backend->Create(f.Ref("big"), clone).IsTooLarge());
  CHECK(f.backend->Info(f.Ref("big")).status().IsNotFound());

  f.CreateBlank("d", MiB);
  CHECK(f.backend->Resize(f.Ref("d"), max + 1, false).IsTooLarge());
  CHECK(f.backend->Info(f.Ref("d"))->size == MiB);
  auto d = f.OpenRW("d");
  CHECK(d->Resize(max + 4096, false).IsTooLarge());
  CHECK(d->Resize(~uint64_t{0}, false).IsTooLarge());
  CHECK(d->size() == MiB);
  d.reset();
  CHECK(f.backend->Info(f.Ref("d"))->size == MiB);

  // The largest size works end to end (rbd's is tried by
  // tests/integration/disk_limits.sh: creating it takes seconds).
  if (kind.starts_with("rbd:")) return;
  d = f.OpenRW("d");
  REQUIRE(d->Resize(max, false).ok());
  std::mt19937_64 rng(5);
  Bytes last = RandomBytes(rng, 4096);
  Status w = d->Write(max - 4096, ByteView(last));
  INFO(w.ToString());
  REQUIRE(w.ok());
  REQUIRE(d->Flush().ok());
  d.reset();
  d = f.OpenRW("d");
  CHECK(d->size() == max);
  CHECK(Diff(ReadAll(*d, max - 4096, 4096), last) == "");
  std::vector<std::string> problems;
  REQUIRE(f.backend->Check(f.Ref("d"), &problems).ok());
  CHECK(problems.empty());
}

TEST_CASE("Disk conformance: a disk open for writing is locked", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  f.CreateBlank("d", MiB);
  auto d = f.OpenRW("d");
  auto second = f.backend->Open(f.Ref("d"), OpenMode::kReadWrite);
  CHECK(second.status().IsBusy());
  CHECK(second.status().message().find("in use") != std::string::npos);
  Status rm = f.backend->Remove(f.Ref("d"));
  CHECK(rm.IsBusy());
  CHECK(rm.message().find("in use") != std::string::npos);
  CHECK(f.backend->Rename(f.Ref("d"), f.Ref("e")).IsBusy());
  CHECK(f.backend->Resize(f.Ref("d"), 2 * MiB, false).IsBusy());
  auto ro = f.backend->Open(f.Ref("d"), OpenMode::kReadOnly);
  CHECK(ro.ok());
  d.reset();
  auto again = f.backend->Open(f.Ref("d"), OpenMode::kReadWrite);
  CHECK(again.ok());
  again = Status::OK();
  ro = Status::OK();
  CHECK(f.backend->Remove(f.Ref("d")).ok());
}

TEST_CASE("Disk conformance: instances", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  std::string other = f.instance + "x";
  REQUIRE(f.backend->CreateInstance(other).ok());
  CHECK(f.backend->CreateInstance(other).IsAlreadyExists());
  CHECK(f.backend->CreateInstance("bad_name").IsInvalidArgument());
  auto insts = f.backend->ListInstances();
  REQUIRE(insts.ok());
  CHECK(std::count(insts->begin(), insts->end(), other) == 1);
  CHECK(f.backend->List(other)->empty());

  DiskCreateOptions o;
  o.size = MiB;
  REQUIRE(f.backend->Create(DiskRef{other, "d"}, o).ok());
  CHECK(f.backend->RemoveInstance(other).code() == Code::kNotEmpty);
  REQUIRE(f.backend->Remove(DiskRef{other, "d"}).ok());
  // Made by CreateInstance: stays when its last disk goes.
  insts = f.backend->ListInstances();
  CHECK(std::count(insts->begin(), insts->end(), other) == 1);
  REQUIRE(f.backend->RemoveInstance(other).ok());
  CHECK(f.backend->RemoveInstance(other).IsNotFound());
  CHECK(f.backend->List(other).status().IsNotFound());

  // Made implicitly by creating a disk: goes with its last disk.
  f.CreateBlank("d", MiB);
  insts = f.backend->ListInstances();
  CHECK(std::count(insts->begin(), insts->end(), f.instance) == 1);
  REQUIRE(f.backend->Remove(f.Ref("d")).ok());
  insts = f.backend->ListInstances();
  CHECK(std::count(insts->begin(), insts->end(), f.instance) == 0);
}

TEST_CASE("Disk conformance: rename keeps data; attrs persist", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  f.CreateBlank("a", MiB);
  f.CreateBlank("b", MiB);
  std::mt19937_64 rng(4);
  Bytes data = RandomBytes(rng, 5000);
  {
    auto d = f.OpenRW("a");
    REQUIRE(d->Write(12345, ByteView(data)).ok());
    REQUIRE(d->Flush().ok());
  }
  CHECK(f.backend->Rename(f.Ref("a"), f.Ref("b")).IsAlreadyExists());
  REQUIRE(f.backend->Rename(f.Ref("a"), f.Ref("c")).ok());
  CHECK(f.backend->Info(f.Ref("a")).status().IsNotFound());
  {
    auto d = f.OpenRW("c");
    CHECK(Diff(ReadAll(*d, 12345, data.size()), data) == "");
  }
  CHECK(f.backend->Rename(f.Ref("nope"), f.Ref("x")).IsNotFound());

  DiskAttrs attrs{0600, 107, 115};
  REQUIRE(f.backend->SetAttrs(f.Ref("c"), attrs).ok());
  auto info = f.backend->Info(f.Ref("c"));
  REQUIRE(info.ok());
  CHECK(info->attrs.mode == 0600);
  CHECK(info->attrs.uid == 107);
  CHECK(info->attrs.gid == 115);
  // Attributes set while the disk is open survive its later resize.
  auto d = f.OpenRW("c");
  REQUIRE(f.backend->SetAttrs(f.Ref("c"), DiskAttrs{0640, 1, 2}).ok());
  REQUIRE(d->Resize(2 * MiB, false).ok());
  REQUIRE(d->Flush().ok());
  d.reset();
  info = f.backend->Info(f.Ref("c"));
  CHECK(info->attrs.mode == 0640);
  CHECK(info->size == 2 * MiB);
  CHECK(f.backend->SetAttrs(f.Ref("nope"), attrs).IsNotFound());
}

TEST_CASE("Disk conformance: Allocated covers every non-zero byte", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  f.CreateBlank("d", 8 * MiB);
  auto d = f.OpenRW("d");
  auto ext = d->Allocated(0, d->size());
  REQUIRE(ext.ok());
  CHECK(ext->empty());
  std::mt19937_64 rng(5);
  Bytes data = RandomBytes(rng, 100 * KiB);
  REQUIRE(d->Write(3 * MiB + 17, ByteView(data)).ok());
  ext = d->Allocated(0, d->size());
  REQUIRE(ext.ok());
  REQUIRE(!ext->empty());
  uint64_t covered = 0;
  for (const auto& e : *ext) {
    CHECK(e.offset + e.length <= d->size());
    if (e.offset <= 3 * MiB + 17 && e.offset + e.length >= 3 * MiB + 17 + data.size()) covered++;
  }
  CHECK(covered == 1);
  // Clipped to the asked range.
  ext = d->Allocated(3 * MiB + 20, 10);
  REQUIRE(ext.ok());
  REQUIRE(ext->size() == 1);
  CHECK((*ext)[0] == Extent{3 * MiB + 20, 10});
  ext = d->Allocated(0, MiB);
  REQUIRE(ext.ok());
  // rbd maps whole 4 MiB RADOS objects (rbd_diff_iterate2), which disk.h
  // allows: Allocated may over-report.
  if (!kind.starts_with("rbd:")) CHECK(ext->empty());
}

TEST_CASE("Disk conformance: many threads read and write at once", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  constexpr int kThreads = 8;
  constexpr uint64_t kRegion = 256 * KiB;
  f.CreateBlank("d", kThreads * kRegion);
  auto d = f.OpenRW("d");
  std::vector<Bytes> want(kThreads, Bytes(kRegion, 0));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      uint64_t base = t * kRegion;
      for (int i = 0; i < 300; ++i) {
        uint64_t off = rng() % kRegion;
        uint64_t len = 1 + rng() % std::min<uint64_t>(kRegion - off, 9000);
        if (rng() % 4 == 0) {
          Bytes got(len);
          if (!d->Read(base + off, MutableByteView(got)).ok() ||
              std::memcmp(got.data(), want[t].data() + off, len) != 0) {
            failures++;
          }
        } else {
          Bytes data = RandomBytes(rng, len);
          if (!d->Write(base + off, ByteView(data)).ok()) failures++;
          std::memcpy(want[t].data() + off, data.data(), len);
        }
        if (i % 100 == 0 && !d->Flush().ok()) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  for (int t = 0; t < kThreads; ++t) CHECK(Diff(ReadAll(*d, t * kRegion, kRegion), want[t]) == "");
}

TEST_CASE("Disk conformance: a clone reads its image and copies up on write", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  std::mt19937_64 rng(6);
  Bytes image = RandomImage(rng, 40 * kImageChunk + 999, kImageChunk, 1000);
  std::fill_n(image.data() + 5 * kImageChunk, kImageChunk, 0);  // a hole
  ImageId id = f.CreateFrom("d", image);
  auto info = f.backend->Info(f.Ref("d"));
  REQUIRE(info.ok());
  CHECK(info->size == image.size());
  REQUIRE(info->parent);
  CHECK(*info->parent == id);

  auto d = f.OpenRW("d");
  CHECK(Diff(ReadAll(*d, 0, image.size()), image) == "");
  // Partial writes to chunks the disk does not own keep the rest of the chunk.
  Bytes want = image;
  Bytes a = RandomBytes(rng, 100);
  REQUIRE(d->Write(3 * kImageChunk + 50, ByteView(a)).ok());
  std::memcpy(want.data() + 3 * kImageChunk + 50, a.data(), a.size());
  Bytes b = RandomBytes(rng, kImageChunk + 10);
  REQUIRE(d->Write(7 * kImageChunk - 5, ByteView(b)).ok());
  std::memcpy(want.data() + 7 * kImageChunk - 5, b.data(), b.size());
  Bytes c = RandomBytes(rng, 10);
  REQUIRE(d->Write(5 * kImageChunk + 10, ByteView(c)).ok());  // into the hole
  std::memcpy(want.data() + 5 * kImageChunk + 10, c.data(), c.size());
  REQUIRE(d->Write(image.size() - 3, ByteView(c).first(3)).ok());  // the short last chunk
  std::memcpy(want.data() + image.size() - 3, c.data(), 3);
  CHECK(Diff(ReadAll(*d, 0, image.size()), want) == "");

  // Discard reads zeros, not the image's bytes: partial, whole, and owned chunks.
  REQUIRE(d->Discard(10 * kImageChunk + 7, 20).ok());
  REQUIRE(d->Discard(12 * kImageChunk, 3 * kImageChunk).ok());
  REQUIRE(d->Discard(3 * kImageChunk, kImageChunk).ok());
  std::fill_n(want.data() + 10 * kImageChunk + 7, 20, 0);
  std::fill_n(want.data() + 12 * kImageChunk, 3 * kImageChunk, 0);
  std::fill_n(want.data() + 3 * kImageChunk, kImageChunk, 0);
  CHECK(Diff(ReadAll(*d, 0, image.size()), want) == "");

  // Allocated covers the image's data and leaves out its hole and discards.
  auto ext = d->Allocated(0, d->size());
  REQUIRE(ext.ok());
  auto covered = [&](uint64_t off) {
    for (const auto& e : *ext) {
      if (off >= e.offset && off < e.offset + e.length) return true;
    }
    return false;
  };
  for (uint64_t off = 0; off < want.size(); ++off) {
    if (want[off] && !covered(off)) FAIL("non-zero byte " << off << " not allocated");
  }
  if (!kind.starts_with("rbd:")) CHECK(!covered(13 * kImageChunk));  // rbd: whole objects

  REQUIRE(d->Flush().ok());
  d.reset();
  d = f.OpenRW("d");
  CHECK(Diff(ReadAll(*d, 0, image.size()), want) == "");

  // Shrinking below the image hides its tail for good (the parent overlap).
  REQUIRE(d->Resize(20 * kImageChunk + 1, true).ok());
  REQUIRE(d->Resize(image.size() + MiB, false).ok());
  Bytes regrown(image.size() + MiB, 0);
  std::memcpy(regrown.data(), want.data(), 20 * kImageChunk + 1);
  CHECK(Diff(ReadAll(*d, 0, regrown.size()), regrown) == "");
  d.reset();
  d = f.OpenRW("d");
  CHECK(Diff(ReadAll(*d, 0, regrown.size()), regrown) == "");
}

TEST_CASE("Disk conformance: clone sizes", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  std::mt19937_64 rng(7);
  Bytes image = RandomBytes(rng, 100 * KiB);
  auto id = f.images.Add(image);
  REQUIRE(id.ok());
  DiskCreateOptions o;
  o.image = *id;
  o.size = image.size() - 1;
  Status s = f.backend->Create(f.Ref("small"), o);
  CHECK(s.IsInvalidArgument());
  CHECK(s.message().find("smaller than the image") != std::string::npos);
  CHECK(f.backend->Info(f.Ref("small")).status().IsNotFound());
  o.size = 10 * MiB;
  REQUIRE(f.backend->Create(f.Ref("big"), o).ok());
  REQUIRE(f.backend->Resize(f.Ref("big"), 10 * MiB - 1, true).ok());
  REQUIRE(f.backend->Resize(f.Ref("big"), 10 * MiB, false).ok());
  auto d = f.OpenRW("big");
  CHECK(d->size() == 10 * MiB);
  CHECK(Diff(ReadAll(*d, 0, image.size()), image) == "");
  CHECK(AllZero(ReadAll(*d, image.size(), 10 * MiB - image.size())));
}

TEST_CASE("Disk conformance: concurrent copy-ups of the same chunks lose nothing", "[disk]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  INFO("backend " << kind);
  std::mt19937_64 rng(8);
  Bytes image = RandomImage(rng, 64 * kImageChunk, kImageChunk, 5);
  f.CreateFrom("d", image);
  auto d = f.OpenRW("d");
  // Thread t owns the 512-byte pieces p with p % kThreads == t: every chunk is
  // written by every thread, so copy-ups race.
  constexpr int kThreads = 6;
  constexpr uint64_t kPiece = 512;
  Bytes want = image;
  std::vector<Bytes> data;
  for (int t = 0; t < kThreads; ++t) data.push_back(RandomBytes(rng, image.size()));
  for (uint64_t p = 0; p < image.size() / kPiece; ++p) {
    std::memcpy(want.data() + p * kPiece, data[p % kThreads].data() + p * kPiece, kPiece);
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t p = t; p < image.size() / kPiece; p += kThreads) {
        ByteView piece(data[t].data() + p * kPiece, kPiece);
        if (!d->Write(p * kPiece, piece).ok()) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(Diff(ReadAll(*d, 0, image.size()), want) == "");
  REQUIRE(d->Flush().ok());
  d.reset();
  d = f.OpenRW("d");
  CHECK(Diff(ReadAll(*d, 0, image.size()), want) == "");
}

namespace {

// Reads through one of the three read forms (Read, ReadAsync,
// ReadBuffersAsync), so that the model checks each of them.
Status ReadVia(Disk& d, int form, uint64_t off, MutableByteView out) {
  if (form == 0) return d.Read(off, out);
  if (form == 1) {
    std::promise<Status> p;
    d.ReadAsync(off, out, [&p](Status st) { p.set_value(std::move(st)); });
    return p.get_future().get();
  }
  std::promise<Result<ReadBuffers>> p;
  d.ReadBuffersAsync(off, out.size(), [&p](Result<ReadBuffers> r) { p.set_value(std::move(r)); });
  Result<ReadBuffers> r = p.get_future().get();
  if (!r.ok()) return r.status();
  if (r->size() != out.size()) {
    return Status::IOError("ReadBuffersAsync returned " + std::to_string(r->size()) +
                           " bytes, want " + std::to_string(out.size()));
  }
  r->CopyTo(out);
  return Status::OK();
}

// Runs `ops` random operations against `disk` and an in-memory reference;
// every read is compared with the reference.
void RunModel(Fixture& f, const std::string& name, Bytes model, uint64_t chunk, uint64_t seed,
              int ops) {
  std::mt19937_64 rng(seed);
  auto d = f.OpenRW(name);
  REQUIRE(d->size() == model.size());
  auto pick_offset = [&](uint64_t size) -> uint64_t {
    if (size == 0) return 0;
    switch (rng() % 3) {
      case 0: {  // near a chunk boundary
        uint64_t b = (rng() % (size / chunk + 1)) * chunk;
        int64_t delta = static_cast<int64_t>(rng() % 64) - 32;
        int64_t o = static_cast<int64_t>(b) + delta;
        return static_cast<uint64_t>(std::clamp<int64_t>(o, 0, static_cast<int64_t>(size)));
      }
      default:
        return rng() % (size + 1);
    }
  };
  auto pick_length = [&](uint64_t max) -> uint64_t {
    if (max == 0) return 0;
    uint64_t len;
    switch (rng() % 4) {
      case 0:
        len = 1 + rng() % 16;
        break;
      case 1:
        len = 1 + rng() % 4096;
        break;
      case 2:
        len = 1 + rng() % (2 * chunk + 100);
        break;
      default:
        len = 1 + rng() % (5 * chunk);
        break;
    }
    return std::min(len, max);
  };
  for (int i = 0; i < ops; ++i) {
    uint64_t size = model.size();
    int op = static_cast<int>(rng() % 100);
    INFO("op " << i << " of seed " << seed << ", size " << size);
    if (op < 35) {
      uint64_t off = pick_offset(size);
      uint64_t len = pick_length(size - off);
      Bytes data = RandomBytes(rng, len);
      if (rng() % 8 == 0) std::fill(data.begin(), data.end(), 0);
      INFO("write " << off << "+" << len);
      REQUIRE(d->Write(off, ByteView(data)).ok());
      std::copy(data.begin(), data.end(), model.begin() + static_cast<ptrdiff_t>(off));
    } else if (op < 65) {
      uint64_t off = pick_offset(size);
      uint64_t len = pick_length(size - off);
      Bytes got(len, 0xee);
      int form = static_cast<int>(rng() % 3);
      INFO("read " << off << "+" << len << " (form " << form << ")");
      Status st = ReadVia(*d, form, off, MutableByteView(got));
      INFO(st.ToString());
      REQUIRE(st.ok());
      if (len && std::memcmp(got.data(), model.data() + off, len) != 0) {
        size_t k = 0;
        while (got[k] == model[off + k]) ++k;
        FAIL("byte " << off + k << " reads " << int(got[k]) << ", want " << int(model[off + k]));
      }
    } else if (op < 75) {
      uint64_t off = pick_offset(size);
      uint64_t len = pick_length(size - off + 1000);
      INFO("discard " << off << "+" << len);
      REQUIRE(d->Discard(off, len).ok());
      if (off < size) std::fill_n(model.data() + off, std::min(len, size - off), 0);
    } else if (op < 80) {
      uint64_t n = size + rng() % (3 * chunk);
      if (n > 6 * MiB) n = size;
      INFO("grow to " << n);
      REQUIRE(d->Resize(n, false).ok());
      model.resize(n, 0);
    } else if (op < 83) {
      uint64_t n = size ? rng() % size : 0;
      INFO("shrink to " << n);
      CHECK(d->Resize(n, false).code() == (n < size ? Code::kPermissionDenied : Code::kOk));
      REQUIRE(d->Resize(n, true).ok());
      model.resize(n);
    } else if (op < 90) {
      REQUIRE(d->Flush().ok());
    } else if (op < 95) {
      if (rng() % 2) REQUIRE(d->Flush().ok());
      d.reset();
      d = f.OpenRW(name);
      REQUIRE(d->size() == model.size());
    } else {
      uint64_t off = pick_offset(size);
      uint64_t len = pick_length(size - off);
      auto ext = d->Allocated(off, len);
      REQUIRE(ext.ok());
      auto zeros = [&](uint64_t a, uint64_t b) {
        for (uint64_t k = a; k < b; ++k) {
          if (model[k]) FAIL("byte " << k << " is outside the allocated extents but not zero");
        }
      };
      uint64_t pos = off;
      for (const auto& e : *ext) {
        REQUIRE(e.offset >= pos);
        REQUIRE(e.offset + e.length <= off + len);
        zeros(pos, e.offset);
        pos = e.offset + e.length;
      }
      zeros(pos, off + len);
    }
  }
  Bytes all(model.size());
  REQUIRE(d->Read(0, MutableByteView(all)).ok());
  CHECK(Diff(all, model) == "");
}

}  // namespace

TEST_CASE("Disk conformance: model-based random operations", "[disk][model]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  uint64_t seed = TestSeed();
  int ops = EnvInt("IMGFS_TEST_OPS", 4000);
  std::cout << "disk model test (" << kind << "): IMGFS_TEST_SEED=" << seed << " ops=" << ops
            << std::endl;
  INFO("backend " << kind << ", replay with IMGFS_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  uint64_t size = rng() % (3 * MiB);
  f.CreateBlank("model", size);
  RunModel(f, "model", Bytes(size, 0), 64 * KiB, seed, ops);
}

TEST_CASE("Disk conformance: model-based random operations over a parent image", "[disk][model]") {
  auto kind = GENERATE(from_range(DiskBackendKinds()));
  Fixture f(kind);
  uint64_t seed = TestSeed();
  int ops = EnvInt("IMGFS_TEST_OPS", 4000);
  std::cout << "disk model test over a parent (" << kind << "): IMGFS_TEST_SEED=" << seed
            << " ops=" << ops << std::endl;
  INFO("backend " << kind << ", replay with IMGFS_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  Bytes image = RandomImage(rng, 1 + rng() % (2 * MiB), kImageChunk, 4);
  uint64_t size = image.size() + (rng() % 2 ? rng() % MiB : 0);
  f.CreateFrom("model", image, size);
  Bytes model = image;
  model.resize(size, 0);
  RunModel(f, "model", model, kImageChunk, seed, ops);
}
