#include "blockstore/local_disk.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bitset>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <shared_mutex>
#include <unordered_map>
#include <unordered_set>

#include "blockstore/countdown.h"
#include "blockstore/disk_util.h"
#include "blockstore/file_util.h"
#include "blockstore/hash.h"
#include "blockstore/json_sum.h"
#include "blockstore/mutex.h"
#include "blockstore/units.h"
#include "blockstore/backends.h"

namespace imgfs {
namespace {

namespace fs = std::filesystem;

// Version 2 added the checksums (`csum`); version 1 disks are upgraded when
// first opened for writing (docs/formats.md, "Checksums").
constexpr int kFormatVersion = 2;
constexpr const char* kFormatName = "imgfs-local-disk";
// The allocation map (docs/formats.md, "bitmap"): version 2 added a checksum
// to each 512-byte page; version 1 maps are upgraded when first opened for
// writing.
constexpr uint32_t kBitmapVersion = 2;
constexpr char kBitmapMagic[8] = {'I', 'M', 'G', 'F', 'S', 'B', 'M', 'P'};
constexpr uint64_t kBitmapHeaderBytes = 4096;
// The map is read and written in blocks of 4 KiB: in version 1 all bits, in
// version 2 eight checksummed pages of 512 bytes (504 bytes of bits, then the
// checksum), each within one disk sector, so a torn write (whole sectors old
// or new) never leaves a page that disagrees with its checksum.
constexpr uint64_t kPageBytes = 4096;
constexpr uint64_t kMapPageBytes = 512;
constexpr uint64_t kMapPageBitBytes = kMapPageBytes - 8;
constexpr uint64_t kMapPageBits = kMapPageBitBytes * 8;  // 4032
constexpr uint64_t kMapPagesPerBlock = kPageBytes / kMapPageBytes;
constexpr uint64_t kBitsPerPage = kPageBytes * 8;  // of the in-memory map
constexpr uint64_t kWordsPerPage = kPageBytes / 8;
constexpr size_t kStripes = 64;

constexpr const char* kMetaFile = "meta.json";
constexpr const char* kDataFile = "data";
constexpr const char* kBitmapFile = "bitmap";
constexpr const char* kCsumFile = "csum";
// Checksums: one 8-byte XXH3-64 per 4 KiB block of `data`, after a 4 KiB
// header that lists the regions (64 MiB of the disk each) written since their
// checksums were last synced.
constexpr char kCsumMagic[8] = {'I', 'M', 'G', 'F', 'S', 'C', 'S', 'M'};
constexpr uint32_t kCsumVersion = 1;
constexpr uint64_t kCsumHeaderBytes = 4096;
constexpr unsigned kBlockShift = 12;
constexpr uint64_t kBlockBytes = uint64_t{1} << kBlockShift;
constexpr unsigned kRegionShift = 26;
constexpr uint32_t kDirtyAll = 0xffffffff;
constexpr size_t kDirtyOffset = 32;
constexpr size_t kMaxDirtyRegions = (kCsumHeaderBytes - kDirtyOffset) / 8;
// A region is marked clean by the first flush after it has been left unwritten
// this long (marking it dirty again costs an fdatasync).
constexpr int64_t kRegionIdleNs = 5'000'000'000;
constexpr size_t kBlockStripes = 256;
// Where the journals of unflushed allocations live: tmpfs, so that they
// survive the writer's death but not the machine's (docs/formats.md).
constexpr const char* kJournalDir = "/dev/shm";
constexpr const char* kLockFile = "lock";

// ---------------------------------------------------------------------------
// Small POSIX helpers. errno becomes a Status only through Status::FromErrno.

Result<UniqueFd> OpenFile(FileIO& io, const std::string& path, int flags, mode_t mode = 0644) {
  return OpenFd(io, path, flags, mode);
}

// A read at `off` in which what lies past the end of the file reads as zeros.
Status PreadFull(int fd, MutableByteView buf, uint64_t off, const std::string& what) {
  ASSIGN_OR_RETURN(size_t n, ReadFull(fd, buf, off, what));
  std::memset(buf.data() + n, 0, buf.size() - n);
  return Status::OK();
}

Status Fsync(FileIO& io, int fd, const std::string& what) {
  if (int err = io.Fsync(fd)) return Status::FromErrno(err, "fsync " + what);
  return Status::OK();
}

Status PunchHole(int fd, uint64_t off, uint64_t len, const std::string& what) {
  if (len == 0) return Status::OK();
  if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                  static_cast<off_t>(len)) == 0) {
    return Status::OK();
  }
  if (errno != EOPNOTSUPP) return Status::FromErrno(errno, "punch hole in " + what);
  static const std::array<uint8_t, 64 * 1024> kZeros{};
  while (len > 0) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(len, kZeros.size()));
    RETURN_IF_ERROR(WriteFull(fd, ByteView(kZeros.data(), n), off, what));
    off += n;
    len -= n;
  }
  return Status::OK();
}

