// Flipped bits in each on-disk structure of a local store (docs/formats.md):
// chunk, manifest, image record, disk data, allocation map, disk metadata
// and the store's configuration. Each trial flips one bit of a fresh copy of
// a store and then uses it; every use must give a clear error or the right
// bytes, never wrong bytes and never a crash. Structures with a checksum
// (chunks, manifests, disk data, allocation map pages) must give an error on
// every flip, and so must a flipped digit in a disk's metadata (its "xxh3").
//
// Reproduce a failure with IMGFS_TEST_SEED=<the printed seed>.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <functional>
#include <random>

#include "blockstore/file_util.h"
#include "cache/fsck.h"
#include "cache/import.h"
#include "cache/store.h"
#include "tests/blockstore/disk_test_util.h"

using namespace imgfs;
using namespace imgfs::testing;
namespace fs = std::filesystem;

namespace {

constexpr uint32_t kChunk = 4096;
constexpr size_t kImageBytes = 64 * 1024;
constexpr uint64_t kWritten = 8192;  // the disk owns [8 KiB, 16 KiB)

struct QuietLogs {
  QuietLogs() : level(spdlog::get_level()) { spdlog::set_level(spdlog::level::off); }
  ~QuietLogs() { spdlog::set_level(level); }
  spdlog::level::level_enum level;
};

// A store with one image (named "a") and one disk vm/d made from it, which
// owns one written chunk; `image` and `disk` are what they read.
struct Fixture {
  TempDir dir;
  Bytes image, disk;
  ImageId id;
  std::string tpl() const { return dir.path() + "/tpl"; }
  std::string work() const { return dir.path() + "/s"; }

  Fixture() {
    std::mt19937_64 rng(7);
    image = RandomBytes(rng, kImageBytes);
    StoreConfig c;
    c.chunk_size = kChunk;
    REQUIRE(Store::Init(tpl(), c).ok());
    auto s = Store::Open(tpl());
    REQUIRE(s.ok());
    Store& store = **s;
    int fd = ::memfd_create("img", MFD_CLOEXEC);
    REQUIRE(::write(fd, image.data(), image.size()) == static_cast<ssize_t>(image.size()));
    ImportOptions o;
    o.names = {"a"};
    auto r = ImportRawFd(store, fd, true, image.size(), o);
    ::close(fd);
    REQUIRE(r.ok());
    id = r->id;
    DiskCreateOptions d;
    d.image = id;
    REQUIRE(store.CreateDisk(DiskRef{"vm", "d"}, d).ok());
    auto disk_h = store.disks().Open(DiskRef{"vm", "d"}, OpenMode::kReadWrite);
    REQUIRE(disk_h.ok());
    Bytes data = RandomBytes(rng, kChunk);
    REQUIRE((*disk_h)->Write(kWritten, ByteView(data)).ok());
    REQUIRE((*disk_h)->Flush().ok());
    disk = image;
    std::copy(data.begin(), data.end(), disk.begin() + kWritten);
  }

