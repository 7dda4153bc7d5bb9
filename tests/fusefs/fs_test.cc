// The mount's plain class, driven without mounting, over a store with memory
// chunks and memory disks.
#include "fusefs/fs.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <random>
#include <thread>

#include "blockstore/manifest.h"

using namespace imgfs;
using namespace imgfs::fusefs;

namespace {

constexpr uint32_t kChunk = 64 * 1024;

struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/imgfs-fs-test.XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

Bytes RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

struct Fixture {
  TempDir dir;
  int64_t now = 1'700'000'000;
  std::unique_ptr<Store> store;
  Bytes image_bytes;
  ImageId image;

  explicit Fixture(bool with_image = true, const char* disks = "mem") {
    StoreConfig cfg;
    cfg.chunk_size = kChunk;
    cfg.chunks = "mem";
    cfg.disks = disks;
    REQUIRE(Store::Init(dir.path + "/store", cfg).ok());
    auto s = Store::Open(dir.path + "/store", [this] { return now; });
    REQUIRE(s.ok());
    store = std::move(*s);
    if (with_image) {
      // 5.5 chunks of random data with a hole in chunk 2.
      image_bytes = RandomBytes(kChunk * 5 + kChunk / 2, 7);
      std::fill(image_bytes.begin() + 2 * kChunk, image_bytes.begin() + 3 * kChunk, 0);
      image = Import(image_bytes, "sample");
    }
  }

  ImageId Import(const Bytes& data, const std::string& name) {
    Manifest m;
    m.size = data.size();
    m.chunk_size = kChunk;
    for (size_t off = 0; off < data.size(); off += kChunk) {
      size_t n = std::min<size_t>(kChunk, data.size() - off);
      auto put = store->chunks().Put(ByteView(data.data() + off, n));
      REQUIRE(put.ok());
      m.chunks.push_back(put->id);
    }
    auto id = PutManifest(store->backend(), m);
    REQUIRE(id.ok());
    REQUIRE(store->PublishImage(m, *id, {name}, false).ok());
    return *id;
  }

  void CreateDisk(const std::string& inst, const std::string& disk) {
    DiskCreateOptions o;
    o.image = image;
    REQUIRE(store->disks().Create(DiskRef{inst, disk}, o).ok());
  }
};

FsOptions Opts(bool allow_shrink = false) {
  FsOptions o;
  o.allow_shrink = allow_shrink;
  o.release_grace_ms = 20;
  return o;
}

std::vector<std::string> List(FileSystem& fs, uint64_t ino) {
  auto dh = fs.OpenDir(ino);
  REQUIRE(dh.ok());
  auto entries = fs.ReadDir(*dh, 0);
  REQUIRE(entries.ok());
  fs.ReleaseDir(*dh);
  std::vector<std::string> names;
  for (auto& e : *entries) names.push_back(e.name);
  return names;
}

uint64_t LookupIno(FileSystem& fs, uint64_t parent, const std::string& name) {
  auto e = fs.Lookup(parent, name);
  INFO(name << ": " << e.status().ToString());
  REQUIRE(e.ok());
  return e->ino;
}

// The inode of disk vm1/disk, which most cases work on.
uint64_t DiskIno(FileSystem& fs) { return LookupIno(fs, LookupIno(fs, kRootIno, "vm1"), "disk"); }

Bytes ReadAll(FileSystem& fs, uint64_t fh, uint64_t size) {
  Bytes out(size);
  auto n = fs.Read(fh, 0, out);
  REQUIRE(n.ok());
  REQUIRE(*n == size);
  return out;
}

int Errno(const Status& st) { return st.ToErrno(); }

}  // namespace

TEST_CASE("root lists _base and instances; _base lists image ids", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  FileSystem fs(*f.store, Opts());
  auto root = List(fs, kRootIno);
  CHECK(root == std::vector<std::string>{".", "..", "_base", "vm1"});
  auto base = List(fs, kBaseDirIno);
  CHECK(base == std::vector<std::string>{".", "..", f.image.Hex()});
  uint64_t vm1 = LookupIno(fs, kRootIno, "vm1");
  CHECK(List(fs, vm1) == std::vector<std::string>{".", "..", "disk"});
  CHECK(Errno(fs.Lookup(kRootIno, "nope").status()) == ENOENT);
  CHECK(Errno(fs.Lookup(kBaseDirIno, "0123").status()) == ENOENT);
}