// Exclusive, non-blocking flock on `dir`/lock: the "open for writing" lock.
Result<UniqueFd> LockDisk(FileIO& io, const std::string& dir, const DiskRef& ref) {
  std::string path = dir + "/" + kLockFile;
  auto fd = OpenFile(io, path, O_RDWR);
  if (!fd.ok()) {
    if (fd.status().IsNotFound())
      return Status::NotFound("disk " + ref.ToString() + " does not exist");
    return fd.status();
  }
  if (::flock(fd->get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return Status::Busy("disk " + ref.ToString() + " is in use (open for writing)");
    }
    return Status::FromErrno(errno, "lock " + path);
  }
  // The directory may have been removed or renamed between open and flock.
  struct stat a, b;
  if (::fstat(fd->get(), &a) != 0) return Status::FromErrno(errno, "stat " + path);
  if (::stat(path.c_str(), &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
    return Status::NotFound("disk " + ref.ToString() + " does not exist");
  }
  return std::move(fd).value();
}

// ---------------------------------------------------------------------------
// Metadata (docs/formats.md, "Local disks").

struct Meta {
  int version = kFormatVersion;
  uint64_t size = 0;
  uint32_t chunk_size = 0;
  std::optional<ImageId> parent;
  uint64_t parent_overlap = 0;
  DiskAttrs attrs;
  int64_t created_ns = 0;
};

std::string EncodeMeta(const Meta& m) {
  nlohmann::json j;
  j["format"] = kFormatName;
  j["version"] = m.version;
  j["size"] = m.size;
  j["chunk_size"] = m.chunk_size;
  j["parent"] = m.parent ? nlohmann::json(m.parent->Hex()) : nlohmann::json(nullptr);
  j["parent_overlap"] = m.parent_overlap;
  j["mode"] = m.attrs.mode;
  j["uid"] = m.attrs.uid;
  j["gid"] = m.attrs.gid;
  j["created_ns"] = m.created_ns;
  SealJson(j);
  return j.dump(2) + "\n";
}

Result<Meta> DecodeMeta(std::string_view text, const std::string& path) {
  auto bad = [&](const std::string& why) {
    return Status::Corruption("disk metadata " + path + ": " + why);
  };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return bad("not a JSON object");
  if (j.value("format", "") != kFormatName) return bad("not an imgfs local disk");
  if (!j.contains("version") || !j["version"].is_number_integer()) return bad("no version");
  int version = j["version"].get<int>();
  if (version != 1 && version != kFormatVersion) {
    return Status::NotSupported(
        "disk metadata " + path + ": format version " + std::to_string(version) +
        " is not supported (this imgfs reads 1 to " + std::to_string(kFormatVersion) + ")");
  }
  // After the version: a later one may seal its metadata otherwise.
  RETURN_IF_ERROR(UnsealJson(j, "disk metadata " + path));
  auto u64 = [&](const char* key, uint64_t* out) {
    if (!j.contains(key) || !j[key].is_number_unsigned()) return false;
    *out = j[key].get<uint64_t>();
    return true;
  };
  Meta m;
  m.version = version;
  uint64_t chunk = 0, mode = 0, uid = 0, gid = 0;
  if (!u64("size", &m.size) || !u64("chunk_size", &chunk) ||
      !u64("parent_overlap", &m.parent_overlap) || !u64("mode", &mode) || !u64("uid", &uid) ||
      !u64("gid", &gid)) {
    return bad("missing or malformed field");
  }
  if (!ValidateChunkSize(chunk).ok()) return bad("bad chunk size");
  if (m.size > kMaxDiskSize || m.parent_overlap > m.size) return bad("bad size");
  m.chunk_size = static_cast<uint32_t>(chunk);
  m.attrs = DiskAttrs{static_cast<uint32_t>(mode & 07777), static_cast<uint32_t>(uid),
                      static_cast<uint32_t>(gid)};
  if (j.contains("created_ns") && j["created_ns"].is_number_integer()) {
    m.created_ns = j["created_ns"].get<int64_t>();
  }
  // "parent" is always written (null for a blank disk): a missing one is
  // damage, not a blank disk that would read zeros where its image has data.
  if (!j.contains("parent")) return bad("missing or malformed field");
  if (!j["parent"].is_null()) {
    if (!j["parent"].is_string()) return bad("bad parent");
    auto id = Id128::FromHex(j["parent"].get<std::string>());
    if (!id.ok()) return bad("bad parent id");
    m.parent = *id;
  }
  return m;
}

Result<Meta> ReadMeta(const std::string& dir) {
  std::string path = dir + "/" + kMetaFile;
  ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return DecodeMeta(text, path);
}

// Read-modify-write of a disk's metadata, serialised (across processes too) by
// an flock on the disk's directory.
Status UpdateMeta(FileIO& io, const std::string& dir, const std::function<Status(Meta*)>& fn) {
  ASSIGN_OR_RETURN(UniqueFd dfd, OpenFile(io, dir, O_RDONLY | O_DIRECTORY));
  while (::flock(dfd.get(), LOCK_EX) != 0) {
    if (errno != EINTR) return Status::FromErrno(errno, "lock " + dir);
  }
  ASSIGN_OR_RETURN(Meta m, ReadMeta(dir));
  RETURN_IF_ERROR(fn(&m));
  return WriteFileAtomic(dir + "/" + kMetaFile, EncodeMeta(m), io);
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t MtimeNs(const struct stat& st) {
  return static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
}

uint64_t CeilDiv(uint64_t a, uint64_t b) { return a / b + (a % b != 0); }

// ---------------------------------------------------------------------------
// Checksums (docs/formats.md, "Checksums").

// The checksum of one 4 KiB block; never 0, which means "none recorded".
uint64_t BlockSum(const uint8_t* block) {
  uint64_t h = Hash64(ByteView(block, kBlockBytes));
  return h ? h : 1;
}

// Checksums of the blocks of `bytes` (which starts on a block boundary); a
// last partial block is summed as if padded with zeros, as it reads.
void SumsOf(ByteView bytes, uint64_t* out) {
  size_t whole = bytes.size() >> kBlockShift;
  for (size_t i = 0; i < whole; ++i) out[i] = BlockSum(bytes.data() + (i << kBlockShift));
  if (size_t rest = bytes.size() & (kBlockBytes - 1)) {
    std::array<uint8_t, kBlockBytes> block{};
    std::memcpy(block.data(), bytes.data() + (whole << kBlockShift), rest);
    out[whole] = BlockSum(block.data());
  }
}

uint64_t ZeroBlockSum() {
  static const uint64_t sum = [] {
    std::array<uint8_t, kBlockBytes> zeros{};
    return BlockSum(zeros.data());
  }();
  return sum;
}

// Header flag: the disk was upgraded from version 1, so blocks written before
// then have no checksum (entry 0) and are not verified.
constexpr uint32_t kCsumLegacy = 1;

struct CsumHeader {
  uint32_t flags = 0;
  bool all_dirty = false;
  std::vector<uint64_t> dirty;  // regions
};

std::array<uint8_t, kCsumHeaderBytes> EncodeCsumHeader(const CsumHeader& h) {
  std::array<uint8_t, kCsumHeaderBytes> out{};
  std::memcpy(out.data(), kCsumMagic, 8);
  uint32_t fields[5] = {kCsumVersion, static_cast<uint32_t>(kBlockBytes), kRegionShift,
                        h.all_dirty || h.dirty.size() > kMaxDirtyRegions
                            ? kDirtyAll
                            : static_cast<uint32_t>(h.dirty.size()),
                        h.flags};
  std::memcpy(out.data() + 8, fields, sizeof fields);
  if (fields[3] != kDirtyAll && !h.dirty.empty()) {
    std::memcpy(out.data() + kDirtyOffset, h.dirty.data(), h.dirty.size() * 8);
  }
  return out;
}

Result<CsumHeader> ReadCsumHeader(int fd, const std::string& path) {
  std::array<uint8_t, kCsumHeaderBytes> raw{};
  RETURN_IF_ERROR(PreadFull(fd, MutableByteView(raw), 0, path));
  uint32_t fields[5];
  std::memcpy(fields, raw.data() + 8, sizeof fields);
  if (std::memcmp(raw.data(), kCsumMagic, 8) != 0) {
    return Status::Corruption("checksums " + path + ": bad magic");
  }
  if (fields[0] != kCsumVersion) {
    return Status::NotSupported("checksums " + path + ": version " + std::to_string(fields[0]) +
                                " is not supported");
  }
  if (fields[1] != kBlockBytes || fields[2] != kRegionShift ||
      (fields[3] != kDirtyAll && fields[3] > kMaxDirtyRegions)) {
    return Status::Corruption("checksums " + path + ": bad header");
  }
  CsumHeader h;
  h.flags = fields[4];
  if (fields[3] == kDirtyAll) {
    h.all_dirty = true;
  } else {
    h.dirty.resize(fields[3]);
    std::memcpy(h.dirty.data(), raw.data() + kDirtyOffset, h.dirty.size() * 8);
  }
  return h;
}

// Writes a new checksum file (no dirty region) at `path` and syncs it.
Status WriteCsumFile(FileIO& io, const std::string& path, uint32_t flags) {
  ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(io, path, O_WRONLY | O_CREAT | O_TRUNC));
  CsumHeader h;
  h.flags = flags;
  RETURN_IF_ERROR(WriteFull(fd.get(), ByteView(EncodeCsumHeader(h)), 0, path));
  return Fsync(io, fd.get(), path);
}

// Locks the stripes of blocks [b0, b1), in order.
class BlockLocks {
 public:
  BlockLocks(std::array<std::mutex, kBlockStripes>& mu, uint64_t b0, uint64_t b1) : mu_(mu) {
    if (b1 - b0 >= kBlockStripes) {
      held_.set();
    } else {
      for (uint64_t b = b0; b < b1; ++b) held_.set(b % kBlockStripes);
    }
    for (size_t i = 0; i < kBlockStripes; ++i)
      if (held_[i]) mu_[i].lock();
  }
  ~BlockLocks() {
    for (size_t i = kBlockStripes; i-- > 0;)
      if (held_[i]) mu_[i].unlock();
  }
  BlockLocks(const BlockLocks&) = delete;
  BlockLocks& operator=(const BlockLocks&) = delete;

 private:
  std::array<std::mutex, kBlockStripes>& mu_;
  std::bitset<kBlockStripes> held_;
};

// ---------------------------------------------------------------------------
// The allocation map file (docs/formats.md, "bitmap").

using MapBlock = std::array<uint8_t, kPageBytes>;

std::array<uint8_t, kBitmapHeaderBytes> EncodeMapHeader(uint32_t version, uint32_t chunk) {
  std::array<uint8_t, kBitmapHeaderBytes> header{};
  std::memcpy(header.data(), kBitmapMagic, 8);
  std::memcpy(header.data() + 8, &version, 4);
  std::memcpy(header.data() + 12, &chunk, 4);
  return header;
}

// Reads and checks the map's header; returns its version.
Result<uint32_t> ReadMapHeader(int fd, const std::string& path, uint32_t chunk_size) {
  std::array<uint8_t, kBitmapHeaderBytes> header{};
  RETURN_IF_ERROR(PreadFull(fd, MutableByteView(header), 0, path));
  uint32_t version = 0, chunk = 0;
  std::memcpy(&version, header.data() + 8, 4);
  std::memcpy(&chunk, header.data() + 12, 4);
  if (std::memcmp(header.data(), kBitmapMagic, 8) != 0) {
    return Status::Corruption("allocation map " + path + ": bad magic");
  }
  if (version != 1 && version != kBitmapVersion) {
    return Status::NotSupported("allocation map " + path + ": version " + std::to_string(version) +
                                " is not supported");
  }
  if (chunk != chunk_size) {
    return Status::Corruption("allocation map " + path + ": chunk size " + std::to_string(chunk) +
                              " does not match the metadata's " + std::to_string(chunk_size));
  }
  return version;
}

// The checksum of map page `index` (version 2); never 0, which an all-zero
// page (never written, or a hole) has.
uint64_t MapPageSum(const uint8_t* page, uint64_t index) {
  uint64_t h = Hash64(ByteView(page, kMapPageBitBytes), index);
  return h ? h : 1;
}

// Where each chunk's bit lies in a map of one version.
struct MapLayout {
  uint32_t version = kBitmapVersion;

  uint64_t BitsPerBlock() const {
    return version == 1 ? kPageBytes * 8 : kMapPagesPerBlock * kMapPageBits;
  }
  uint64_t Block(uint64_t bit) const { return bit / BitsPerBlock(); }
  // The byte of its block that holds `bit` (at mask 1 << bit % 8).
  size_t Byte(uint64_t bit) const {
    uint64_t i = bit % BitsPerBlock();
    if (version == 1) return static_cast<size_t>(i / 8);
    return static_cast<size_t>(i / kMapPageBits * kMapPageBytes + i % kMapPageBits / 8);
  }
  void Put(uint64_t bit, bool set, MapBlock* block) const {
    uint8_t& byte = (*block)[Byte(bit)];
    uint8_t mask = static_cast<uint8_t>(1u << (bit % 8));
    byte = set ? (byte | mask) : (byte & ~mask);
  }
  // Calls fn(bit) for every bit set in block b.
  template <typename Fn>
  void ForEachSet(uint64_t b, const MapBlock& block, Fn&& fn) const {
    for (size_t k = 0; k < kPageBytes; ++k) {
      if (!block[k]) continue;
      uint64_t first = k * 8;
      if (version != 1) {
        size_t j = k % kMapPageBytes;
        if (j >= kMapPageBitBytes) continue;  // a checksum
        first = k / kMapPageBytes * kMapPageBits + j * 8;
      }
      for (int i = 0; i < 8; ++i) {
        if (block[k] >> i & 1) fn(b * BitsPerBlock() + first + i);
      }
    }
  }
  // Version 2: stores the checksum of each page of block b.
  void Seal(uint64_t b, MapBlock* block) const {
    if (version == 1) return;
    for (uint64_t p = 0; p < kMapPagesPerBlock; ++p) {
      uint8_t* page = block->data() + p * kMapPageBytes;
      uint64_t sum = IsAllZero(ByteView(page, kMapPageBitBytes))
                         ? 0
                         : MapPageSum(page, b * kMapPagesPerBlock + p);
      std::memcpy(page + kMapPageBitBytes, &sum, 8);
    }
  }
  // Version 2: the numbers of the pages of block b that do not match their
  // checksum.
  std::vector<uint64_t> Damaged(uint64_t b, const MapBlock& block) const {
    std::vector<uint64_t> out;
    if (version == 1) return out;
    for (uint64_t p = 0; p < kMapPagesPerBlock; ++p) {
      const uint8_t* page = block.data() + p * kMapPageBytes;
      uint64_t sum;
      std::memcpy(&sum, page + kMapPageBitBytes, 8);
      uint64_t index = b * kMapPagesPerBlock + p;
      bool zero = IsAllZero(ByteView(page, kMapPageBitBytes));
      if (!((zero && sum == 0) || sum == MapPageSum(page, index))) out.push_back(index);
    }
    return out;
  }
};

// ---------------------------------------------------------------------------
// The in-memory allocation bitmap: pages of atomic words, allocated on first
// set, so a large sparse disk costs memory only where it is written. The
// page table itself is resized only under the disk's exclusive resize lock.

class AtomicBitmap {
 public:
  using Page = std::array<std::atomic<uint64_t>, kWordsPerPage>;

  ~AtomicBitmap() {
    for (auto& p : pages_) delete p.load();
  }

  void Resize(uint64_t bits) {
    size_t n = static_cast<size_t>(CeilDiv(bits, kBitsPerPage));
    if (n <= pages_.size()) return;
    std::vector<std::atomic<Page*>> next(n);
    for (size_t i = 0; i < pages_.size(); ++i) next[i].store(pages_[i].load());
    pages_.swap(next);
  }

  bool Test(uint64_t bit) const {
    size_t p = static_cast<size_t>(bit / kBitsPerPage);
    if (p >= pages_.size()) return false;
    Page* page = pages_[p].load(std::memory_order_acquire);
    if (!page) return false;
    uint64_t w = (*page)[(bit % kBitsPerPage) / 64].load(std::memory_order_acquire);
    return (w >> (bit % 64)) & 1;
  }

  void Set(uint64_t bit) {
    size_t p = static_cast<size_t>(bit / kBitsPerPage);
    Page* page = pages_[p].load(std::memory_order_acquire);
    if (!page) {
      MutexLock lock(alloc_mu_);
      page = pages_[p].load(std::memory_order_acquire);
      if (!page) {
        page = new Page();
        for (auto& w : *page) w.store(0, std::memory_order_relaxed);
        pages_[p].store(page, std::memory_order_release);
      }
    }
    (*page)[(bit % kBitsPerPage) / 64].fetch_or(uint64_t{1} << (bit % 64),
                                                std::memory_order_release);
  }

  // Calls fn(bit) for every set bit at or after `from`.
  template <typename Fn>
  void ForEachSet(uint64_t from, Fn&& fn) const {
    for (size_t p = static_cast<size_t>(from / kBitsPerPage); p < pages_.size(); ++p) {
      Page* page = pages_[p].load(std::memory_order_acquire);
      if (!page) continue;
      for (uint64_t w = 0; w < kWordsPerPage; ++w) {
        uint64_t word = (*page)[w].load(std::memory_order_acquire);
        while (word) {
          uint64_t bit = p * kBitsPerPage + w * 64 + static_cast<uint64_t>(__builtin_ctzll(word));
          word &= word - 1;
          if (bit >= from) fn(bit);
        }
      }
    }
  }

  void Clear(uint64_t bit) {
    size_t p = static_cast<size_t>(bit / kBitsPerPage);
    if (p >= pages_.size()) return;
    Page* page = pages_[p].load(std::memory_order_acquire);
    if (!page) return;
    (*page)[(bit % kBitsPerPage) / 64].fetch_and(~(uint64_t{1} << (bit % 64)),
                                                 std::memory_order_release);
  }

 private:
  std::vector<std::atomic<Page*>> pages_;
  Mutex alloc_mu_;  // makes a page once
};

// ---------------------------------------------------------------------------

class LocalDisk final : public Disk {
 public:
  LocalDisk(FileIO& io, DiskRef ref, std::string dir, bool writable, Meta meta, UniqueFd lock,
            UniqueFd data, UniqueFd bitmap, std::shared_ptr<ImageReader> parent,
            DiskSizeLimit limit)
      : io_(io),
        ref_(std::move(ref)),
        dir_(std::move(dir)),
        writable_(writable),
        limit_(std::move(limit)),
        chunk_size_(meta.chunk_size),
        chunk_shift_(static_cast<unsigned>(__builtin_ctz(meta.chunk_size))),
        lock_(std::move(lock)),
        data_(std::move(data)),
        bitmap_fd_(std::move(bitmap)),
        parent_(std::move(parent)),
        size_(meta.size),
        overlap_(parent_ ? meta.parent_overlap : 0) {
    bits_.Resize(Chunks(size_));
  }

  ~LocalDisk() override {
    if (writable_) {
      Status s = Flush();
      if (s.ok()) s = MarkAllClean();
      if (!s.ok()) {
        spdlog::error("disk {}: flush on close failed: {}", ref_.ToString(), s.ToString());
      } else if (!journal_path_.empty()) {
        (void)io_.Unlink(journal_path_);
      }
    }
  }

  // The checksum file (absent on a version 1 disk opened read-only).
  void SetCsum(UniqueFd fd) { csum_ = std::move(fd); }
  // fsck: verifies every owned block that has a checksum, outside the regions
  // a writer may be changing; each damaged block is a problem.
  Status Verify(std::vector<std::string>* problems);

  // Opens (creating) the journal of unflushed allocations at `path`, in tmpfs.
  void SetJournal(UniqueFd fd, std::string path) {
    MutexLock lock(pending_mu_);
    journal_ = std::move(fd);
    journal_path_ = std::move(path);
  }

  // Runs at open, before the disk is shared with another thread.
  Status Load() NO_THREAD_SAFETY_ANALYSIS;

  const DiskRef& ref() const override { return ref_; }
  uint64_t size() const override { return size_.load(std::memory_order_acquire); }
  bool writable() const override { return writable_; }

  Status Read(uint64_t offset, MutableByteView buf) override;
  // Reads the disk's own chunks here (its data file is local) and the
  // parent's without waiting for them (docs/architecture.md, "The read path").
  void ReadAsync(uint64_t offset, MutableByteView buf, Callback done) override;
  Status Write(uint64_t offset, ByteView buf) override;
  Status Discard(uint64_t offset, uint64_t length) override;
  Status Flush() override;
  Status Resize(uint64_t new_size, bool allow_shrink) override;
  Result<std::vector<Extent>> Allocated(uint64_t offset, uint64_t length) override;

 private:
  uint64_t Chunks(uint64_t bytes) const { return CeilDiv(bytes, chunk_size_); }
  uint64_t ChunkStart(uint64_t c) const { return c << chunk_shift_; }
  std::string DataPath() const { return dir_ + "/" + kDataFile; }
  std::string MapPath() const { return dir_ + "/" + kBitmapFile; }
  // Load: reads the map's blocks into persisted_ and bits_; a page that does
  // not match its checksum is Corruption naming it.
  Status LoadMap(bool* stale_bits) NO_THREAD_SAFETY_ANALYSIS;
  // Load, writable, version 1 map: rewrites the map as version 2
  // (docs/formats.md, "bitmap").
  Status UpgradeMap() NO_THREAD_SAFETY_ANALYSIS;

  Status CheckRange(uint64_t offset, uint64_t length, const char* op) const;
  std::string CsumPath() const { return dir_ + "/" + kCsumFile; }
  Status ReadSums(uint64_t b, uint64_t n, uint64_t* out) const;
  Status WriteSums(uint64_t b, uint64_t n, const uint64_t* sums);
  // Reads [pos, pos + buf.size()) of owned chunks, verifying their checksums.
  Status ReadOwned(uint64_t pos, MutableByteView buf);
  // With block b's stripe held: reads it into `out` and checks it. A
  // mismatch is Corruption (EIO), logged, unless a writer in another process
  // has b's region dirty (read-only handles). fsck does not log.
  Status ReadBlockChecked(uint64_t b, uint8_t* out, bool log = true);
  // Writes `src` (null: zeros) at [pos, pos + len) of owned chunks, and their
  // checksums.
  Status WriteOwned(uint64_t pos, uint64_t len, const uint8_t* src);
  // Marks the regions of blocks [b0, b1) dirty, durably, before a write to
  // them; EndWrite when the write is done.
  Status BeginWrite(uint64_t b0, uint64_t b1);
  void EndWrite(uint64_t b0, uint64_t b1);
  Status PersistDirtyLocked(bool sync) REQUIRES(dirty_mu_);
  // After a flush that began at `epoch`: regions idle since are marked clean.
  void MarkIdleClean(uint64_t epoch);
  Status MarkAllClean();
  // Whether the checksum file's header (read again) lists b's region.
  bool RegionDirtyOnDisk(uint64_t b);
  // After a crash: recomputes the checksums of owned blocks in the regions
  // the header lists, syncs them, and marks every region clean.
  Status RecoverSums();
  // Calls fn(pos, part, owned) for each run of [offset, offset + buf.size())
  // that the disk owns, or does not, chunk by chunk; stops at an error.
  template <typename Fn>
  Status ForEachRun(uint64_t offset, MutableByteView buf, Fn&& fn) {
    uint64_t end = offset + buf.size();
    uint64_t pos = offset;
    while (pos < end) {
      uint64_t c = pos >> chunk_shift_;
      bool owned = bits_.Test(c);
      uint64_t run_end = std::min(end, ChunkStart(c + 1));
      while (run_end < end && bits_.Test(run_end >> chunk_shift_) == owned) {
        run_end = std::min(end, run_end + chunk_size_);
      }
      RETURN_IF_ERROR(fn(pos, buf.subspan(pos - offset, run_end - pos), owned));
      pos = run_end;
    }
    return Status::OK();
  }
  bool ParentHasData(uint64_t start, uint64_t end) const;
  Status ReadParent(uint64_t offset, MutableByteView buf) const;
  // Writes (data != nullptr) or zeroes [pos, pos+len) of chunk c, which the
  // disk did not own when the caller looked, copying the rest of the chunk
  // up from the parent first.
  Status CopyUp(uint64_t c, uint64_t pos, uint64_t len, const uint8_t* data);
  // Records a bit change for the next flush, and in the journal. False when
  // the journal could not take it: the caller then flushes at once.
  bool AddPending(uint64_t c, bool set) {
    MutexLock lock(pending_mu_);
    uint64_t op = set ? c : (c | kClearFlag);
    pending_.push_back(op);
    if (!journal_.valid()) return false;
    if (::pwrite(journal_.get(), &op, sizeof op, static_cast<off_t>(journal_end_)) !=
        static_cast<ssize_t>(sizeof op)) {
      spdlog::warn("disk {}: journal of unflushed allocations: {}; flushing each one instead",
                   ref_.ToString(), std::strerror(errno));
      journal_ = UniqueFd();
      return false;
    }
    journal_end_ += sizeof op;
    return true;
  }
  // After a flush: the journal holds just what is still pending.
  void RewriteJournal();
  // Applies and flushes what the journal holds from a writer that died.
  Status ReplayJournal(uint64_t nchunks);
  Status FlushLocked() REQUIRES(flush_mu_);
  // Drops everything at or beyond `size` (data and bits) and makes that durable.
  Status Trim(uint64_t size);

  static constexpr uint64_t kClearFlag = uint64_t{1} << 63;

  FileIO& io_;  // constant after construction
  const DiskRef ref_;
  const std::string dir_;
  const bool writable_;
  const DiskSizeLimit limit_;  // what Resize accepts (writable disks)
  const uint32_t chunk_size_;
  const unsigned chunk_shift_;
  UniqueFd lock_;       // holds the flock while open for writing
  UniqueFd data_;       // constant after construction
  UniqueFd bitmap_fd_;  // used under flush_mu_
  const std::shared_ptr<ImageReader> parent_;

  // Shared by I/O, exclusive by Resize. size_ and overlap_ change only under
  // the exclusive lock; size_ is atomic so size() can read it lock-free.
  std::shared_mutex resize_mu_;
  std::atomic<uint64_t> size_;
  uint64_t overlap_;
  AtomicBitmap bits_;  // live ownership; a bit is set only after its chunk's data is written

  std::array<std::mutex, kStripes> stripes_;  // serialise copy-ups of one chunk

  Mutex pending_mu_;
  std::vector<uint64_t> pending_ GUARDED_BY(pending_mu_);  // bit changes not yet persisted
  // The journal of pending_ (docs/formats.md, "Unflushed allocations"): a
  // file in tmpfs, which outlives this process but not the machine, so a
  // writer that takes the disk over after this one died can flush what this
  // one had acknowledged. Null for read-only disks, or when there is no tmpfs
  // (then every allocation is flushed at once).
  UniqueFd journal_ GUARDED_BY(pending_mu_);
  uint64_t journal_end_ GUARDED_BY(pending_mu_) = 0;
  std::string journal_path_;  // constant after construction

  // Checksums (docs/formats.md, "Checksums"). Invalid: a version 1 disk
  // opened read-only, which is not verified.
  UniqueFd csum_;
  uint32_t csum_flags_ = 0;   // constant after Load
  bool csum_loaded_ = false;  // its header was read: it may be written
  // A block's data and checksum change together under its stripe.
  std::array<std::mutex, kBlockStripes> block_mu_;
  struct Region {
    int inflight = 0;     // writes in progress
    uint64_t epoch = 0;   // flush_epoch_ when last written
    int64_t last_ns = 0;  // when last written
  };
  Mutex dirty_mu_;
  // A writer's dirty regions (persisted in the header before any write to
  // them); a reader's, as the header listed them.
  std::unordered_map<uint64_t, Region> dirty_ GUARDED_BY(dirty_mu_);
  bool all_dirty_ GUARDED_BY(dirty_mu_) = false;  // readers only
  uint64_t flush_epoch_ GUARDED_BY(dirty_mu_) = 0;

  Mutex flush_mu_;
  // The persisted map, block by block (absent = zeros), in the layout of
  // its version (set by Load).
  MapLayout map_ GUARDED_BY(flush_mu_);
  std::unordered_map<uint64_t, MapBlock> persisted_ GUARDED_BY(flush_mu_);
  Status failed_ GUARDED_BY(flush_mu_);  // a sticky flush error
};

Status LocalDisk::LoadMap(bool* stale_bits) {
  std::string path = MapPath();
  ASSIGN_OR_RETURN(map_.version, ReadMapHeader(bitmap_fd_.get(), path, chunk_size_));
  struct stat st;
  if (::fstat(bitmap_fd_.get(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  uint64_t file_blocks =
      st.st_size > static_cast<off_t>(kBitmapHeaderBytes)
          ? CeilDiv(static_cast<uint64_t>(st.st_size) - kBitmapHeaderBytes, kPageBytes)
          : 0;
  uint64_t nchunks = Chunks(size_);
  std::vector<uint64_t> damaged;
  MapBlock block;
  for (uint64_t b = 0; b < file_blocks; ++b) {
    std::vector<uint64_t> bad;
    // A reader may meet a block that a writer is rewriting: it looks again.
    for (int attempt = 0; attempt < (writable_ ? 1 : 3); ++attempt) {
      RETURN_IF_ERROR(PreadFull(bitmap_fd_.get(), MutableByteView(block),
                                kBitmapHeaderBytes + b * kPageBytes, path));
      bad = map_.Damaged(b, block);
      if (bad.empty()) break;
    }
    if (!bad.empty()) {
      damaged.insert(damaged.end(), bad.begin(), bad.end());
      continue;
    }
    if (IsAllZero(ByteView(block))) continue;
    persisted_[b] = block;
    map_.ForEachSet(b, block, [&](uint64_t bit) {
      if (bit < nchunks) {
        bits_.Set(bit);
      } else {
        *stale_bits = true;  // left by a shrink interrupted by a crash
      }
    });
  }
  if (!damaged.empty()) {
    std::string pages;
    for (size_t i = 0; i < damaged.size() && i < 8; ++i) {
      uint64_t p = damaged[i];
      pages += (i ? ", " : "") + std::to_string(p) + " (chunks " +
               std::to_string(p * kMapPageBits) + " to " +
               std::to_string((p + 1) * kMapPageBits - 1) + ")";
    }
    if (damaged.size() > 8) pages += " and " + std::to_string(damaged.size() - 8) + " more";
    spdlog::error("disk {}: allocation map {}: page {} does not match its checksum",
                  ref_.ToString(), path, pages);
    return Status::Corruption("allocation map " + path + ": page " + pages +
                              " does not match its checksum; the disk cannot be opened");
  }
  if (writable_ && map_.version == 1) RETURN_IF_ERROR(UpgradeMap());
  return Status::OK();
}

Status LocalDisk::UpgradeMap() {
  // The same bits, laid out again: a new file made durable, then renamed
  // over the old one. A crash leaves the old map or the new one, both whole.
  MapLayout next;
  std::unordered_map<uint64_t, MapBlock> blocks;
  for (const auto& [b, block] : persisted_) {
    map_.ForEachSet(b, block, [&](uint64_t bit) {
      auto [it, fresh] = blocks.try_emplace(next.Block(bit));
      if (fresh) it->second.fill(0);
      next.Put(bit, true, &it->second);
    });
  }
  std::string path = MapPath(), tmp = path + ".new";
  ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(io_, tmp, O_RDWR | O_CREAT | O_TRUNC));
  RETURN_IF_ERROR(
      WriteFull(fd.get(), ByteView(EncodeMapHeader(next.version, chunk_size_)), 0, tmp));
  for (auto& [b, block] : blocks) {
    next.Seal(b, &block);
    RETURN_IF_ERROR(WriteFull(fd.get(), ByteView(block), kBitmapHeaderBytes + b * kPageBytes, tmp));
  }
  RETURN_IF_ERROR(Fsync(io_, fd.get(), tmp));
  if (int err = io_.Rename(tmp, path, 0)) return Status::FromErrno(err, "rename " + tmp);
  RETURN_IF_ERROR(FsyncDir(dir_, io_));
  bitmap_fd_ = std::move(fd);
  map_ = next;
  persisted_ = std::move(blocks);
  spdlog::info("disk {}: allocation map upgraded to version {} (page checksums)", ref_.ToString(),
               next.version);
  return Status::OK();
}

Status LocalDisk::Load() {
  bool stale_bits = false;
  RETURN_IF_ERROR(LoadMap(&stale_bits));
  uint64_t nchunks = Chunks(size_);
  RETURN_IF_ERROR(ReplayJournal(nchunks));
  if (csum_.valid()) {
    ASSIGN_OR_RETURN(CsumHeader h, ReadCsumHeader(csum_.get(), CsumPath()));
    csum_flags_ = h.flags;
    csum_loaded_ = true;
    if (writable_) {
      if (h.all_dirty || !h.dirty.empty()) RETURN_IF_ERROR(RecoverSums());
    } else {
      MutexLock lock(dirty_mu_);
      all_dirty_ = h.all_dirty;
      for (uint64_t r : h.dirty) dirty_[r];
    }
  }
  if (writable_) {
    struct stat dst;
    if (::fstat(data_.get(), &dst) != 0) return Status::FromErrno(errno, "stat " + DataPath());
    if (stale_bits || static_cast<uint64_t>(dst.st_size) > size_) {
      return Trim(size_);
    }
  }
  return Status::OK();
}

Status LocalDisk::CheckRange(uint64_t offset, uint64_t length, const char* op) const {
  uint64_t size = size_.load(std::memory_order_acquire);
  if (offset > size || length > size - offset) {
    return disk_util::RangeError(op, offset, length, ref_, size);
  }
  return Status::OK();
}

Status LocalDisk::ReadSums(uint64_t b, uint64_t n, uint64_t* out) const {
  return PreadFull(csum_.get(), MutableByteView(reinterpret_cast<uint8_t*>(out), n * 8),
                   kCsumHeaderBytes + b * 8, CsumPath());
}

Status LocalDisk::WriteSums(uint64_t b, uint64_t n, const uint64_t* sums) {
  return WriteFull(csum_.get(), ByteView(reinterpret_cast<const uint8_t*>(sums), n * 8),
                   kCsumHeaderBytes + b * 8, CsumPath());
}

bool LocalDisk::RegionDirtyOnDisk(uint64_t b) {
  auto h = ReadCsumHeader(csum_.get(), CsumPath());
  if (!h.ok()) return false;
  uint64_t r = (b << kBlockShift) >> kRegionShift;
  MutexLock lock(dirty_mu_);
  all_dirty_ = h->all_dirty;
  dirty_.clear();
  for (uint64_t d : h->dirty) dirty_[d];
  return all_dirty_ || dirty_.count(r);
}

Status LocalDisk::ReadBlockChecked(uint64_t b, uint8_t* out, bool log) {
  RETURN_IF_ERROR(
      PreadFull(data_.get(), MutableByteView(out, kBlockBytes), b << kBlockShift, DataPath()));
  uint64_t want = 0;
  RETURN_IF_ERROR(ReadSums(b, 1, &want));
  uint64_t got = BlockSum(out);
  if (got == want || (want == 0 && (csum_flags_ & kCsumLegacy))) return Status::OK();
  if (!writable_ && RegionDirtyOnDisk(b)) return Status::OK();
  if (log) {
    spdlog::error(
        "disk {}: the 4 KiB block at offset {} does not match its checksum "
        "(stored {:016x}, data {:016x}): read fails with EIO",
        ref_.ToString(), b << kBlockShift, want, got);
  }
  return Status::Corruption("disk " + ref_.ToString() + ": the 4 KiB block at offset " +
                            std::to_string(b << kBlockShift) + " does not match its checksum");
}

Status LocalDisk::ReadOwned(uint64_t pos, MutableByteView buf) {
  if (!csum_.valid()) return PreadFull(data_.get(), buf, pos, DataPath());
  uint64_t end = pos + buf.size();
  uint64_t start = pos & ~(kBlockBytes - 1);
  uint64_t stop = (end + kBlockBytes - 1) & ~(kBlockBytes - 1);
  Bytes tmp;
  MutableByteView view = buf;
  if (start != pos || stop != end) {
    tmp.resize(stop - start);
    view = MutableByteView(tmp);
  }
  RETURN_IF_ERROR(PreadFull(data_.get(), view, start, DataPath()));
  uint64_t b0 = start >> kBlockShift, n = (stop - start) >> kBlockShift;
  std::array<uint64_t, 64> small;
  std::vector<uint64_t> large;
  uint64_t* sums = small.data();
  if (n > small.size()) {
    large.resize(n);
    sums = large.data();
  }
  RETURN_IF_ERROR(ReadSums(b0, n, sums));
  bool legacy = csum_flags_ & kCsumLegacy;
  for (uint64_t i = 0; i < n; ++i) {
    uint8_t* block = view.data() + (i << kBlockShift);
    if (BlockSum(block) == sums[i] || (sums[i] == 0 && legacy)) continue;
    // A write may have been between its data and its checksum: look again
    // under the block's stripe.
    std::lock_guard lock(block_mu_[(b0 + i) % kBlockStripes]);
    RETURN_IF_ERROR(ReadBlockChecked(b0 + i, block));
  }
  if (!tmp.empty()) std::memcpy(buf.data(), tmp.data() + (pos - start), buf.size());
  return Status::OK();
}

Status LocalDisk::WriteOwned(uint64_t pos, uint64_t len, const uint8_t* src) {
  if (!csum_.valid()) {
    if (src) return WriteFull(data_.get(), ByteView(src, len), pos, DataPath());
    return PunchHole(data_.get(), pos, len, DataPath());
  }
  uint64_t end = pos + len;
  uint64_t start = pos & ~(kBlockBytes - 1);
  uint64_t stop = (end + kBlockBytes - 1) & ~(kBlockBytes - 1);
  uint64_t mid0 = (pos + kBlockBytes - 1) & ~(kBlockBytes - 1);
  uint64_t mid1 = end & ~(kBlockBytes - 1);
  if (!src && (start != pos || stop != end) && mid0 < mid1) {
    // An unaligned discard: only its partial blocks are written (zeros).
    if (pos < mid0) RETURN_IF_ERROR(WriteOwned(pos, mid0 - pos, nullptr));
    RETURN_IF_ERROR(WriteOwned(mid0, mid1 - mid0, nullptr));
    if (mid1 < end) RETURN_IF_ERROR(WriteOwned(mid1, end - mid1, nullptr));
    return Status::OK();
  }
  uint64_t b0 = start >> kBlockShift, b1 = stop >> kBlockShift;
  BlockLocks locks(block_mu_, b0, b1);
  RETURN_IF_ERROR(BeginWrite(b0, b1));
  struct Done {
    LocalDisk* d;
    uint64_t b0, b1;
    ~Done() { d->EndWrite(b0, b1); }
  } done{this, b0, b1};
  std::vector<uint64_t> sums(b1 - b0);
  if (start == pos && stop == end) {
    if (src) {
      SumsOf(ByteView(src, len), sums.data());
      RETURN_IF_ERROR(WriteFull(data_.get(), ByteView(src, len), pos, DataPath()));
    } else {
      std::fill(sums.begin(), sums.end(), ZeroBlockSum());
      RETURN_IF_ERROR(PunchHole(data_.get(), pos, len, DataPath()));
    }
  } else {
    // Partial blocks are read (and checked: a damaged block is not made to
    // look sound), merged and written whole.
    Bytes buf(stop - start);
    bool head = pos != start, tail = end != stop;
    if (head || (tail && b1 - b0 == 1)) RETURN_IF_ERROR(ReadBlockChecked(b0, buf.data()));
    if (tail && b1 - b0 > 1) {
      RETURN_IF_ERROR(ReadBlockChecked(b1 - 1, buf.data() + (stop - start) - kBlockBytes));
    }
    if (src) {
      std::memcpy(buf.data() + (pos - start), src, len);
    } else {
      std::memset(buf.data() + (pos - start), 0, len);
    }
    SumsOf(ByteView(buf), sums.data());
    uint64_t wend = std::min(stop, size_.load(std::memory_order_relaxed));
    RETURN_IF_ERROR(WriteFull(data_.get(), ByteView(buf.data(), wend - start), start, DataPath()));
  }
  return WriteSums(b0, sums.size(), sums.data());
}

Status LocalDisk::BeginWrite(uint64_t b0, uint64_t b1) {
  uint64_t r0 = (b0 << kBlockShift) >> kRegionShift;
  uint64_t r1 = (((b1 << kBlockShift) - 1) >> kRegionShift) + 1;
  MutexLock lock(dirty_mu_);
  std::vector<uint64_t> added;
  for (uint64_t r = r0; r < r1; ++r) {
    auto [it, fresh] = dirty_.try_emplace(r);
    if (fresh) added.push_back(r);
    ++it->second.inflight;
  }
  if (added.empty()) return Status::OK();
  Status s = PersistDirtyLocked(/*sync=*/true);
  if (!s.ok()) {
    for (uint64_t r = r0; r < r1; ++r) --dirty_[r].inflight;
    for (uint64_t r : added) dirty_.erase(r);
  }
  return s;
}

void LocalDisk::EndWrite(uint64_t b0, uint64_t b1) {
  uint64_t r0 = (b0 << kBlockShift) >> kRegionShift;
  uint64_t r1 = (((b1 << kBlockShift) - 1) >> kRegionShift) + 1;
  int64_t now = NowNs();
  MutexLock lock(dirty_mu_);
  for (uint64_t r = r0; r < r1; ++r) {
    Region& g = dirty_[r];
    --g.inflight;
    g.epoch = flush_epoch_;
    g.last_ns = now;
  }
}

Status LocalDisk::PersistDirtyLocked(bool sync) {
  CsumHeader h;
  h.flags = csum_flags_;
  for (const auto& [r, g] : dirty_) h.dirty.push_back(r);
  std::sort(h.dirty.begin(), h.dirty.end());
  RETURN_IF_ERROR(WriteFull(csum_.get(), ByteView(EncodeCsumHeader(h)), 0, CsumPath()));
  if (!sync) return Status::OK();
  if (int err = io_.Fdatasync(csum_.get()))
    return Status::FromErrno(err, "fdatasync " + CsumPath());
  return Status::OK();
}

void LocalDisk::MarkIdleClean(uint64_t epoch) {
  int64_t now = NowNs();
  MutexLock lock(dirty_mu_);
  size_t before = dirty_.size();
  std::erase_if(dirty_, [&](const auto& e) {
    const Region& g = e.second;
    return g.inflight == 0 && g.epoch < epoch && now - g.last_ns >= kRegionIdleNs;
  });
  // Unsynced: if it is lost the regions just stay dirty.
  if (dirty_.size() != before) (void)PersistDirtyLocked(/*sync=*/false);
}

Status LocalDisk::MarkAllClean() {
  if (!csum_.valid() || !csum_loaded_) return Status::OK();
  MutexLock lock(dirty_mu_);
  dirty_.clear();
  return PersistDirtyLocked(/*sync=*/true);
}

Status LocalDisk::RecoverSums() {
  ASSIGN_OR_RETURN(CsumHeader h, ReadCsumHeader(csum_.get(), CsumPath()));
  std::unordered_set<uint64_t> regions(h.dirty.begin(), h.dirty.end());
  uint64_t size = size_.load(std::memory_order_relaxed);
  uint64_t chunks = 0;
  Bytes chunk(chunk_size_);
  std::vector<uint64_t> sums(CeilDiv(chunk_size_, kBlockBytes));
  Status s;
  bits_.ForEachSet(0, [&](uint64_t c) {
    uint64_t cstart = ChunkStart(c);
    if (!s.ok() || cstart >= size) return;
    if (!h.all_dirty && !regions.count(cstart >> kRegionShift)) return;
    // The whole chunk: past the disk's end the data file reads zeros.
    s = PreadFull(data_.get(), MutableByteView(chunk), cstart, DataPath());
    if (!s.ok()) return;
    SumsOf(ByteView(chunk), sums.data());
    s = WriteSums(cstart >> kBlockShift, sums.size(), sums.data());
    ++chunks;
  });
  RETURN_IF_ERROR(s);
  RETURN_IF_ERROR(Fsync(io_, csum_.get(), CsumPath()));
  spdlog::warn(
      "disk {}: the checksums of {} owned chunks in {} regions written before a crash were "
      "recomputed from their data",
      ref_.ToString(), chunks, h.all_dirty ? std::string("all") : std::to_string(regions.size()));
  return MarkAllClean();
}

Status LocalDisk::Verify(std::vector<std::string>* problems) {
  if (!csum_.valid()) return Status::OK();
  std::shared_lock lock(resize_mu_);
  uint64_t size = size_.load(std::memory_order_relaxed);
  std::vector<uint64_t> owned;
  bits_.ForEachSet(0, [&](uint64_t c) {
    if (ChunkStart(c) < size) owned.push_back(c);
  });
  constexpr size_t kMaxNamed = 20;
  size_t damaged = 0;
  std::array<uint8_t, kBlockBytes> block;
  for (uint64_t c : owned) {
    uint64_t cstart = ChunkStart(c), cend = std::min(ChunkStart(c + 1), size);
    for (uint64_t b = cstart >> kBlockShift; b < CeilDiv(cend, kBlockBytes); ++b) {
      Status s;
      {
        std::lock_guard block_lock(block_mu_[b % kBlockStripes]);
        s = ReadBlockChecked(b, block.data(), /*log=*/false);
      }
      if (s.ok()) continue;
      if (!s.IsCorruption()) return s;
      if (++damaged <= kMaxNamed) {
        problems->push_back(s.message() + " (it reads as EIO)");
      }
    }
  }
  if (damaged > kMaxNamed) {
    problems->push_back("disk " + ref_.ToString() + ": " + std::to_string(damaged - kMaxNamed) +
                        " more damaged 4 KiB blocks");
  }
  return Status::OK();
}

bool LocalDisk::ParentHasData(uint64_t start, uint64_t end) const {
  return disk_util::ParentHasData(parent_.get(), overlap_, start, end);
}

Status LocalDisk::ReadParent(uint64_t offset, MutableByteView buf) const {
  return disk_util::ReadParent(parent_.get(), overlap_, offset, buf, ref_);
}

Status LocalDisk::Read(uint64_t offset, MutableByteView buf) {
  std::shared_lock lock(resize_mu_);
  RETURN_IF_ERROR(CheckRange(offset, buf.size(), "read"));
  return ForEachRun(offset, buf, [&](uint64_t pos, MutableByteView part, bool owned) {
    return owned ? ReadOwned(pos, part) : ReadParent(pos, part);
  });
}

void LocalDisk::ReadAsync(uint64_t offset, MutableByteView buf, Callback done) {
  std::vector<std::pair<uint64_t, MutableByteView>> from_parent;
  uint64_t overlap = 0;
  {
    std::shared_lock lock(resize_mu_);
    Status s = CheckRange(offset, buf.size(), "read");
    if (s.ok()) {
      s = ForEachRun(offset, buf, [&](uint64_t pos, MutableByteView part, bool owned) {
        if (owned) return ReadOwned(pos, part);
        from_parent.emplace_back(pos, part);
        return Status::OK();
      });
    }
    overlap = overlap_;
    if (!s.ok()) {
      lock.unlock();
      return done(std::move(s));
    }
  }
  // What the parent shows is immutable, so its runs need not hold the resize
  // lock: a read that overlaps a resize may see either side of it, as with
  // any two requests in flight at once.
  if (from_parent.empty()) return done(Status::OK());
  auto join = std::make_shared<StatusJoin>(from_parent.size(), std::move(done));
  for (auto& [pos, part] : from_parent) {
    disk_util::ReadParentAsync(parent_, overlap, pos, part, ref_,
                               [join](Status s) { join->Part(std::move(s)); });
  }
}

Status LocalDisk::CopyUp(uint64_t c, uint64_t pos, uint64_t len, const uint8_t* data) {
  std::lock_guard lock(stripes_[c % kStripes]);
  if (bits_.Test(c)) return WriteOwned(pos, len, data);
  uint64_t cstart = ChunkStart(c);
  uint64_t cend = std::min(ChunkStart(c + 1), size_.load(std::memory_order_relaxed));
  bool whole = pos == cstart && pos + len == cend;
  bool parent_data = ParentHasData(cstart, cend);
  if (!data && !parent_data) return Status::OK();  // already reads as zeros
  // Nobody reads the chunk's data or checksums before its bit is set, so no
  // block stripe is needed; its region is dirty from before the first byte.
  // Every block of an owned chunk has its checksum, also past the disk's end
  // (zeros there: a grow shows them).
  uint64_t b0 = cstart >> kBlockShift, b1 = ChunkStart(c + 1) >> kBlockShift;
  std::vector<uint64_t> sums;
  if (csum_.valid()) {
    RETURN_IF_ERROR(BeginWrite(b0, b1));
    sums.resize(b1 - b0, ZeroBlockSum());
  }
  struct Done {
    LocalDisk* d;
    uint64_t b0, b1;
    ~Done() {
      if (d) d->EndWrite(b0, b1);
    }
  } done{csum_.valid() ? this : nullptr, b0, b1};
  if (whole || !parent_data) {
    if (!sums.empty()) {
      if (whole && data) {
        SumsOf(ByteView(data, len), sums.data());
      } else {
        Bytes chunk(cend - cstart);
        if (data) std::memcpy(chunk.data() + (pos - cstart), data, len);
        SumsOf(ByteView(chunk), sums.data());
      }
    }
    // Whatever an earlier crash may have left in this range of the data file
    // must not show through: punch it, then write.
    if (!whole || !data) RETURN_IF_ERROR(PunchHole(data_.get(), cstart, cend - cstart, DataPath()));
    if (data) RETURN_IF_ERROR(WriteFull(data_.get(), ByteView(data, len), pos, DataPath()));
  } else {
    Bytes chunk(cend - cstart);
    RETURN_IF_ERROR(ReadParent(cstart, MutableByteView(chunk)));
    if (data) {
      std::memcpy(chunk.data() + (pos - cstart), data, len);
    } else {
      std::memset(chunk.data() + (pos - cstart), 0, len);
    }
    if (!sums.empty()) SumsOf(ByteView(chunk), sums.data());
    RETURN_IF_ERROR(WriteFull(data_.get(), ByteView(chunk), cstart, DataPath()));
  }
  if (!sums.empty()) RETURN_IF_ERROR(WriteSums(b0, sums.size(), sums.data()));
  bits_.Set(c);
  if (!AddPending(c, true)) RETURN_IF_ERROR(Flush());
  return Status::OK();
}

Status LocalDisk::Write(uint64_t offset, ByteView buf) {
  if (!writable_) return Status::ReadOnly("disk " + ref_.ToString() + " is open read-only");
  std::shared_lock lock(resize_mu_);
  RETURN_IF_ERROR(CheckRange(offset, buf.size(), "write"));
  uint64_t end = offset + buf.size();
  uint64_t pos = offset;
  while (pos < end) {
    uint64_t c = pos >> chunk_shift_;
    uint64_t run_end = std::min(end, ChunkStart(c + 1));
    const uint8_t* src = buf.data() + (pos - offset);
    if (bits_.Test(c)) {
      while (run_end < end && bits_.Test(run_end >> chunk_shift_)) {
        run_end = std::min(end, run_end + chunk_size_);
      }
      RETURN_IF_ERROR(WriteOwned(pos, run_end - pos, src));
    } else {
      RETURN_IF_ERROR(CopyUp(c, pos, run_end - pos, src));
    }
    pos = run_end;
  }
  return Status::OK();
}

Status LocalDisk::Discard(uint64_t offset, uint64_t length) {
  if (!writable_) return Status::ReadOnly("disk " + ref_.ToString() + " is open read-only");
  std::shared_lock lock(resize_mu_);
  uint64_t size = size_.load(std::memory_order_relaxed);
  if (offset >= size) return Status::OK();
  uint64_t end = offset + std::min(length, size - offset);
  uint64_t pos = offset;
  while (pos < end) {
    uint64_t c = pos >> chunk_shift_;
    uint64_t run_end = std::min(end, ChunkStart(c + 1));
    if (bits_.Test(c)) {
      while (run_end < end && bits_.Test(run_end >> chunk_shift_)) {
        run_end = std::min(end, run_end + chunk_size_);
      }
      RETURN_IF_ERROR(WriteOwned(pos, run_end - pos, nullptr));
    } else {
      RETURN_IF_ERROR(CopyUp(c, pos, run_end - pos, nullptr));
    }
    pos = run_end;
  }
  return Status::OK();
}

// Ordering (docs/formats.md): the data file is synced before any bit that
// points at it is written, so a persisted set bit always names synced data.
Status LocalDisk::Flush() {
  if (!writable_) return Status::OK();
  MutexLock lock(flush_mu_);
  return FlushLocked();
}

Status LocalDisk::FlushLocked() {
  if (!failed_.ok()) return failed_;
  std::vector<uint64_t> ops;
  {
    MutexLock lock(pending_mu_);
    ops.swap(pending_);
  }
  auto fail = [&](Status s) {
    flush_mu_.AssertHeld();  // the lambda runs here, under it
    failed_ = Status::IOError("disk " + ref_.ToString() + ": " + s.message() +
                              " (writes since the last flush may be lost; reopen the disk)");
    return failed_;
  };
  uint64_t epoch;
  {
    MutexLock lock(dirty_mu_);
    epoch = ++flush_epoch_;
  }
  if (int err = io_.Fdatasync(data_.get())) return fail(Status::FromErrno(err, "fdatasync data"));
  if (csum_.valid()) {
    if (int err = io_.Fdatasync(csum_.get())) {
      return fail(Status::FromErrno(err, "fdatasync csum"));
    }
    MarkIdleClean(epoch);
  }
  if (ops.empty()) return Status::OK();
  std::vector<uint64_t> touched;
  for (uint64_t op : ops) {
    uint64_t bit = op & ~kClearFlag;
    uint64_t b = map_.Block(bit);
    auto [it, fresh] = persisted_.try_emplace(b);
    if (fresh) it->second.fill(0);
    map_.Put(bit, !(op & kClearFlag), &it->second);
    touched.push_back(b);
  }
  std::sort(touched.begin(), touched.end());
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  std::string path = MapPath();
  for (uint64_t b : touched) {
    MapBlock& block = persisted_[b];
    map_.Seal(b, &block);
    Status s =
        WriteFull(bitmap_fd_.get(), ByteView(block), kBitmapHeaderBytes + b * kPageBytes, path);
    if (!s.ok()) return fail(s);
  }
  if (int err = io_.Fdatasync(bitmap_fd_.get())) {
    return fail(Status::FromErrno(err, "fdatasync map"));
  }
  RewriteJournal();
  return Status::OK();
}

void LocalDisk::RewriteJournal() {
  MutexLock lock(pending_mu_);
  if (!journal_.valid()) return;
  size_t bytes = pending_.size() * sizeof(uint64_t);
  if (::ftruncate(journal_.get(), 0) != 0 ||
      (bytes &&
       ::pwrite(journal_.get(), pending_.data(), bytes, 0) != static_cast<ssize_t>(bytes))) {
    spdlog::warn("disk {}: journal of unflushed allocations: {}; flushing each one instead",
                 ref_.ToString(), std::strerror(errno));
    journal_ = UniqueFd();
    return;
  }
  journal_end_ = bytes;
}

Status LocalDisk::ReplayJournal(uint64_t nchunks) {
  std::vector<uint64_t> ops;
  {
    MutexLock lock(pending_mu_);
    if (!journal_.valid()) return Status::OK();
    uint64_t op;
    for (off_t off = 0; ::pread(journal_.get(), &op, sizeof op, off) == sizeof op;
         off += sizeof op) {
      ops.push_back(op);
    }
    for (uint64_t o : ops) {
      uint64_t bit = o & ~kClearFlag;
      if (bit >= nchunks) continue;
      if (o & kClearFlag) {
        bits_.Clear(bit);
      } else {
        bits_.Set(bit);
      }
      if (writable_) pending_.push_back(o);
    }
    // A reader sees what the dead writer acknowledged; the next writer flushes it.
    if (!writable_) journal_ = UniqueFd();
  }
  if (ops.empty() || !writable_) return Status::OK();
  spdlog::warn("disk {}: flushing {} allocations that a writer which died had acknowledged",
               ref_.ToString(), ops.size());
  MutexLock lock(flush_mu_);
  return FlushLocked();
}

Status LocalDisk::Trim(uint64_t size) {
  // The owned chunk the new size cuts keeps its bit: the checksums of its
  // blocks from the cut on must cover the zeros the truncation leaves (a
  // later grow shows them).
  uint64_t last = size >> kBlockShift;
  uint64_t stop = ChunkStart((size >> chunk_shift_) + 1) >> kBlockShift;
  bool cut = csum_.valid() && (size & (chunk_size_ - 1)) && bits_.Test(size >> chunk_shift_);
  if (cut) RETURN_IF_ERROR(BeginWrite(last, stop));
  if (::ftruncate(data_.get(), static_cast<off_t>(size)) != 0) {
    if (cut) EndWrite(last, stop);
    return Status::FromErrno(errno, "truncate " + DataPath());
  }
  if (cut) {
    std::vector<uint64_t> sums(stop - last, ZeroBlockSum());
    std::array<uint8_t, kBlockBytes> block;
    Status s = PreadFull(data_.get(), MutableByteView(block), last << kBlockShift, DataPath());
    sums[0] = BlockSum(block.data());
    if (s.ok()) s = WriteSums(last, sums.size(), sums.data());
    EndWrite(last, stop);
    RETURN_IF_ERROR(s);
  }
  uint64_t first = Chunks(size);
  MutexLock flush_lock(flush_mu_);
  {
    MutexLock lock(pending_mu_);
    bits_.ForEachSet(first, [&](uint64_t c) {
      pending_mu_.AssertHeld();  // the lambda runs here, under it
      bits_.Clear(c);
      pending_.push_back(c | kClearFlag);
    });
    for (const auto& [b, block] : persisted_) {
      if (b < map_.Block(first)) continue;
      map_.ForEachSet(b, block, [&](uint64_t bit) {
        pending_mu_.AssertHeld();  // the lambda runs here, under it
        if (bit >= first) pending_.push_back(bit | kClearFlag);
      });
    }
  }
  return FlushLocked();
}

Status LocalDisk::Resize(uint64_t new_size, bool allow_shrink) {
  if (!writable_) return Status::ReadOnly("disk " + ref_.ToString() + " is open read-only");
  if (new_size > limit_.max_bytes) {
    return disk_util::SizeError("disk " + ref_.ToString(), new_size, limit_);
  }
  std::unique_lock lock(resize_mu_);
  uint64_t old_size = size_.load(std::memory_order_relaxed);
  if (new_size == old_size) return Status::OK();
  if (new_size < old_size && !allow_shrink) {
    return Status::PermissionDenied("shrinking disk " + ref_.ToString() + " from " +
                                    std::to_string(old_size) + " to " + std::to_string(new_size) +
                                    " bytes is refused (it would lose data)");
  }
  uint64_t new_overlap = std::min(overlap_, new_size);
  RETURN_IF_ERROR(UpdateMeta(io_, dir_, [&](Meta* m) {
    m->size = new_size;
    m->parent_overlap = std::min(m->parent_overlap, new_size);
    return Status::OK();
  }));
  overlap_ = new_overlap;
  size_.store(new_size, std::memory_order_release);
  if (new_size > old_size) {
    bits_.Resize(Chunks(new_size));
    return Status::OK();
  }
  return Trim(new_size);
}

Result<std::vector<Extent>> LocalDisk::Allocated(uint64_t offset, uint64_t length) {
  std::shared_lock lock(resize_mu_);
  std::vector<Extent> out;
  uint64_t size = size_.load(std::memory_order_relaxed);
  if (offset >= size) return out;
  uint64_t end = offset + std::min(length, size - offset);
  auto add = [&](uint64_t a, uint64_t b) { disk_util::AddExtent(&out, a, b, offset, end); };
  uint64_t pos = offset;
  while (pos < end) {
    uint64_t c = pos >> chunk_shift_;
    uint64_t cstart = ChunkStart(c);
    uint64_t cend = std::min(ChunkStart(c + 1), size);
    if (bits_.Test(c)) {
      uint64_t run_end = cend;
      while (run_end < end && bits_.Test(run_end >> chunk_shift_)) {
        run_end = std::min(size, run_end + chunk_size_);
      }
      uint64_t p = pos;
      while (p < run_end) {
        off_t d = ::lseek(data_.get(), static_cast<off_t>(p), SEEK_DATA);
        if (d < 0) {
          if (errno == ENXIO) break;
          return Status::FromErrno(errno, "seek " + DataPath());
        }
        if (static_cast<uint64_t>(d) >= run_end) break;
        off_t h = ::lseek(data_.get(), d, SEEK_HOLE);
        if (h < 0) return Status::FromErrno(errno, "seek " + DataPath());
        add(static_cast<uint64_t>(d), std::min<uint64_t>(static_cast<uint64_t>(h), run_end));
        p = static_cast<uint64_t>(h);
      }
      pos = run_end;
    } else {
      if (ParentHasData(cstart, cend)) add(cstart, std::min(cend, overlap_));
      pos = cend;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------

class LocalBackend final : public DiskBackend {
 public:
  LocalBackend(std::string root, ImageSource* images)
      : io_(FileIO::Current()), root_(std::move(root)), images_(images) {}

  Status Init();

  std::string Describe() const override { return "local"; }
  Status Create(const DiskRef& ref, const DiskCreateOptions& opts) override;
  Result<std::unique_ptr<Disk>> Open(const DiskRef& ref, OpenMode mode) override {
    return OpenDisk(ref, mode, /*with_parent=*/true);
  }
  Status Remove(const DiskRef& ref) override;
  Status Rename(const DiskRef& from, const DiskRef& to) override;
  Result<DiskInfo> Info(const DiskRef& ref) override;
  Status Resize(const DiskRef& ref, uint64_t new_size, bool allow_shrink) override;
  Status SetAttrs(const DiskRef& ref, const DiskAttrs& attrs) override;
  Result<DiskSizeLimit> MaxDiskSize(uint32_t chunk_size) override;
  Status CreateInstance(const std::string& instance) override;
  Status RemoveInstance(const std::string& instance) override;
  Result<std::vector<std::string>> ListInstances() override;
  Result<std::vector<DiskRef>> List(const std::string& instance) override;
  Result<SpaceInfo> Space() override;
  Status Check(const DiskRef& ref, std::vector<std::string>* problems) override;

 private:
  std::string InstanceDir(const std::string& instance) const { return root_ + "/" + instance; }
  std::string DiskDir(const DiskRef& ref) const {
    return root_ + "/" + ref.instance + "/" + ref.disk;
  }
  std::string MarkerPath(const std::string& instance) const {
    return root_ + "/.instances/" + instance;
  }
  // Without its parent, a disk handle serves only Resize and Flush (the
  // command line's resize must not load the image's manifest).
  Result<std::unique_ptr<Disk>> OpenDisk(const DiskRef& ref, OpenMode mode, bool with_parent);
  std::string UniqueName(const char* prefix);
  // Removes the instance directory if it has no disks and was not made by
  // CreateInstance.
  void DropImplicitInstance(const std::string& instance);
  Result<bool> InstanceHasDisks(const std::string& instance);
  Status MoveDiskDir(const std::string& from, const DiskRef& to);
  Status CheckData(const DiskRef& ref, std::vector<std::string>* problems);

  FileIO& io_;  // FileIO::Current() when made; constant
  const std::string root_;
  ImageSource* const images_;
  std::atomic<uint64_t> counter_{0};
  Mutex probe_mu_;
  // The file system's largest file, probed on first need (only a success is
  // kept).
  std::optional<FileSizeLimit> fs_limit_ GUARDED_BY(probe_mu_);
};

Status ValidateRef(const DiskRef& ref) {
  RETURN_IF_ERROR(ValidateInstanceName(ref.instance));
  return ValidateDiskName(ref.disk);
}

Status LocalBackend::Init() {
  RETURN_IF_ERROR(MakeDirs(root_, io_));
  RETURN_IF_ERROR(MakeDirs(root_ + "/.tmp", io_));
  RETURN_IF_ERROR(MakeDirs(root_ + "/.trash", io_));
  RETURN_IF_ERROR(MakeDirs(root_ + "/.instances", io_));
  // Finish removals that a crash interrupted. Creations left in .tmp by a
  // crash are removed once they are an hour old (a live one takes seconds).
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root_ + "/.trash", ec)) {
    (void)RemoveTree(e.path().string(), io_);
  }
  auto now = fs::file_time_type::clock::now();
  for (const auto& e : fs::directory_iterator(root_ + "/.tmp", ec)) {
    std::error_code ec2;
    auto t = fs::last_write_time(e.path(), ec2);
    if (!ec2 && now - t > std::chrono::hours(1)) (void)RemoveTree(e.path().string(), io_);
  }
  return Status::OK();
}

// The file system is asked on first need, not at `imgfs init`: the store's
// directory may move to another file system (docs/operations.md, "Disk
// sizes").
Result<DiskSizeLimit> LocalBackend::MaxDiskSize(uint32_t chunk_size) {
  FileSizeLimit fs;
  {
    MutexLock lock(probe_mu_);
    if (!fs_limit_) {
      auto probed = ProbeFileSizeLimit(root_ + "/.tmp", kMaxDiskSize);
      if (!probed.ok()) return probed.status().WithContext("finding the largest disk size");
      fs_limit_ = *probed;
    }
    fs = *fs_limit_;
  }
  DiskSizeLimit limit{kMaxDiskSize, "imgfs's largest local disk"};
  uint64_t by_map = uint64_t{chunk_size} << kMaxDiskChunksLog2;
  if (by_map < limit.max_bytes) {
    limit = {by_map, "2^" + std::to_string(kMaxDiskChunksLog2) + " chunks of " +
                         FormatSize(chunk_size) + ", the most a local disk's allocation map holds"};
  }
  if (fs.max_size < limit.max_bytes) {
    limit = {fs.max_size, "the largest file " + fs.fs_type + " allows in " + root_};
  }
  return limit;
}

std::string LocalBackend::UniqueName(const char* prefix) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s.%d.%llu.%016llx", prefix, static_cast<int>(::getpid()),
                static_cast<unsigned long long>(counter_.fetch_add(1)),
                static_cast<unsigned long long>(rng()));
  return buf;
}

Status LocalBackend::MoveDiskDir(const std::string& from, const DiskRef& to) {
  for (int attempt = 0;; ++attempt) {
    RETURN_IF_ERROR(MakeDirs(InstanceDir(to.instance), io_));
    int err = io_.Rename(from, DiskDir(to), RENAME_NOREPLACE);
    if (err == 0) break;
    if (err == EEXIST || err == ENOTEMPTY) {
      return Status::AlreadyExists("disk " + to.ToString() + " already exists");
    }
    // The instance directory vanished under us (its last disk was removed).
    if (err == ENOENT && attempt < 5) continue;
    return Status::FromErrno(err, "rename " + from + " to " + DiskDir(to));
  }
  RETURN_IF_ERROR(FsyncDir(InstanceDir(to.instance), io_));
  return FsyncDir(root_, io_);
}

Status LocalBackend::Create(const DiskRef& ref, const DiskCreateOptions& opts) {
  RETURN_IF_ERROR(ValidateRef(ref));
  Meta m;
  m.attrs = opts.attrs;
  m.attrs.mode &= 07777;
  m.created_ns = NowNs();
  if (opts.image) {
    if (!images_) return Status::NotFound("image " + opts.image->Hex() + " not found (no images)");
    ASSIGN_OR_RETURN(ImageGeometry geometry, images_->GetGeometry(*opts.image));
    uint64_t image_size = geometry.size;
    m.size = opts.size.value_or(image_size);
    if (m.size < image_size) {
      return Status::InvalidArgument("size " + std::to_string(m.size) +
                                     " is smaller than the image (" + std::to_string(image_size) +
                                     " bytes)");
    }
    m.parent = *opts.image;
    m.parent_overlap = image_size;
    uint32_t chunk = geometry.chunk_size;
    m.chunk_size = ValidateChunkSize(chunk).ok() ? chunk : kBlankDiskChunkSize;
  } else {
    if (!opts.size) return Status::InvalidArgument("a blank disk needs a size");
    m.size = *opts.size;
    m.chunk_size = kBlankDiskChunkSize;
  }
  ASSIGN_OR_RETURN(DiskSizeLimit limit, MaxDiskSize(m.chunk_size));
  if (m.size > limit.max_bytes) {
    return disk_util::SizeError("disk " + ref.ToString(), m.size, limit);
  }
  struct stat st;
  if (::stat(DiskDir(ref).c_str(), &st) == 0) {
    return Status::AlreadyExists("disk " + ref.ToString() + " already exists");
  }

  std::string tmp = root_ + "/.tmp/" + UniqueName("create");
  RETURN_IF_ERROR(MakeDirs(tmp, io_));
  auto build = [&]() -> Status {
    for (const char* name : {kDataFile, kLockFile}) {
      ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(io_, tmp + "/" + name, O_WRONLY | O_CREAT | O_EXCL));
      RETURN_IF_ERROR(Fsync(io_, fd.get(), tmp + "/" + name));
    }
    std::string bm = tmp + "/" + kBitmapFile;
    ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(io_, bm, O_WRONLY | O_CREAT | O_EXCL));
    RETURN_IF_ERROR(
        WriteFull(fd.get(), ByteView(EncodeMapHeader(kBitmapVersion, m.chunk_size)), 0, bm));
    RETURN_IF_ERROR(Fsync(io_, fd.get(), bm));
    RETURN_IF_ERROR(WriteCsumFile(io_, tmp + "/" + kCsumFile, 0));
    RETURN_IF_ERROR(WriteFileAtomic(tmp + "/" + kMetaFile, EncodeMeta(m), io_));
    return MoveDiskDir(tmp, ref);
  };
  Status s = build();
  if (!s.ok()) (void)RemoveTree(tmp, io_);
  return s;
}

