#include "cache/import.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "blockstore/file_util.h"
#include "blockstore/hash.h"
#include "blockstore/mutex.h"
#include "blockstore/names.h"
#include "blockstore/units.h"
#include "cache/process.h"

namespace imgfs {
namespace {

// VMDK subformats that keep all their data in the one file (nova's default
// list); others (monolithicFlat, twoGbMaxExtent..., vmfs) name other files.
bool VmdkCreateTypeAllowed(const std::string& t) {
  return t == "monolithicSparse" || t == "streamOptimized";
}

// Threads that read, hash and store chunks: one per CPU, 1 to 4, or
// IMGFS_IMPORT_THREADS (1 to 64) to measure other counts.
unsigned ImportThreads() {
  if (const char* v = std::getenv("IMGFS_IMPORT_THREADS"); v != nullptr && *v != '\0') {
    return static_cast<unsigned>(std::clamp(std::atoi(v), 1, 64));
  }
  return std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
}

bool Cancelled(const ImportOptions& o) { return o.cancel && o.cancel->load(); }

// A temporary file in the store's temp area, removed on destruction.
class TempFile {
 public:
  explicit TempFile(const std::string& dir) {
    std::random_device rd;
    path_ = dir + "/convert." + std::to_string(::getpid()) + "." + std::to_string(rd()) + ".raw";
  }
  ~TempFile() { ::unlink(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct SourceInfo {
  std::string format;
  uint64_t virtual_size = 0;
};

Result<SourceInfo> Inspect(const std::string& path, const std::string& requested,
                           const std::atomic<bool>* cancel) {
  std::vector<std::string> argv = {"qemu-img", "info", "--output=json", "-U"};
  if (requested != "auto") {
    argv.push_back("-f");
    argv.push_back(requested);
  }
  argv.push_back("--");
  argv.push_back(path);
  ASSIGN_OR_RETURN(ProcessResult r, RunProcess(argv, cancel));
  if (r.exit_code != 0) {
    return Status::InvalidArgument(
        "'" + path + "' is not a readable " +
        (requested == "auto" ? std::string("disk image") : requested + " image") + ": " +
        FirstLine(r.err));
  }
  nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("format")) {
    return Status::IOError("qemu-img info gave unreadable output for '" + path + "'");
  }
  SourceInfo info;
  info.format = j["format"].get<std::string>();
  info.virtual_size = j.value("virtual-size", uint64_t{0});
  if (j.contains("backing-filename") || j.contains("full-backing-filename")) {
    return Status::PermissionDenied("refusing '" + path + "': it has a backing file (" +
                                    j.value("backing-filename", std::string("?")) +
                                    "); import a flattened image");
  }
  if (j.contains("format-specific")) {
    const auto& fs = j["format-specific"];
    const auto& data = fs.contains("data") ? fs["data"] : nlohmann::json::object();
    if (data.contains("data-file")) {
      return Status::PermissionDenied("refusing '" + path + "': it uses an external data file (" +
                                      data["data-file"].get<std::string>() + ")");
    }
    if (info.format == "vmdk") {
      std::string create_type = data.value("create-type", "");
      if (!VmdkCreateTypeAllowed(create_type)) {
        return Status::PermissionDenied("refusing '" + path + "': VMDK create type '" +
                                        create_type +
                                        "' may reference other files; only monolithicSparse "
                                        "and streamOptimized are accepted");
      }
    }
  }
  const auto& formats = SupportedFormats();
  if (std::find(formats.begin(), formats.end(), info.format) == formats.end()) {
    return Status::InvalidArgument("'" + path + "' is in format '" + info.format +
                                   "', which imgfs does not import (raw, qcow2, vmdk, vdi, vhdx)");
  }
  return info;
}

}  // namespace

const std::vector<std::string>& SupportedFormats() {
  static const std::vector<std::string> kFormats = {"raw", "qcow2", "vmdk", "vdi", "vhdx"};
  return kFormats;
}

namespace {

// Keeps up to `window` chunk puts in flight through ChunkStore::PutAsync, each
// with a buffer of its own (so memory is bounded by window * chunk size).
// Over a backend with native asynchronous puts (rados) the puts overlap the
// backend's latency; over one without (dir) PutAsync completes inline and
// this is a plain loop per thread. Every put's error is kept (the first one
// is returned by Finish); ids go to the manifest slot given with each put.
// Thread-safe.
class PutWindow {
 public:
  PutWindow(ChunkStore& store, size_t window, Manifest* m)
      : store_(store), manifest_(m), buffers_(window) {
    for (auto& b : buffers_) {
      b.resize(store.chunk_size());
      free_.push_back(&b);
    }
  }