TEST_CASE("_base/<id> reads the image's bytes and refuses writes", "[fusefs]") {
  Fixture f;
  FileSystem fs(*f.store, Opts());
  auto e = fs.Lookup(kBaseDirIno, f.image.Hex());
  REQUIRE(e.ok());
  CHECK(e->attr.st_size == static_cast<off_t>(f.image_bytes.size()));
  CHECK((e->attr.st_mode & 0777) == 0444);
  auto o = fs.Open(e->ino, O_RDONLY);
  REQUIRE(o.ok());
  CHECK(ReadAll(fs, o->fh, f.image_bytes.size()) == f.image_bytes);
  // SEEK_HOLE finds the hole chunk, SEEK_DATA the data after it.
  CHECK(**fs.Lseek(o->fh, 0, SEEK_HOLE) == 2 * kChunk);
  CHECK(**fs.Lseek(o->fh, 2 * kChunk, SEEK_DATA) == 3 * kChunk);
  CHECK(!fs.Lseek(o->fh, f.image_bytes.size(), SEEK_DATA)->has_value());
  fs.Release(o->fh);
  CHECK(Errno(fs.Open(e->ino, O_RDWR).status()) == EROFS);
  CHECK(Errno(fs.Open(e->ino, O_WRONLY).status()) == EROFS);
  AttrChange grow;
  grow.size = 1 << 30;
  CHECK(Errno(fs.SetAttr(e->ino, grow, std::nullopt).status()) == EROFS);
  Caller who;
  CHECK(Errno(fs.Create(kBaseDirIno, "x", 0644, O_RDWR, who).status()) == EROFS);
  CHECK(Errno(fs.MkDir(kBaseDirIno, "x", 0755, who).status()) == EROFS);
  CHECK(Errno(fs.Unlink(kBaseDirIno, f.image.Hex())) == EROFS);
}

TEST_CASE("a disk reads its image, keeps written data across reopen and remount", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  Bytes pattern(10000, 0xab);
  {
    FileSystem fs(*f.store, Opts());
    uint64_t vm1 = LookupIno(fs, kRootIno, "vm1");
    auto e = fs.Lookup(vm1, "disk");
    REQUIRE(e.ok());
    CHECK(e->attr.st_size == static_cast<off_t>(f.image_bytes.size()));
    auto o = fs.Open(e->ino, O_RDWR);
    REQUIRE(o.ok());
    CHECK(ReadAll(fs, o->fh, f.image_bytes.size()) == f.image_bytes);
    auto w = fs.Write(o->fh, 12345, pattern);
    REQUIRE(w.ok());
    CHECK(*w == pattern.size());
    CHECK(fs.Fsync(o->fh).ok());
    CHECK(fs.Flush(o->fh).ok());
    fs.Release(o->fh);
    CHECK(fs.OpenFileCountForTest() == 0);
  }
  FileSystem fs(*f.store, Opts());
  uint64_t vm1 = LookupIno(fs, kRootIno, "vm1");
  uint64_t disk = LookupIno(fs, vm1, "disk");
  auto o = fs.Open(disk, O_RDONLY);
  REQUIRE(o.ok());
  Bytes want = f.image_bytes;
  std::copy(pattern.begin(), pattern.end(), want.begin() + 12345);
  CHECK(ReadAll(fs, o->fh, want.size()) == want);
  // A read past the end is short.
  Bytes tail(100);
  auto n = fs.Read(o->fh, want.size() - 10, tail);
  REQUIRE(n.ok());
  CHECK(*n == 10);
  fs.Release(o->fh);
}

TEST_CASE("disks made or removed with the command line appear and vanish at once", "[fusefs]") {
  Fixture f;
  FileSystem fs(*f.store, Opts());
  CHECK(Errno(fs.Lookup(kRootIno, "vm2").status()) == ENOENT);
  f.CreateDisk("vm2", "disk");
  uint64_t vm2 = LookupIno(fs, kRootIno, "vm2");
  uint64_t disk = LookupIno(fs, vm2, "disk");
  CHECK(List(fs, vm2) == std::vector<std::string>{".", "..", "disk"});
  REQUIRE(f.store->disks().Remove(DiskRef{"vm2", "disk"}).ok());
  CHECK(Errno(fs.GetAttr(disk).status()) == ENOENT);
  // The instance only existed because of its disk: it is gone too.
  CHECK(Errno(fs.GetAttr(vm2).status()) == ENOENT);
  CHECK(List(fs, kRootIno) == std::vector<std::string>{".", "..", "_base"});
}