Result<std::unique_ptr<Disk>> LocalBackend::OpenDisk(const DiskRef& ref, OpenMode mode,
                                                     bool with_parent) {
  RETURN_IF_ERROR(ValidateRef(ref));
  std::string dir = DiskDir(ref);
  bool rw = mode != OpenMode::kReadOnly;
  UniqueFd lock;
  if (rw) {
    ASSIGN_OR_RETURN(lock, LockDisk(io_, dir, ref));
  }
  auto meta = ReadMeta(dir);
  if (!meta.ok()) {
    if (meta.status().IsNotFound())
      return Status::NotFound("disk " + ref.ToString() + " does not exist");
    return meta.status();
  }
  DiskSizeLimit limit;
  if (rw) {
    ASSIGN_OR_RETURN(limit, MaxDiskSize(meta->chunk_size));
  }
  int flags = rw ? O_RDWR : O_RDONLY;
  ASSIGN_OR_RETURN(UniqueFd data, OpenFile(io_, dir + "/" + kDataFile, flags));
  ASSIGN_OR_RETURN(UniqueFd bitmap, OpenFile(io_, dir + "/" + kBitmapFile, flags));
  std::string csum_path = dir + "/" + kCsumFile;
  if (rw && meta->version == 1) {
    // The upgrade (docs/formats.md, "Checksums"): an empty checksum file made
    // durable, then the version. Blocks written before it have no checksum.
    std::string tmp = csum_path + ".new";
    RETURN_IF_ERROR(WriteCsumFile(io_, tmp, kCsumLegacy));
    if (int err = io_.Rename(tmp, csum_path)) return Status::FromErrno(err, "rename " + tmp);
    RETURN_IF_ERROR(FsyncDir(dir, io_));
    RETURN_IF_ERROR(UpdateMeta(io_, dir, [](Meta* m) {
      m->version = kFormatVersion;
      return Status::OK();
    }));
    meta->version = kFormatVersion;
    spdlog::info("disk {}: upgraded to format version {} (checksums)", ref.ToString(),
                 kFormatVersion);
  }
  UniqueFd csum;
  if (meta->version >= 2) {
    auto fd = OpenFile(io_, csum_path, flags);
    if (!fd.ok()) {
      if (fd.status().IsNotFound()) {
        return Status::Corruption("disk " + ref.ToString() + ": its checksum file is missing");
      }
      return fd.status();
    }
    csum = std::move(fd).value();
  }
  std::shared_ptr<ImageReader> parent;
  if (with_parent && meta->parent && meta->parent_overlap > 0) {
    if (!images_)
      return Status::NotFound("disk " + ref.ToString() + ": no image source for its parent");
    auto r = images_->OpenImage(*meta->parent);
    if (!r.ok()) {
      return r.status().WithContext("disk " + ref.ToString() + ": parent image " +
                                    meta->parent->Hex());
    }
    parent = std::move(r).value();
  }
  std::string journal_path;
  UniqueFd journal;
  {
    // Keyed by the data file and the disk's creation time: a disk made
    // again under the same name never sees an older disk's journal.
    struct stat dst {};
    struct statfs fs {};
    if (::fstat(data.get(), &dst) == 0 && ::statfs(kJournalDir, &fs) == 0 &&
        fs.f_type == TMPFS_MAGIC) {
      journal_path = std::string(kJournalDir) + "/imgfs-disk-" + std::to_string(dst.st_dev) + "-" +
                     std::to_string(dst.st_ino) + "-" + std::to_string(meta->created_ns);
      int fd = io_.Open(journal_path, rw ? O_RDWR | O_CREAT : O_RDONLY, 0600);
      if (fd >= 0) journal = UniqueFd(fd);
    }
    if (rw && !journal.valid()) {
      spdlog::warn(
          "disk {}: no journal of unflushed allocations in {} (tmpfs): each is flushed "
          "at once",
          ref.ToString(), kJournalDir);
      journal_path.clear();
    }
  }
  auto disk =
      std::make_unique<LocalDisk>(io_, ref, dir, rw, *meta, std::move(lock), std::move(data),
                                  std::move(bitmap), std::move(parent), std::move(limit));
  if (journal.valid()) disk->SetJournal(std::move(journal), journal_path);
  if (csum.valid()) disk->SetCsum(std::move(csum));
  RETURN_IF_ERROR(disk->Load());
  return std::unique_ptr<Disk>(std::move(disk));
}

