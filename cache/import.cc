#include "cache/import.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <nlohmann/json.hpp>
#include <algorithm>
#include <mutex>
#include <random>
#include <thread>

#include "blockstore/file_util.h"
#include "blockstore/names.h"
#include "cache/process.h"

namespace imgfs {
namespace {

// VMDK subformats that keep all their data in the one file (nova's default
// list); others (monolithicFlat, twoGbMaxExtent..., vmfs) name other files.
bool VmdkCreateTypeAllowed(const std::string& t) {
  return t == "monolithicSparse" || t == "streamOptimized";
}

bool Cancelled(const ImportOptions& o) { return o.cancel && o.cancel->load(); }

// Reads exactly buf.size() bytes at `offset` unless EOF comes first; returns
// the number read.
Result<size_t> PreadFull(int fd, uint64_t offset, MutableByteView buf) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::pread(fd, buf.data() + done, buf.size() - done,
                        static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read");
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

Result<size_t> ReadFull(int fd, MutableByteView buf) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = ::read(fd, buf.data() + done, buf.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read");
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

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
    return Status::InvalidArgument("'" + path + "' is not a readable " +
                                   (requested == "auto" ? std::string("disk image")
                                                        : requested + " image") +
                                   ": " + FirstLine(r.err));
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

Result<ImportResult> ImportRawFd(Store& store, int fd, bool seekable, uint64_t size,
                                 const ImportOptions& options) {
  ASSIGN_OR_RETURN(auto gc_lock, store.LockShared());
  ChunkStore& chunks = store.chunks();
  const uint64_t cs = chunks.chunk_size();
  Manifest m;
  m.chunk_size = static_cast<uint32_t>(cs);
  ImportResult result;
  Bytes buf(cs);

  auto put = [&](size_t len) -> Status {
    ASSIGN_OR_RETURN(ChunkStore::PutResult pr, chunks.Put(ByteView(buf.data(), len)));
    if (pr.stored) result.new_bytes += len;
    m.chunks.push_back(pr.id);
    return Status::OK();
  };

  if (seekable) {
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
    // Reading, hashing and storing run on a few threads; each chunk's id goes
    // to its own slot of the manifest.
    const unsigned threads = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
    std::atomic<size_t> next{0};
    std::atomic<uint64_t> new_bytes{0}, done_bytes{0};
    std::atomic<bool> failed{false};
    std::mutex err_mu;
    Status first_error;
    auto fail = [&](Status st) {
      std::lock_guard lock(err_mu);
      if (first_error.ok()) first_error = std::move(st);
      failed.store(true);
    };
    auto work = [&](bool report) {
      Bytes chunk(cs);
      while (!failed.load()) {
        size_t k = next.fetch_add(1);
        if (k >= todo.size()) break;
        if (Cancelled(options)) return fail(Status::IOError("import interrupted"));
        uint64_t off = todo[k] * cs;
        size_t len = static_cast<size_t>(std::min<uint64_t>(cs, size - off));
        auto n = PreadFull(fd, off, MutableByteView(chunk.data(), len));
        if (!n.ok()) return fail(n.status().WithContext("read source"));
        if (*n < len) std::fill(chunk.begin() + *n, chunk.begin() + len, 0);
        auto pr = chunks.Put(ByteView(chunk.data(), len));
        if (!pr.ok()) return fail(pr.status());
        m.chunks[todo[k]] = pr->id;
        if (pr->stored) new_bytes += len;
        uint64_t done = done_bytes += len;
        if (report && options.progress) options.progress(done, size);
      }
    };
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads && t < todo.size(); ++t) pool.emplace_back(work, false);
    work(true);
    for (auto& t : pool) t.join();
    if (failed.load()) return first_error;
    result.new_bytes = new_bytes.load();
  } else {
    for (;;) {
      if (Cancelled(options)) return Status::IOError("import interrupted");
      ASSIGN_OR_RETURN(size_t n, ReadFull(fd, MutableByteView(buf.data(), cs)));
      if (n == 0) break;
      RETURN_IF_ERROR(put(n));
      m.size += n;
      if (options.progress) options.progress(m.size, 0);
      if (n < cs) break;
    }
    if (m.size == 0) return Status::InvalidArgument("the input stream is empty");
  }
  if (options.progress) options.progress(m.size, m.size);
  // PutManifest syncs the chunks before the manifest that references them.
  ASSIGN_OR_RETURN(ImageId id, PutManifest(store.backend(), m));
  RETURN_IF_ERROR(store.PublishImage(m, id, options.names, options.force_names));
  result.id = id;
  result.size = m.size;
  result.stored_bytes = m.DataBytes();
  return result;
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
    auto r = ImportRawFd(store, STDIN_FILENO, false, 0, options);
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
  if (info.format == "raw") {
    uint64_t size = static_cast<uint64_t>(st.st_size);
    auto r = ImportRawFd(store, probe.get(), true, size, options);
    if (r.ok()) r->format = "raw";
    return r;
  }

  // A truncated or damaged container can convert "successfully" with zeros
  // in place of the missing data; qemu-img check catches that. Exit 3 means
  // leaked clusters only (harmless), 63 that the format has no checker.
  ASSIGN_OR_RETURN(ProcessResult check,
                   RunProcess({"qemu-img", "check", "-U", "-f", info.format, "--", source},
                              options.cancel));
  if (check.exit_code == 1 || check.exit_code == 2) {
    std::string why = FirstLine(check.err);
    if (why.empty()) why = FirstLine(check.out);
    return Status::InvalidArgument("'" + source + "' is a damaged or truncated " + info.format +
                                   " image: " + why);
  }

  TempFile tmp(store.tmp_dir());
  spdlog::info("converting {} ({}) to raw in {}", source, info.format, tmp.path());
  ASSIGN_OR_RETURN(ProcessResult conv,
                   RunProcess({"qemu-img", "convert", "-U", "-f", info.format, "-O", "raw",
                               "-S", "4k", "--", source, tmp.path()},
                              options.cancel));
  if (conv.exit_code != 0) {
    std::string why = FirstLine(conv.err);
    if (why.find("No space left") != std::string::npos) {
      return Status::NoSpace("converting '" + source + "' failed: " + why);
    }
    return Status::InvalidArgument("cannot convert '" + source + "' (" + info.format +
                                   "): " + why);
  }
  UniqueFd fd(::open(tmp.path().c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(errno, "open " + tmp.path());
  struct stat tst;
  if (::fstat(fd.get(), &tst) != 0) return Status::FromErrno(errno, "stat " + tmp.path());
  auto r = ImportRawFd(store, fd.get(), true, static_cast<uint64_t>(tst.st_size), options);
  if (r.ok()) r->format = info.format;
  return r;
}

}  // namespace imgfs