  // A free buffer, waiting for one; nullptr once a put has failed.
  Bytes* Acquire() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    while (free_.empty() && error_.ok()) cv_.Wait(mu_);
    if (!error_.ok()) return nullptr;
    Bytes* b = free_.back();
    free_.pop_back();
    return b;
  }

  // Puts (*buf)[0, len) and stores its id in chunk slot `slot`; the buffer
  // comes back to the pool when the put completes. When `grow`, the slot is
  // appended to the manifest first (streams, whose size is unknown).
  void Put(Bytes* buf, size_t len, size_t slot, bool grow = false) EXCLUDES(mu_) {
    {
      MutexLock lock(mu_);
      if (grow) manifest_->chunks.resize(slot + 1, ChunkId::Hole());
      ++in_flight_;
    }
    store_.PutAsync(ByteView(buf->data(), len),
                    [this, buf, len, slot](Result<ChunkStore::PutResult> r) {
                      MutexLock lock(mu_);
                      if (r.ok()) {
                        manifest_->chunks[slot] = r->id;
                        if (r->stored) new_bytes_ += len;
                        done_bytes_ += len;
                      } else if (error_.ok()) {
                        error_ = r.status();
                      }
                      free_.push_back(buf);
                      --in_flight_;
                      cv_.NotifyAll();
                    });
  }

  // Returns a buffer not handed to Put.
  void Release(Bytes* buf) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    free_.push_back(buf);
    cv_.NotifyAll();
  }

  void Fail(Status s) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    if (error_.ok()) error_ = std::move(s);
    cv_.NotifyAll();
  }

  bool failed() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return !error_.ok();
  }

  uint64_t done_bytes() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return done_bytes_;
  }

  // Waits for every put started; the first error, if any.
  Status Finish(uint64_t* new_bytes) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    while (in_flight_ != 0) cv_.Wait(mu_);
    *new_bytes = new_bytes_;
    return error_;
  }

 private:
  ChunkStore& store_;
  Manifest* manifest_;
  std::vector<Bytes> buffers_;
  Mutex mu_;
  CondVar cv_;
  std::vector<Bytes*> free_ GUARDED_BY(mu_);
  size_t in_flight_ GUARDED_BY(mu_) = 0;
  uint64_t new_bytes_ GUARDED_BY(mu_) = 0;
  uint64_t done_bytes_ GUARDED_BY(mu_) = 0;
  Status error_ GUARDED_BY(mu_);
};

// Puts in flight at once: 32 chunks, at most 64 MiB of buffers, at least one
// per thread; IMGFS_IMPORT_WINDOW (1 to 256) to measure others.
size_t PutWindowSize(uint64_t chunk_size, unsigned threads) {
  if (const char* v = std::getenv("IMGFS_IMPORT_WINDOW"); v != nullptr && *v != '\0') {
    return std::max<size_t>(threads, static_cast<size_t>(std::clamp(std::atoi(v), 1, 256)));
  }
  return std::max<size_t>(threads, std::clamp<uint64_t>((64u << 20) / chunk_size, 1, 32));
}