Result<bool> LocalBackend::InstanceHasDisks(const std::string& instance) {
  std::string dir = InstanceDir(instance);
  DIR* d = ::opendir(dir.c_str());
  if (!d) return Status::FromErrno(errno, "open " + dir);
  bool any = false;
  while (struct dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name != "." && name != "..") {
      any = true;
      break;
    }
  }
  ::closedir(d);
  return any;
}

void LocalBackend::DropImplicitInstance(const std::string& instance) {
  struct stat st;
  if (::stat(MarkerPath(instance).c_str(), &st) == 0) return;
  if (io_.Rmdir(InstanceDir(instance)) == 0) (void)FsyncDir(root_, io_);
}

Status LocalBackend::Remove(const DiskRef& ref) {
  RETURN_IF_ERROR(ValidateRef(ref));
  std::string dir = DiskDir(ref);
  ASSIGN_OR_RETURN(UniqueFd lock, LockDisk(io_, dir, ref));
  std::string trash = root_ + "/.trash/" + UniqueName("rm");
  if (int err = io_.Rename(dir, trash)) return Status::FromErrno(err, "rename " + dir);
  RETURN_IF_ERROR(FsyncDir(InstanceDir(ref.instance), io_));
  lock = UniqueFd();
  Status s = RemoveTree(trash, io_);
  if (!s.ok())
    spdlog::warn("removing {}: {} (it is finished at the next start)", trash, s.ToString());
  DropImplicitInstance(ref.instance);
  return Status::OK();
}