TEST_CASE("truncate grows; a shrink is EPERM unless allow_shrink", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  uint64_t size = f.image_bytes.size();
  SECTION("default") {
    FileSystem fs(*f.store, Opts());
    uint64_t disk = DiskIno(fs);
    AttrChange c;
    c.size = 1ull << 40;  // 1 TiB: O(1)
    auto st = fs.SetAttr(disk, c, std::nullopt);
    REQUIRE(st.ok());
    CHECK(st->st_size == static_cast<off_t>(1ull << 40));
    c.size = size;
    CHECK(Errno(fs.SetAttr(disk, c, std::nullopt).status()) == EPERM);
    CHECK(fs.GetAttr(disk)->st_size == static_cast<off_t>(1ull << 40));
    // The same through an open file (ftruncate), and the same size is fine.
    auto o = fs.Open(disk, O_RDWR);
    REQUIRE(o.ok());
    c.size = 1ull << 40;
    CHECK(fs.SetAttr(disk, c, o->fh).ok());
    c.size = 4096;
    CHECK(Errno(fs.SetAttr(disk, c, o->fh).status()) == EPERM);
    CHECK(Errno(fs.Open(disk, O_RDWR | O_TRUNC).status()) == EPERM);
    fs.Release(o->fh);
  }
  SECTION("allow_shrink") {
    FileSystem fs(*f.store, Opts(true));
    uint64_t disk = DiskIno(fs);
    AttrChange c;
    c.size = kChunk;
    auto st = fs.SetAttr(disk, c, std::nullopt);
    REQUIRE(st.ok());
    CHECK(st->st_size == kChunk);
  }
}

TEST_CASE("create makes a blank thin disk that writes and fallocate grow", "[fusefs]") {
  Fixture f(false);
  FileSystem fs(*f.store, Opts());
  Caller who{1000, 1000};
  auto d = fs.MkDir(kRootIno, "vm1", 0755, who);
  REQUIRE(d.ok());
  CHECK(Errno(fs.MkDir(kRootIno, "vm1", 0755, who).status()) == EEXIST);
  auto c = fs.Create(d->ino, "disk.eph0", 0600, O_RDWR, who);
  REQUIRE(c.ok());
  auto [e, o] = *c;
  CHECK(e.attr.st_size == 0);
  CHECK((e.attr.st_mode & 07777) == 0600);
  CHECK(e.attr.st_uid == 1000);
  Bytes data(5000, 0x5a);
  REQUIRE(fs.Write(o.fh, 100000, data).ok());
  CHECK(fs.GetAttr(e.ino)->st_size == 105000);
  Bytes back(105000);
  REQUIRE(*fs.Read(o.fh, 0, back) == 105000);
  CHECK(std::all_of(back.begin(), back.begin() + 100000, [](uint8_t b) { return b == 0; }));
  CHECK(std::equal(data.begin(), data.end(), back.begin() + 100000));

  // SEEK_DATA skips the leading hole; SEEK_HOLE finds the end.
  auto data_at = fs.Lseek(o.fh, 0, SEEK_DATA);
  REQUIRE(data_at.ok());
  REQUIRE(data_at->has_value());
  CHECK(**data_at <= 100000);
  CHECK(**fs.Lseek(o.fh, 100000, SEEK_HOLE) == 105000);
  CHECK(!fs.Lseek(o.fh, 105000, SEEK_DATA)->has_value());

  // Mode 0 inside is a no-op, past the end it grows; KEEP_SIZE never grows.
  REQUIRE(fs.Fallocate(o.fh, 0, 0, 4096).ok());
  CHECK(fs.GetAttr(e.ino)->st_size == 105000);
  REQUIRE(fs.Fallocate(o.fh, FALLOC_FL_KEEP_SIZE, 0, 1 << 20).ok());
  CHECK(fs.GetAttr(e.ino)->st_size == 105000);
  REQUIRE(fs.Fallocate(o.fh, 0, 0, 1 << 20).ok());
  CHECK(fs.GetAttr(e.ino)->st_size == 1 << 20);

  // PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE read back zeros.
  REQUIRE(fs.Fallocate(o.fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100000, 2000).ok());
  Bytes z(2000, 1);
  REQUIRE(*fs.Read(o.fh, 100000, z) == 2000);
  CHECK(std::all_of(z.begin(), z.end(), [](uint8_t b) { return b == 0; }));
  REQUIRE(fs.Fallocate(o.fh, FALLOC_FL_ZERO_RANGE, 102000, 3000).ok());
  REQUIRE(*fs.Read(o.fh, 102000, z) == 2000);
  CHECK(std::all_of(z.begin(), z.end(), [](uint8_t b) { return b == 0; }));
  CHECK(Errno(fs.Fallocate(o.fh, FALLOC_FL_PUNCH_HOLE, 0, 10)) == EOPNOTSUPP);
  CHECK(fs.GetAttr(e.ino)->st_size == 1 << 20);
  fs.Release(o.fh);

  // mknod makes a blank disk too.
  auto m = fs.MkNod(d->ino, "disk2", S_IFREG | 0644, who);
  REQUIRE(m.ok());
  CHECK(m->attr.st_size == 0);
}

