// Tests of the "local" disk backend beyond the conformance suite: its on-disk
// format, locking across processes, space, and crash safety (SIGKILL).
#include <fcntl.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
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
  Local() {
    auto r = CreateDiskBackend("local", dir.path(), &images);
    REQUIRE(r.ok());
    backend = std::move(r).value();
  }
  std::string DiskDir(const DiskRef& ref) const {
    return dir.path() + "/disks/" + ref.instance + "/" + ref.disk;
  }
  TempDir dir;
  TestImages images{16 * 1024};
  std::unique_ptr<DiskBackend> backend;
};

Bytes ReadAll(Disk& d, uint64_t off, uint64_t len) {
  Bytes out(len);
  Status s = d.Read(off, MutableByteView(out));
  INFO(s.ToString());
  REQUIRE(s.ok());
  return out;
}

uint64_t FileBlocks(const std::string& path) {
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

// A child process that runs `fn` and then waits until the parent closes the
// pipe (or kills it). `fn` reports readiness by returning 0.
struct Child {
  pid_t pid = -1;
  int to_child = -1;    // parent closes it to let the child exit
  int from_child = -1;  // the child writes one byte when ready
  ~Child() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    if (to_child >= 0) ::close(to_child);
    if (from_child >= 0) ::close(from_child);
  }
};

}  // namespace

TEST_CASE("Local disk: on-disk format", "[disk][local]") {
  Local l;
  auto img = l.images.Add(Bytes(100 * KiB, 7));
  REQUIRE(img.ok());
  DiskCreateOptions o;
  o.image = *img;
  o.size = 200 * KiB;
  o.attrs = DiskAttrs{0600, 5, 6};
  REQUIRE(l.backend->Create(Ref("disk"), o).ok());
  std::string dir = l.DiskDir(Ref("disk"));
  for (const char* f : {"meta.json", "data", "bitmap", "lock", "csum"}) {
    INFO(f);
    CHECK(::access((dir + "/" + f).c_str(), F_OK) == 0);
  }
  auto text = ReadFile(dir + "/meta.json");
  REQUIRE(text.ok());
  auto j = nlohmann::json::parse(*text);
  CHECK(j["format"] == "imgfs-local-disk");
  CHECK(j["version"] == 2);
  CHECK(j["size"] == 200 * KiB);
  CHECK(j["chunk_size"] == 16 * KiB);
  CHECK(j["parent"] == img->Hex());
  CHECK(j["parent_overlap"] == 100 * KiB);
  CHECK(j["mode"] == 0600);
  CHECK(j["uid"] == 5);
  CHECK(j["gid"] == 6);
  auto bm = ReadFile(dir + "/bitmap");
  REQUIRE(bm.ok());
  REQUIRE(bm->size() == 4096);
  CHECK(bm->substr(0, 8) == "IMGFSBMP");

  // Writing a chunk sets its bit once flushed: bit 2 is chunk [32K, 48K).
  {
    auto d = l.backend->Open(Ref("disk"), OpenMode::kReadWrite);
    REQUIRE(d.ok());
    Bytes x(10, 1);
    REQUIRE((*d)->Write(40 * KiB, ByteView(x)).ok());
    REQUIRE((*d)->Flush().ok());
  }
  bm = ReadFile(dir + "/bitmap");
  REQUIRE(bm->size() == 8192);
  CHECK(static_cast<uint8_t>((*bm)[4096]) == 0x04);

  // Shrinking records the parent overlap.
  REQUIRE(l.backend->Resize(Ref("disk"), 50 * KiB, true).ok());
  j = nlohmann::json::parse(*ReadFile(dir + "/meta.json"));
  CHECK(j["size"] == 50 * KiB);
  CHECK(j["parent_overlap"] == 50 * KiB);
  bm = ReadFile(dir + "/bitmap");
  CHECK(static_cast<uint8_t>((*bm)[4096]) == 0x04);  // chunk 2 still holds [32K, 48K)
}