Status LocalBackend::Rename(const DiskRef& from, const DiskRef& to) {
  RETURN_IF_ERROR(ValidateRef(from));
  RETURN_IF_ERROR(ValidateRef(to));
  std::string dir = DiskDir(from);
  ASSIGN_OR_RETURN(UniqueFd lock, LockDisk(io_, dir, from));
  RETURN_IF_ERROR(MoveDiskDir(dir, to));
  if (from.instance != to.instance) {
    RETURN_IF_ERROR(FsyncDir(InstanceDir(from.instance), io_));
    DropImplicitInstance(from.instance);
  }
  return Status::OK();
}

Result<DiskInfo> LocalBackend::Info(const DiskRef& ref) {
  RETURN_IF_ERROR(ValidateRef(ref));
  std::string dir = DiskDir(ref);
  auto meta = ReadMeta(dir);
  if (!meta.ok()) {
    if (meta.status().IsNotFound())
      return Status::NotFound("disk " + ref.ToString() + " does not exist");
    return meta.status();
  }
  DiskInfo info;
  info.ref = ref;
  info.size = meta->size;
  info.parent = meta->parent;
  info.attrs = meta->attrs;
  info.location = dir;
  struct stat st;
  if (::stat((dir + "/" + kDataFile).c_str(), &st) != 0) {
    return Status::FromErrno(errno, "stat " + dir + "/" + kDataFile);
  }
  info.owned_bytes = static_cast<uint64_t>(st.st_blocks) * 512;
  info.mtime_ns = MtimeNs(st);
  if (::stat((dir + "/" + kMetaFile).c_str(), &st) == 0) {
    info.mtime_ns = std::max(info.mtime_ns, MtimeNs(st));
  }
  return info;
}

