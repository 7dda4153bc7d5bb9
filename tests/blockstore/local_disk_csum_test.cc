// Checksums of local disks' data (docs/formats.md, "Checksums"): a damaged
// block reads as EIO and fsck names it; old disks keep working; a crash never
// leaves a block and its checksum disagreeing.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "blockstore/disk.h"
#include "blockstore/file_util.h"
#include "tests/blockstore/disk_test_util.h"

using namespace imgfs;
using namespace imgfs::testing;

namespace {

constexpr uint64_t KiB = 1024, MiB = 1024 * 1024;

struct Local {
  Local() { Reopen(); }
  void Reopen() {
    backend.reset();
    auto r = CreateDiskBackend("local", dir.path(), &images);
    REQUIRE(r.ok());
    backend = std::move(r).value();
  }
  std::string DiskDir(const DiskRef& ref) const {
    return dir.path() + "/disks/" + ref.instance + "/" + ref.disk;
  }
  std::unique_ptr<Disk> Open(const std::string& name, OpenMode mode = OpenMode::kReadWrite) {
    auto d = backend->Open(DiskRef{"vm1", name}, mode);
    INFO(d.status().ToString());
    REQUIRE(d.ok());
    return std::move(d).value();
  }
  std::vector<std::string> Check(const std::string& name) {
    std::vector<std::string> problems;
    REQUIRE(backend->Check(DiskRef{"vm1", name}, &problems).ok());
    return problems;
  }
  TempDir dir;
  TestImages images{64 * 1024};
  std::unique_ptr<DiskBackend> backend;
};

uint32_t DirtyCount(const std::string& csum) {
  auto text = ReadFile(csum);
  REQUIRE(text.ok());
  REQUIRE(text->size() >= 4096);
  uint32_t n;
  std::memcpy(&n, text->data() + 20, 4);
  return n;
}

// Makes the allocation map of the disk at `dir` a version 1 map with the
// same bits (those of chunks below 4032: the first page).
void MakeMapVersion1(const std::string& dir) {
  auto map = ReadFile(dir + "/bitmap");
  REQUIRE(map.ok());
  std::string v1 = map->substr(0, 4096);
  v1[8] = 1;
  if (map->size() > 4096) v1 += map->substr(4096, 504) + std::string(4096 - 504, '\0');
  REQUIRE(WriteFileAtomic(dir + "/bitmap", v1).ok());
}

// Makes the disk at `dir` what imgfs before checksums wrote: metadata
// version 1 without its "xxh3" field, no csum file, a version 1 map.
void MakeVersion1(const std::string& dir) {
  auto j = nlohmann::json::parse(*ReadFile(dir + "/meta.json"));
  j["version"] = 1;
  j.erase("xxh3");
  REQUIRE(WriteFileAtomic(dir + "/meta.json", j.dump(2) + "\n").ok());
  REQUIRE(::unlink((dir + "/csum").c_str()) == 0);
  MakeMapVersion1(dir);
}

uint32_t MapVersion(const std::string& dir) {
  auto map = ReadFile(dir + "/bitmap");
  REQUIRE(map.ok());
  REQUIRE(map->size() >= 4096);
  uint32_t v;
  std::memcpy(&v, map->data() + 8, 4);
  return v;
}

}  // namespace