TEST_CASE("Local disk: the largest size is the file system's largest file", "[disk][local]") {
  constexpr uint64_t kCeiling = 1ull << 50;
  // tmpfs takes files up to 8 EiB, so the ceiling.
  struct statfs sf {};
  if (::statfs("/dev/shm", &sf) == 0 && sf.f_type == TMPFS_MAGIC) {
    auto shm = ProbeFileSizeLimit("/dev/shm", kCeiling);
    REQUIRE(shm.ok());
    CHECK(shm->max_size == kCeiling);
    CHECK(shm->fs_type == "tmpfs");
    // There the allocation map's 2^34 chunks are the limit for small chunks.
    TempDir dir("/dev/shm");
    TestImages images{16 * 1024};
    auto backend = CreateDiskBackend("local", dir.path(), &images);
    REQUIRE(backend.ok());
    auto small = (*backend)->MaxDiskSize(4096);
    REQUIRE(small.ok());
    CHECK(small->max_bytes == 64ull << 40);
    CHECK(small->reason.find("allocation map") != std::string::npos);
    auto big = (*backend)->MaxDiskSize(64 * 1024);
    REQUIRE(big.ok());
    CHECK(big->max_bytes == kCeiling);
    DiskCreateOptions o;
    o.size = kCeiling;
    REQUIRE((*backend)->Create(Ref("pib"), o).ok());
    o.size = kCeiling + 4096;
    CHECK((*backend)->Create(Ref("over"), o).IsTooLarge());
  }
  // ext4 with 4 KiB blocks ends files at 16 TiB - 4 KiB although
  // pathconf(_PC_FILESIZEBITS) says 64.
  Local l;
  REQUIRE(::statfs(l.dir.path().c_str(), &sf) == 0);
  auto probed = ProbeFileSizeLimit(l.dir.path(), kCeiling);
  REQUIRE(probed.ok());
  if (sf.f_type == EXT4_SUPER_MAGIC && sf.f_bsize == 4096) {
    CHECK(probed->fs_type == "ext4");
    CHECK(probed->max_size == (16ull << 40) - 4096);
    auto limit = l.backend->MaxDiskSize(64 * 1024);
    REQUIRE(limit.ok());
    CHECK(limit->max_bytes == (16ull << 40) - 4096);
    CHECK(limit->reason.find("ext4") != std::string::npos);
    DiskCreateOptions o;
    o.size = 16ull << 40;
    Status s = l.backend->Create(Ref("d"), o);
    CHECK(s.IsTooLarge());
    CHECK(s.message().find("at most 16T - 4K (17592186040320 bytes, the largest file ext4 "
                           "allows in ") != std::string::npos);
  }
  // Nothing is left behind by the probe.
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(l.dir.path() + "/disks/.tmp", ec)) {
    FAIL("left in .tmp: " << e.path());
  }
}

TEST_CASE("Local disk: damaged or unknown metadata is refused", "[disk][local]") {
  Local l;
  REQUIRE(l.backend->Create(Ref("a"), Blank(MiB)).ok());
  REQUIRE(l.backend->Create(Ref("b"), Blank(MiB)).ok());
  std::string a = l.DiskDir(Ref("a")) + "/meta.json";
  auto j = nlohmann::json::parse(*ReadFile(a));
  j["version"] = 99;
  REQUIRE(WriteFileAtomic(a, j.dump()).ok());
  Status s = l.backend->Open(Ref("a"), OpenMode::kReadOnly).status();
  CHECK(s.code() == Code::kNotSupported);
  CHECK(s.message().find("version 99") != std::string::npos);
  CHECK(l.backend->Info(Ref("a")).status().code() == Code::kNotSupported);

  REQUIRE(WriteFileAtomic(l.DiskDir(Ref("b")) + "/meta.json", "{\"format\": ").ok());
  CHECK(l.backend->Open(Ref("b"), OpenMode::kReadWrite).status().IsCorruption());
  CHECK(l.backend->Info(Ref("b")).status().IsCorruption());

  REQUIRE(l.backend->Create(Ref("c"), Blank(MiB)).ok());
  REQUIRE(l.backend->Create(Ref("ok"), Blank(MiB)).ok());
  REQUIRE(WriteFileAtomic(l.DiskDir(Ref("c")) + "/bitmap", std::string(4096, 'x')).ok());
  CHECK(l.backend->Open(Ref("c"), OpenMode::kReadWrite).status().IsCorruption());

  // fsck's check names each damaged disk, and only those.
  std::vector<std::string> problems;
  for (const char* name : {"a", "b", "c", "ok"})
    REQUIRE(l.backend->Check(Ref(name), &problems).ok());
  REQUIRE(problems.size() == 3);
  CHECK(problems[0].find("vm1/a") != std::string::npos);
  CHECK(problems[1].find("vm1/b") != std::string::npos);
  CHECK(problems[2].find("vm1/c: allocation map") != std::string::npos);
}

