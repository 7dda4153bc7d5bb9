// What only the dir backend promises: its layout, temp-file handling and
// refusal of foreign directories. The shared behaviour is in
// chunk_store_conformance_test.cc.
#include "blockstore/dir_backend.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <utime.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "blockstore/chunk_store.h"
#include "blockstore/hash.h"
#include "tests/blockstore/test_util.h"

namespace imgfs {
namespace {

namespace fs = std::filesystem;
using testing::AsBytes;

void WriteFile(const std::string& path, std::string_view text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  REQUIRE(f.good());
}

TEST_CASE("dir backend: objects are sharded by the first two hex digits", "[dir_backend]") {
  testing::TempDir tmp;
  std::string root = tmp.path() + "/chunks";
  auto b = DirChunkBackend::Open(root);
  REQUIRE(b.status() == Status::OK());
  ChunkStore store(*b, 4096);
  auto put = store.Put(testing::RandomBytes(4096, 1));
  REQUIRE(put.ok());
  std::string hex = put->id.Hex();
  std::string path = root + "/objects/chunk/" + hex.substr(0, 2) + "/" + hex;
  CHECK((*b)->ObjectPath(ObjectKind::kChunk, hex) == path);
  CHECK(fs::file_size(path) == 4096);
  CHECK(fs::exists(root + "/FORMAT"));
  CHECK(fs::is_empty(root + "/tmp"));  // no temp file left behind
  REQUIRE((*b)->PutRecord("names/x", "v", RecordCondition::Any()) == Status::OK());
  CHECK(fs::exists(root + "/records/names/x"));
  CHECK(fs::is_empty(root + "/tmp"));
  CHECK((*b)->Describe() == "dir:" + root);
}

TEST_CASE("dir backend: objects are published with O_TMPFILE + linkat, or temp + rename",
          "[dir_backend]") {
  testing::TempDir tmp;
  std::string root = tmp.path() + "/chunks";
  // The test machines' file systems (ext4, tmpfs, xfs, btrfs) all have O_TMPFILE.
  auto linked = DirChunkBackend::Open(root);
  REQUIRE(linked.status() == Status::OK());
  CHECK((*linked)->uses_tmpfile());
  auto renamed = DirChunkBackend::Open(root, DirChunkBackend::PublishMode::kRename);
  REQUIRE(renamed.status() == Status::OK());
  CHECK_FALSE((*renamed)->uses_tmpfile());
  ::setenv("IMGFS_DIR_PUBLISH", "rename", 1);
  auto forced = DirChunkBackend::Open(root);
  ::unsetenv("IMGFS_DIR_PUBLISH");
  REQUIRE(forced.status() == Status::OK());
  CHECK_FALSE((*forced)->uses_tmpfile());

  Bytes a = testing::RandomBytes(4096, 11), b = testing::RandomBytes(4096, 12);
  std::string ida = Hash128(a).Hex(), idb = Hash128(b).Hex();
  REQUIRE((*linked)->PutIfAbsent(ObjectKind::kChunk, ida, a) == Status::OK());
  REQUIRE((*renamed)->PutIfAbsent(ObjectKind::kChunk, idb, b) == Status::OK());
  // Neither replaces an object the other stored.
  CHECK((*renamed)->PutIfAbsent(ObjectKind::kChunk, ida, b).IsAlreadyExists());
  CHECK((*linked)->PutIfAbsent(ObjectKind::kChunk, idb, a).IsAlreadyExists());
  Bytes got;
  REQUIRE((*linked)->Get(ObjectKind::kChunk, ida, &got) == Status::OK());
  CHECK(got == a);
  REQUIRE((*linked)->Get(ObjectKind::kChunk, idb, &got) == Status::OK());
  CHECK(got == b);
  CHECK(fs::file_size((*linked)->ObjectPath(ObjectKind::kChunk, ida)) == 4096);
  // Nothing but the objects themselves: no temp names anywhere.
  CHECK(fs::is_empty(root + "/tmp"));
  for (const auto& id : {ida, idb}) {
    int entries = 0;
    for (const auto& e : fs::directory_iterator(root + "/objects/chunk/" + id.substr(0, 2))) {
      CHECK(e.path().filename().string().size() == 32);
      ++entries;
    }
    CHECK(entries >= 1);
  }
}

TEST_CASE("dir backend: data survives reopening", "[dir_backend]") {
  testing::TempDir tmp;
  std::string root = tmp.path() + "/chunks";
  Bytes data = testing::RandomBytes(5000, 2);
  ChunkId id;
  {
    auto b = CreateChunkBackend("dir:" + root + "/");
    REQUIRE(b.ok());
    ChunkStore store(*b, 8192);
    id = store.Put(data)->id;
    REQUIRE((*b)->PutRecord("images/" + id.Hex(), "{}", RecordCondition::Absent()) == Status::OK());
  }
  auto b = CreateChunkBackend("dir:" + root);
  REQUIRE(b.ok());
  ChunkStore store(*b, 8192);
  Bytes got;
  REQUIRE(store.Get(id, &got) == Status::OK());
  CHECK(got == data);
  std::string v;
  REQUIRE((*b)->GetRecord("images/" + id.Hex(), &v) == Status::OK());
  CHECK(v == "{}");
}

TEST_CASE("dir backend: stale temp files are removed on open, fresh ones kept", "[dir_backend]") {
  testing::TempDir tmp;
  std::string root = tmp.path() + "/chunks";
  REQUIRE(DirChunkBackend::Open(root).ok());
  std::string stale = root + "/tmp/1.2.3.tmp", fresh = root + "/tmp/4.5.6.tmp";
  WriteFile(stale, "half a chunk");
  WriteFile(fresh, "being written right now");
  struct utimbuf old_times = {::time(nullptr) - 2 * 3600, ::time(nullptr) - 2 * 3600};
  REQUIRE(::utime(stale.c_str(), &old_times) == 0);
  auto b = DirChunkBackend::Open(root);
  REQUIRE(b.ok());
  CHECK_FALSE(fs::exists(stale));
  CHECK(fs::exists(fresh));
  auto removed = (*b)->CleanTemp(std::chrono::seconds(0));
  REQUIRE(removed.ok());
  CHECK(*removed == 1);
  CHECK_FALSE(fs::exists(fresh));
}

TEST_CASE("dir backend: a foreign or unknown directory is refused, untouched", "[dir_backend]") {
  testing::TempDir tmp;
  std::string root = tmp.path() + "/data";
  fs::create_directory(root);
  WriteFile(root + "/precious.txt", "keep me");
  auto b = CreateChunkBackend("dir:" + root);
  CHECK(b.status().IsInvalidArgument());
  CHECK_THAT(b.status().message(), Catch::Contains("not an imgfs chunk directory"));
  CHECK(fs::exists(root + "/precious.txt"));
  CHECK_FALSE(fs::exists(root + "/objects"));

  std::string other = tmp.path() + "/other";
  REQUIRE(DirChunkBackend::Open(other).ok());
  WriteFile(other + "/FORMAT", "imgfs-dir-backend 99\n");
  auto v = DirChunkBackend::Open(other);
  CHECK(v.status().IsInvalidArgument());
  CHECK_THAT(v.status().message(), Catch::Contains("imgfs-dir-backend 99"));

  CHECK(CreateChunkBackend("dir:" + tmp.path() + "/no/such/parent").status().IsNotFound());
  CHECK(CreateChunkBackend("dir:").status().IsInvalidArgument());
}

TEST_CASE("dir backend: a record key that is also a record's folder is refused", "[dir_backend]") {
  testing::TempDir tmp;
  auto b = DirChunkBackend::Open(tmp.path() + "/c");
  REQUIRE(b.ok());
  REQUIRE((*b)->PutRecord("a/b", "1", RecordCondition::Any()) == Status::OK());
  CHECK((*b)->PutRecord("a", "2", RecordCondition::Any()).IsInvalidArgument());
  CHECK((*b)->PutRecord("a/b/c", "3", RecordCondition::Any()).IsInvalidArgument());
  std::string v;
  CHECK((*b)->GetRecord("a", &v).IsNotFound());
  CHECK((*b)->GetRecord("a/b/c", &v).IsNotFound());
  REQUIRE((*b)->GetRecord("a/b", &v) == Status::OK());
  CHECK(v == "1");
}

// Runs body(i) in `n` forked processes at once; true when all exit 0.
bool InProcesses(int n, const std::function<bool(int)>& body) {
  int go[2];
  REQUIRE(::pipe(go) == 0);
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(go[1]);
      char c;
      if (::read(go[0], &c, 1) != 0) ::_exit(3);  // wait until the parent closes the pipe
      ::_exit(body(i) ? 0 : 1);
    }
    pids.push_back(pid);
  }
  ::close(go[0]);
  ::close(go[1]);  // start them all at once
  bool ok = true;
  for (pid_t pid : pids) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  return ok;
}

