#include "blockstore/fault_file_io.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <filesystem>

#include "blockstore/file_util.h"

namespace imgfs {
namespace {

constexpr size_t kSector = 512;

std::string Normal(const std::string& path) {
  std::string out;
  for (char c : path) {
    if (c == '/' && !out.empty() && out.back() == '/') continue;
    out += c;
  }
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  return out;
}

std::string ReadAllFd(int fd) {
  std::string out;
  struct stat st;
  if (::fstat(fd, &st) != 0) return out;
  out.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

// The whole file open as `fd`, which may be open for writing only: read
// through a descriptor of its own.
std::string ReadAllOf(int fd) {
  char proc[32];
  std::snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  int rfd = ::open(proc, O_RDONLY | O_CLOEXEC);
  if (rfd < 0) return ReadAllFd(fd);
  std::string out = ReadAllFd(rfd);
  ::close(rfd);
  return out;
}

std::string ReadAllPath(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string out = ReadAllFd(fd);
  ::close(fd);
  return out;
}

void WriteAll(const std::string& path, const std::string& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

}  // namespace

FaultInjectionFileIO::FaultInjectionFileIO(std::string root, std::string volatile_dir)
    : root_(Normal(root)), volatile_dir_(Normal(volatile_dir)), cut_dir_(root_ + ".cut") {
  struct stat st {};
  ::stat(root_.c_str(), &st);
  dev_ = st.st_dev;
  MutexLock lock(mu_);
  Scan();
}

FaultInjectionFileIO::~FaultInjectionFileIO() {
  std::error_code ec;
  std::filesystem::remove_all(cut_dir_, ec);
}

void FaultInjectionFileIO::Scan() {
  nodes_.clear();
  by_ino_.clear();
  struct stat st {};
  ::lstat(root_.c_str(), &st);
  root_id_ = NewNode(st.st_ino, true);
  ScanDir(root_, root_id_);
}

void FaultInjectionFileIO::ScanDir(const std::string& path, uint64_t id) {
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return;
  std::vector<std::string> names;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(d);
  for (const auto& name : names) {
    std::string child = path + "/" + name;
    struct stat st;
    if (::lstat(child.c_str(), &st) != 0) continue;
    if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) continue;
    uint64_t c;
    auto it = by_ino_.find(st.st_ino);
    if (it != by_ino_.end()) {
      c = it->second;  // a second link
    } else {
      c = NewNode(st.st_ino, S_ISDIR(st.st_mode));
      if (S_ISDIR(st.st_mode)) {
        ScanDir(child, c);
      } else {
        nodes_[c].durable = ReadAllPath(child);
      }
    }
    nodes_[id].live[name] = c;
    nodes_[id].durable_entries[name] = c;
  }
}

uint64_t FaultInjectionFileIO::NewNode(ino_t ino, bool dir) {
  uint64_t id = next_id_++;
  nodes_[id].dir = dir;
  by_ino_[ino] = id;
  return id;
}

uint64_t FaultInjectionFileIO::NodeFor(ino_t ino, bool dir) {
  auto it = by_ino_.find(ino);
  if (it != by_ino_.end()) return it->second;
  return NewNode(ino, dir);
}

void FaultInjectionFileIO::Kill(ino_t ino) {
  auto it = by_ino_.find(ino);
  if (it == by_ino_.end()) return;
  nodes_[it->second].alive = false;
  by_ino_.erase(it);
}

void FaultInjectionFileIO::Apply(uint64_t dir, Change change) {
  Node& n = nodes_[dir];
  for (const auto& [name, id] : change) {
    if (id == 0) {
      n.live.erase(name);
    } else {
      n.live[name] = id;
    }
  }
  n.pending.push_back(std::move(change));
}

void FaultInjectionFileIO::Commit(uint64_t dir) {
  Node& n = nodes_[dir];
  n.durable_entries = n.live;
  n.pending.clear();
}

bool FaultInjectionFileIO::Parent(const std::string& path_in, uint64_t* parent, std::string* name) {
  std::string path = Normal(path_in);
  if (path.size() <= root_.size() || path.compare(0, root_.size(), root_) != 0 ||
      path[root_.size()] != '/') {
    return false;
  }
  uint64_t id = root_id_;
  size_t pos = root_.size() + 1;
  for (;;) {
    size_t slash = path.find('/', pos);
    if (slash == std::string::npos) {
      *parent = id;
      *name = path.substr(pos);
      return true;
    }
    std::string comp = path.substr(pos, slash - pos);
    const Node& n = nodes_[id];
    auto it = n.live.find(comp);
    if (it == n.live.end() || !nodes_[it->second].dir) return false;
    id = it->second;
    pos = slash + 1;
  }
}

bool FaultInjectionFileIO::Enter() {
  if (power_off_) return false;
  ++calls_;
  if (cut_at_ != 0 && calls_ == cut_at_) {
    CutLocked(cut_tear_, cut_seed_);
    return false;
  }
  return true;
}

void FaultInjectionFileIO::CutBeforeCall(uint64_t n, Tear tear, uint64_t seed) {
  MutexLock lock(mu_);
  cut_at_ = n;
  cut_tear_ = tear;
  cut_seed_ = seed;
}

void FaultInjectionFileIO::CutNow(Tear tear, uint64_t seed) {
  MutexLock lock(mu_);
  if (!power_off_) CutLocked(tear, seed);
}

bool FaultInjectionFileIO::power_off() const {
  MutexLock lock(mu_);
  return power_off_;
}

uint64_t FaultInjectionFileIO::calls() const {
  MutexLock lock(mu_);
  return calls_;
}

std::vector<uint64_t> FaultInjectionFileIO::sync_calls() const {
  MutexLock lock(mu_);
  return sync_calls_;
}

void FaultInjectionFileIO::LivePaths(uint64_t id, const std::string& path,
                                     std::unordered_map<uint64_t, std::string>* out) {
  out->emplace(id, path);
  for (const auto& [name, child] : nodes_[id].live) {
    if (out->count(child)) continue;
    if (nodes_[child].dir) {
      LivePaths(child, path + "/" + name, out);
    } else {
      out->emplace(child, path + "/" + name);
    }
  }
}

void FaultInjectionFileIO::CutLocked(Tear tear, uint64_t seed) {
  power_off_ = true;
  std::mt19937_64 rng(seed);
  std::unordered_map<uint64_t, std::string> paths;
  LivePaths(root_id_, root_, &paths);
  std::error_code ec;
  std::filesystem::remove_all(cut_dir_, ec);
  Build(root_id_, cut_dir_, tear, rng, paths, 0);
}

void FaultInjectionFileIO::Build(uint64_t id, const std::string& out, Tear tear,
                                 std::mt19937_64& rng,
                                 const std::unordered_map<uint64_t, std::string>& paths,
                                 int depth) {
  ::mkdir(out.c_str(), 0755);
  if (depth > 64) return;
  const Node& n = nodes_[id];
  std::map<std::string, uint64_t> entries = n.durable_entries;
  size_t keep = 0;
  switch (tear) {
    case Tear::kDropAll:
      keep = 0;
      break;
    case Tear::kKeepAll:
      keep = n.pending.size();
      break;
    case Tear::kRandom:
      keep = static_cast<size_t>(rng() % (n.pending.size() + 1));
      break;
  }
  for (size_t i = 0; i < keep; ++i) {
    for (const auto& [name, child] : n.pending[i]) {
      if (child == 0) {
        entries.erase(name);
      } else {
        entries[name] = child;
      }
    }
  }
  for (const auto& [name, child] : entries) {
    std::string path = out + "/" + name;
    if (nodes_[child].dir) {
      Build(child, path, tear, rng, paths, depth + 1);
    } else {
      WriteAll(path, Torn(child, tear, rng, paths));
    }
  }
}

std::string FaultInjectionFileIO::Torn(uint64_t id, Tear tear, std::mt19937_64& rng,
                                       const std::unordered_map<uint64_t, std::string>& paths) {
  const Node& n = nodes_[id];
  const std::string& d = n.durable;
  auto p = paths.find(id);
  if (!n.alive || p == paths.end() || tear == Tear::kDropAll) return d;
  std::string l = ReadAllPath(p->second);
  if (tear == Tear::kKeepAll || l == d) return tear == Tear::kKeepAll ? l : d;
  // 0: nothing unsynced survives; 1: all of it; 2: a random subset of the
  // changed sectors; 3: a random prefix of them (in offset order).
  int how = static_cast<int>(rng() % 4);
  if (how == 0) return d;
  if (how == 1) return l;
  std::string out = d;
  out.resize(rng() % 2 ? d.size() : l.size(), '\0');
  std::vector<size_t> changed;
  for (size_t s = 0; s < out.size(); s += kSector) {
    size_t len = std::min(kSector, out.size() - s);
    std::string_view now = s < l.size() ? std::string_view(l).substr(s, len) : std::string_view();
    std::string padded(now);
    padded.resize(len, '\0');
    if (padded != std::string_view(out).substr(s, len)) changed.push_back(s);
  }
  size_t prefix = changed.empty() ? 0 : static_cast<size_t>(rng() % (changed.size() + 1));
  for (size_t i = 0; i < changed.size(); ++i) {
    bool keep = how == 2 ? (rng() & 1) != 0 : i < prefix;
    if (!keep) continue;
    size_t s = changed[i];
    size_t len = std::min(kSector, out.size() - s);
    for (size_t k = 0; k < len; ++k) out[s + k] = s + k < l.size() ? l[s + k] : '\0';
  }
  return out;
}

Status FaultInjectionFileIO::Restore() {
  MutexLock lock(mu_);
  if (!power_off_) return Status::InvalidArgument("restore: the power is on");
  std::error_code ec;
  std::filesystem::remove_all(root_, ec);
  if (ec) return Status::FromErrno(ec.value(), "remove " + root_);
  if (::rename(cut_dir_.c_str(), root_.c_str()) != 0) {
    return Status::FromErrno(errno, "rename " + cut_dir_);
  }
  for (const auto& path : volatile_files_) ::unlink(path.c_str());
  volatile_files_.clear();
  Scan();
  calls_ = 0;
  sync_calls_.clear();
  cut_at_ = 0;
  power_off_ = false;
  return Status::OK();
}

int FaultInjectionFileIO::Open(const std::string& path, int flags, mode_t mode) {
  MutexLock lock(mu_);
  if (!Enter()) return -EIO;
  bool tmpfile = (flags & O_TMPFILE) == O_TMPFILE;
  bool creat = (flags & O_CREAT) != 0;
  struct stat st;
  bool existed = creat && ::lstat(path.c_str(), &st) == 0;
  int fd = FileIO::Posix().Open(path, flags, mode);
  if (fd < 0) return fd;
  std::string p = Normal(path);
  if (p.compare(0, volatile_dir_.size() + 1, volatile_dir_ + "/") == 0) {
    volatile_files_.insert(p);
    return fd;
  }
  if (tmpfile) {
    if (::fstat(fd, &st) == 0) NewNode(st.st_ino, false);
    return fd;
  }
  uint64_t parent;
  std::string name;
  if (creat && !existed && Parent(path, &parent, &name) && ::fstat(fd, &st) == 0) {
    Apply(parent, {{name, NewNode(st.st_ino, false)}});
  }
  return fd;
}

int FaultInjectionFileIO::LinkFd(int fd, const std::string& dest) {
  MutexLock lock(mu_);
  if (!Enter()) return EIO;
  int err = FileIO::Posix().LinkFd(fd, dest);
  uint64_t parent;
  std::string name;
  struct stat st;
  if (err == 0 && Parent(dest, &parent, &name) && ::fstat(fd, &st) == 0) {
    Apply(parent, {{name, NodeFor(st.st_ino, false)}});
  }
  return err;
}

int FaultInjectionFileIO::Link(const std::string& from, const std::string& to) {
  MutexLock lock(mu_);
  if (!Enter()) return EIO;
  int err = FileIO::Posix().Link(from, to);
  uint64_t parent;
  std::string name;
  struct stat st;
  if (err == 0 && Parent(to, &parent, &name) && ::lstat(to.c_str(), &st) == 0) {
    Apply(parent, {{name, NodeFor(st.st_ino, false)}});
  }
  return err;
}

int FaultInjectionFileIO::Rename(const std::string& from, const std::string& to, unsigned flags) {
  MutexLock lock(mu_);
  if (!Enter()) return EIO;
  struct stat fst, tst;
  bool have_from = ::lstat(from.c_str(), &fst) == 0;
  bool have_to = ::lstat(to.c_str(), &tst) == 0;
  int err = FileIO::Posix().Rename(from, to, flags);
  if (err != 0 || !have_from) return err;
  uint64_t fparent, tparent;
  std::string fname, tname;
  bool fin = Parent(from, &fparent, &fname);
  bool tin = Parent(to, &tparent, &tname);
  if (have_to && tst.st_ino != fst.st_ino && (S_ISDIR(tst.st_mode) || tst.st_nlink == 1)) {
    Kill(tst.st_ino);
  }
  uint64_t id = NodeFor(fst.st_ino, S_ISDIR(fst.st_mode));
  if (fin && tin && fparent == tparent) {
    Apply(fparent, {{fname, 0}, {tname, id}});
  } else {
    if (fin) Apply(fparent, {{fname, 0}});
    if (tin) Apply(tparent, {{tname, id}});
  }
  return 0;
}

int FaultInjectionFileIO::Unlink(const std::string& path) {
  MutexLock lock(mu_);
  if (!Enter()) return EIO;
  struct stat st;
  bool have = ::lstat(path.c_str(), &st) == 0;
  int err = FileIO::Posix().Unlink(path);
  if (err != 0) return err;
  volatile_files_.erase(Normal(path));
  uint64_t parent;
  std::string name;
  if (Parent(path, &parent, &name)) Apply(parent, {{name, 0}});
  if (have && st.st_nlink == 1) Kill(st.st_ino);
  return 0;
}

int FaultInjectionFileIO::Mkdir(const std::string& path, mode_t mode) {
  MutexLock lock(mu_);
  if (!Enter()) return EIO;
  int err = FileIO::Posix().Mkdir(path, mode);
  uint64_t parent;
  std::string name;
  struct stat st;
  if (err == 0 && Parent(path, &parent, &name) && ::lstat(path.c_str(), &st) == 0) {
    Apply(parent, {{name, NewNode(st.st_ino, true)}});
  }
  return err;
}

int FaultInjectionFileIO::Rmdir(const std::string& path) {
  MutexLock lock(mu_);
  if (!Enter()) return EIO;
  struct stat st;
  bool have = ::lstat(path.c_str(), &st) == 0;
  int err = FileIO::Posix().Rmdir(path);
  if (err != 0) return err;
  uint64_t parent;
  std::string name;
  if (Parent(path, &parent, &name)) Apply(parent, {{name, 0}});
  if (have) Kill(st.st_ino);
  return 0;
}

int FaultInjectionFileIO::SyncFd(int fd) {
  MutexLock lock(mu_);
  if (!Enter()) return EIO;
  sync_calls_.push_back(calls_);
  // The model says what is durable: a real sync would only cost time.
  struct stat st;
  if (::fcntl(fd, F_GETFD) < 0) return errno;
  if (::fstat(fd, &st) != 0 || st.st_dev != dev_) return 0;
  if (S_ISDIR(st.st_mode)) {
    auto it = by_ino_.find(st.st_ino);
    if (it != by_ino_.end()) Commit(it->second);
  } else if (S_ISREG(st.st_mode)) {
    nodes_[NodeFor(st.st_ino, false)].durable = ReadAllOf(fd);
  }
  return 0;
}

int FaultInjectionFileIO::Fsync(int fd) { return SyncFd(fd); }

int FaultInjectionFileIO::Fdatasync(int fd) { return SyncFd(fd); }

int FaultInjectionFileIO::Syncfs(int fd) {
  MutexLock lock(mu_);
  if (!Enter()) return EIO;
  sync_calls_.push_back(calls_);
  if (::fcntl(fd, F_GETFD) < 0) return errno;
  std::unordered_map<uint64_t, std::string> paths;
  LivePaths(root_id_, root_, &paths);
  for (const auto& [id, path] : paths) {
    Node& n = nodes_[id];
    if (n.dir) {
      Commit(id);
    } else {
      n.durable = ReadAllPath(path);
    }
  }
  return 0;
}

}  // namespace imgfs