// Refuses, before anything is written, an import whose new chunks would not
// fit in the backend's free space (NoSpace). When the data fits outright this
// costs one Space() call; only when it might not are the chunks read and
// hashed to count those the store lacks (a re-import into a full store still
// works). Backends that do not know their space (capacity 0, or Space()
// fails) pass.
Status CheckSpace(ChunkStore& chunks, int fd, const std::vector<uint64_t>& todo, uint64_t size,
                  uint64_t todo_bytes, const ImportOptions& options) {
  auto free_space = chunks.backend().Space();
  if (!free_space.ok()) {
    // Not knowing the free space is no reason to refuse: running out is
    // still an error (and gc removes what a failed import left).
    spdlog::warn("cannot check the free space of {}: {}", chunks.backend().Describe(),
                 free_space.status().ToString());
    return Status::OK();
  }
  const SpaceInfo& space = *free_space;
  if (space.capacity_bytes == 0) return Status::OK();
  // Per object: file system blocks and inodes, directory entries; plus the
  // manifest and records.
  auto needed = [](uint64_t bytes, uint64_t objects) {
    return bytes + objects * 4096 + (1u << 20);
  };
  if (needed(todo_bytes, todo.size()) <= space.available_bytes) return Status::OK();
  const uint64_t cs = chunks.chunk_size();
  Bytes buf(cs);
  uint64_t new_bytes = 0, new_chunks = 0;
  for (uint64_t i : todo) {
    if (Cancelled(options)) return Status::IOError("import interrupted");
    uint64_t off = i * cs;
    size_t len = static_cast<size_t>(std::min<uint64_t>(cs, size - off));
    ASSIGN_OR_RETURN(size_t n, ReadFull(fd, MutableByteView(buf.data(), len), off, "the source"));
    if (n < len) std::fill(buf.begin() + n, buf.begin() + len, 0);
    ByteView chunk(buf.data(), len);
    if (IsAllZero(chunk)) continue;
    ASSIGN_OR_RETURN(bool exists, chunks.Exists(Hash128(chunk)));
    if (!exists) {
      new_bytes += len;
      ++new_chunks;
    }
  }
  if (needed(new_bytes, new_chunks) <= space.available_bytes) return Status::OK();
  return Status::NoSpace("not enough space in the store: the image needs " +
                         FormatSizeHuman(new_bytes) + " of new chunks, " +
                         FormatSizeHuman(space.available_bytes) + " are free in " +
                         chunks.backend().Describe());
}