TEST_CASE("Local disk checksums: a flipped bit in the data is EIO and fsck names it",
          "[disk][local][csum]") {
  Local l;
  std::mt19937_64 rng(TestSeed());
  auto img = l.images.Add(RandomBytes(rng, MiB));
  REQUIRE(img.ok());
  DiskCreateOptions o;
  o.image = *img;
  REQUIRE(l.backend->Create(Ref("d"), o).ok());
  Bytes data = RandomBytes(rng, 256 * KiB);
  {
    auto d = l.Open("d");
    REQUIRE(d->Write(128 * KiB, ByteView(data)).ok());  // copy-ups of whole chunks
    Bytes part = RandomBytes(rng, 1000);
    REQUIRE(d->Write(600 * KiB + 77, ByteView(part)).ok());  // a copy-up of part of a chunk
    REQUIRE(d->Flush().ok());
  }
  CHECK(l.Check("d").empty());

  std::string path = l.DiskDir(Ref("d")) + "/data";
  FlipBit(path, 200 * KiB + 5);
  {
    auto d = l.Open("d", OpenMode::kReadOnly);
    Bytes buf(64 * KiB);
    Status s = d->Read(192 * KiB, MutableByteView(buf));
    CHECK(s.IsCorruption());
    CHECK(s.ToErrno() == EIO);
    CHECK(s.message().find("vm1/d") != std::string::npos);
    CHECK(s.message().find("offset " + std::to_string(200 * KiB)) != std::string::npos);
    // A read of one byte of the block fails too; its neighbours read.
    Bytes one(1);
    CHECK(d->Read(200 * KiB + 4000, MutableByteView(one)).IsCorruption());
    Bytes next(4 * KiB);
    REQUIRE(d->Read(204 * KiB, MutableByteView(next)).ok());
    CHECK(std::memcmp(next.data(), data.data() + 76 * KiB, 4 * KiB) == 0);
  }
  auto problems = l.Check("d");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("vm1/d") != std::string::npos);
  CHECK(problems[0].find("offset " + std::to_string(200 * KiB)) != std::string::npos);

  {
    auto d = l.Open("d");
    // A write of part of the damaged block does not make it look sound.
    Bytes x(10, 0x5a);
    CHECK(d->Write(200 * KiB + 100, ByteView(x)).IsCorruption());
    // Rewriting the whole block does.
    Bytes block(4 * KiB, 0x11);
    REQUIRE(d->Write(200 * KiB, ByteView(block)).ok());
    Bytes got(4 * KiB);
    REQUIRE(d->Read(200 * KiB, MutableByteView(got)).ok());
    CHECK(got == block);
  }
  CHECK(l.Check("d").empty());

  // Many damaged blocks: fsck names 20 and counts the rest.
  for (uint64_t b = 0; b < 30; ++b) FlipBit(path, 128 * KiB + b * 4 * KiB + 9);
  problems = l.Check("d");
  REQUIRE(problems.size() == 21);
  CHECK(problems[20].find("10 more damaged") != std::string::npos);
}

TEST_CASE("Local disk checksums: a flipped bit in the checksum file is EIO",
          "[disk][local][csum]") {
  Local l;
  REQUIRE(l.backend->Create(Ref("d"), Blank(MiB)).ok());
  Bytes data(64 * KiB, 0x42);
  {
    auto d = l.Open("d");
    REQUIRE(d->Write(0, ByteView(data)).ok());
  }
  std::string csum = l.DiskDir(Ref("d")) + "/csum";
  FlipBit(csum, 4096 + 3 * 8 + 2);  // block 3's checksum
  auto d = l.Open("d", OpenMode::kReadOnly);
  Bytes buf(64 * KiB);
  Status s = d->Read(0, MutableByteView(buf));
  CHECK(s.IsCorruption());
  CHECK(s.message().find("offset 12288") != std::string::npos);
  auto problems = l.Check("d");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("offset 12288") != std::string::npos);

  // A damaged header is refused with a clear error; nothing is changed.
  d.reset();
  FlipBit(csum, 1);
  auto before = ReadFile(csum);
  CHECK(l.backend->Open(Ref("d"), OpenMode::kReadWrite).status().IsCorruption());
  CHECK(*ReadFile(csum) == *before);
  problems = l.Check("d");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("bad magic") != std::string::npos);
}

