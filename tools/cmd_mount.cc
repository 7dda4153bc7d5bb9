// imgfs mount MOUNTPOINT [-f] [-o OPTIONS]
//
// In the background (the default) the command returns once the mount is
// ready, or fails with the daemon's error: the parent forks before anything
// starts threads, and the child reports through a pipe.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "blockstore/units.h"
#include "fusefs/fs.h"
#include "fusefs/fuse_adapter.h"
#include "tools/cli.h"

namespace imgfs::cli {

namespace {

struct MountArgs {
  std::string mountpoint;
  bool foreground = false;
  bool debug = false;
  std::vector<std::string> options;  // -o, comma lists
  std::string pid_file;
  std::string log_file;
};

Result<std::string> Absolute(const std::string& path, const char* what) {
  char buf[PATH_MAX];
  if (!realpath(path.c_str(), buf)) return Status::FromErrno(errno, std::string(what) + " " + path);
  return std::string(buf);
}

Result<uint32_t> ParseU32(const std::string& key, const std::string& value) {
  auto n = ParseSize(value);
  if (!n.ok() || *n == 0 || *n > UINT32_MAX) {
    return Status::InvalidArgument("bad value for -o " + key + ": '" + value + "'");
  }
  return static_cast<uint32_t>(*n);
}

// Splits -o lists into imgfs's own options and those passed to libfuse.
Status ParseOptions(const std::vector<std::string>& lists, fusefs::FsOptions* fs,
                    fusefs::FuseConfig* fuse, StoreOptions* store) {
  for (const auto& list : lists) {
    std::stringstream ss(list);
    std::string opt;
    while (std::getline(ss, opt, ',')) {
      if (opt.empty()) continue;
      std::string key = opt, value;
      if (auto eq = opt.find('='); eq != std::string::npos) {
        key = opt.substr(0, eq);
        value = opt.substr(eq + 1);
      }
      if (key == "cache_size") {
        auto n = ParseSize(value);
        if (value.empty() || !n.ok() || *n > SIZE_MAX) {
          return Status::InvalidArgument("bad value for -o cache_size: '" + value +
                                         "' (a size such as 512M or 2G; 0 disables the cache)");
        }
        store->chunk_cache_bytes = static_cast<size_t>(*n);
      } else if (key == "allow_shrink") {
        fs->allow_shrink = true;
      } else if (key == "direct_io") {
        fs->direct_io_always = true;
      } else if (key == "allow_other") {
        fuse->allow_other = true;
      } else if (key == "clone_fd") {
        fuse->clone_fd = true;
      } else if (key == "splice_read") {
        fuse->splice_read = true;
      } else if (key == "splice_write") {
        fuse->splice_write = true;
      } else if (key == "splice_move") {
        fuse->splice_move = true;
      } else if (key == "writeback_cache") {
        fuse->writeback_cache = true;
      } else if (key == "max_threads") {
        ASSIGN_OR_RETURN(fuse->max_threads, ParseU32(key, value));
      } else if (key == "max_idle_threads") {
        ASSIGN_OR_RETURN(fuse->max_idle_threads, ParseU32(key, value));
      } else if (key == "max_write") {
        ASSIGN_OR_RETURN(fuse->max_write, ParseU32(key, value));
      } else if (key == "max_background") {
        ASSIGN_OR_RETURN(fuse->max_background, ParseU32(key, value));
      } else if (key == "entry_timeout" || key == "attr_timeout") {
        char* end = nullptr;
        double v = std::strtod(value.c_str(), &end);
        if (value.empty() || *end || v < 0) {
          return Status::InvalidArgument("bad value for -o " + key + ": '" + value + "'");
        }
        (key == "entry_timeout" ? fs->entry_timeout : fs->attr_timeout) = v;
      } else if (key == "default_permissions" || key == "rw") {
        // Always on / the default.
      } else if (key == "defaults" || key == "auto" || key == "noauto" || key == "nofail" ||
                 key == "_netdev" || key == "user" || key == "users" || key == "nouser" ||
                 key == "comment" || key.starts_with("x-") || key == "pid_file" ||
                 key == "log_file") {
        // For mount(8) and systemd (/etc/fstab); pid_file and log_file: RunMount.
      } else {
        fuse->extra_options.push_back(opt);  // libfuse refuses what it does not know
      }
    }
  }
  return Status::OK();
}

// Opens the store, mounts, calls `ready` once the mount serves requests, and
// serves until unmounted or signalled.
Status Serve(const MountArgs& a, const std::string& store_path, const std::string& mountpoint,
             const std::function<void()>& ready) {
  fusefs::FsOptions fso;
  fso.uid = getuid();
  fso.gid = getgid();
  fusefs::FuseConfig fc;
  fc.mountpoint = mountpoint;
  fc.fsname = "imgfs:";
  for (char c : store_path) {
    if (c == ',' || c == '\\') fc.fsname += '\\';
    fc.fsname += c;
  }
  fc.debug = a.debug;
  StoreOptions so;
  RETURN_IF_ERROR(ParseOptions(a.options, &fso, &fc, &so));
  ASSIGN_OR_RETURN(auto store, Store::Open(store_path, {}, so));
  spdlog::info("chunk cache: {}", FormatSizeHuman(store->chunks().cache_bytes()));
  fusefs::FileSystem fs(*store, fso);
  ASSIGN_OR_RETURN(auto session, fusefs::FuseSession::Mount(fs, fc));
  if (!a.pid_file.empty()) {
    std::ofstream pf(a.pid_file, std::ios::trunc);
    pf << getpid() << "\n";
    if (!pf.flush()) return Status::IOError("cannot write pid file " + a.pid_file);
  }
  spdlog::info("mounted {} at {}", store_path, mountpoint);
  ready();
  Status st = session->Run();
  session.reset();
  if (!a.pid_file.empty()) unlink(a.pid_file.c_str());
  spdlog::info("unmounted {}", mountpoint);
  return st;
}

void RedirectStdio(const std::string& log_file) {
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
  }
  int err = log_file.empty() ? null : open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0640);
  if (err >= 0) dup2(err, STDERR_FILENO);
  if (err >= 0 && err != null) close(err);
  if (null > STDERR_FILENO) close(null);
}