// ImportRawFd with the GC lock already held shared.
Result<ImportResult> ImportRawFdLocked(Store& store, int fd, bool seekable, uint64_t size,
                                       const ImportOptions& options, const Store::GcLock* gc_lock) {
  ChunkStore& chunks = store.chunks();
  const uint64_t cs = chunks.chunk_size();
  Manifest m;
  m.chunk_size = static_cast<uint32_t>(cs);
  ImportResult result;
  const unsigned threads = seekable ? ImportThreads() : 1;
  PutWindow window(chunks, PutWindowSize(cs, threads), &m);

  if (seekable) {
    RETURN_IF_ERROR(CheckImageSize(size, m.chunk_size));
    m.size = size;
    m.chunks.assign((size + cs - 1) / cs, ChunkId::Hole());
    // The chunks that hold data; chunks wholly inside holes stay holes.
    std::vector<uint64_t> todo;
    uint64_t pos = 0;
    while (pos < size) {
      off_t data = ::lseek(fd, static_cast<off_t>(pos), SEEK_DATA);
      if (data < 0) {
        if (errno == ENXIO) break;
        return Status::FromErrno(errno, "seek in source");
      }
      off_t hole = ::lseek(fd, data, SEEK_HOLE);
      uint64_t end = hole < 0 ? size : std::min<uint64_t>(size, static_cast<uint64_t>(hole));
      if (static_cast<uint64_t>(data) >= size) break;
      uint64_t first = std::max<uint64_t>(static_cast<uint64_t>(data) / cs, pos / cs);
      uint64_t last = (end - 1) / cs;
      for (uint64_t i = first; i <= last; ++i) todo.push_back(i);
      pos = (last + 1) * cs;
    }
    uint64_t todo_bytes = 0;
    for (uint64_t i : todo) todo_bytes += std::min<uint64_t>(cs, size - i * cs);
    RETURN_IF_ERROR(CheckSpace(chunks, fd, todo, size, todo_bytes, options));
    // Reading and hashing run on a few threads (PutAsync hashes on the
    // calling thread); each chunk's id goes to its own slot of the manifest.
    std::atomic<size_t> next{0};
    auto work = [&](bool report) {
      while (Bytes* buf = window.Acquire()) {
        size_t k = next.fetch_add(1);
        if (k >= todo.size()) {
          window.Release(buf);
          break;
        }
        if (Cancelled(options)) {
          window.Release(buf);
          return window.Fail(Status::IOError("import interrupted"));
        }
        if (Status held = gc_lock->Check(); !held.ok()) {
          window.Release(buf);
          return window.Fail(held.WithContext("import stopped"));
        }
        uint64_t off = todo[k] * cs;
        size_t len = static_cast<size_t>(std::min<uint64_t>(cs, size - off));
        auto n = ReadFull(fd, MutableByteView(buf->data(), len), off, "the source");
        if (!n.ok()) {
          window.Release(buf);
          return window.Fail(n.status().WithContext("read source"));
        }
        if (*n < len) std::fill(buf->begin() + *n, buf->begin() + len, 0);
        window.Put(buf, len, todo[k]);
        if (report && options.progress) options.progress(window.done_bytes(), todo_bytes);
      }
    };
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads && t < todo.size(); ++t) pool.emplace_back(work, false);
    work(true);
    for (auto& t : pool) t.join();
  } else {
    size_t slot = 0;
    while (Bytes* buf = window.Acquire()) {
      if (Cancelled(options)) {
        window.Release(buf);
        window.Fail(Status::IOError("import interrupted"));
        break;
      }
      if (Status held = gc_lock->Check(); !held.ok()) {
        window.Release(buf);
        window.Fail(held.WithContext("import stopped"));
        break;
      }
      auto n = ReadFull(fd, MutableByteView(buf->data(), cs), std::nullopt, "the source");
      if (!n.ok()) {
        window.Release(buf);
        window.Fail(n.status().WithContext("read source"));
        break;
      }
      if (*n == 0) {
        window.Release(buf);
        break;
      }
      if (Status big = CheckImageSize(m.size + *n, m.chunk_size); !big.ok()) {
        window.Release(buf);
        window.Fail(big.WithContext("the input stream is longer"));
        break;
      }
      m.size += *n;
      window.Put(buf, *n, slot++, /*grow=*/true);
      if (options.progress) options.progress(m.size, 0);
      if (*n < cs) break;
    }
  }
  // Every put has completed (or failed) before anything refers to the chunks.
  RETURN_IF_ERROR(window.Finish(&result.new_bytes));
  if (!seekable && m.size == 0) return Status::InvalidArgument("the input stream is empty");
  if (options.progress) options.progress(m.size, m.size);
  // PutManifest syncs the chunks before the manifest that references them.
  // The GC lock must still be held when the image is published: a gc that
  // ran meanwhile (our lease lost) may have swept chunks we found present.
  RETURN_IF_ERROR(gc_lock->Check().WithContext("import stopped"));
  ASSIGN_OR_RETURN(ImageId id, PutManifest(store.backend(), m));
  RETURN_IF_ERROR(gc_lock->Check().WithContext("import stopped"));
  RETURN_IF_ERROR(store.PublishImage(m, id, options.names, options.force_names));
  result.id = id;
  result.size = m.size;
  result.stored_bytes = m.DataBytes();
  return result;
}

}  // namespace

Result<ImportResult> ImportRawFd(Store& store, int fd, bool seekable, uint64_t size,
                                 const ImportOptions& options) {
  ASSIGN_OR_RETURN(auto gc_lock, store.LockShared());
  return ImportRawFdLocked(store, fd, seekable, size, options, gc_lock.get());
}