TEST_CASE("Local disk checksums: unaligned writes, discards, shrink and grow stay consistent",
          "[disk][local][csum]") {
  Local l;
  std::mt19937_64 rng(TestSeed());
  auto img = l.images.Add(RandomBytes(rng, 2 * MiB + 1000));
  REQUIRE(img.ok());
  DiskCreateOptions o;
  o.image = *img;
  REQUIRE(l.backend->Create(Ref("d"), o).ok());
  uint64_t size = 2 * MiB + 1000;
  Bytes model(size);
  {
    auto d = l.Open("d");
    REQUIRE(d->Read(0, MutableByteView(model)).ok());
    for (int i = 0; i < 400; ++i) {
      uint64_t off = rng() % size;
      uint64_t len = std::min<uint64_t>(1 + rng() % (rng() % 4 ? 9000 : 200 * KiB), size - off);
      if (rng() % 4 == 0) {
        REQUIRE(d->Discard(off, len).ok());
        std::memset(model.data() + off, 0, len);
      } else {
        Bytes x = RandomBytes(rng, len);
        REQUIRE(d->Write(off, ByteView(x)).ok());
        std::memcpy(model.data() + off, x.data(), len);
      }
      if (i % 50 == 0) REQUIRE(d->Flush().ok());
    }
    Bytes got(size);
    REQUIRE(d->Read(0, MutableByteView(got)).ok());
    CHECK(Diff(got, model).empty());
    // Shrink into the middle of a block, then grow: the cut block reads.
    REQUIRE(d->Resize(MiB + 100, true).ok());
    REQUIRE(d->Resize(size, false).ok());
    std::memset(model.data() + MiB + 100, 0, size - MiB - 100);
    REQUIRE(d->Read(0, MutableByteView(got)).ok());
    CHECK(Diff(got, model).empty());
  }
  CHECK(l.Check("d").empty());
  auto d = l.Open("d", OpenMode::kReadOnly);
  Bytes got(size);
  REQUIRE(d->Read(0, MutableByteView(got)).ok());
  CHECK(Diff(got, model).empty());
}