Status LocalBackend::Resize(const DiskRef& ref, uint64_t new_size, bool allow_shrink) {
  ASSIGN_OR_RETURN(auto disk, OpenDisk(ref, OpenMode::kReadWrite, /*with_parent=*/false));
  RETURN_IF_ERROR(disk->Resize(new_size, allow_shrink));
  return disk->Flush();
}

Status LocalBackend::SetAttrs(const DiskRef& ref, const DiskAttrs& attrs) {
  RETURN_IF_ERROR(ValidateRef(ref));
  std::string dir = DiskDir(ref);
  struct stat st;
  if (::stat((dir + "/" + kMetaFile).c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::NotFound("disk " + ref.ToString() + " does not exist");
    return Status::FromErrno(errno, "stat " + dir);
  }
  return UpdateMeta(io_, dir, [&](Meta* m) {
    m->attrs = attrs;
    m->attrs.mode &= 07777;
    return Status::OK();
  });
}

Status LocalBackend::CreateInstance(const std::string& instance) {
  RETURN_IF_ERROR(ValidateInstanceName(instance));
  std::string dir = InstanceDir(instance);
  if (int err = io_.Mkdir(dir, 0755)) {
    if (err == EEXIST) return Status::AlreadyExists("instance " + instance + " already exists");
    return Status::FromErrno(err, "mkdir " + dir);
  }
  { ASSIGN_OR_RETURN(UniqueFd fd, OpenFile(io_, MarkerPath(instance), O_WRONLY | O_CREAT)); }
  RETURN_IF_ERROR(FsyncDir(root_ + "/.instances", io_));
  return FsyncDir(root_, io_);
}

Status LocalBackend::RemoveInstance(const std::string& instance) {
  RETURN_IF_ERROR(ValidateInstanceName(instance));
  std::string dir = InstanceDir(instance);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::NotFound("instance " + instance + " does not exist");
    return Status::FromErrno(errno, "stat " + dir);
  }
  ASSIGN_OR_RETURN(bool has_disks, InstanceHasDisks(instance));
  if (has_disks) return Status::NotEmpty("instance " + instance + " still has disks");
  if (int err = io_.Rmdir(dir)) {
    if (err == ENOTEMPTY || err == EEXIST) {
      return Status::NotEmpty("instance " + instance + " still has disks");
    }
    return Status::FromErrno(err, "rmdir " + dir);
  }
  RETURN_IF_ERROR(FsyncDir(root_, io_));
  // The marker goes after the directory: a crash between leaves a marker
  // without a directory, which nothing reads as an instance.
  (void)io_.Unlink(MarkerPath(instance));
  return FsyncDir(root_ + "/.instances", io_);
}