TEST_CASE("bad names are EINVAL, files at the wrong level EPERM", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  FileSystem fs(*f.store, Opts());
  Caller who;
  uint64_t vm1 = LookupIno(fs, kRootIno, "vm1");
  CHECK(Errno(fs.MkDir(kRootIno, "a_b", 0755, who).status()) == EINVAL);
  CHECK(Errno(fs.MkDir(kRootIno, ".hidden", 0755, who).status()) == EINVAL);
  CHECK(Errno(fs.MkDir(kRootIno, std::string(129, 'x'), 0755, who).status()) == EINVAL);
  CHECK(Errno(fs.MkDir(kRootIno, "bad\x01", 0755, who).status()) == EINVAL);
  CHECK(Errno(fs.Create(vm1, std::string(129, 'd'), 0644, O_RDWR, who).status()) == EINVAL);
  CHECK(Errno(fs.Create(vm1, "bad\x7f", 0644, O_RDWR, who).status()) == EINVAL);
  CHECK(Errno(fs.Create(kRootIno, "file", 0644, O_RDWR, who).status()) == EPERM);
  CHECK(Errno(fs.MkNod(kRootIno, "file", S_IFREG | 0644, who).status()) == EPERM);
  CHECK(Errno(fs.MkDir(vm1, "sub", 0755, who).status()) == EPERM);
  CHECK(Errno(fs.MkNod(vm1, "fifo", S_IFIFO | 0644, who).status()) == EPERM);
  CHECK(Errno(fs.MkDir(kRootIno, "_base", 0755, who).status()) == EEXIST);
  CHECK(Errno(fs.RmDir(kRootIno, "_base")) == EPERM);
  CHECK(Errno(fs.Rename(kRootIno, "_base", kRootIno, "vm9", 0)) == EPERM);
  CHECK(Errno(fs.Rename(vm1, "disk", kRootIno, "disk", 0)) == EPERM);
  // Nothing changed.
  CHECK(List(fs, kRootIno) == std::vector<std::string>{".", "..", "_base", "vm1"});
  CHECK(List(fs, vm1) == std::vector<std::string>{".", "..", "disk"});
}

TEST_CASE("the last writer's close releases the disk's lock while readers keep it open",
          "[fusefs]") {
  // qemu's live migration source reopens its image read-only and closes the
  // read-write descriptor when the migration completes: the destination must
  // then be able to take the lock (docs/rbd.md, "Live migration").
  Fixture f;
  f.CreateDisk("vm1", "disk");
  FileSystem fs(*f.store, Opts());
  uint64_t vm1 = LookupIno(fs, kRootIno, "vm1");
  uint64_t disk = LookupIno(fs, vm1, "disk");
  const DiskRef ref{"vm1", "disk"};
  auto w = fs.Open(disk, O_RDWR);
  REQUIRE(w.ok());
  REQUIRE(fs.Write(w->fh, 0, Bytes(4096, 0x42)).ok());
  auto r = fs.Open(disk, O_RDONLY);
  REQUIRE(r.ok());
  CHECK(f.store->disks().Open(ref, OpenMode::kReadWrite).status().IsBusy());
  fs.Release(w->fh);
  {
    auto other = f.store->disks().Open(ref, OpenMode::kReadWrite);
    REQUIRE(other.ok());  // the lock is free; what was written is there
    Bytes b(4096);
    REQUIRE((*other)->Read(0, b).ok());
    CHECK(b == Bytes(4096, 0x42));
  }
  // The reader goes on reading; a new writer takes the lock again.
  Bytes b(4096);
  auto n = fs.Read(r->fh, 0, b);
  REQUIRE(n.ok());
  CHECK(b == Bytes(4096, 0x42));
  CHECK(!fs.Write(r->fh, 0, Bytes(16, 1)).ok());
  auto w2 = fs.Open(disk, O_RDWR);
  REQUIRE(w2.ok());
  CHECK(f.store->disks().Open(ref, OpenMode::kReadWrite).status().IsBusy());
  REQUIRE(fs.Write(w2->fh, 4096, Bytes(4096, 0x43)).ok());
  fs.Release(w2->fh);
  fs.Release(r->fh);
  CHECK(f.store->disks().Open(ref, OpenMode::kReadWrite).ok());
}