TEST_CASE("Local disk: another process's writer locks the disk", "[disk][local]") {
  Local l;
  REQUIRE(l.backend->Create(Ref("d"), Blank(MiB)).ok());
  Child c;
  int down[2], up[2];
  REQUIRE(::pipe(down) == 0);
  REQUIRE(::pipe(up) == 0);
  c.pid = ::fork();
  REQUIRE(c.pid >= 0);
  if (c.pid == 0) {
    ::close(down[1]);
    ::close(up[0]);
    auto d = l.backend->Open(Ref("d"), OpenMode::kReadWrite);
    char ok = d.ok() ? 'y' : 'n';
    if (::write(up[1], &ok, 1) != 1) ::_exit(3);
    char x;
    while (::read(down[0], &x, 1) > 0) {
    }
    ::_exit(0);
  }
  ::close(down[0]);
  ::close(up[1]);
  c.to_child = down[1];
  c.from_child = up[0];
  char ok = 0;
  REQUIRE(::read(c.from_child, &ok, 1) == 1);
  REQUIRE(ok == 'y');

  auto second = l.backend->Open(Ref("d"), OpenMode::kReadWrite);
  CHECK(second.status().IsBusy());
  CHECK(second.status().message().find("in use") != std::string::npos);
  Status rm = l.backend->Remove(Ref("d"));
  CHECK(rm.IsBusy());
  CHECK(rm.message().find("in use") != std::string::npos);
  CHECK(l.backend->Rename(Ref("d"), Ref("e")).IsBusy());
  CHECK(l.backend->Resize(Ref("d"), 2 * MiB, false).IsBusy());
  CHECK(l.backend->Open(Ref("d"), OpenMode::kReadOnly).ok());

  // A writer killed with SIGKILL releases the lock.
  ::kill(c.pid, SIGKILL);
  ::waitpid(c.pid, nullptr, 0);
  c.pid = -1;
  CHECK(l.backend->Open(Ref("d"), OpenMode::kReadWrite).ok());
  CHECK(l.backend->Remove(Ref("d")).ok());
}

TEST_CASE("Local disk: grow allocates nothing; discard releases space", "[disk][local]") {
  Local l;
  REQUIRE(l.backend->Create(Ref("d"), Blank(8 * MiB)).ok());
  std::string data = l.DiskDir(Ref("d")) + "/data";
  auto d = l.backend->Open(Ref("d"), OpenMode::kReadWrite);
  REQUIRE(d.ok());
  std::mt19937_64 rng(1);
  Bytes x = RandomBytes(rng, 4 * MiB);
  REQUIRE((*d)->Write(MiB, ByteView(x)).ok());
  REQUIRE((*d)->Flush().ok());
  uint64_t used = FileBlocks(data);
  CHECK(used >= 4 * MiB);
  CHECK(l.backend->Info(Ref("d"))->owned_bytes == used);

  REQUIRE((*d)->Resize(uint64_t{1} << 40, false).ok());
  REQUIRE((*d)->Flush().ok());
  CHECK(FileBlocks(data) == used);
  CHECK(FileBlocks(l.DiskDir(Ref("d")) + "/bitmap") <= 64 * KiB);

  REQUIRE((*d)->Discard(MiB + 100, 4 * MiB).ok());
  REQUIRE((*d)->Flush().ok());
  CHECK(FileBlocks(data) <= 64 * KiB);
  CHECK(Diff(ReadAll(**d, MiB, 100), Bytes(x.begin(), x.begin() + 100)) == "");
  CHECK(Diff(ReadAll(**d, MiB + 100, 4 * MiB), Bytes(4 * MiB, 0)) == "");
}

TEST_CASE("Local disk: interrupted creations and removals are cleaned up", "[disk][local]") {
  TempDir dir;
  std::string disks = dir.path() + "/disks";
  REQUIRE(MakeDirs(disks + "/.trash/rm.1/x").ok());
  REQUIRE(MakeDirs(disks + "/.tmp/create.1").ok());
  auto b = CreateDiskBackend("local", dir.path(), nullptr);
  REQUIRE(b.ok());
  CHECK(::access((disks + "/.trash/rm.1").c_str(), F_OK) != 0);
  CHECK(::access((disks + "/.tmp/create.1").c_str(), F_OK) == 0);  // young: maybe live
  CHECK((*b)->ListInstances()->empty());
  CHECK((*b)->List("")->empty());
}

// ---------------------------------------------------------------------------
// Crash test: a child writes, discards and flushes known patterns and is
// killed with SIGKILL at random moments; after each kill, every write that a
// flush acknowledged reads back.