Result<std::vector<std::string>> LocalBackend::ListInstances() {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root_, ec)) {
    std::string name = e.path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    std::error_code ec2;
    if (e.is_directory(ec2)) out.push_back(name);
  }
  if (ec) return Status::FromErrno(ec.value(), "list " + root_);
  std::sort(out.begin(), out.end());
  return out;
}

Result<std::vector<DiskRef>> LocalBackend::List(const std::string& instance) {
  std::vector<std::string> instances;
  if (instance.empty()) {
    ASSIGN_OR_RETURN(instances, ListInstances());
  } else {
    RETURN_IF_ERROR(ValidateInstanceName(instance));
    struct stat st;
    if (::stat(InstanceDir(instance).c_str(), &st) != 0) {
      return Status::NotFound("instance " + instance + " does not exist");
    }
    instances.push_back(instance);
  }
  std::vector<DiskRef> out;
  for (const auto& inst : instances) {
    std::error_code ec;
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(InstanceDir(inst), ec)) {
      std::error_code ec2;
      if (fs::exists(e.path() / kMetaFile, ec2)) names.push_back(e.path().filename().string());
    }
    if (ec && ec != std::errc::no_such_file_or_directory) {
      return Status::FromErrno(ec.value(), "list " + InstanceDir(inst));
    }
    std::sort(names.begin(), names.end());
    for (auto& n : names) out.push_back(DiskRef{inst, std::move(n)});
  }
  return out;
}