TEST_CASE("dir backend: compare-and-swap is atomic between processes", "[dir_backend]") {
  testing::TempDir tmp;
  std::string root = tmp.path() + "/c";
  REQUIRE(DirChunkBackend::Open(root).ok());
  {
    auto b = DirChunkBackend::Open(root);
    REQUIRE((*b)->PutRecord("counter", "0", RecordCondition::Absent()) == Status::OK());
  }
  constexpr int kProcs = 4, kIncrements = 25;
  CHECK(InProcesses(kProcs, [&](int) {
    auto b = DirChunkBackend::Open(root);
    if (!b.ok()) return false;
    for (int i = 0; i < kIncrements; ++i) {
      while (true) {
        std::string v;
        if (!(*b)->GetRecord("counter", &v).ok()) return false;
        Status s = (*b)->PutRecord("counter", std::to_string(std::stoi(v) + 1),
                                   RecordCondition::Equals(v));
        if (s.ok()) break;
        if (!s.IsBusy()) return false;
      }
    }
    return true;
  }));
  auto b = DirChunkBackend::Open(root);
  std::string v;
  REQUIRE((*b)->GetRecord("counter", &v) == Status::OK());
  CHECK(v == std::to_string(kProcs * kIncrements));
}

TEST_CASE("dir backend: processes racing to put one object store it once", "[dir_backend]") {
  const auto mode =
      GENERATE(DirChunkBackend::PublishMode::kAuto, DirChunkBackend::PublishMode::kRename);
  testing::TempDir tmp;
  std::string root = tmp.path() + "/c";
  REQUIRE(DirChunkBackend::Open(root, mode).ok());
  constexpr int kProcs = 6, kObjects = 40;
  std::string results = tmp.path() + "/results";
  ::mkdir(results.c_str(), 0755);
  CHECK(InProcesses(kProcs, [&](int p) {
    auto b = DirChunkBackend::Open(root, mode);
    if (!b.ok()) return false;
    ChunkStore store(*b, 4096);
    std::string won;
    for (int i = 0; i < kObjects; ++i) {
      auto put = store.Put(testing::RandomBytes(4096, 7000 + i));
      if (!put.ok()) return false;
      won += put->stored ? '1' : '0';
    }
    std::ofstream(results + "/" + std::to_string(p)) << won;
    return true;
  }));
  std::vector<int> winners(kObjects, 0);
  for (int p = 0; p < kProcs; ++p) {
    std::ifstream f(results + "/" + std::to_string(p));
    std::string won;
    f >> won;
    REQUIRE(won.size() == kObjects);
    for (int i = 0; i < kObjects; ++i) winners[i] += won[i] == '1';
  }
  for (int i = 0; i < kObjects; ++i) CHECK(winners[i] == 1);
  auto b = DirChunkBackend::Open(root);
  int listed = 0;
  REQUIRE((*b)->List(ObjectKind::kChunk, [&](std::string_view) {
    ++listed;
    return Status::OK();
  }) == Status::OK());
  CHECK(listed == kObjects);
  CHECK(fs::is_empty(root + "/tmp"));
}

TEST_CASE("chunk backend factory", "[chunk_backend]") {
  CHECK(CreateChunkBackend("rados:").status().IsInvalidArgument());
  CHECK(CreateChunkBackend("nfs:/x").status().IsInvalidArgument());
  CHECK(CreateChunkBackend("").status().IsInvalidArgument());
  CHECK(CreateChunkBackend("mem").status().IsInvalidArgument());
  auto a = CreateChunkBackend("mem:");
  auto b = CreateChunkBackend("mem:");
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->get() != b->get());  // "mem:" is a fresh backend each time
  auto n1 = CreateChunkBackend("mem:shared-test");
  auto n2 = CreateChunkBackend("mem:shared-test");
  CHECK(n1->get() == n2->get());  // "mem:NAME" is one per process
  CHECK((*n1)->Describe() == "mem:shared-test");
}

}  // namespace
}  // namespace imgfs