TEST_CASE("Local disk checksums: concurrent writes and reads of the same blocks never fail",
          "[disk][local][csum]") {
  Local l;
  REQUIRE(l.backend->Create(Ref("d"), Blank(256 * KiB)).ok());
  auto d = l.Open("d");
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(TestSeed() + t);
      for (int i = 0; i < 3000 && !stop; ++i) {
        uint64_t off = rng() % (256 * KiB - 8 * KiB);
        uint64_t len = 1 + rng() % (8 * KiB);
        Status s;
        if (t % 2 == 0) {
          Bytes x = RandomBytes(rng, len);
          s = d->Write(off, ByteView(x));
        } else {
          Bytes x(len);
          s = d->Read(off, MutableByteView(x));
        }
        if (!s.ok()) {
          UNSCOPED_INFO(s.ToString());
          ++failures;
          stop = true;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  d.reset();
  CHECK(l.Check("d").empty());
}

TEST_CASE("Local disk checksums: version 1 disks are read as before and upgraded on writing",
          "[disk][local][csum]") {
  Local l;
  REQUIRE(l.backend->Create(Ref("old"), Blank(MiB)).ok());
  Bytes a(100 * KiB, 0x61);
  {
    auto d = l.Open("old");
    REQUIRE(d->Write(0, ByteView(a)).ok());
  }
  // Make it what imgfs before checksums wrote.
  std::string dir = l.DiskDir(Ref("old"));
  MakeVersion1(dir);
  FlipBit(dir + "/data", 10);  // undetectable on a version 1 disk
  a[10] ^= 8;

  {
    auto d = l.Open("old", OpenMode::kReadOnly);
    Bytes got(100 * KiB);
    REQUIRE(d->Read(0, MutableByteView(got)).ok());
    CHECK(got == a);
  }
  CHECK(::access((dir + "/csum").c_str(), F_OK) != 0);  // a reader changes nothing
  CHECK(MapVersion(dir) == 1);
  CHECK(l.Check("old").empty());

  Bytes b(8 * KiB, 0x62);
  {
    auto d = l.Open("old");  // upgrades
    Bytes got(100 * KiB);
    REQUIRE(d->Read(0, MutableByteView(got)).ok());
    CHECK(got == a);
    REQUIRE(d->Write(200 * KiB, ByteView(b)).ok());
    REQUIRE(d->Write(50, ByteView(b.data(), 100)).ok());  // part of an old block
  }
  auto j = nlohmann::json::parse(*ReadFile(dir + "/meta.json"));
  CHECK(j["version"] == 2);
  CHECK(j.contains("xxh3"));  // sealed by the upgrade's rewrite
  CHECK(MapVersion(dir) == 2);
  CHECK(l.Check("old").empty());
  // Blocks written since the upgrade are verified; older ones are not.
  FlipBit(dir + "/data", 200 * KiB + 1);
  FlipBit(dir + "/data", 20 * KiB);
  auto d = l.Open("old", OpenMode::kReadOnly);
  Bytes got(4 * KiB);
  CHECK(d->Read(200 * KiB, MutableByteView(got)).IsCorruption());
  CHECK(d->Read(20 * KiB, MutableByteView(got)).ok());
  CHECK(d->Read(0, MutableByteView(got)).ok());
  auto problems = l.Check("old");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("offset " + std::to_string(200 * KiB)) != std::string::npos);
}

TEST_CASE(
    "Local disk checksums: a crash leaves the regions it wrote dirty, and they are "
    "recomputed",
    "[disk][local][csum]") {
  Local l;
  REQUIRE(l.backend->Create(Ref("d"), Blank(256 * MiB)).ok());
  std::string dir = l.DiskDir(Ref("d"));
  Bytes a(64 * KiB, 0x61);
  {
    auto d = l.Open("d");
    REQUIRE(d->Write(0, ByteView(a)).ok());
    REQUIRE(d->Write(100 * MiB, ByteView(a)).ok());
    REQUIRE(d->Flush().ok());
    CHECK(DirtyCount(dir + "/csum") == 2);  // regions 0 and 1, until idle or closed
  }
  CHECK(DirtyCount(dir + "/csum") == 0);  // a clean close

  // A writer that dies between writing a block and its checksum (here: one
  // that exits without closing after writing region 0; the data of a write
  // that was never flushed is then changed behind its back, as a power cut
  // may leave it).
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto d = l.backend->Open(Ref("d"), OpenMode::kReadWrite);
    if (!d.ok()) ::_exit(10);
    Bytes b(4 * KiB, 0x62);
    if (!(*d)->Write(8 * KiB, ByteView(b)).ok()) ::_exit(11);
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  CHECK(DirtyCount(dir + "/csum") == 1);
  FlipBit(dir + "/data", 8 * KiB + 7);       // a torn unflushed write: region 0 is dirty
  FlipBit(dir + "/data", 100 * MiB + 4000);  // bit rot in region 1, which is clean

  {
    // A reader meanwhile does not fail on the dirty region.
    auto d = l.Open("d", OpenMode::kReadOnly);
    Bytes got(4 * KiB);
    CHECK(d->Read(8 * KiB, MutableByteView(got)).ok());
    CHECK(d->Read(100 * MiB, MutableByteView(got)).IsCorruption());
  }
  auto problems = l.Check("d");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("offset " + std::to_string(100 * MiB)) != std::string::npos);
  {
    auto d = l.Open("d");  // recomputes region 0's checksums
    CHECK(DirtyCount(dir + "/csum") == 0);
    Bytes got(4 * KiB);
    REQUIRE(d->Read(8 * KiB, MutableByteView(got)).ok());
    Bytes want(4 * KiB, 0x62);
    want[7] ^= 8;
    CHECK(got == want);
    CHECK(d->Read(100 * MiB, MutableByteView(got)).IsCorruption());
  }
}