TEST_CASE("unlink of an open disk is EBUSY; of a closed one removes it", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  FileSystem fs(*f.store, Opts());
  uint64_t vm1 = LookupIno(fs, kRootIno, "vm1");
  uint64_t disk = LookupIno(fs, vm1, "disk");
  auto o = fs.Open(disk, O_RDWR);
  REQUIRE(o.ok());
  CHECK(Errno(fs.Unlink(vm1, "disk")) == EBUSY);
  // The backend lock: the command line's `disk rm` is refused too.
  CHECK(f.store->disks().Remove(DiskRef{"vm1", "disk"}).IsBusy());
  CHECK(Errno(fs.RmDir(kRootIno, "vm1")) == ENOTEMPTY);
  fs.Release(o->fh);
  CHECK(fs.Unlink(vm1, "disk").ok());
  CHECK(Errno(fs.Lookup(vm1, "disk").status()) == ENOENT);
  CHECK(Errno(fs.GetAttr(disk).status()) == ENOENT);
  CHECK(Errno(fs.Unlink(vm1, "disk")) == ENOENT);
  // The directory stays until rmdir, as directories do.
  CHECK(List(fs, vm1) == std::vector<std::string>{".", ".."});
  CHECK(fs.RmDir(kRootIno, "vm1").ok());
  CHECK(Errno(fs.Lookup(kRootIno, "vm1").status()) == ENOENT);
}

TEST_CASE("unlink answers an open disk EBUSY at once and waits only for a RELEASE on its way",
          "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  FsOptions opts = Opts();
  // Long enough that waiting it out would show: neither case below may.
  opts.release_grace_ms = 600'000;
  FileSystem fs(*f.store, opts);
  uint64_t vm1 = LookupIno(fs, kRootIno, "vm1");
  uint64_t disk = LookupIno(fs, vm1, "disk");
  auto o = fs.Open(disk, O_RDWR);
  REQUIRE(o.ok());
  REQUIRE(fs.Write(o->fh, 0, Bytes(4096, 1)).ok());
  CHECK(Errno(fs.Unlink(vm1, "disk")) == EBUSY);
  CHECK(Errno(fs.Rename(vm1, "disk", vm1, "disk2", 0)) == EBUSY);
  // close(2): FLUSH now, RELEASE a moment later, from another thread.
  REQUIRE(fs.Flush(o->fh).ok());
  // I/O after the FLUSH (a dup'd descriptor): still open.
  REQUIRE(fs.Write(o->fh, 0, Bytes(4096, 2)).ok());
  CHECK(Errno(fs.Unlink(vm1, "disk")) == EBUSY);
  REQUIRE(fs.Flush(o->fh).ok());
  Status unlinked;
  std::thread t([&] { unlinked = fs.Unlink(vm1, "disk"); });
  fs.Release(o->fh);
  t.join();
  CHECK(unlinked.ok());
  CHECK(Errno(fs.Lookup(vm1, "disk").status()) == ENOENT);
}

TEST_CASE("a read-only open upgrades to the write lock when a writer opens", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  FileSystem fs(*f.store, Opts());
  uint64_t disk = DiskIno(fs);
  auto ro = fs.Open(disk, O_RDONLY);
  REQUIRE(ro.ok());
  auto rw = fs.Open(disk, O_RDWR);
  REQUIRE(rw.ok());
  Bytes data(512, 0x11);
  REQUIRE(fs.Write(rw->fh, 0, data).ok());
  Bytes back(512);
  REQUIRE(fs.Read(ro->fh, 0, back).ok());
  CHECK(back == data);
  CHECK(Errno(fs.Write(ro->fh, 0, data).status()) == EPERM);
  fs.Release(rw->fh);
  fs.Release(ro->fh);
  CHECK(fs.OpenFileCountForTest() == 0);
}

