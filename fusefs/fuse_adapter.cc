#define FUSE_USE_VERSION 314
#include "fusefs/fuse_adapter.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <exception>
#include <list>
#include <new>
#include <thread>
#include <vector>

#include "blockstore/mutex.h"

namespace imgfs::fusefs {

namespace {

struct Ctx {
  FileSystem* fs;
  FuseConfig cfg;
  bool capture = false;  // Negotiate: keep what libfuse writes instead of sending it
  std::string captured;
  // Negotiate of a connection's first server: called with the INIT answer
  // when libfuse writes it; sends it (after recording it) and returns false
  // when it could not. libfuse wakes its io_uring threads right after this
  // write, and the kernel takes their registration only once it has the
  // answer.
  std::function<bool(const std::string&)> send_init;
};

// libfuse's own messages: collected while mounting (to put into the error a
// failed mount returns, as one line), logged through spdlog otherwise.
Mutex g_log_mu;
std::string* g_log_capture GUARDED_BY(g_log_mu) = nullptr;

void LogFromLibfuse(enum fuse_log_level level, const char* fmt, va_list ap) {
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  std::string msg(buf);
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  {
    MutexLock lock(g_log_mu);
    if (g_log_capture) {
      if (!g_log_capture->empty()) *g_log_capture += "; ";
      *g_log_capture += msg;
      return;
    }
  }
  if (level <= FUSE_LOG_ERR) {
    spdlog::error("libfuse: {}", msg);
  } else if (level <= FUSE_LOG_NOTICE) {
    spdlog::info("libfuse: {}", msg);
  } else {
    // libfuse's debug messages are its request trace, which it writes only
    // when asked to (-d): always shown, whatever imgfs's own log level.
    std::fprintf(stderr, "%s\n", msg.c_str());
  }
}

// Collects libfuse's messages for the lifetime of the object.
class LogCapture {
 public:
  LogCapture() {
    MutexLock lock(g_log_mu);
    g_log_capture = &text_;
  }
  ~LogCapture() {
    MutexLock lock(g_log_mu);
    g_log_capture = nullptr;
  }
  std::string Text() {
    MutexLock lock(g_log_mu);
    return text_.empty() ? std::string() : ": " + text_;
  }

 private:
  std::string text_;
};

#ifdef FUSE_CAP_OVER_IO_URING
constexpr bool kHasIoUring = true;
#else
constexpr bool kHasIoUring = false;
#endif
constexpr const char* kUringParam = "/sys/module/fuse/parameters/enable_uring";

// The kernel's setting (Y or N), or "unreadable".
std::string UringParam() {
  std::string param = "unreadable";
  if (FILE* f = std::fopen(kUringParam, "r")) {
    char v[8] = {};
    if (std::fgets(v, sizeof v, f)) param = std::string(v, strcspn(v, "\n"));
    std::fclose(f);
  }
  return param;
}

Ctx& CtxOf(fuse_req_t req) {
#ifdef FUSE_CAP_OVER_IO_URING
  // libfuse ends its io_uring threads with pthread_cancel, which would unwind
  // a handler at its next system call: they finish the request at hand
  // instead, and leave when they see the session end.
  if (fuse_req_is_uring(req)) {
    thread_local bool uncancellable = [] {
      pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, nullptr);
      return true;
    }();
    (void)uncancellable;
  }
#endif
  return *static_cast<Ctx*>(fuse_req_userdata(req));
}
FileSystem& Fs(fuse_req_t req) { return *CtxOf(req).fs; }

// Replies to one request, at most once; Handle() replies EIO if the body did not.
// The errno a failed operation replies with; failures that mean lost or
// unavailable data are logged as errors, the rest (ENOENT, EBUSY...) at debug.
int ReplyErrno(const char* op, const Status& st) {
  int err = st.ToErrno();
  if (err == EIO || err == ENOMEM || err == ENOSPC) {
    spdlog::error("{}: {}", op, st.ToString());
  } else {
    spdlog::debug("{}: {}", op, st.ToString());
  }
  return err ? err : EIO;
}

class Reply {
 public:
  Reply(fuse_req_t req, const char* op) : req_(req), op_(op) {}
  bool done() const { return done_; }
  fuse_req_t req() const { return req_; }

