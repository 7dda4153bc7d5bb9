// iocheck: the client side of the mount's crash and upgrade tests
// (tests/integration/mount_failover.sh, tools/bench-failover.sh).
//
//   iocheck write FILE LOG STOPFILE   writes numbered, checksummed 4 KiB records
//                                     (pwrite + fsync each) until STOPFILE exists;
//                                     after each fsync returns, appends the record's
//                                     number to LOG. Any error: message, exit 1.
//   iocheck verify FILE LOG           every record LOG names reads back intact (or
//                                     a later record of the same slot does).
//   iocheck fill FILE SEED            writes a pattern over the whole file, fsyncs.
//   iocheck read FILE SEED STOPFILE   O_DIRECT reads of random blocks, each checked
//                                     against the pattern, until STOPFILE exists.
//   iocheck probe FILE                one O_DIRECT 4 KiB read; prints how long it
//                                     took in ms (the time to be served again).
// Every mode prints one summary line: ops, errors, the longest op in ms.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>

namespace {

constexpr size_t kRec = 4096;
constexpr uint64_t kMagic = 0x6b63656863696f69ull;  // "iocheck"

using Clock = std::chrono::steady_clock;

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

// A record: magic, number, checksum of the rest, then words derived from the number.
void MakeRecord(uint64_t n, uint64_t* w) {
  w[0] = kMagic;
  w[1] = n;
  uint64_t sum = 0;
  for (size_t i = 3; i < kRec / 8; ++i) {
    w[i] = Mix(n * 1315423911u + i);
    sum = Mix(sum ^ w[i]);
  }
  w[2] = sum;
}

bool RecordOk(const uint64_t* w, uint64_t* n) {
  if (w[0] != kMagic) return false;
  uint64_t sum = 0;
  for (size_t i = 3; i < kRec / 8; ++i) sum = Mix(sum ^ w[i]);
  *n = w[1];
  return sum == w[2];
}

bool Exists(const char* path) {
  struct stat st;
  return stat(path, &st) == 0;
}

void* Aligned(size_t n) {
  void* p = nullptr;
  if (posix_memalign(&p, 4096, n) != 0) std::abort();
  return p;
}

uint64_t Slots(int fd) {
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size < static_cast<off_t>(kRec)) return 0;
  return static_cast<uint64_t>(st.st_size) / kRec;
}

int Write(const char* file, const char* log_path, const char* stop) {
  int fd = open(file, O_WRONLY);
  FILE* log = std::fopen(log_path, "a");
  if (fd < 0 || !log) return std::perror(file), 1;
  uint64_t slots = Slots(fd);
  auto* w = static_cast<uint64_t*>(Aligned(kRec));
  uint64_t n = 0;
  double longest = 0;
  for (; !Exists(stop); ++n) {
    MakeRecord(n, w);
    auto t = Clock::now();
    ssize_t r = pwrite(fd, w, kRec, static_cast<off_t>((n % slots) * kRec));
    if (r != static_cast<ssize_t>(kRec)) {
      std::printf("iocheck write: record %llu: pwrite: %s\n", (unsigned long long)n,
                  r < 0 ? std::strerror(errno) : "short write");
      return 1;
    }
    if (fsync(fd) != 0) {
      std::printf("iocheck write: record %llu: fsync: %s\n", (unsigned long long)n,
                  std::strerror(errno));
      return 1;
    }
    longest = std::max(longest, Ms(Clock::now() - t));
    std::fprintf(log, "%llu\n", (unsigned long long)n);
    std::fflush(log);
  }
  if (close(fd) != 0) return std::printf("iocheck write: close: %s\n", std::strerror(errno)), 1;
  std::printf("write: %llu records, 0 errors, longest %.1f ms\n", (unsigned long long)n, longest);
  return 0;
}

