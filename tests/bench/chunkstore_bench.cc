// Chunk store benchmark, run by tools/bench-chunkstore.sh. Every figure is
// printed next to a baseline measured in the same run on the same bytes.
//
//   chunkstore_bench xxh3 [MIB]
//   chunkstore_bench putget DIR CHUNK_SIZE MIB [THREADS [ROUNDS]]   (DIR is removed)
//   chunkstore_bench dedup CHUNK_SIZE FILE_A FILE_B
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "blockstore/chunk_store.h"
#include "blockstore/dir_backend.h"
#include "blockstore/hash.h"

using namespace imgfs;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

void Die(const std::string& what) {
  std::fprintf(stderr, "chunkstore_bench: %s\n", what.c_str());
  std::exit(1);
}

void Check(const Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + s.ToString());
}

Bytes RandomData(size_t n, uint64_t seed) {
  Bytes out(n);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(out.data() + i, &v, 8);
  }
  return out;
}

void Row(const char* name, double mbps, double base = 0, const char* base_name = nullptr) {
  if (base > 0) {
    std::printf("  %-44s %9.1f MB/s   %5.2fx %s\n", name, mbps, mbps / base, base_name);
  } else {
    std::printf("  %-44s %9.1f MB/s\n", name, mbps);
  }
  std::fflush(stdout);
}