  void Err(int err) {
    done_ = true;
    fuse_reply_err(req_, err);
  }
  void Fail(const Status& st) { Err(ReplyErrno(op_, st)); }
  fuse_entry_param EntryParam(const fusefs::Entry& e) const {
    const FsOptions& o = Fs(req_).options();
    fuse_entry_param p{};
    p.ino = e.ino;
    p.generation = 1;
    p.attr = e.attr;
    p.attr_timeout = o.attr_timeout;
    p.entry_timeout = o.entry_timeout;
    return p;
  }
  void None() {
    done_ = true;
    fuse_reply_none(req_);
  }
  void Entry(const fusefs::Entry& e) {
    fuse_entry_param p = EntryParam(e);
    done_ = true;
    if (fuse_reply_entry(req_, &p) != 0) Fs(req_).Forget(e.ino, 1);
  }
  void Attr(const struct stat& st) {
    done_ = true;
    fuse_reply_attr(req_, &st, Fs(req_).options().attr_timeout);
  }
  void Open(const OpenReply& o) {
    fuse_file_info fi{};
    fi.fh = o.fh;
    fi.direct_io = o.direct_io;
    fi.keep_cache = o.keep_cache;
    done_ = true;
    if (fuse_reply_open(req_, &fi) != 0) Fs(req_).Release(o.fh);
  }
  void Create(const fusefs::Entry& e, const OpenReply& o) {
    fuse_entry_param p = EntryParam(e);
    fuse_file_info fi{};
    fi.fh = o.fh;
    fi.direct_io = o.direct_io;
    fi.keep_cache = o.keep_cache;
    done_ = true;
    if (fuse_reply_create(req_, &p, &fi) != 0) {
      Fs(req_).Release(o.fh);
      Fs(req_).Forget(e.ino, 1);
    }
  }
  void OpenDir(fuse_file_info* fi) {
    done_ = true;
    if (fuse_reply_open(req_, fi) != 0) Fs(req_).ReleaseDir(fi->fh);
  }
  void Buf(const void* data, size_t n) {
    done_ = true;
    fuse_reply_buf(req_, static_cast<const char*>(data), n);
  }
  void Lseek(off_t off) {
    done_ = true;
    fuse_reply_lseek(req_, off);
  }
  void Statfs(const struct statvfs& st) {
    done_ = true;
    fuse_reply_statfs(req_, &st);
  }

 private:
  fuse_req_t req_;
  const char* op_;
  bool done_ = false;
};

template <typename F>
void Handle(fuse_req_t req, const char* op, F&& body) {
  Reply r(req, op);
  try {
    body(r);
  } catch (const std::bad_alloc&) {
    spdlog::error("{}: out of memory", op);
    if (!r.done()) r.Err(ENOMEM);
  } catch (const std::exception& e) {
    spdlog::error("{}: unexpected exception: {}", op, e.what());
    if (!r.done()) r.Err(EIO);
  } catch (...) {
    spdlog::error("{}: unexpected exception", op);
    if (!r.done()) r.Err(EIO);
  }
  if (!r.done()) {
    spdlog::error("{}: handler did not reply", op);
    r.Err(EIO);
  }
}

// For forget-style requests, which get no reply but fuse_reply_none.
template <typename F>
void HandleNoReply(fuse_req_t req, const char* op, F&& body) {
  try {
    body();
  } catch (const std::exception& e) {
    spdlog::error("{}: unexpected exception: {}", op, e.what());
  } catch (...) {
    spdlog::error("{}: unexpected exception", op);
  }
  fuse_reply_none(req);
}

Caller CallerOf(fuse_req_t req) {
  const fuse_ctx* c = fuse_req_ctx(req);
  return Caller{c->uid, c->gid};
}

// ---- handlers ----

void OnInit(void* userdata, fuse_conn_info* conn) {
  auto& ctx = *static_cast<Ctx*>(userdata);
  const FuseConfig& cfg = ctx.cfg;
  conn->max_write = cfg.max_write;
  conn->max_readahead = std::min<unsigned>(conn->max_readahead, cfg.max_write);
  conn->max_background = cfg.max_background;
  conn->congestion_threshold = cfg.max_background * 3 / 4;
  auto want = [&](unsigned cap, bool on) {
    if (on && (conn->capable & cap)) {
      conn->want |= cap;
    } else {
      conn->want &= ~cap;
    }
  };
  want(FUSE_CAP_ASYNC_DIO, true);
  want(FUSE_CAP_ASYNC_READ, true);
  want(FUSE_CAP_PARALLEL_DIROPS, true);
  want(FUSE_CAP_SPLICE_READ, cfg.splice_read);
  want(FUSE_CAP_SPLICE_WRITE, cfg.splice_write);
  want(FUSE_CAP_SPLICE_MOVE, cfg.splice_move);
  want(FUSE_CAP_WRITEBACK_CACHE, cfg.writeback_cache);
#ifdef FUSE_CAP_OVER_IO_URING
  if (cfg.io_uring && !(conn->capable_ext & FUSE_CAP_OVER_IO_URING)) {
    std::string param = UringParam();
    spdlog::warn(
        "fuse: -o io_uring: the kernel did not offer FUSE over io_uring ({} is {}; as root, "
        "echo Y > {} before mounting): requests go through /dev/fuse",
        kUringParam, param, kUringParam);
  }
#endif
  spdlog::info("fuse: protocol {}.{}, max_write {}, max_background {}, want {:#x}",
               conn->proto_major, conn->proto_minor, conn->max_write, conn->max_background,
               conn->want);
}

void OnLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Handle(req, "lookup", [&](Reply& r) {
    auto e = Fs(req).Lookup(parent, name);
    if (!e.ok()) return r.Fail(e.status());
    r.Entry(*e);
  });
}

void OnForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  HandleNoReply(req, "forget", [&] { Fs(req).Forget(ino, nlookup); });
}

void OnForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  HandleNoReply(req, "forget_multi", [&] {
    for (size_t i = 0; i < count; ++i) Fs(req).Forget(forgets[i].ino, forgets[i].nlookup);
  });
}

void OnGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  Handle(req, "getattr", [&](Reply& r) {
    auto st = Fs(req).GetAttr(ino);
    if (!st.ok()) return r.Fail(st.status());
    r.Attr(*st);
  });
}

void OnSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
  Handle(req, "setattr", [&](Reply& r) {
    AttrChange c;
    if (to_set & FUSE_SET_ATTR_SIZE) c.size = static_cast<uint64_t>(attr->st_size);
    if (to_set & FUSE_SET_ATTR_MODE) c.mode = attr->st_mode;
    if (to_set & FUSE_SET_ATTR_UID) c.uid = attr->st_uid;
    if (to_set & FUSE_SET_ATTR_GID) c.gid = attr->st_gid;
    c.times = to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
                        FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME);
    std::optional<uint64_t> fh;
    if (fi) fh = fi->fh;
    auto st = Fs(req).SetAttr(ino, c, fh);
    if (!st.ok()) return r.Fail(st.status());
    r.Attr(*st);
  });
}

void OnMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t) {
  Handle(req, "mknod", [&](Reply& r) {
    auto e = Fs(req).MkNod(parent, name, mode, CallerOf(req));
    if (!e.ok()) return r.Fail(e.status());
    r.Entry(*e);
  });
}

void OnMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  Handle(req, "mkdir", [&](Reply& r) {
    auto e = Fs(req).MkDir(parent, name, mode, CallerOf(req));
    if (!e.ok()) return r.Fail(e.status());
    r.Entry(*e);
  });
}

void OnUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Handle(req, "unlink", [&](Reply& r) {
    Status st = Fs(req).Unlink(parent, name);
    if (!st.ok()) return r.Fail(st);
    r.Err(0);
  });
}

void OnRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Handle(req, "rmdir", [&](Reply& r) {
    Status st = Fs(req).RmDir(parent, name);
    if (!st.ok()) return r.Fail(st);
    r.Err(0);
  });
}

void OnRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
              const char* newname, unsigned int flags) {
  Handle(req, "rename", [&](Reply& r) {
    Status st = Fs(req).Rename(parent, name, newparent, newname, flags);
    if (!st.ok()) return r.Fail(st);
    r.Err(0);
  });
}

void OnOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Handle(req, "open", [&](Reply& r) {
    auto o = Fs(req).Open(ino, fi->flags);
    if (!o.ok()) return r.Fail(o.status());
    r.Open(*o);
  });
}

void OnCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
              fuse_file_info* fi) {
  Handle(req, "create", [&](Reply& r) {
    auto c = Fs(req).Create(parent, name, mode, fi->flags, CallerOf(req));
    if (!c.ok()) return r.Fail(c.status());
    r.Create(c->first, c->second);
  });
}

// One request answered from an asynchronous completion: whoever replies
// first (the completion, or the handler when it fails before handing the
// request off) replies; every later attempt is ignored.
class AsyncReply {
 public:
  AsyncReply(fuse_req_t req, const char* op) : req_(req), op_(op) {}

  void Err(int err) {
    if (!replied_.exchange(true)) fuse_reply_err(req_, err);
  }
  void Fail(const Status& st) { Err(ReplyErrno(op_, st)); }
  void Done(const Status& st) {
    if (!st.ok()) return Fail(st);
    Err(0);
  }
  // Replies with the bytes where they are (no copy).
  void Data(const ReadBuffers& data) {
    if (replied_.exchange(true)) return;
    std::vector<iovec> iov;
    iov.reserve(data.pieces.size());
    for (ByteView p : data.pieces) {
      iov.push_back({const_cast<uint8_t*>(p.data()), p.size()});
    }
    fuse_reply_iov(req_, iov.data(), static_cast<int>(iov.size()));
  }
  void Write(size_t n) {
    if (!replied_.exchange(true)) fuse_reply_write(req_, n);
  }
  const char* op() const { return op_; }

 private:
  fuse_req_t req_;
  const char* op_;
  std::atomic<bool> replied_{false};
};

// Starts an asynchronous FileSystem call; an exception before the request
// is handed off replies ENOMEM or EIO (the completion then finds it answered).
template <typename F>
void HandleAsync(const std::shared_ptr<AsyncReply>& r, F&& start) {
  try {
    start();
  } catch (const std::bad_alloc&) {
    spdlog::error("{}: out of memory", r->op());
    r->Err(ENOMEM);
  } catch (const std::exception& e) {
    spdlog::error("{}: unexpected exception: {}", r->op(), e.what());
    r->Err(EIO);
  } catch (...) {
    spdlog::error("{}: unexpected exception", r->op());
    r->Err(EIO);
  }
}

