// 4 KiB random I/O through the local disk backend against the same on a
// plain file, side by side in one run. Driven by tools/bench-disk.sh.
//
//   disk_bench DIR [IMAGE_MIB] [OPS] [CACHE_MIB]
//
// Builds a dir: chunk store in DIR holding an image of IMAGE_MIB MiB of random
// data (and the same bytes as the plain file DIR/plain), clones a local disk
// from it, and times the same sequence of random 4 KiB operations on both.
// CACHE_MIB sets the chunk cache (default: DefaultChunkCacheBytes(), as the
// command line and the mount use).
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <thread>
#include <vector>

#include "blockstore/chunk_store.h"
#include "blockstore/disk.h"
#include "blockstore/image.h"
#include "blockstore/manifest.h"

using namespace imgfs;

namespace {

constexpr uint64_t kIo = 4096;

[[noreturn]] void Die(const std::string& what, const Status& s) {
  std::fprintf(stderr, "disk_bench: %s: %s\n", what.c_str(), s.ToString().c_str());
  std::exit(1);
}

class Images : public ImageSource {
 public:
  Images(std::shared_ptr<ChunkStore> store, ImageId id, Manifest m)
      : store_(std::move(store)), id_(id), m_(std::move(m)) {}
  Result<std::shared_ptr<ImageReader>> OpenImage(const ImageId& id) override {
    if (id != id_) return Status::NotFound("no such image");
    return std::make_shared<ImageReader>(store_, id_, m_);
  }

 private:
  std::shared_ptr<ChunkStore> store_;
  ImageId id_;
  Manifest m_;
};

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs fn(thread, i) for i in [0, ops) split over `threads` threads; returns IOPS.
template <typename Fn>
double Run(int threads, uint64_t ops, Fn fn) {
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      for (uint64_t i = t; i < ops; i += threads) fn(i);
    });
  }
  for (auto& th : ts) th.join();
  return static_cast<double>(ops) / Seconds(t0);
}