TEST_CASE("rename keeps data, within and across instances, and whole instances", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  f.CreateDisk("vm1", "other");
  FileSystem fs(*f.store, Opts());
  Caller who;
  uint64_t vm1 = LookupIno(fs, kRootIno, "vm1");
  uint64_t disk = LookupIno(fs, vm1, "disk");
  {
    auto o = fs.Open(disk, O_RDWR);
    REQUIRE(o.ok());
    REQUIRE(fs.Write(o->fh, 0, Bytes(4096, 0x77)).ok());
    CHECK(Errno(fs.Rename(vm1, "disk", vm1, "moved", 0)) == EBUSY);
    fs.Release(o->fh);
  }
  CHECK(Errno(fs.Rename(vm1, "disk", vm1, "other", RENAME_NOREPLACE)) == EEXIST);
  CHECK(Errno(fs.Rename(vm1, "disk", vm1, "bad\x01", 0)) == EINVAL);
  // Without NOREPLACE an existing disk that nobody has open is replaced.
  f.CreateDisk("vm1", "victim");
  REQUIRE(fs.Rename(vm1, "other", vm1, "victim", 0).ok());
  CHECK(List(fs, vm1) == std::vector<std::string>{".", "..", "disk", "victim"});
  REQUIRE(fs.Rename(vm1, "disk", vm1, "moved", 0).ok());
  CHECK(fs.GetAttr(disk).ok());  // the inode follows the name
  auto vm2 = fs.MkDir(kRootIno, "vm2", 0755, who);
  REQUIRE(vm2.ok());
  REQUIRE(fs.Rename(vm1, "moved", vm2->ino, "disk", 0).ok());
  CHECK(List(fs, vm2->ino) == std::vector<std::string>{".", "..", "disk"});
  REQUIRE(fs.Rename(kRootIno, "vm2", kRootIno, "vm3", 0).ok());
  uint64_t vm3 = LookupIno(fs, kRootIno, "vm3");
  auto names = List(fs, vm3);
  CHECK(names == std::vector<std::string>{".", "..", "disk"});
  uint64_t d3 = LookupIno(fs, vm3, "disk");
  auto o = fs.Open(d3, O_RDONLY);
  REQUIRE(o.ok());
  Bytes back(4096);
  REQUIRE(fs.Read(o->fh, 0, back).ok());
  CHECK(back == Bytes(4096, 0x77));
  fs.Release(o->fh);
  CHECK(Errno(fs.Lookup(kRootIno, "vm2").status()) == ENOENT);
}

TEST_CASE("chmod and chown persist in the disk backend", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  {
    FileSystem fs(*f.store, Opts());
    uint64_t disk = DiskIno(fs);
    AttrChange c;
    c.mode = 0600;
    c.uid = 64055;
    c.gid = 108;
    auto st = fs.SetAttr(disk, c, std::nullopt);
    REQUIRE(st.ok());
    CHECK((st->st_mode & 07777) == 0600);
    AttrChange dir;
    dir.mode = 0700;
    CHECK(Errno(fs.SetAttr(kRootIno, dir, std::nullopt).status()) == EPERM);
  }
  FileSystem fs(*f.store, Opts());
  auto st = fs.GetAttr(DiskIno(fs));
  REQUIRE(st.ok());
  CHECK((st->st_mode & 07777) == 0600);
  CHECK(st->st_uid == 64055);
  CHECK(st->st_gid == 108);
}

TEST_CASE("opening a disk records a use of its image", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  int64_t before = f.store->GetImage(f.image)->last_used;
  f.now += 3600;
  FileSystem fs(*f.store, Opts());
  uint64_t disk = DiskIno(fs);
  auto o = fs.Open(disk, O_RDONLY);
  REQUIRE(o.ok());
  fs.Release(o->fh);
  CHECK(f.store->GetImage(f.image)->last_used == before + 3600);
}

TEST_CASE("forget drops inodes; statfs answers", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  FileSystem fs(*f.store, Opts());
  size_t base = fs.InodeCountForTest();
  uint64_t vm1 = LookupIno(fs, kRootIno, "vm1");
  uint64_t disk = LookupIno(fs, vm1, "disk");
  CHECK(LookupIno(fs, vm1, "disk") == disk);  // the same name, the same inode
  CHECK(fs.InodeCountForTest() == base + 2);
  fs.Forget(disk, 2);
  fs.Forget(vm1, 1);
  CHECK(fs.InodeCountForTest() == base);
  CHECK(LookupIno(fs, kRootIno, "vm1") == vm1);
  auto sv = fs.StatFs();
  REQUIRE(sv.ok());
  CHECK(sv->f_namemax == kMaxNameLength);
}

TEST_CASE("shutdown flushes open disks and later I/O fails cleanly", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  FileSystem fs(*f.store, Opts());
  uint64_t disk = DiskIno(fs);
  auto o = fs.Open(disk, O_RDWR);
  REQUIRE(o.ok());
  REQUIRE(fs.Write(o->fh, 0, Bytes(4096, 3)).ok());
  CHECK(fs.Shutdown().ok());
  Bytes b(10);
  CHECK(Errno(fs.Read(o->fh, 0, b).status()) == EIO);
  fs.Release(o->fh);
}