std::shared_ptr<AsyncReply> NewAsyncReply(fuse_req_t req, const char* op) {
  try {
    return std::make_shared<AsyncReply>(req, op);
  } catch (...) {
    fuse_reply_err(req, ENOMEM);
    return nullptr;
  }
}

void OnRead(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  auto r = NewAsyncReply(req, "read");
  if (!r) return;
  HandleAsync(r, [&] {
    Fs(req).ReadAsync(fi->fh, static_cast<uint64_t>(off), size, [r](Result<ReadBuffers> data) {
      if (!data.ok()) return r->Fail(data.status());
      r->Data(*data);
    });
  });
}

void OnWrite(fuse_req_t req, fuse_ino_t, const char* data, size_t size, off_t off,
             fuse_file_info* fi) {
  auto r = NewAsyncReply(req, "write");
  if (!r) return;
  HandleAsync(r, [&] {
    // The request's buffer belongs to the worker thread, but a disk's
    // WriteAsync is done with it when it returns (Disk::WriteAsync).
    Fs(req).WriteAsync(fi->fh, static_cast<uint64_t>(off),
                       ByteView(reinterpret_cast<const uint8_t*>(data), size),
                       [r](Result<size_t> n) {
                         if (!n.ok()) return r->Fail(n.status());
                         r->Write(*n);
                       });
  });
}

void OnFlush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  auto r = NewAsyncReply(req, "flush");
  if (!r) return;
  HandleAsync(r, [&] { Fs(req).FlushAsync(fi->fh, [r](Status st) { r->Done(st); }); });
}

void OnRelease(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Handle(req, "release", [&](Reply& r) {
    Fs(req).Release(fi->fh);
    r.Err(0);
  });
}

void OnFsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info* fi) {
  auto r = NewAsyncReply(req, "fsync");
  if (!r) return;
  HandleAsync(r, [&] { Fs(req).FsyncAsync(fi->fh, [r](Status st) { r->Done(st); }); });
}

void OnOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Handle(req, "opendir", [&](Reply& r) {
    auto dh = Fs(req).OpenDir(ino);
    if (!dh.ok()) return r.Fail(dh.status());
    fi->fh = *dh;
    r.OpenDir(fi);
  });
}

void OnReaddir(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
  Handle(req, "readdir", [&](Reply& r) {
    auto entries = Fs(req).ReadDir(fi->fh, static_cast<uint64_t>(off));
    if (!entries.ok()) return r.Fail(entries.status());
    std::vector<char> buf(size);
    size_t used = 0;
    off_t next = off;
    for (const DirEntry& e : *entries) {
      struct stat st {};
      st.st_ino = e.ino;
      st.st_mode = e.type;
      ++next;
      size_t need =
          fuse_add_direntry(req, buf.data() + used, size - used, e.name.c_str(), &st, next);
      if (need > size - used) break;
      used += need;
    }
    r.Buf(buf.data(), used);
  });
}

void OnReleasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Handle(req, "releasedir", [&](Reply& r) {
    Fs(req).ReleaseDir(fi->fh);
    r.Err(0);
  });
}

void OnStatfs(fuse_req_t req, fuse_ino_t) {
  Handle(req, "statfs", [&](Reply& r) {
    auto st = Fs(req).StatFs();
    if (!st.ok()) return r.Fail(st.status());
    r.Statfs(*st);
  });
}

void OnFallocate(fuse_req_t req, fuse_ino_t, int mode, off_t offset, off_t length,
                 fuse_file_info* fi) {
  auto r = NewAsyncReply(req, "fallocate");
  if (!r) return;
  if (offset < 0 || length <= 0) return r->Err(EINVAL);
  HandleAsync(r, [&] {
    Fs(req).FallocateAsync(fi->fh, mode, static_cast<uint64_t>(offset),
                           static_cast<uint64_t>(length), [r](Status st) { r->Done(st); });
  });
}

void OnLseek(fuse_req_t req, fuse_ino_t, off_t off, int whence, fuse_file_info* fi) {
  Handle(req, "lseek", [&](Reply& r) {
    if (off < 0) return r.Err(ENXIO);
    auto pos = Fs(req).Lseek(fi->fh, static_cast<uint64_t>(off), whence);
    if (!pos.ok()) return r.Fail(pos.status());
    if (!*pos) return r.Err(ENXIO);
    r.Lseek(static_cast<off_t>(**pos));
  });
}