void DropCache(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

int Xxh3(size_t mib) {
  for (size_t chunk : {size_t{4096}, size_t{65536}, size_t{1} << 20}) {
    Bytes data = RandomData(chunk, 1);
    size_t rounds = (mib << 20) / chunk;
    auto t0 = Clock::now();
    uint64_t sink = 0;
    for (size_t i = 0; i < rounds; ++i) {
      data[0] = static_cast<uint8_t>(i);
      sink += Hash128(data).bytes[0];
    }
    double s = Seconds(t0);
    Bytes zeros(chunk, 0);
    auto t1 = Clock::now();
    for (size_t i = 0; i < rounds; ++i) {
      zeros[chunk - 1] = static_cast<uint8_t>(i & 1);
      sink += IsAllZero(zeros);
    }
    double z = Seconds(t1);
    auto t2 = Clock::now();
    Bytes copy(chunk);
    for (size_t i = 0; i < rounds; ++i) {
      data[0] = static_cast<uint8_t>(i);
      std::memcpy(copy.data(), data.data(), chunk);
      sink += copy[chunk - 1];
    }
    double c = Seconds(t2);
    double mb = double(rounds * chunk) / 1e6;
    std::printf(
        "XXH3-128 on %zu-byte buffers: %.0f MB/s (memcpy %.0f MB/s: %.2fx; zero check %.0f MB/s) "
        "[%lu]\n",
        chunk, mb / s, mb / c, (mb / s) / (mb / c), mb / z, static_cast<unsigned long>(sink & 1));
  }
  return 0;
}

// Best-of-`rounds` figures, baseline and subject interleaved, since the
// machines are shared and noisy.
int PutGet(const std::string& dir, uint32_t chunk, size_t mib, int threads, int rounds) {
  Check(ValidateChunkSize(chunk), "chunk size");
  size_t total = mib << 20;
  size_t count = total / chunk;
  Bytes data = RandomData(total, 42);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  double mb = double(total) / 1e6;
  std::printf(
      "chunk size %u, %zu MiB of random data (%zu chunks), %d thread(s), best of %d, in %s\n",
      chunk, mib, count, threads, rounds, dir.c_str());

  std::vector<ChunkId> ids(count);
  for (size_t i = 0; i < count; ++i) ids[i] = Hash128(ByteView(data).subspan(i * chunk, chunk));

  std::string plain;
  std::shared_ptr<DirChunkBackend> backend;
  double plain_write = 0, put_new = 0, put_dup = 0, sync_share = 0;
  for (int round = 0; round < rounds; ++round) {
    // Baseline: one plain file, chunk-sized writes, one fsync (cp + sync).
    plain = dir + "/plain." + std::to_string(round);
    auto t0 = Clock::now();
    int fd = ::open(plain.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) Die("open " + plain);
    for (size_t i = 0; i < count; ++i) {
      if (::write(fd, data.data() + i * chunk, chunk) != ssize_t(chunk)) Die("write");
    }
    if (::fsync(fd) != 0) Die("fsync");
    ::close(fd);
    plain_write = std::max(plain_write, mb / Seconds(t0));

    auto backend_or = DirChunkBackend::Open(dir + "/chunks." + std::to_string(round));
    Check(backend_or.status(), "open dir backend");
    backend = *backend_or;
    double sync_seconds = 0;
    auto run_puts = [&](std::atomic<size_t>* stored) {
      std::vector<std::thread> ts;
      std::atomic<size_t> next{0};
      for (int t = 0; t < threads; ++t) {
        ts.emplace_back([&] {
          ChunkStore store(backend, chunk, 0);
          for (size_t i; (i = next.fetch_add(1)) < count;) {
            auto r = store.Put(ByteView(data).subspan(i * chunk, chunk));
            Check(r.status(), "put");
            if (r->stored) stored->fetch_add(1);
          }
        });
      }
      for (auto& t : ts) t.join();
      auto ts0 = Clock::now();
      Check(backend->Sync(), "sync");
      sync_seconds = Seconds(ts0);
    };
    std::atomic<size_t> stored{0};
    t0 = Clock::now();
    run_puts(&stored);
    double put_seconds = Seconds(t0);
    if (stored.load() != count) Die("not every chunk was stored");
    if (mb / put_seconds > put_new) {
      put_new = mb / put_seconds;
      sync_share = sync_seconds / put_seconds;
    }
    stored = 0;
    t0 = Clock::now();
    run_puts(&stored);
    put_dup = std::max(put_dup, mb / Seconds(t0));
    if (stored.load() != 0) Die("dedup hits stored something");
  }

  // For scale: one file per chunk with fsync+rename+fsync dir each (what a
  // put costs without batched Sync), on at most 256 chunks.
  double plain_files_write = 0;
  {
    std::string plain_dir = dir + "/plainfiles";
    std::filesystem::create_directories(plain_dir);
    size_t n = std::min<size_t>(count, 256);
    auto t0 = Clock::now();
    for (size_t i = 0; i < n; ++i) {
      std::string tmp = plain_dir + "/t" + std::to_string(i);
      std::string dst = plain_dir + "/f" + std::to_string(i);
      int f = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
      if (f < 0 || ::write(f, data.data() + i * chunk, chunk) != ssize_t(chunk) ||
          ::fsync(f) != 0) {
        Die("plain file write");
      }
      ::close(f);
      if (::rename(tmp.c_str(), dst.c_str()) != 0) Die("rename");
      int d = ::open(plain_dir.c_str(), O_RDONLY | O_DIRECTORY);
      ::fsync(d);
      ::close(d);
    }
    plain_files_write = double(n) * chunk / 1e6 / Seconds(t0);
  }

  Row("plain: 1 file, write + 1 fsync", plain_write);
  Row("dir put, new chunks, then Sync", put_new, plain_write, "of plain write");
  std::printf("  (Sync took %.0f%% of that time)\n", 100 * sync_share);
  Row("dir put, dedup hits (read back, compare)", put_dup, plain_write, "of plain write");
  Row("(files with fsync+rename+fsync dir each)", plain_files_write, plain_write, "of plain write");

  auto read_plain = [&] {
    Bytes buf(chunk);
    int f = ::open(plain.c_str(), O_RDONLY);
    auto t = Clock::now();
    for (size_t i = 0; i < count; ++i) {
      if (::pread(f, buf.data(), chunk, off_t(i * chunk)) != ssize_t(chunk)) Die("pread");
    }
    double r = mb / Seconds(t);
    ::close(f);
    return r;
  };
  auto read_store = [&] {
    std::vector<std::thread> ts;
    std::atomic<size_t> next{0};
    auto t = Clock::now();
    for (int k = 0; k < threads; ++k) {
      ts.emplace_back([&] {
        ChunkStore store(backend, chunk, 0);
        Bytes buf(chunk);
        for (size_t i; (i = next.fetch_add(1)) < count;) {
          auto r = store.Read(ids[i], buf);
          Check(r.status(), "read");
        }
      });
    }
    for (auto& th : ts) th.join();
    return mb / Seconds(t);
  };
  double plain_read = 0, store_read = 0;
  for (int round = 0; round < rounds; ++round) {
    plain_read = std::max(plain_read, read_plain());
    store_read = std::max(store_read, read_store());
  }
  Row("plain: 1 file, chunk-sized preads (page cache)", plain_read);
  Row("dir get, verified, no chunk cache (page cache)", store_read, plain_read, "of plain read");

  // The same from the disk: drop both from the page cache first.
  DropCache(plain);
  for (size_t i = 0; i < count; ++i) {
    DropCache(backend->ObjectPath(ObjectKind::kChunk, ids[i].Hex()));
  }
  double plain_cold = read_plain();
  double store_cold = read_store();
  Row("plain: 1 file, chunk-sized preads (cold)", plain_cold);
  Row("dir get, verified, no chunk cache (cold)", store_cold, plain_cold, "of plain read");

  // Cost of opening a file per chunk: open+fstat+pread+close vs pread on open fds.
  {
    Bytes buf(chunk);
    std::vector<std::string> paths(count);
    for (size_t i = 0; i < count; ++i) {
      paths[i] = backend->ObjectPath(ObjectKind::kChunk, ids[i].Hex());
    }
    std::vector<int> fds(count);
    for (size_t i = 0; i < count; ++i) fds[i] = ::open(paths[i].c_str(), O_RDONLY);
    double open_each = 0, cached_fd = 0;
    for (int round = 0; round < rounds; ++round) {
      auto t = Clock::now();
      for (size_t i = 0; i < count; ++i) {
        int f = ::open(paths[i].c_str(), O_RDONLY);
        struct stat st;
        ::fstat(f, &st);
        if (::pread(f, buf.data(), chunk, 0) < 0) Die("pread");
        ::close(f);
      }
      open_each = std::max(open_each, mb / Seconds(t));
      t = Clock::now();
      for (size_t i = 0; i < count; ++i) {
        if (::pread(fds[i], buf.data(), chunk, 0) < 0) Die("pread");
      }
      cached_fd = std::max(cached_fd, mb / Seconds(t));
    }
    for (int f : fds) ::close(f);
    Row("chunk files: open+fstat+pread+close each", open_each);
    Row("chunk files: pread on already-open fds", cached_fd, open_each, "of open each");
  }
  std::filesystem::remove_all(dir);
  return 0;
}

// Dedup of two related images: distinct stored chunks of A, of B, and of both.
int Dedup(uint32_t chunk, const std::string& a, const std::string& b) {
  auto scan = [&](const std::string& path, std::unordered_set<ChunkId>* ids, uint64_t* data_chunks,
                  uint64_t* size) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) Die("open " + path);
    Bytes buf(chunk);
    *data_chunks = 0;
    *size = 0;
    while (true) {
      ssize_t n = ::read(fd, buf.data(), chunk);
      if (n < 0) Die("read " + path);
      if (n == 0) break;
      *size += uint64_t(n);
      ChunkId id = ChunkIdOf(ByteView(buf).first(size_t(n)));
      if (!id.IsHole()) {
        ++*data_chunks;
        ids->insert(id);
      }
    }
    ::close(fd);
  };
  std::unordered_set<ChunkId> ia, ib;
  uint64_t da, db, sa, sb;
  scan(a, &ia, &da, &sa);
  scan(b, &ib, &db, &sb);
  std::unordered_set<ChunkId> both = ia;
  both.insert(ib.begin(), ib.end());
  // Bytes stored: distinct chunks x chunk size (an upper bound for short last chunks).
  double stored_a = double(ia.size()) * chunk, stored_both = double(both.size()) * chunk;
  std::printf(
      "chunk %7u: A %6zu distinct chunks (%.1f MiB), A+B %6zu (%.1f MiB): A+B stores %.3fx of A; "
      "B adds %.1f MiB\n",
      chunk, ia.size(), stored_a / 1048576, both.size(), stored_both / 1048576,
      stored_both / stored_a, (stored_both - stored_a) / 1048576);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "xxh3") return Xxh3(argc > 2 ? std::stoul(argv[2]) : 1024);
  if (mode == "putget" && argc >= 5) {
    return PutGet(argv[2], uint32_t(std::stoul(argv[3])), std::stoul(argv[4]),
                  argc > 5 ? std::stoi(argv[5]) : 1, argc > 6 ? std::stoi(argv[6]) : 3);
  }
  if (mode == "dedup" && argc == 5) return Dedup(uint32_t(std::stoul(argv[2])), argv[3], argv[4]);
  std::fprintf(
      stderr,
      "usage: chunkstore_bench xxh3 [MIB]\n"
      "       chunkstore_bench putget DIR CHUNK_SIZE MIB [THREADS [ROUNDS]]  (DIR is removed)\n"
      "       chunkstore_bench dedup CHUNK_SIZE FILE_A FILE_B\n");
  return 2;
}