  void Reset() const {
    std::error_code ec;
    fs::remove_all(work(), ec);
    fs::copy(tpl(), work(), fs::copy_options::recursive);
  }
};

uint64_t FileSize(const std::string& path) { return fs::file_size(path); }

enum class Outcome { kError, kRight };

// Uses the store every way a user does: open it, read the image, open and
// read the disk, fsck. Any use may fail (a clear error: a non-OK Status with
// a message); whatever it reads must be right. Returns kError when any use
// failed or fsck found a problem.
Outcome Use(const Fixture& f) {
  bool error = false;
  auto s = Store::Open(f.work());
  if (!s.ok()) {
    CHECK_FALSE(s.status().message().empty());
    return Outcome::kError;
  }
  Store& store = **s;
  auto check_read = [&](const Status& st, const Bytes& got, const Bytes& want, const char* what) {
    if (!st.ok()) {
      INFO(what << ": " << st.ToString());
      CHECK_FALSE(st.message().empty());
      error = true;
      return;
    }
    INFO(what << " read wrong bytes");
    REQUIRE(Diff(got, want) == "");
  };
  if (auto id = store.ResolveImage("a"); !id.ok()) {
    error = true;
  } else if (auto reader = store.OpenImage(*id); !reader.ok()) {
    error = true;
  } else {
    Bytes got(std::min<uint64_t>((*reader)->size(), f.image.size()));
    if (got.size() != f.image.size()) error = true;  // a size that changed is an error of its own
    Bytes want(f.image.begin(), f.image.begin() + got.size());
    check_read((*reader)->Read(0, MutableByteView(got)), got, want, "image");
  }
  if (auto d = store.disks().Open(DiskRef{"vm", "d"}, OpenMode::kReadOnly); !d.ok()) {
    error = true;
  } else {
    Bytes got(std::min<uint64_t>((*d)->size(), f.disk.size()));
    if (got.size() != f.disk.size()) error = true;
    Bytes want(f.disk.begin(), f.disk.begin() + got.size());
    check_read((*d)->Read(0, MutableByteView(got)), got, want, "disk");
  }
  auto report = CheckStore(store);
  if (!report.ok() || !report->clean()) error = true;
  return error ? Outcome::kError : Outcome::kRight;
}

// `trials` flips of random bits in [begin, end) of the file `rel` (relative
// to the store) names; `must_fail`: every flip must be an error.
void FlipTrials(const Fixture& f, const std::function<std::string()>& rel, uint64_t begin,
                uint64_t end, int trials, bool must_fail, int* errors) {
  const uint64_t seed = TestSeed();
  std::mt19937_64 rng(seed);
  for (int t = 0; t < trials; ++t) {
    f.Reset();
    std::string path = f.work() + "/" + rel();
    uint64_t stop = std::min(end, FileSize(path));
    REQUIRE(stop > begin);
    uint64_t offset = begin + rng() % (stop - begin);
    int bit = static_cast<int>(rng() % 8);
    INFO("seed " << seed << ": bit " << bit << " of byte " << offset << " of " << rel());
    FlipBit(path, offset, bit);
    Outcome o = Use(f);
    if (must_fail) CHECK(o == Outcome::kError);
    if (o == Outcome::kError) ++*errors;
  }
}

// The one file under `dir` (relative to the store), found by walking it.
std::string OnlyFile(const Fixture& f, const std::string& dir, const std::string& skip = "") {
  std::string found;
  for (const auto& e : fs::recursive_directory_iterator(f.work() + "/" + dir)) {
    if (!e.is_regular_file()) continue;
    std::string rel = fs::relative(e.path(), f.work()).string();
    if (!skip.empty() && rel.find(skip) != std::string::npos) continue;
    found = rel;
  }
  REQUIRE_FALSE(found.empty());
  return found;
}

}  // namespace

TEST_CASE("a flipped bit in a chunk is an error, never wrong bytes", "[flipped_bits]") {
  QuietLogs quiet;
  Fixture f;
  int errors = 0;
  // The chunk holding the image's first 4 KiB.
  auto chunk = [&] {
    std::string best;
    for (const auto& e : fs::recursive_directory_iterator(f.work() + "/chunks/objects/chunk")) {
      if (!e.is_regular_file()) continue;
      Bytes b(kChunk);
      int fd = ::open(e.path().c_str(), O_RDONLY);
      ssize_t n = ::read(fd, b.data(), b.size());
      ::close(fd);
      if (n == kChunk && std::equal(b.begin(), b.end(), f.image.begin())) {
        best = fs::relative(e.path(), f.work()).string();
      }
    }
    REQUIRE_FALSE(best.empty());
    return best;
  };
  FlipTrials(f, chunk, 0, kChunk, 8, /*must_fail=*/true, &errors);
}

TEST_CASE("a flipped bit in a manifest is an error, never wrong bytes", "[flipped_bits]") {
  QuietLogs quiet;
  Fixture f;
  int errors = 0;
  auto manifest = [&] { return OnlyFile(f, "chunks/objects/manifest"); };
  FlipTrials(f, manifest, 0, UINT64_MAX, 16, /*must_fail=*/true, &errors);
}