// Operations left out (links, xattrs, locks, ioctl) get libfuse's ENOSYS.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
const fuse_lowlevel_ops kOps = {
    .init = OnInit,
    .lookup = OnLookup,
    .forget = OnForget,
    .getattr = OnGetattr,
    .setattr = OnSetattr,
    .mknod = OnMknod,
    .mkdir = OnMkdir,
    .unlink = OnUnlink,
    .rmdir = OnRmdir,
    .rename = OnRename,
    .open = OnOpen,
    .read = OnRead,
    .write = OnWrite,
    .flush = OnFlush,
    .release = OnRelease,
    .fsync = OnFsync,
    .opendir = OnOpendir,
    .readdir = OnReaddir,
    .releasedir = OnReleasedir,
    .statfs = OnStatfs,
    .create = OnCreate,
    .forget_multi = OnForgetMulti,
    .fallocate = OnFallocate,
    .lseek = OnLseek,
};
#pragma GCC diagnostic pop

}  // namespace

namespace {

// Protocol facts not in Debian 12's <linux/fuse.h> (7.38).
constexpr uint64_t kOverIoUring = uint64_t{1} << 41;  // FUSE_OVER_IO_URING, in INIT's flags2
constexpr int32_t kNotifyResend = 7;  // FUSE_NOTIFY_RESEND, protocol 7.40 (Linux 6.9)
constexpr uint32_t kResendMinor = 40;
constexpr uint64_t kResendBit = uint64_t{1} << 63;  // FUSE_UNIQUE_RESEND: set on resent requests

// libfuse's I/O on the connection, through fuse_session_custom_io so that
// Negotiate can catch the INIT reply instead of sending it.
ssize_t IoWritev(int fd, struct iovec* iov, int count, void* userdata) {
  auto& ctx = *static_cast<Ctx*>(userdata);
  if (ctx.capture) {
    ssize_t n = 0;
    for (int i = 0; i < count; ++i) {
      ctx.captured.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
      n += static_cast<ssize_t>(iov[i].iov_len);
    }
    if (ctx.send_init && !ctx.send_init(ctx.captured)) return -1;
    return n;
  }
  return writev(fd, iov, count);
}
ssize_t IoRead(int fd, void* buf, size_t len, void*) { return read(fd, buf, len); }
ssize_t IoSplice(int fdin, off_t* offin, int fdout, off_t* offout, size_t len, unsigned int flags,
                 void*) {
  return splice(fdin, offin, fdout, offout, len, flags);
}
const fuse_custom_io kIo = {IoWritev, IoRead, IoSplice, IoSplice};

// Interrupts a worker's read of the connection (Stop). Installed without
// SA_RESTART, so the read fails with EINTR.
void OnWake(int) {}
constexpr int kWakeSignal = SIGUSR2;

std::string MountOptions(const FuseConfig& cfg) {
  std::string opts = "default_permissions,fsname=" + cfg.fsname + ",subtype=imgfs";
  if (cfg.allow_other) opts += ",allow_other";
  for (const auto& o : cfg.extra_options) opts += "," + o;
  return opts;
}

// A libfuse session with our ops and cfg's options (-o, -d).
fuse_session* NewSession(Ctx* ctx, const FuseConfig& cfg, std::string* error) {
  std::string opts = MountOptions(cfg);
  std::vector<std::string> argv_s = {"imgfs", "-o", opts};
  if (cfg.debug) argv_s.push_back("-d");
  if (cfg.io_uring) {
    if (!kHasIoUring) {
      *error = "-o io_uring needs imgfs built against libfuse 3.18 or later (this one has " +
               std::to_string(fuse_version() / 100) + "." + std::to_string(fuse_version() % 100) +
               "; docs/performance.md, \"FUSE over io_uring\")";
      return nullptr;
    }
    argv_s.insert(argv_s.end(), {"-o", "io_uring"});
  }
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  fuse_set_log_func(LogFromLibfuse);
  LogCapture capture;
  fuse_session* se = fuse_session_new(&args, &kOps, sizeof(kOps), ctx);
  fuse_opt_free_args(&args);
  if (!se) *error = "libfuse refused the mount options '" + opts + "'" + capture.Text();
  return se;
}

}  // namespace

Result<int> MountFuse(const FuseConfig& cfg) {
  Ctx ctx{nullptr, cfg, false, {}, nullptr};
  std::string error;
  fuse_session* se = NewSession(&ctx, cfg, &error);
  if (!se) return Status::InvalidArgument(error);
  LogCapture capture;
  if (fuse_session_mount(se, cfg.mountpoint.c_str()) != 0) {
    fuse_session_destroy(se);
    return Status::IOError("cannot mount at " + cfg.mountpoint + capture.Text());
  }
  // The session only mounted; the connection is ours to pass on.
  int fd = fcntl(fuse_session_fd(se), F_DUPFD_CLOEXEC, 3);
  int err = errno;
  fuse_session_destroy(se);  // closes its own descriptor, does not unmount
  if (fd < 0) {
    (void)UnmountFuse(cfg.mountpoint);
    return Status::FromErrno(err, "dup of the FUSE connection");
  }
  return fd;
}