TEST_CASE("Local disk allocation map: a damaged page fails the open and fsck names it",
          "[disk][local][csum]") {
  Local l;
  REQUIRE(l.backend->Create(Ref("d"), Blank(MiB)).ok());  // 16 chunks of 64 KiB
  std::string dir = l.DiskDir(Ref("d"));
  Bytes a(64 * KiB, 0x61);
  {
    auto d = l.Open("d");
    REQUIRE(d->Write(64 * KiB, ByteView(a)).ok());
    REQUIRE(d->Write(192 * KiB, ByteView(a)).ok());
  }
  CHECK(MapVersion(dir) == 2);
  auto map = ReadFile(dir + "/bitmap");
  REQUIRE(map->size() == 8192);
  CHECK(static_cast<uint8_t>((*map)[4096]) == 0x0a);  // chunks 1 and 3
  CHECK(l.Check("d").empty());

  // Each bit of the first page (bits and checksum) and of a page never
  // written (all zeros) is caught: an owned chunk never reads its parent or
  // zeros.
  for (uint64_t off : {4096ull, 4096ull + 100, 4096ull + 504, 4096ull + 511, 4096ull + 512,
                       4096ull + 7 * 512 + 3}) {
    INFO("byte " << off);
    for (int bit : {0, 1, 3, 7}) {
      FlipBit(dir + "/bitmap", off, bit);
      for (OpenMode mode : {OpenMode::kReadOnly, OpenMode::kReadWrite}) {
        Status s = l.backend->Open(Ref("d"), mode).status();
        CHECK(s.IsCorruption());
        uint64_t page = (off - 4096) / 512;
        CHECK(s.message().find("page " + std::to_string(page) + " (chunks " +
                               std::to_string(page * 4032)) != std::string::npos);
      }
      auto problems = l.Check("d");
      REQUIRE(problems.size() == 1);
      CHECK(problems[0].find("vm1/d") != std::string::npos);
      CHECK(problems[0].find("page " + std::to_string((off - 4096) / 512)) != std::string::npos);
      FlipBit(dir + "/bitmap", off, bit);
    }
  }
  // Mended, it opens and reads as before.
  CHECK(l.Check("d").empty());
  auto d = l.Open("d");
  Bytes got(64 * KiB);
  REQUIRE(d->Read(192 * KiB, MutableByteView(got)).ok());
  CHECK(got == a);
}

TEST_CASE("Local disk allocation map: pages far into a large disk are sealed and checked",
          "[disk][local][csum]") {
  Local l;
  REQUIRE(l.backend->Create(Ref("big"), Blank(uint64_t{1} << 40)).ok());
  std::string dir = l.DiskDir(Ref("big"));
  Bytes a(4 * KiB, 0x61);
  // Chunk 4031 (the last of page 0), 4032 (the first of page 1) and one in
  // the second 4 KiB block of the map (page 8 on).
  std::vector<uint64_t> chunks = {4031, 4032, 8 * 4032 + 17};
  {
    auto d = l.Open("big");
    for (uint64_t c : chunks) REQUIRE(d->Write(c * 64 * KiB, ByteView(a)).ok());
  }
  l.Reopen();
  {
    auto d = l.Open("big", OpenMode::kReadOnly);
    for (uint64_t c : chunks) {
      Bytes got(4 * KiB);
      REQUIRE(d->Read(c * 64 * KiB, MutableByteView(got)).ok());
      CHECK(got == a);
    }
    auto ext = d->Allocated(0, d->size());
    REQUIRE(ext.ok());
    REQUIRE(ext->size() == 3);
    for (size_t i = 0; i < 3; ++i) CHECK(ext->at(i).offset == chunks[i] * 64 * KiB);
  }
  FlipBit(dir + "/bitmap", 4096 + 4096 + 512 + 2, 0);  // page 9
  Status s = l.backend->Open(Ref("big"), OpenMode::kReadOnly).status();
  CHECK(s.IsCorruption());
  CHECK(s.message().find("page 9 (chunks 36288 to 40319)") != std::string::npos);
}

