// A server's successor takes over the kernel's view of the mount: the state
// log (fusefs/takeover.h) and FileSystem::Restore, without mounting.
#include "fusefs/takeover.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>

#include "blockstore/manifest.h"
#include "fusefs/fs.h"

using namespace imgfs;
using namespace imgfs::fusefs;

namespace {

struct Fixture {
  std::string dir;
  std::unique_ptr<Store> store;
  ImageId image;

  Fixture() {
    char tmpl[] = "/tmp/imgfs-takeover-test.XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    StoreConfig cfg;
    cfg.chunk_size = 64 * 1024;
    cfg.chunks = "mem";
    cfg.disks = "mem";
    REQUIRE(Store::Init(dir + "/store", cfg).ok());
    auto s = Store::Open(dir + "/store");
    REQUIRE(s.ok());
    store = std::move(*s);
    Manifest m;
    m.size = 64 * 1024;
    m.chunk_size = 64 * 1024;
    auto put = store->chunks().Put(Bytes(64 * 1024, 7));
    REQUIRE(put.ok());
    m.chunks.push_back(put->id);
    auto id = PutManifest(store->backend(), m);
    REQUIRE(id.ok());
    REQUIRE(store->PublishImage(m, *id, {"sample"}, false).ok());
    image = *id;
    DiskCreateOptions o;
    o.image = image;
    REQUIRE(store->disks().Create(DiskRef{"vm1", "disk"}, o).ok());
  }
  ~Fixture() { std::filesystem::remove_all(dir); }
};

int NewStateFile() {
  int fd = memfd_create("takeover-test", MFD_CLOEXEC);
  REQUIRE(fd >= 0);
  return fd;
}

void Append(int fd, const std::string& text) {
  REQUIRE(write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
}

uint64_t Lookup(FileSystem& fs, uint64_t parent, const std::string& name) {
  auto e = fs.Lookup(parent, name);
  INFO(name << ": " << e.status().ToString());
  REQUIRE(e.ok());
  return e->ino;
}

}  // namespace

TEST_CASE("a successor keeps inode numbers, file and directory handles", "[fusefs][takeover]") {
  Fixture f;
  int state = NewStateFile();
  StateLog log(state);
  FsOptions opts;
  opts.allow_shrink = true;  // so that O_TRUNC empties the disk
  FileSystem old_fs(*f.store, opts);
  old_fs.SetStateSink(&log);
  uint64_t vm1 = Lookup(old_fs, kRootIno, "vm1");
  uint64_t disk = Lookup(old_fs, vm1, "disk");
  uint64_t base = Lookup(old_fs, kRootIno, "_base");
  uint64_t img = Lookup(old_fs, base, f.image.Hex());
  auto rw = old_fs.Open(disk, O_RDWR | O_TRUNC);  // O_TRUNC is not done again
  REQUIRE(rw.ok());
  auto ro = old_fs.Open(img, O_RDONLY);
  REQUIRE(ro.ok());
  REQUIRE(old_fs.Write(rw->fh, 0, Bytes(4096, 9)).ok());
  auto dh = old_fs.OpenDir(vm1);
  REQUIRE(dh.ok());
  REQUIRE(old_fs.Shutdown().ok());  // what a server handing over does

  auto loaded = LoadState(state);
  REQUIRE(loaded.ok());
  FsState snap = old_fs.Snapshot();
  CHECK(loaded->fs.inos == snap.inos);
  CHECK(loaded->fs.dirs == snap.dirs);
  REQUIRE(loaded->fs.opens.size() == 2);
  CHECK(loaded->fs.opens.at(rw->fh).ino == disk);
  CHECK((loaded->fs.opens.at(rw->fh).flags & O_TRUNC) == 0);

  FileSystem fs(*f.store, opts);
  CHECK(fs.Restore(loaded->fs) == 0);
  // The kernel's inode numbers answer without a lookup, and names keep them.
  auto attr = fs.GetAttr(disk);
  REQUIRE(attr.ok());
  CHECK(attr->st_size == 4096);
  CHECK(Lookup(fs, kRootIno, "vm1") == vm1);
  CHECK(Lookup(fs, vm1, "disk") == disk);
  // The handles work: the file kept its data (no second O_TRUNC).
  Bytes b(4096);
  auto n = fs.Read(rw->fh, 0, b);
  REQUIRE(n.ok());
  CHECK(b == Bytes(4096, 9));
  REQUIRE(fs.Write(rw->fh, 4096, Bytes(4096, 5)).ok());
  REQUIRE(fs.Fsync(rw->fh).ok());
  Bytes i(10);
  REQUIRE(fs.Read(ro->fh, 0, i).ok());
  CHECK(i == Bytes(10, 7));
  auto entries = fs.ReadDir(*dh, 0);
  REQUIRE(entries.ok());
  REQUIRE(entries->size() == 3);
  CHECK(entries->at(2).name == "disk");
  CHECK(entries->at(2).ino == disk);
  // New numbers never repeat old ones.
  DiskCreateOptions o;
  o.image = f.image;
  REQUIRE(f.store->disks().Create(DiskRef{"vm1", "disk2"}, o).ok());
  uint64_t disk2 = Lookup(fs, vm1, "disk2");
  CHECK(disk2 > std::max({vm1, disk, base, img}));
  auto again = fs.Open(disk2, O_RDONLY);
  REQUIRE(again.ok());
  CHECK(again->fh > std::max({rw->fh, ro->fh, *dh}));
  fs.Release(rw->fh);
  fs.Release(ro->fh);
  fs.Release(again->fh);
  fs.ReleaseDir(*dh);
  CHECK(fs.OpenFileCountForTest() == 0);
  close(state);
}

TEST_CASE("a handle that cannot be opened again fails its requests with EIO",
          "[fusefs][takeover]") {
  Fixture f;
  FsState st;
  st.inos["d/vm1/gone"] = 7;
  st.opens[3] = FsState::Open{7, O_RDWR};
  st.opens[4] = FsState::Open{99, O_RDONLY};  // an inode no name has
  FileSystem fs(*f.store, FsOptions{});
  CHECK(fs.Restore(st) == 2);
  Bytes b(10);
  CHECK(fs.Read(3, 0, b).status().ToErrno() == EIO);
  CHECK(fs.Write(4, 0, b).status().ToErrno() != 0);
  CHECK(fs.GetAttr(7).status().ToErrno() == ENOENT);
  fs.Release(3);
  fs.Release(4);
  CHECK(fs.OpenFileCountForTest() == 0);
}

TEST_CASE("renames and removals reach the state log", "[fusefs][takeover]") {
  Fixture f;
  int state = NewStateFile();
  StateLog log(state);
  FileSystem fs(*f.store, FsOptions{});
  fs.SetStateSink(&log);
  uint64_t vm1 = Lookup(fs, kRootIno, "vm1");
  uint64_t disk = Lookup(fs, vm1, "disk");
  REQUIRE(fs.Rename(vm1, "disk", vm1, "renamed", 0).ok());
  auto loaded = LoadState(state);
  REQUIRE(loaded.ok());
  CHECK(loaded->fs.inos.count("d/vm1/disk") == 0);
  CHECK(loaded->fs.inos.at("d/vm1/renamed") == disk);
  REQUIRE(fs.Unlink(vm1, "renamed").ok());
  loaded = LoadState(state);
  REQUIRE(loaded.ok());
  CHECK(loaded->fs.inos.count("d/vm1/renamed") == 0);
  CHECK(loaded->fs.next_ino > disk);
  close(state);
}

TEST_CASE("the state file: a torn last line is ignored, other damage is an error",
          "[fusefs][takeover]") {
  int fd = NewStateFile();
  Append(fd, "{\"init\":\"0a0b\",\"reply\":\"0c\"}\n{\"client\":\"client.7\"}\n");
  Append(fd, "{\"bind\":\"i/vm1\",\"ino\":5}\n{\"open\":9,\"ino\":5,\"fl");
  auto st = LoadState(fd);
  REQUIRE(st.ok());
  REQUIRE(st->init);
  CHECK(st->init->request == std::string("\x0a\x0b", 2));
  CHECK(st->clients == std::vector<std::string>{"client.7"});
  CHECK(st->fs.inos.at("i/vm1") == 5);
  CHECK(st->fs.opens.empty());

  // A compacted copy reads back the same.
  int copy = NewStateFile();
  REQUIRE(WriteState(copy, *st).ok());
  auto again = LoadState(copy);
  REQUIRE(again.ok());
  CHECK(again->fs.inos == st->fs.inos);
  CHECK(again->clients == st->clients);
  CHECK(again->init->reply == st->init->reply);

  int bad = NewStateFile();
  Append(bad, "{\"bind\":\"i/vm1\",\"ino\":5}\nnot json\n{\"client\":\"x\"}\n");
  auto err = LoadState(bad);
  REQUIRE_FALSE(err.ok());
  CHECK(err.status().message().find("line 2") != std::string::npos);
  close(fd);
  close(copy);
  close(bad);
}