TEST_CASE("the async forms call back exactly once, with the result or the error", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  FileSystem fs(*f.store, Opts());
  uint64_t disk = DiskIno(fs);
  auto o = fs.Open(disk, O_RDWR);
  REQUIRE(o.ok());
  std::vector<Result<size_t>> sizes;
  std::vector<Status> statuses;
  auto on_size = [&](Result<size_t> r) { sizes.push_back(std::move(r)); };
  auto on_status = [&](Status st) { statuses.push_back(std::move(st)); };
  Bytes data(8192, 9), back(8192);
  std::vector<Result<ReadBuffers>> reads;
  auto on_read = [&](Result<ReadBuffers> r) { reads.push_back(std::move(r)); };
  fs.WriteAsync(o->fh, 4096, data, on_size);
  fs.ReadAsync(o->fh, 4096, back.size(), on_read);
  fs.ReadAsync(o->fh, f.image_bytes.size() + 5, back.size(), on_read);  // past the end: 0 bytes
  fs.ReadAsync(999, 0, back.size(), on_read);                           // no such handle
  fs.FallocateAsync(o->fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 4096, on_status);
  fs.FallocateAsync(o->fh, FALLOC_FL_PUNCH_HOLE, 0, 4096, on_status);  // needs KEEP_SIZE
  fs.FsyncAsync(o->fh, on_status);
  fs.FlushAsync(o->fh, on_status);
  REQUIRE(sizes.size() == 1);
  CHECK(*sizes[0] == data.size());
  REQUIRE(reads.size() == 3);
  REQUIRE(reads[0].ok());
  REQUIRE(reads[0]->size() == back.size());
  reads[0]->CopyTo(back);
  CHECK(back == data);
  REQUIRE(reads[1].ok());
  CHECK(reads[1]->size() == 0);
  CHECK(Errno(reads[2].status()) == EINVAL);
  REQUIRE(statuses.size() == 4);
  CHECK(statuses[0].ok());
  CHECK(Errno(statuses[1]) == EOPNOTSUPP);
  CHECK(statuses[2].ok());
  CHECK(statuses[3].ok());
  Bytes z(4096);
  REQUIRE(fs.Read(o->fh, 4096, z).ok());
  CHECK(z == Bytes(4096, 0));
  fs.Release(o->fh);
}

TEST_CASE("a write's buffer may be reused as soon as WriteAsync returns", "[fusefs]") {
  // The mount hands the disk the FUSE worker's own buffer (no copy): every
  // disk is done reading it when WriteAsync returns (Disk::WriteAsync).
  const char* disks = GENERATE("mem", "local");
  INFO("disks " << disks);
  Fixture f(true, disks);
  f.CreateDisk("vm1", "disk");
  FileSystem fs(*f.store, Opts());
  auto o = fs.Open(DiskIno(fs), O_RDWR);
  REQUIRE(o.ok());
  Bytes data(8192, 5);
  std::vector<Result<size_t>> sizes;
  fs.WriteAsync(o->fh, 4096, data, [&](Result<size_t> r) { sizes.push_back(std::move(r)); });
  std::fill(data.begin(), data.end(), 0xee);  // the worker's next request
  REQUIRE(sizes.size() == 1);
  REQUIRE(sizes[0].ok());
  CHECK(*sizes[0] == 8192);
  Bytes back(8192);
  REQUIRE(fs.Read(o->fh, 4096, back).ok());
  CHECK(back == Bytes(8192, 5));
  fs.Release(o->fh);
}

TEST_CASE("concurrent opens, I/O, listings and releases keep every write", "[fusefs]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  FileSystem fs(*f.store, Opts());
  uint64_t vm1 = LookupIno(fs, kRootIno, "vm1");
  uint64_t disk = LookupIno(fs, vm1, "disk");
  constexpr int kThreads = 4, kRounds = 50;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        auto o = fs.Open(disk, (i % 3 == 0) ? O_RDONLY : O_RDWR);
        if (!o.ok()) {
          ++failures;
          continue;
        }
        Bytes data(4096, static_cast<uint8_t>(t * kRounds + i));
        uint64_t off = static_cast<uint64_t>(t) * 4096;
        if (i % 3 != 0 && !fs.Write(o->fh, off, data).ok()) ++failures;
        Bytes back(4096);
        if (!fs.Read(o->fh, off, back).ok()) ++failures;
        if (i % 3 != 0 && back != data) ++failures;
        if (!fs.GetAttr(disk).ok()) ++failures;
        List(fs, vm1);
        if (i % 7 == 0 && !fs.Fsync(o->fh).ok()) ++failures;
        if (!fs.Flush(o->fh).ok()) ++failures;
        fs.Release(o->fh);
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  CHECK(fs.OpenFileCountForTest() == 0);
  auto o = fs.Open(disk, O_RDONLY);
  REQUIRE(o.ok());
  for (int t = 0; t < kThreads; ++t) {
    Bytes back(4096);
    REQUIRE(fs.Read(o->fh, static_cast<uint64_t>(t) * 4096, back).ok());
    // The last write of thread t was round kRounds-1 (or -2 when that one read only).
    int last = (kRounds - 1) % 3 != 0 ? kRounds - 1 : kRounds - 2;
    CHECK(back == Bytes(4096, static_cast<uint8_t>(t * kRounds + last)));
  }
  fs.Release(o->fh);
  CHECK(fs.Unlink(vm1, "disk").ok());
}