TEST_CASE("Local disk allocation map: version 1 is read as it is and upgraded on writing",
          "[disk][local][csum]") {
  Local l;
  REQUIRE(l.backend->Create(Ref("old"), Blank(MiB)).ok());
  std::string dir = l.DiskDir(Ref("old"));
  Bytes a(64 * KiB, 0x61), b(64 * KiB, 0x62);
  {
    auto d = l.Open("old");
    REQUIRE(d->Write(64 * KiB, ByteView(a)).ok());
    REQUIRE(d->Write(192 * KiB, ByteView(a)).ok());
  }
  // Only the map is old (a disk written by an imgfs with data checksums but
  // without map checksums never existed, but the two upgrades are apart).
  MakeMapVersion1(dir);
  {
    auto d = l.Open("old", OpenMode::kReadOnly);
    Bytes got(64 * KiB);
    REQUIRE(d->Read(192 * KiB, MutableByteView(got)).ok());
    CHECK(got == a);
    REQUIRE(d->Read(128 * KiB, MutableByteView(got)).ok());
    CHECK(got == Bytes(64 * KiB, 0));
  }
  CHECK(MapVersion(dir) == 1);
  CHECK(l.Check("old").empty());
  {
    auto d = l.Open("old");  // upgrades
    CHECK(MapVersion(dir) == 2);
    REQUIRE(d->Write(320 * KiB, ByteView(b)).ok());
  }
  CHECK(::access((dir + "/bitmap.new").c_str(), F_OK) != 0);
  auto map = ReadFile(dir + "/bitmap");
  CHECK(static_cast<uint8_t>((*map)[4096]) == 0x2a);  // chunks 1, 3 and 5
  CHECK(l.Check("old").empty());
  auto d = l.Open("old", OpenMode::kReadOnly);
  Bytes got(64 * KiB);
  REQUIRE(d->Read(64 * KiB, MutableByteView(got)).ok());
  CHECK(got == a);
  REQUIRE(d->Read(320 * KiB, MutableByteView(got)).ok());
  CHECK(got == b);
}

TEST_CASE("Local disk metadata: a changed value is caught by its checksum", "[disk][local][csum]") {
  Local l;
  REQUIRE(l.backend->Create(Ref("m"), Blank(MiB)).ok());
  std::string path = l.DiskDir(Ref("m")) + "/meta.json";
  auto j = nlohmann::json::parse(*ReadFile(path));
  REQUIRE(j.contains("xxh3"));
  CHECK(j["xxh3"].get<std::string>().size() == 16);

  // Indentation is not part of what is summed.
  REQUIRE(WriteFileAtomic(path, j.dump() + "\n").ok());
  CHECK(l.backend->Info(Ref("m")).ok());

  // A size that changed, in a file that is still valid JSON.
  auto changed = j;
  changed["size"] = 2 * MiB;
  REQUIRE(WriteFileAtomic(path, changed.dump(2) + "\n").ok());
  for (OpenMode mode : {OpenMode::kReadOnly, OpenMode::kReadWrite}) {
    Status s = l.backend->Open(Ref("m"), mode).status();
    CHECK(s.IsCorruption());
    CHECK(s.message().find("checksum") != std::string::npos);
  }
  CHECK(l.backend->Info(Ref("m")).status().IsCorruption());
  CHECK(l.backend->Resize(Ref("m"), 4 * MiB, false).IsCorruption());
  auto problems = l.Check("m");
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("vm1/m") != std::string::npos);

  // A sum that is not 16 hex digits is damage too.
  changed = j;
  changed["xxh3"] = 12;
  REQUIRE(WriteFileAtomic(path, changed.dump(2) + "\n").ok());
  CHECK(l.backend->Info(Ref("m")).status().IsCorruption());

  // A file written before the field is read, and sealed by its next rewrite.
  changed = j;
  changed.erase("xxh3");
  REQUIRE(WriteFileAtomic(path, changed.dump(2) + "\n").ok());
  REQUIRE(l.backend->Info(Ref("m")).ok());
  CHECK(l.backend->Info(Ref("m"))->size == MiB);
  REQUIRE(l.backend->Resize(Ref("m"), 2 * MiB, false).ok());
  j = nlohmann::json::parse(*ReadFile(path));
  CHECK(j.contains("xxh3"));
  CHECK(l.backend->Info(Ref("m"))->size == 2 * MiB);
}
