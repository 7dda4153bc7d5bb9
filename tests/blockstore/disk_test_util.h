// Test helpers for the disk backends: temporary directories, random bytes,
// and a backend of each kind.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "blockstore/chunk_store.h"
#include "blockstore/disk.h"
#include "blockstore/image.h"
#include "blockstore/manifest.h"
#include "blockstore/status.h"

namespace imgfs::testing {

// A fresh directory under `base`, else $TMPDIR (or /tmp), removed with
// everything in it.
class TempDir {
 public:
  explicit TempDir(const char* base = nullptr) {
    if (!base) base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/imgfs-test.XXXXXX";
    path_ = ::mkdtemp(tmpl.data()) ? tmpl : std::string();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline Bytes RandomBytes(std::mt19937_64& rng, size_t n) {
  Bytes out(n);
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    for (size_t j = 0; j < 8 && i + j < n; ++j) out[i + j] = static_cast<uint8_t>(v >> (8 * j));
  }
  return out;
}

// "" when `got` equals `want`, else where they first differ (Catch would
// print whole megabyte buffers).
inline std::string Diff(const Bytes& got, const Bytes& want) {
  if (got.size() != want.size()) {
    return "size " + std::to_string(got.size()) + ", want " + std::to_string(want.size());
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      return "byte " + std::to_string(i) + " is " + std::to_string(got[i]) + ", want " +
             std::to_string(want[i]);
    }
  }
  return "";
}

// The seed of a randomised test: $IMGFS_TEST_SEED when set (to replay a
// failure), else a fresh one. The test prints it.
inline uint64_t TestSeed() {
  if (const char* s = std::getenv("IMGFS_TEST_SEED"); s && *s) return std::strtoull(s, nullptr, 0);
  return std::random_device{}() * 0x100000001ull ^ std::random_device{}();
}

inline int EnvInt(const char* name, int def) {
  if (const char* s = std::getenv(name); s && *s) return std::atoi(s);
  return def;
}

// Images for parents, in a mem: chunk store.
class TestImages : public ImageSource {
 public:
  explicit TestImages(uint32_t chunk_size)
      : store_(std::make_shared<ChunkStore>(CreateChunkBackend("mem:").value(), chunk_size)) {}
  // Images in a chunk store of the test's own.
  explicit TestImages(std::shared_ptr<ChunkStore> store) : store_(std::move(store)) {}

  // Stores `data` as an image; returns its id.
  Result<ImageId> Add(const Bytes& data) {
    Manifest m;
    m.size = data.size();
    m.chunk_size = store_->chunk_size();
    for (size_t off = 0; off < data.size(); off += m.chunk_size) {
      size_t n = std::min<size_t>(m.chunk_size, data.size() - off);
      ASSIGN_OR_RETURN(auto put, store_->Put(ByteView(data.data() + off, n)));
      m.chunks.push_back(put.id);
    }
    ASSIGN_OR_RETURN(ImageId id, PutManifest(store_->backend(), m));
    std::lock_guard lock(mu_);
    manifests_[id] = m;
    return id;
  }

  bool ReadsAreLocal() const override { return true; }  // a mem: chunk store

  Result<std::shared_ptr<ImageReader>> OpenImage(const ImageId& id) override {
    std::lock_guard lock(mu_);
    auto it = manifests_.find(id);
    if (it == manifests_.end()) return Status::NotFound("image " + id.Hex() + " not found");
    return std::make_shared<ImageReader>(store_, id, it->second);
  }

 private:
  std::shared_ptr<ChunkStore> store_;
  std::mutex mu_;
  std::map<ImageId, Manifest> manifests_;
};

// Random image bytes of `size` where about one chunk in `hole_every` is zeros.
inline Bytes RandomImage(std::mt19937_64& rng, size_t size, uint32_t chunk, int hole_every) {
  Bytes out = RandomBytes(rng, size);
  for (size_t off = 0; off < size; off += chunk) {
    if (rng() % hole_every == 0)
      std::fill_n(out.data() + off, std::min<size_t>(chunk, size - off), 0);
  }
  return out;
}

// The disk backend kinds the conformance suite runs against.
inline std::vector<std::string> DiskBackendKinds() {
  std::vector<std::string> kinds = {"mem:", "local"};
  // The rbd backend joins when the test cluster is up (tools/test.sh sets these).
  if (const char* pool = std::getenv("IMGFS_CEPH_POOL"); pool && std::getenv("IMGFS_CEPH_CONF")) {
    kinds.push_back(std::string("rbd:") + pool);
  }
  return kinds;
}

inline CephOptions TestCephOptions() {
  CephOptions o;
  if (const char* v = std::getenv("IMGFS_CEPH_CONF")) o.conf_file = v;
  if (const char* v = std::getenv("IMGFS_CEPH_ID")) o.client_id = v;
  if (const char* v = std::getenv("IMGFS_CEPH_KEYRING")) o.keyring = v;
  return o;
}

// Disk `disk` of instance "vm1", the instance the single-backend tests use.
inline DiskRef Ref(const std::string& disk) { return DiskRef{"vm1", disk}; }

// Options for a blank disk of `size` bytes.
inline DiskCreateOptions Blank(uint64_t size) {
  DiskCreateOptions o;
  o.size = size;
  return o;
}

// Flips bit `bit` of the byte at `offset` of `path` (a damaged file).
inline void FlipBit(const std::string& path, uint64_t offset, int bit = 3) {
  int fd = ::open(path.c_str(), O_RDWR);
  REQUIRE(fd >= 0);
  uint8_t b = 0;
  REQUIRE(::pread(fd, &b, 1, static_cast<off_t>(offset)) == 1);
  b ^= static_cast<uint8_t>(1u << bit);
  REQUIRE(::pwrite(fd, &b, 1, static_cast<off_t>(offset)) == 1);
  ::close(fd);
}

}  // namespace imgfs::testing