Result<SpaceInfo> LocalBackend::Space() {
  struct statvfs sv;
  if (::statvfs(root_.c_str(), &sv) != 0) return Status::FromErrno(errno, "statfs " + root_);
  SpaceInfo info;
  info.capacity_bytes = static_cast<uint64_t>(sv.f_blocks) * sv.f_frsize;
  info.available_bytes = static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
  ASSIGN_OR_RETURN(auto disks, List(""));
  for (const auto& ref : disks) {
    struct stat st;
    if (::stat((DiskDir(ref) + "/" + kDataFile).c_str(), &st) == 0) {
      info.used_bytes += static_cast<uint64_t>(st.st_blocks) * 512;
    }
  }
  return info;
}

Status LocalBackend::Check(const DiskRef& ref, std::vector<std::string>* problems) {
  RETURN_IF_ERROR(ValidateRef(ref));
  std::string dir = DiskDir(ref);
  auto problem = [&](const std::string& what) {
    problems->push_back("disk " + ref.ToString() + ": " + what);
  };
  auto meta = ReadMeta(dir);
  if (!meta.ok()) {
    if (meta.status().IsNotFound()) return Status::OK();  // removed meanwhile
    problem(meta.status().message());
    return Status::OK();
  }
  if (auto limit = MaxDiskSize(meta->chunk_size); limit.ok() && meta->size > limit->max_bytes) {
    problem("its size, " + FormatSizeExact(meta->size) + ", is more than this store can hold (" +
            FormatSizeExact(limit->max_bytes) + ", " + limit->reason +
            "): writes beyond that fail");
  }
  for (const char* f : {kDataFile, kLockFile}) {
    struct stat st;
    if (::stat((dir + "/" + f).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      problem(std::string("its ") + f + " file is missing");
    }
  }
  std::string path = dir + "/" + kBitmapFile;
  auto fd = OpenFile(io_, path, O_RDONLY);
  if (!fd.ok()) {
    problem("allocation map: " + fd.status().message());
    return Status::OK();
  }
  if (auto version = ReadMapHeader(fd->get(), path, meta->chunk_size); !version.ok()) {
    problem(version.status().message());
    return Status::OK();
  }
  // Opening the disk checks the map's pages (a damaged one is named), then
  // its data.
  return CheckData(ref, problems);
}

// fsck's check of a disk's data: every owned block against its checksum.
Status LocalBackend::CheckData(const DiskRef& ref, std::vector<std::string>* problems) {
  auto disk = OpenDisk(ref, OpenMode::kReadOnly, /*with_parent=*/false);
  if (!disk.ok()) {
    if (disk.status().IsNotFound()) return Status::OK();  // removed meanwhile
    if (disk.status().IsRetryable()) return disk.status();
    problems->push_back("disk " + ref.ToString() + ": " + disk.status().message());
    return Status::OK();
  }
  return static_cast<LocalDisk&>(**disk).Verify(problems);
}

}  // namespace

Result<std::unique_ptr<DiskBackend>> CreateLocalDiskBackend(const std::string& dir,
                                                            ImageSource* images) {
  auto backend = std::make_unique<LocalBackend>(dir, images);
  RETURN_IF_ERROR(backend->Init());
  return std::unique_ptr<DiskBackend>(std::move(backend));
}

DiskBackendType LocalDiskBackendType() {
  DiskBackendType t;
  t.name = "local";
  t.usage = "local";
  t.create = [](const BackendContext& ctx, std::string_view) {
    return CreateLocalDiskBackend(ctx.store_path + "/disks", ctx.images);
  };
  t.prepare = [](const BackendContext& ctx, std::string_view) {
    return MakeDirs(ctx.store_path + "/disks");
  };
  return t;
}

}  // namespace imgfs