void Report(const char* what, double lib, double file) {
  std::printf("%-34s library %9.0f IOPS   plain file %9.0f IOPS   ratio %.2f\n", what, lib, file,
              lib / file);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: disk_bench DIR [IMAGE_MIB] [OPS] [CACHE_MIB]\n");
    return 2;
  }
  std::string dir = argv[1];
  uint64_t image_bytes = (argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 256) << 20;
  uint64_t ops = argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 40000;
  size_t cache_bytes = argc > 4 ? static_cast<size_t>(std::strtoull(argv[4], nullptr, 10)) << 20
                                : DefaultChunkCacheBytes();

  auto backend = CreateChunkBackend("dir:" + dir + "/chunks");
  if (!backend.ok()) Die("chunk backend", backend.status());
  auto store = std::make_shared<ChunkStore>(*backend, kDefaultChunkSize, cache_bytes);
  int plain = ::open((dir + "/plain").c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (plain < 0) Die("plain file", Status::FromErrno(errno, dir + "/plain"));

  std::mt19937_64 rng(42);
  Manifest m;
  m.size = image_bytes;
  m.chunk_size = store->chunk_size();
  Bytes chunk(m.chunk_size);
  for (uint64_t off = 0; off < image_bytes; off += chunk.size()) {
    for (size_t i = 0; i < chunk.size(); i += 8) {
      uint64_t v = rng();
      std::memcpy(chunk.data() + i, &v, 8);
    }
    auto put = store->Put(ByteView(chunk));
    if (!put.ok()) Die("put chunk", put.status());
    m.chunks.push_back(put->id);
    if (::pwrite(plain, chunk.data(), chunk.size(), static_cast<off_t>(off)) !=
        static_cast<ssize_t>(chunk.size())) {
      Die("plain file", Status::FromErrno(errno, "write"));
    }
  }
  ::fsync(plain);
  auto id = PutManifest(store->backend(), m);
  if (!id.ok()) Die("manifest", id.status());
  Images images(store, *id, m);
  auto disks = CreateDiskBackend("local", dir, &images);
  if (!disks.ok()) Die("disk backend", disks.status());
  DiskCreateOptions o;
  o.image = *id;
  std::unique_ptr<Disk> disk;
  // A fresh clone for each thread count, so the first reads all go to the base.
  auto fresh_clone = [&](const std::string& name) {
    disk.reset();
    DiskRef ref{"bench", name};
    Status st = (*disks)->Create(ref, o);
    if (!st.ok()) Die("create disk", st);
    auto opened = (*disks)->Open(ref, OpenMode::kReadWrite);
    if (!opened.ok()) Die("open disk", opened.status());
    disk = std::move(opened).value();
  };
  fresh_clone("disk0");
  std::printf(
      "image %llu MiB of random data, chunk %u KiB, chunk cache %zu MiB, %llu ops of 4 KiB per "
      "run\n",
      static_cast<unsigned long long>(image_bytes >> 20), m.chunk_size / 1024, cache_bytes >> 20,
      static_cast<unsigned long long>(ops));
  std::vector<uint64_t> offsets(ops);
  auto shuffle = [&](uint64_t seed) {
    std::mt19937_64 r(seed);
    for (auto& off : offsets) off = (r() % (image_bytes / kIo)) * kIo;
  };
  thread_local Bytes buf(kIo);
  auto lib_read = [&](uint64_t i) {
    buf.resize(kIo);
    Status st = disk->Read(offsets[i], MutableByteView(buf));
    if (!st.ok()) Die("read", st);
  };
  auto file_read = [&](uint64_t i) {
    buf.resize(kIo);
    if (::pread(plain, buf.data(), kIo, static_cast<off_t>(offsets[i])) != kIo) {
      Die("pread", Status::FromErrno(errno, "plain"));
    }
  };
  Bytes pattern(kIo, 0x5a);
  auto lib_write = [&](uint64_t i) {
    Status st = disk->Write(offsets[i], ByteView(pattern));
    if (!st.ok()) Die("write", st);
  };
  auto file_write = [&](uint64_t i) {
    if (::pwrite(plain, pattern.data(), kIo, static_cast<off_t>(offsets[i])) != kIo) {
      Die("pwrite", Status::FromErrno(errno, "plain"));
    }
  };

  for (int threads : {1, 4}) {
    char label[64];
    fresh_clone("disk" + std::to_string(threads));
    shuffle(1 + threads);
    // The chunk cache is cold on the first pass only (the plain file is in
    // the page cache throughout): later passes show the steady state.
    std::snprintf(label, sizeof label, "randread 4k, %d thread%s (base%s)", threads,
                  threads > 1 ? "s" : "", threads == 1 ? ", cold cache" : "");
    double lib = Run(threads, ops, lib_read);
    double file = Run(threads, ops, file_read);
    Report(label, lib, file);
    if (threads == 1) {
      shuffle(50);
      lib = Run(threads, ops, lib_read);
      file = Run(threads, ops, file_read);
      Report("randread 4k, 1 thread (base)", lib, file);
    }

    shuffle(100 + threads);
    std::snprintf(label, sizeof label, "randwrite 4k, %d thread%s (+flush)", threads,
                  threads > 1 ? "s" : "");
    auto t0 = std::chrono::steady_clock::now();
    Run(threads, ops, lib_write);
    if (Status st = disk->Flush(); !st.ok()) Die("flush", st);
    lib = static_cast<double>(ops) / Seconds(t0);
    t0 = std::chrono::steady_clock::now();
    Run(threads, ops, file_write);
    ::fdatasync(plain);
    file = static_cast<double>(ops) / Seconds(t0);
    Report(label, lib, file);

    std::snprintf(label, sizeof label, "randread 4k, %d thread%s (written)", threads,
                  threads > 1 ? "s" : "");
    lib = Run(threads, ops, lib_read);
    file = Run(threads, ops, file_read);
    Report(label, lib, file);
  }
  disk.reset();
  ::close(plain);
  return 0;
}