TEST_CASE("the mount's counters count what it served, per disk and in the chunk cache",
          "[fusefs][metrics]") {
  Fixture f;
  f.CreateDisk("vm1", "disk");
  FileSystem fs(*f.store, Opts());
  fs.metrics().SetChunkStore(&f.store->chunks());
  fs.metrics().SetInfo({"/m\"n\\", 2, 1});
  auto o = fs.Open(DiskIno(fs), O_RDWR);
  REQUIRE(o.ok());
  Bytes data = RandomBytes(2 * kChunk, 3);
  REQUIRE(fs.Write(o->fh, 0, data).ok());
  Bytes buf(3 * kChunk);
  REQUIRE(fs.Read(o->fh, 0, buf).ok());  // 2 written chunks, 1 from the image
  REQUIRE(fs.Read(o->fh, 0, buf).ok());  // the image's chunk now from the cache
  REQUIRE(fs.Fsync(o->fh).ok());
  REQUIRE(fs.Fallocate(o->fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, kChunk).ok());

  auto j = fs.metrics().ToJson();
  CHECK(j["restarts"] == 2);
  CHECK(j["upgrades"] == 1);
  REQUIRE(j["disks"].size() == 1);
  auto d = j["disks"][0];
  CHECK(d["instance"] == "vm1");
  CHECK(d["disk"] == "disk");
  CHECK(d["writes"] == 1);
  CHECK(d["write_bytes"] == 2 * kChunk);
  CHECK(d["reads"] == 2);
  CHECK(d["read_bytes"] == 6 * kChunk);
  CHECK(d["flushes"] == 1);
  CHECK(d["flush_errors"] == 0);
  CHECK(d["discards"] == 1);
  CHECK(d["lock_acquisitions"] == 1);
  CHECK(d["write_latency"]["count"] == 1);
  CHECK(d["read_latency"]["count"] == 2);
  CHECK(j["cache"]["misses"].get<uint64_t>() >= 1);
  CHECK(j["cache"]["used_bytes"].get<uint64_t>() >= kChunk);
  CHECK(j["cache"]["verify_failures"] == 0);
  // The chunk store's own reads: a miss, then a hit.
  auto before = f.store->chunks().counters();
  Bytes chunk(kChunk);
  Bytes other = RandomBytes(kChunk, 99);
  auto put = f.store->chunks().Put(other);
  REQUIRE(put.ok());
  REQUIRE(f.store->chunks().Read(put->id, chunk).ok());
  REQUIRE(f.store->chunks().Read(put->id, chunk).ok());
  auto after = f.store->chunks().counters();
  CHECK(after.cache_misses == before.cache_misses + 1);
  CHECK(after.cache_hits == before.cache_hits + 1);
  CHECK(fs.metrics().ToJson()["cache"]["hits"] == after.cache_hits);

  std::string text = fs.metrics().ToPrometheus();
  std::string labels = R"(mountpoint="/m\"n\\",instance_name="vm1",disk="disk")";
  CHECK(text.find("imgfs_disk_read_bytes_total{" + labels + "} " + std::to_string(6 * kChunk) +
                  "\n") != std::string::npos);
  CHECK(text.find("imgfs_disk_read_duration_seconds_bucket{" + labels + ",le=\"+Inf\"} 2\n") !=
        std::string::npos);
  CHECK(text.find("imgfs_disk_read_duration_seconds_count{" + labels + "} 2\n") !=
        std::string::npos);
  CHECK(text.find("imgfs_server_restarts_total{mountpoint=\"/m\\\"n\\\\\"} 2\n") !=
        std::string::npos);
  CHECK(text.find("# TYPE imgfs_disk_write_duration_seconds histogram\n") != std::string::npos);
  fs.Release(o->fh);
}

TEST_CASE("latency histogram buckets are cumulative and end with +Inf", "[fusefs][metrics]") {
  LatencyHistogram h;
  h.Observe(50'000);          // 50 us: the first bucket (100 us)
  h.Observe(2'000'000);       // 2 ms: the 2.5 ms bucket
  h.Observe(60'000'000'000);  // 60 s: only +Inf
  auto c = h.Cumulative();
  CHECK(c.front() == 1);
  CHECK(c[4] == 2);  // le 0.0025
  CHECK(c[kLatencyBuckets.size() - 1] == 2);
  CHECK(c.back() == 3);
  CHECK(h.SumSeconds() == Approx(60.00205));
}