Outcome RunMount(const GlobalOptions& g, const MountArgs& a) {
  auto mountpoint = Absolute(a.mountpoint, "mount point");
  if (!mountpoint.ok()) return Outcome{mountpoint.status()};
  struct stat st {};
  if (stat(mountpoint->c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Outcome{Status::InvalidArgument("mount point " + *mountpoint + " is not a directory")};
  }
  auto store_path = Absolute(StorePath(g), "store");
  if (!store_path.ok()) {
    return Outcome{Status::NotFound("no store at " + StorePath(g) + ": run 'imgfs init'")};
  }
  MountArgs args = a;
  // From /etc/fstab, where only -o reaches the command.
  for (const auto& list : args.options) {
    std::stringstream ss(list);
    std::string opt;
    while (std::getline(ss, opt, ',')) {
      if (opt.starts_with("pid_file=")) args.pid_file = opt.substr(9);
      if (opt.starts_with("log_file=")) args.log_file = opt.substr(9);
    }
  }
  if (!args.pid_file.empty() && args.pid_file[0] != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd)) args.pid_file = std::string(cwd) + "/" + args.pid_file;
  }
  if (!args.log_file.empty() && args.log_file[0] != '/') {
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd)) args.log_file = std::string(cwd) + "/" + args.log_file;
  }

  if (args.foreground) {
    return Outcome{Serve(args, *store_path, *mountpoint, [] {})};
  }

  int pipefd[2];
  if (pipe(pipefd) != 0) return Outcome{Status::FromErrno(errno, "pipe")};
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) return Outcome{Status::FromErrno(errno, "fork")};
  if (pid > 0) {
    close(pipefd[1]);
    std::string msg;
    char buf[512];
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
      if (n > 0) msg.append(buf, static_cast<size_t>(n));
    }
    close(pipefd[0]);
    if (msg == "ok") return Outcome{};
    if (msg.rfind("error:", 0) == 0) return Outcome{Status::IOError(msg.substr(6))};
    return Outcome{Status::IOError("the mount daemon exited before the mount was ready")};
  }

  close(pipefd[0]);
  setsid();
  int report = pipefd[1];
  auto ready = [&] {
    if (chdir("/") != 0) spdlog::warn("chdir /: {}", std::strerror(errno));
    RedirectStdio(args.log_file);
    ssize_t w = write(report, "ok", 2);
    (void)w;
    close(report);
    report = -1;
  };
  Status s = Serve(args, *store_path, *mountpoint, ready);
  if (report >= 0) {
    std::string msg = "error:" + s.message();
    ssize_t w = write(report, msg.data(), msg.size());
    (void)w;
    _exit(1);
  }
  if (!s.ok()) spdlog::error("{}", s.ToString());
  _exit(s.ok() ? 0 : 1);
}

}  // namespace

void RegisterMountCommand(Cli& cli) {
  auto args = std::make_shared<MountArgs>();
  auto* mount = cli.app.add_subcommand(
      "mount",
      "Mount the store: _base/<image id> (read-only images) and <instance>/<disk> (disks)");
  mount->add_option("MOUNTPOINT", args->mountpoint, "An existing directory")->required();
  mount->add_flag("-f,--foreground", args->foreground,
                  "Stay in the foreground (default: return once mounted, serve in the background)");
  mount
      ->add_option("-o", args->options,
                   "Mount options, comma-separated: cache_size=SIZE (verified chunks kept in "
                   "memory; default 1/32 of RAM, 64M..1G), allow_shrink, allow_other, direct_io, "
                   "clone_fd, max_threads=N, max_write=N, max_background=N, splice_read, "
                   "splice_write, splice_move, writeback_cache, entry_timeout=S, "
                   "attr_timeout=S, pid_file=PATH, log_file=PATH, and libfuse's (e.g. "
                   "max_read=N); fstab's defaults, auto, noauto, nofail, _netdev, x-* are "
                   "ignored")
      ->allow_extra_args(false);
  mount->add_option("--pid-file", args->pid_file, "Write the serving process's pid here");
  mount->add_option("--log-file", args->log_file,
                    "In the background, append logs here (default: discarded)");
  mount->add_flag("-d,--debug-fuse", args->debug, "Trace every FUSE request on stderr");
  mount->callback(
      [&cli, args] { cli.action = [&cli, args] { return RunMount(cli.global, *args); }; });
}

}  // namespace imgfs::cli