Status UnmountFuse(const std::string& mountpoint) {
  if (geteuid() == 0) {
    if (umount2(mountpoint.c_str(), MNT_DETACH) == 0 || errno == EINVAL || errno == ENOENT) {
      return Status::OK();
    }
    return Status::FromErrno(errno, "unmounting " + mountpoint);
  }
  pid_t pid = fork();
  if (pid < 0) return Status::FromErrno(errno, "fork");
  if (pid == 0) {
    execlp("fusermount3", "fusermount3", "-u", "-q", "-z", "--", mountpoint.c_str(),
           static_cast<char*>(nullptr));
    _exit(127);
  }
  int wst = 0;
  while (waitpid(pid, &wst, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0) {
    return Status::IOError("fusermount3 -u " + mountpoint + " failed");
  }
  return Status::OK();
}

struct FuseServer::Impl {
  Ctx ctx;
  fuse_session* se = nullptr;
  int fd = -1;  // owned by se
  uint32_t kernel_minor = 0;
  std::string init_reply;  // what the connection's INIT was answered with
  bool io_uring = false;   // the connection serves over io_uring (libfuse's ring threads)

  struct Worker {
    std::thread thread;
    std::atomic<bool> reading{false};  // in (or about to enter) a read of the connection
    bool done = false;                 // guarded by Impl::mu
  };
  // Workers come and go as libfuse's own loop has them: one more starts
  // when a worker takes a request and none is left waiting for the next
  // (up to max_threads), and a worker done with a request leaves when
  // max_idle_threads others wait already. A fixed pool of max_threads
  // readers made each request wake the longest-idle thread, and 1 MiB reads
  // at queue depth 1 ran at 0.5-0.7 of fuse_session_loop_mt.
  Mutex mu;
  CondVar cv;                                 // with mu: a worker left, or stop
  std::list<Worker> workers GUARDED_BY(mu);   // stable addresses
  unsigned waiting GUARDED_BY(mu) = 0;        // workers about to read or reading
  unsigned running GUARDED_BY(mu) = 0;        // workers not done
  std::atomic<bool> stop_requested{false};
  std::atomic<int> loop_error{0};
  std::atomic<uint64_t> resent{0};  // requests that came with the resend mark

  void StartWorkerLocked() REQUIRES(mu) {
    // Workers that left are joined here (they only return once marked done).
    for (auto it = workers.begin(); it != workers.end();) {
      if (!it->done) {
        ++it;
        continue;
      }
      it->thread.join();
      it = workers.erase(it);
    }
    Worker& w = workers.emplace_back();
    ++running;
    ++waiting;
    w.thread = std::thread([this, &w] { Work(w); });
  }

  ~Impl() {
    if (se) {
      if (ctx.fs) ctx.fs->SetAttrInvalidator(nullptr);
      fuse_session_destroy(se);
    }
  }

  // A FUSE_INIT after the session was initialised: the kernel sent the
  // first one again (resent after the first server recorded it and died
  // before answering). It gets the recorded answer under its own id.
  bool AnswerInitAgain(const fuse_buf& buf) {
    if ((buf.flags & FUSE_BUF_IS_FD) || buf.size < sizeof(fuse_in_header)) return false;
    const auto* in = static_cast<const fuse_in_header*>(buf.mem);
    if (in->opcode != FUSE_INIT || init_reply.size() < sizeof(fuse_out_header)) return false;
    std::string reply = init_reply;
    auto* out = reinterpret_cast<fuse_out_header*>(reply.data());
    out->unique = in->unique;
    spdlog::info("fuse: the kernel sent FUSE_INIT again; answered as before");
    if (write(fd, reply.data(), reply.size()) < 0) {
      spdlog::error("fuse: answering FUSE_INIT again: {}", std::strerror(errno));
    }
    return true;
  }

  // Each worker starts counted as waiting.
  void Work(Worker& w) {
    fuse_buf buf{};
    bool leave = false;  // the pool shrinks: this worker goes, the loop does not end
    while (!fuse_session_exited(se)) {
      w.reading = true;
      if (stop_requested || fuse_session_exited(se)) break;
      int r = fuse_session_receive_buf(se, &buf);
      w.reading = false;
      if (r == -EINTR || r == -EAGAIN) continue;
      if (r <= 0) {
        if (r < 0) {
          loop_error = -r;
          spdlog::error("fuse: reading a request: {}", std::strerror(-r));
        }
        break;  // 0: stopped, or the connection ended (the session is marked exited)
      }
      {
        MutexLock lock(mu);
        if (--waiting == 0 && running < std::max(1u, ctx.cfg.max_threads) && !stop_requested) {
          StartWorkerLocked();
        }
      }
      if (!AnswerInitAgain(buf)) {
        if (!(buf.flags & FUSE_BUF_IS_FD) && buf.size >= sizeof(fuse_in_header)) {
          const auto* in = static_cast<const fuse_in_header*>(buf.mem);
          if ((in->unique & kResendBit) && resent.fetch_add(1) < 10) {
            spdlog::info("fuse: answering a request the kernel sent again (opcode {})", in->opcode);
          }
        }
        fuse_session_process_buf(se, &buf);
      }
      MutexLock lock(mu);
      if (waiting >= ctx.cfg.max_idle_threads && running > 1) {
        leave = true;
        break;
      }
      ++waiting;
    }
    w.reading = false;
    free(buf.mem);
    if (!leave) fuse_session_exit(se);
    {
      MutexLock lock(mu);
      if (!leave) --waiting;
      --running;
      w.done = true;
    }
    cv.NotifyAll();
  }
};

FuseServer::FuseServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
FuseServer::~FuseServer() = default;

Result<std::unique_ptr<FuseServer>> FuseServer::Create(FileSystem& fs, const FuseConfig& cfg,
                                                       int fuse_fd) {
  auto impl = std::make_unique<Impl>();
  impl->ctx.fs = &fs;
  impl->ctx.cfg = cfg;
  std::string error;
  impl->se = NewSession(&impl->ctx, cfg, &error);
  if (!impl->se) {
    close(fuse_fd);
    return Status::InvalidArgument(error);
  }
  if (fuse_session_custom_io(impl->se, &kIo, fuse_fd) != 0) {
    close(fuse_fd);
    return Status::IOError("libfuse refused the FUSE connection's descriptor");
  }
  impl->fd = fuse_fd;
  // Attributes only (offset -1): nothing of the page cache is dropped, and
  // no lock a request in flight may hold is needed. Before FUSE_INIT was
  // answered libfuse refuses it (ENOSYS): the kernel has cached nothing yet.
  fs.SetAttrInvalidator([se = impl->se](uint64_t ino) {
    int r = fuse_lowlevel_notify_inval_inode(se, static_cast<fuse_ino_t>(ino), -1, 0);
    if (r != 0 && r != -ENOENT && r != -ENOSYS) {
      spdlog::warn("fuse: dropping the kernel's attributes of inode {}: {}", ino,
                   std::strerror(-r));
    }
  });
  return std::unique_ptr<FuseServer>(new FuseServer(std::move(impl)));
}

Result<InitRecord> FuseServer::Negotiate(const std::optional<InitRecord>& recorded,
                                         const std::function<Status(const InitRecord&)>& persist) {
  Impl& s = *impl_;
  InitRecord rec;
  if (recorded) {
    rec.request = recorded->request;
  } else {
    // The kernel queues FUSE_INIT when it mounts: it is the first request.
    std::vector<char> buf(FUSE_MIN_READ_BUFFER + (1u << 20));
    ssize_t n;
    do {
      n = read(s.fd, buf.data(), buf.size());
    } while (n < 0 && errno == EINTR);
    if (n < 0) return Status::FromErrno(errno, "reading FUSE_INIT from the connection");
    rec.request.assign(buf.data(), static_cast<size_t>(n));
  }
  if (rec.request.size() < sizeof(fuse_in_header) + sizeof(uint32_t) * 2) {
    return Status::Corruption("FUSE_INIT request too short");
  }
  const auto* in = reinterpret_cast<const fuse_in_header*>(rec.request.data());
  if (in->opcode != FUSE_INIT) {
    return Status::Corruption("the connection's first request is opcode " +
                              std::to_string(in->opcode) + ", not FUSE_INIT");
  }
  const auto* init = reinterpret_cast<const uint32_t*>(rec.request.data() + sizeof(fuse_in_header));
  s.kernel_minor = init[0] == 7 ? init[1] : 0;

  std::vector<char> copy(rec.request.begin(), rec.request.end());
  fuse_buf fb{};
  fb.mem = copy.data();
  fb.size = copy.size();
  s.ctx.captured.clear();
  s.ctx.capture = true;
  // The first server records the answer and sends it from within libfuse's
  // write of it (Ctx::send_init); a successor only compares it.
  Status sent = Status::OK();
  bool send_called = false;
  if (!recorded) {
    s.ctx.send_init = [&](const std::string& reply) {
      send_called = true;
      if (reply.size() < sizeof(fuse_out_header) ||
          reinterpret_cast<const fuse_out_header*>(reply.data())->error != 0) {
        return false;  // refused below
      }
      rec.reply = reply;
      sent = persist(rec);
      if (!sent.ok()) return false;
      ssize_t n;
      do {
        n = write(s.fd, reply.data(), reply.size());
      } while (n < 0 && errno == EINTR);
      if (n < 0) sent = Status::FromErrno(errno, "answering FUSE_INIT");
      return sent.ok();
    };
  }
  fuse_session_process_buf(s.se, &fb);
  s.ctx.capture = false;
  s.ctx.send_init = nullptr;
  rec.reply = std::move(s.ctx.captured);
  if (rec.reply.size() < sizeof(fuse_out_header)) {
    return Status::IOError("libfuse did not answer FUSE_INIT");
  }
  const auto* out = reinterpret_cast<const fuse_out_header*>(rec.reply.data());
  if (out->error != 0) {
    return Status::IOError("libfuse refused the kernel's FUSE_INIT: " +
                           std::string(std::strerror(-out->error)));
  }
  if (recorded) {
    if (rec.reply != recorded->reply) {
      return Status::NotSupported(
          "this server would negotiate the FUSE connection differently from the server that "
          "started the mount (other options or another libfuse); it cannot take it over");
    }
  } else {
    if (!send_called) return Status::IOError("libfuse did not answer FUSE_INIT");
    RETURN_IF_ERROR(sent);
  }
  if (s.ctx.cfg.io_uring) {
    uint32_t flags2 = 0;
    constexpr size_t kFlags2At = sizeof(fuse_out_header) + offsetof(fuse_init_out, flags2);
    if (rec.reply.size() >= kFlags2At + sizeof flags2) {
      std::memcpy(&flags2, rec.reply.data() + kFlags2At, sizeof flags2);
    }
    s.io_uring = (uint64_t{flags2} << 32) & kOverIoUring;
    if (s.io_uring) {
      spdlog::info("fuse: serving over io_uring (one queue per CPU, libfuse's ring threads)");
    } else {
      spdlog::warn(
          "fuse: -o io_uring was asked for and is not in use; requests go through "
          "/dev/fuse (see the messages above)");
    }
  }
  s.init_reply = rec.reply;
  return rec;
}

uint32_t FuseServer::kernel_minor() const { return impl_->kernel_minor; }

bool FuseServer::Resend() {
  Impl& s = *impl_;
  if (s.kernel_minor < kResendMinor) {
    spdlog::warn(
        "fuse: this kernel speaks FUSE 7.{} (FUSE_NOTIFY_RESEND needs 7.{}, Linux 6.9): "
        "requests a replaced server had read and not answered are never answered",
        s.kernel_minor, kResendMinor);
    return false;
  }
  fuse_out_header h{};
  h.len = sizeof h;
  h.error = kNotifyResend;
  h.unique = 0;
  if (write(s.fd, &h, sizeof h) < 0) {
    spdlog::error("fuse: FUSE_NOTIFY_RESEND: {}", std::strerror(errno));
    return false;
  }
  return true;
}

Status FuseServer::Run(bool* unmounted) {
  Impl& s = *impl_;
  struct sigaction sa {};
  sa.sa_handler = OnWake;
  sigemptyset(&sa.sa_mask);
  sigaction(kWakeSignal, &sa, nullptr);  // no SA_RESTART: a read ends with EINTR
  sigset_t wake;
  sigemptyset(&wake);
  sigaddset(&wake, kWakeSignal);
  pthread_sigmask(SIG_UNBLOCK, &wake, nullptr);

  // Said again here, where the mount's log file has it (Negotiate's
  // messages go to the terminal of `imgfs mount`).
  if (s.ctx.cfg.io_uring && s.io_uring) {
    spdlog::info("fuse: serving over io_uring");
  } else if (s.ctx.cfg.io_uring) {
    spdlog::warn(
        "fuse: -o io_uring is not in use (the kernel did not grant it when the mount began; {} "
        "is {} now): requests go through /dev/fuse",
        kUringParam, UringParam());
  }
  std::list<Impl::Worker> workers;  // all done, to join
  {
    MutexLock lock(s.mu);
    s.StartWorkerLocked();
    while (!fuse_session_exited(s.se) && !s.stop_requested && s.running != 0) s.cv.Wait(s.mu);
    fuse_session_exit(s.se);
    // Wake the workers blocked in a read of the connection; a wake-up can
    // land just before a worker enters its read, so keep waking until all left.
    while (s.running > 0) {
      for (auto& w : s.workers) {
        if (!w.done && w.reading) pthread_kill(w.thread.native_handle(), kWakeSignal);
      }
      s.cv.WaitFor(s.mu, std::chrono::milliseconds(2));
    }
    workers.splice(workers.end(), s.workers);
  }
  for (auto& w : workers) w.thread.join();
  *unmounted = !s.stop_requested;
  Status st = s.ctx.fs->Shutdown();
  // libfuse's io_uring threads, once the disks are idle (an asynchronous
  // completion replies through its ring): fuse_session_loop on an ended
  // session only stops them; each answers the request at hand first (CtxOf).
  // Requests they take meanwhile find the disks closed: a hot upgrade or
  // a restart over io_uring is not seamless (docs/performance.md).
  if (s.io_uring) (void)fuse_session_loop(s.se);
  if (!st.ok()) return st;
  if (int err = s.loop_error; err != 0) return Status::FromErrno(err, "fuse session loop");
  return Status::OK();
}

void FuseServer::Stop() {
  Impl& s = *impl_;
  {
    MutexLock lock(s.mu);
    s.stop_requested = true;
  }
  s.cv.NotifyAll();
}

}  // namespace imgfs::fusefs