namespace {

struct CrashOp {
  bool discard = false;
  uint64_t offset = 0;
  Bytes data;  // the bytes written (zeros for a discard)
};

constexpr uint64_t kCrashDiskSize = 3 * MiB;
constexpr int kBatchesPerChild = 12;

std::vector<CrashOp> CrashBatch(uint64_t seed, int cycle, int batch) {
  std::mt19937_64 rng(seed ^ (uint64_t(cycle) << 32) ^ uint64_t(batch) * 0x9e3779b97f4a7c15ull);
  std::vector<CrashOp> ops(1 + rng() % 6);
  for (auto& op : ops) {
    op.discard = rng() % 5 == 0;
    op.offset = rng() % kCrashDiskSize;
    uint64_t len = 1 + rng() % (rng() % 3 == 0 ? 100 * KiB : 5000);
    len = std::min(len, kCrashDiskSize - op.offset);
    op.data = op.discard ? Bytes(len, 0) : RandomBytes(rng, len);
  }
  return ops;
}

[[noreturn]] void CrashChild(DiskBackend& backend, const DiskRef& ref, uint64_t seed, int cycle,
                             int ack_fd) {
  auto d = backend.Open(ref, OpenMode::kReadWrite);
  if (!d.ok()) ::_exit(10);
  for (int b = 0; b < kBatchesPerChild; ++b) {
    for (const auto& op : CrashBatch(seed, cycle, b)) {
      Status s = op.discard ? (*d)->Discard(op.offset, op.data.size())
                            : (*d)->Write(op.offset, ByteView(op.data));
      if (!s.ok()) ::_exit(11);
    }
    if (!(*d)->Flush().ok()) ::_exit(12);
    uint8_t ack = static_cast<uint8_t>(b);
    if (::write(ack_fd, &ack, 1) != 1) ::_exit(13);
  }
  ::_exit(0);
}

}  // namespace

TEST_CASE("Local disk: flushed writes survive SIGKILL", "[disk][local][crash]") {
  Local l;
  uint64_t seed = TestSeed();
  int cycles = std::max(20, EnvInt("IMGFS_CRASH_CYCLES", 24));
  std::cout << "local disk crash test: IMGFS_TEST_SEED=" << seed << " cycles=" << cycles
            << std::endl;
  INFO("replay with IMGFS_TEST_SEED=" << seed);
  std::mt19937_64 rng(seed);
  // A parent image with holes, so writes copy up and discards hide its data.
  Bytes image = RandomImage(rng, 2 * MiB + 5000, 16 * 1024, 4);
  auto img = l.images.Add(image);
  REQUIRE(img.ok());
  DiskCreateOptions o;
  o.image = *img;
  o.size = kCrashDiskSize;
  REQUIRE(l.backend->Create(Ref("crash"), o).ok());
  Bytes model = image;
  model.resize(kCrashDiskSize, 0);

  int killed_mid_batch = 0;
  for (int cycle = 0; cycle < cycles; ++cycle) {
    INFO("cycle " << cycle);
    int acks[2];
    REQUIRE(::pipe(acks) == 0);
    Child c;
    c.pid = ::fork();
    REQUIRE(c.pid >= 0);
    if (c.pid == 0) {
      ::close(acks[0]);
      CrashChild(*l.backend, Ref("crash"), seed, cycle, acks[1]);
    }
    ::close(acks[1]);
    c.from_child = acks[0];
    // Kill after a random number of acknowledged batches, a random moment later.
    int kill_after = static_cast<int>(rng() % 6);
    int acked = 0;
    uint8_t ack;
    while (acked < kill_after && ::read(c.from_child, &ack, 1) == 1) acked++;
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    ::kill(c.pid, SIGKILL);
    int status = 0;
    REQUIRE(::waitpid(c.pid, &status, 0) == c.pid);
    c.pid = -1;
    if (WIFEXITED(status)) REQUIRE(WEXITSTATUS(status) == 0);
    while (::read(c.from_child, &ack, 1) == 1) acked++;  // acks sent before the kill

    for (int b = 0; b < acked; ++b) {
      for (const auto& op : CrashBatch(seed, cycle, b)) {
        std::memcpy(model.data() + op.offset, op.data.data(), op.data.size());
      }
    }
    // The batch in flight may have landed in part: each byte is either its
    // acknowledged value or one that batch wrote.
    std::vector<CrashOp> in_flight;
    if (acked < kBatchesPerChild) in_flight = CrashBatch(seed, cycle, acked);

    auto d = l.backend->Open(Ref("crash"), OpenMode::kReadOnly);
    REQUIRE(d.ok());
    Bytes got = ReadAll(**d, 0, kCrashDiskSize);
    bool changed = false;
    for (uint64_t i = 0; i < kCrashDiskSize; ++i) {
      if (got[i] == model[i]) continue;
      bool explained = false;
      for (const auto& op : in_flight) {
        if (i >= op.offset && i < op.offset + op.data.size() && got[i] == op.data[i - op.offset]) {
          explained = true;
        }
      }
      if (!explained) {
        FAIL("byte " << i << " reads " << int(got[i]) << ", acknowledged " << int(model[i]) << " ("
                     << acked << " batches acknowledged)");
      }
      changed = true;
    }
    if (changed) killed_mid_batch++;
    model = got;  // what the next child starts from
  }
  std::cout << "local disk crash test: " << killed_mid_batch << " of " << cycles
            << " kills left part of an unacknowledged batch" << std::endl;
}