TEST_CASE("a flipped bit in an image record is an error or harmless, never wrong bytes",
          "[flipped_bits]") {
  QuietLogs quiet;
  Fixture f;
  int errors = 0;
  auto record = [&] { return OnlyFile(f, "chunks/records/images"); };
  FlipTrials(f, record, 0, UINT64_MAX, 24, /*must_fail=*/false, &errors);
  CHECK(errors > 0);
}

TEST_CASE("a flipped bit in a disk's data or checksums is an error, never wrong bytes",
          "[flipped_bits]") {
  QuietLogs quiet;
  Fixture f;
  int errors = 0;
  auto data = [] { return std::string("disks/vm/d/data"); };
  FlipTrials(f, data, kWritten, kWritten + kChunk, 8, /*must_fail=*/true, &errors);
  auto csum = [] { return std::string("disks/vm/d/csum"); };
  FlipTrials(f, csum, 4096 + kWritten / 4096 * 8, 4096 + (kWritten + kChunk) / 4096 * 8, 8,
             /*must_fail=*/true, &errors);
}

TEST_CASE("a flipped bit in an allocation map's header is an error, never wrong bytes",
          "[flipped_bits]") {
  QuietLogs quiet;
  Fixture f;
  int errors = 0;
  auto bitmap = [] { return std::string("disks/vm/d/bitmap"); };
  FlipTrials(f, bitmap, 0, 16, 12, /*must_fail=*/true, &errors);
}

TEST_CASE("a flipped bit in a disk's metadata is an error or harmless, never wrong bytes",
          "[flipped_bits]") {
  QuietLogs quiet;
  Fixture f;
  int errors = 0;
  auto meta = [] { return std::string("disks/vm/d/meta.json"); };
  FlipTrials(f, meta, 0, UINT64_MAX, 24, /*must_fail=*/false, &errors);
  CHECK(errors > 0);
}

TEST_CASE("a flipped bit in the store's configuration is an error or harmless, never wrong bytes",
          "[flipped_bits]") {
  QuietLogs quiet;
  Fixture f;
  int errors = 0;
  auto config = [] { return std::string("imgfs.json"); };
  FlipTrials(f, config, 0, UINT64_MAX, 24, /*must_fail=*/false, &errors);
  CHECK(errors > 0);
}

TEST_CASE("a flipped bit in an allocation map's pages is an error, never wrong bytes",
          "[flipped_bits]") {
  QuietLogs quiet;
  Fixture f;
  int errors = 0;
  auto bitmap = [] { return std::string("disks/vm/d/bitmap"); };
  // The page holding the disk's bit (bits and checksum), then any of the 4 KiB
  // block's pages, which are all zeros.
  FlipTrials(f, bitmap, 4096, 4096 + 512, 12, /*must_fail=*/true, &errors);
  FlipTrials(f, bitmap, 4096, 8192, 12, /*must_fail=*/true, &errors);
}

// A flip of the lowest bit of an ASCII digit gives another digit, so the file
// stays valid JSON with one value changed (a size, an overlap, a parent id):
// the file's checksum must catch each one.
void FlipEachDigit(const Fixture& f, const std::string& rel) {
  f.Reset();
  auto text = ReadFile(f.work() + "/" + rel);
  REQUIRE(text.ok());
  // The one digit in a key: "xxh3" turned into "xxh2" leaves a file without
  // a checksum (as written before it) whose values are all intact.
  size_t key_digit = text->find("\"xxh3\"") + 4;
  REQUIRE(key_digit != std::string::npos + 4);
  int flips = 0;
  for (size_t i = 0; i < text->size(); ++i) {
    char c = (*text)[i];
    if (c < '0' || c > '9') continue;
    f.Reset();
    INFO("digit " << c << " at byte " << i << " of " << rel);
    FlipBit(f.work() + "/" + rel, i, 0);
    CHECK(Use(f) == (i == key_digit ? Outcome::kRight : Outcome::kError));
    ++flips;
  }
  CHECK(flips > 20);
}

TEST_CASE("a flipped digit in a disk's metadata is an error, never a silent change",
          "[flipped_bits]") {
  QuietLogs quiet;
  Fixture f;
  FlipEachDigit(f, "disks/vm/d/meta.json");
}