Result<ImportResult> ImportImage(Store& store, const std::string& source,
                                 const ImportOptions& options) {
  for (const auto& n : options.names) {
    RETURN_IF_ERROR(ValidateImageName(n));
    if (n.size() == 32 && IsHexString(n)) {
      return Status::InvalidArgument("invalid image name '" + n +
                                     "': 32 hex digits would read as an image id");
    }
  }
  const auto& formats = SupportedFormats();
  if (options.format != "auto" &&
      std::find(formats.begin(), formats.end(), options.format) == formats.end()) {
    return Status::InvalidArgument("unknown format '" + options.format +
                                   "': use auto, raw, qcow2, vmdk, vdi or vhdx");
  }
  // Held until the image is published, so gc never sweeps our chunks.
  ASSIGN_OR_RETURN(auto gc_lock, store.LockShared());

  if (source == "-") {
    if (options.format != "auto" && options.format != "raw") {
      return Status::InvalidArgument("stdin takes a raw stream; convert '" + options.format +
                                     "' images from a file");
    }
    auto r = ImportRawFdLocked(store, STDIN_FILENO, false, 0, options, gc_lock.get());
    if (r.ok()) r->format = "raw";
    return r;
  }

  struct stat st;
  if (::stat(source.c_str(), &st) != 0) {
    return Status::FromErrno(errno, "cannot read '" + source + "'");
  }
  if (S_ISDIR(st.st_mode)) return Status::InvalidArgument("'" + source + "' is a directory");
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    return Status::InvalidArgument("'" + source + "' is not a regular file");
  }
  if (S_ISREG(st.st_mode) && st.st_size == 0) {
    return Status::InvalidArgument("'" + source + "' is empty");
  }
  UniqueFd probe(::open(source.c_str(), O_RDONLY | O_CLOEXEC));
  if (!probe.valid()) return Status::FromErrno(errno, "cannot open '" + source + "'");

  ASSIGN_OR_RETURN(SourceInfo info, Inspect(source, options.format, options.cancel));
  RETURN_IF_ERROR(
      CheckImageSize(info.format == "raw" ? static_cast<uint64_t>(st.st_size) : info.virtual_size,
                     static_cast<uint32_t>(store.chunks().chunk_size())));
  if (info.format == "raw") {
    uint64_t size = static_cast<uint64_t>(st.st_size);
    auto r = ImportRawFdLocked(store, probe.get(), true, size, options, gc_lock.get());
    if (r.ok()) r->format = "raw";
    return r;
  }

  // A truncated or damaged container can convert "successfully" with zeros
  // in place of the missing data; qemu-img check catches that. Exit 3 means
  // leaked clusters only (harmless), 63 that the format has no checker.
  ASSIGN_OR_RETURN(
      ProcessResult check,
      RunProcess({"qemu-img", "check", "-U", "-f", info.format, "--", source}, options.cancel));
  if (check.exit_code == 1 || check.exit_code == 2) {
    std::string why = FirstLine(check.err);
    if (why.empty()) why = FirstLine(check.out);
    return Status::InvalidArgument("'" + source + "' is a damaged or truncated " + info.format +
                                   " image: " + why);
  }

  TempFile tmp(store.tmp_dir());
  spdlog::info("converting {} ({}) to raw in {}", source, info.format, tmp.path());
  ASSIGN_OR_RETURN(ProcessResult conv,
                   RunProcess({"qemu-img", "convert", "-U", "-f", info.format, "-O", "raw", "-S",
                               "4k", "--", source, tmp.path()},
                              options.cancel));
  if (conv.exit_code != 0) {
    std::string why = FirstLine(conv.err);
    if (why.find("No space left") != std::string::npos) {
      return Status::NoSpace("converting '" + source + "' failed: " + why);
    }
    return Status::InvalidArgument("cannot convert '" + source + "' (" + info.format + "): " + why);
  }
  UniqueFd fd(::open(tmp.path().c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(errno, "open " + tmp.path());
  struct stat tst;
  if (::fstat(fd.get(), &tst) != 0) return Status::FromErrno(errno, "stat " + tmp.path());
  auto r = ImportRawFdLocked(store, fd.get(), true, static_cast<uint64_t>(tst.st_size), options,
                             gc_lock.get());
  if (r.ok()) r->format = info.format;
  return r;
}

}  // namespace imgfs