int Verify(const char* file, const char* log_path) {
  int fd = open(file, O_RDONLY);
  FILE* log = std::fopen(log_path, "r");
  if (fd < 0 || !log) return std::perror(file), 1;
  uint64_t slots = Slots(fd);
  std::map<uint64_t, uint64_t> last;  // slot -> the highest confirmed record
  unsigned long long n;
  while (std::fscanf(log, "%llu", &n) == 1)
    last[n % slots] = std::max<uint64_t>(last[n % slots], n);
  auto* w = static_cast<uint64_t*>(Aligned(kRec));
  uint64_t bad = 0;
  for (auto [slot, want] : last) {
    uint64_t got = 0;
    if (pread(fd, w, kRec, static_cast<off_t>(slot * kRec)) != static_cast<ssize_t>(kRec) ||
        !RecordOk(w, &got) || got % slots != slot || got < want) {
      if (bad++ < 5) {
        std::printf("iocheck verify: slot %llu: want record %llu or later, found %s %llu\n",
                    (unsigned long long)slot, (unsigned long long)want,
                    RecordOk(w, &got) ? "record" : "damage near", (unsigned long long)got);
      }
    }
  }
  std::printf("verify: %zu records checked, %llu bad\n", last.size(), (unsigned long long)bad);
  return bad ? 1 : 0;
}

uint64_t PatternWord(uint64_t seed, uint64_t offset) {
  return Mix(seed ^ (offset * 0x9e3779b97f4a7c15ull));
}

int Fill(const char* file, uint64_t seed) {
  int fd = open(file, O_WRONLY);
  if (fd < 0) return std::perror(file), 1;
  uint64_t size = Slots(fd) * kRec;
  std::string buf(1 << 20, '\0');
  auto* w = reinterpret_cast<uint64_t*>(buf.data());
  for (uint64_t off = 0; off < size; off += buf.size()) {
    size_t len = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - off));
    for (size_t i = 0; i < len / 8; ++i) w[i] = PatternWord(seed, off + i * 8);
    if (pwrite(fd, buf.data(), len, static_cast<off_t>(off)) != static_cast<ssize_t>(len)) {
      return std::perror("iocheck fill: pwrite"), 1;
    }
  }
  if (fsync(fd) != 0 || close(fd) != 0) return std::perror("iocheck fill: fsync"), 1;
  std::printf("fill: %llu bytes\n", (unsigned long long)size);
  return 0;
}

int Read(const char* file, uint64_t seed, const char* stop) {
  int fd = open(file, O_RDONLY | O_DIRECT);
  if (fd < 0) return std::perror(file), 1;
  uint64_t blocks = Slots(fd);
  constexpr size_t kMax = 64 << 10;
  auto* w = static_cast<uint64_t*>(Aligned(kMax));
  std::mt19937_64 rng(seed);
  uint64_t ops = 0;
  double longest = 0;
  for (; !Exists(stop); ++ops) {
    uint64_t b = rng() % blocks;
    size_t len = kRec * (1 + rng() % (kMax / kRec));
    len = static_cast<size_t>(std::min<uint64_t>(len, (blocks - b) * kRec));
    auto t = Clock::now();
    ssize_t r = pread(fd, w, len, static_cast<off_t>(b * kRec));
    if (r != static_cast<ssize_t>(len)) {
      std::printf("iocheck read: at %llu: %s\n", (unsigned long long)(b * kRec),
                  r < 0 ? std::strerror(errno) : "short read");
      return 1;
    }
    longest = std::max(longest, Ms(Clock::now() - t));
    for (size_t i = 0; i < len / 8; ++i) {
      if (w[i] != PatternWord(seed, b * kRec + i * 8)) {
        std::printf("iocheck read: wrong bytes at %llu\n", (unsigned long long)(b * kRec + i * 8));
        return 1;
      }
    }
  }
  std::printf("read: %llu reads, 0 errors, longest %.1f ms\n", (unsigned long long)ops, longest);
  return 0;
}

int Probe(const char* file) {
  auto t = Clock::now();
  int fd = open(file, O_RDONLY | O_DIRECT);
  if (fd < 0) return std::perror(file), 1;
  void* buf = Aligned(kRec);
  if (pread(fd, buf, kRec, 0) < 0) return std::perror("iocheck probe: pread"), 1;
  std::printf("%.1f\n", Ms(Clock::now() - t));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "write" && argc == 5) return Write(argv[2], argv[3], argv[4]);
  if (mode == "verify" && argc == 4) return Verify(argv[2], argv[3]);
  if (mode == "fill" && argc == 4) return Fill(argv[2], std::strtoull(argv[3], nullptr, 0));
  if (mode == "read" && argc == 5)
    return Read(argv[2], std::strtoull(argv[3], nullptr, 0), argv[4]);
  if (mode == "probe" && argc == 3) return Probe(argv[2]);
  std::fprintf(stderr, "usage: see tests/integration/iocheck.cc\n");
  return 2;
}
