// imgfs mount MOUNTPOINT [-f] [-o OPTIONS]
//
// imgfs mount --upgrade|--status MOUNTPOINT
//
// The mount runs as a supervisor and its servers (tools/supervisor.h). In the
// background (the default) the command returns once the first server serves,
// or fails with its error: the parent forks before anything starts threads,
// the child becomes the supervisor and reports through a pipe.
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "blockstore/file_util.h"
#include "blockstore/units.h"
#include "fusefs/fs.h"
#include "fusefs/fuse_adapter.h"
#include "tools/cli.h"
#include "tools/mount_options.h"
#include "tools/supervisor.h"

namespace imgfs::cli {

namespace {

struct MountArgs {
  std::string mountpoint;
  bool foreground = false;
  bool debug = false;
  std::vector<std::string> options;  // -o, comma lists
  std::string pid_file;
  std::string log_file;
  bool upgrade = false;  // --upgrade: hand the mount to a new server
  bool status = false;   // --status
  std::string binary;    // --binary, for --upgrade (default: this imgfs)
};

Result<std::string> Absolute(const std::string& path, const char* what) {
  char buf[PATH_MAX];
  if (!realpath(path.c_str(), buf)) return Status::FromErrno(errno, std::string(what) + " " + path);
  return std::string(buf);
}

// Tells systemd (a Type=notify service: imgfs-mount@.service) that the mount
// serves: one datagram to $NOTIFY_SOCKET, as sd_notify(3) sends it.
void NotifySystemd(const std::string& what) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (!path || (path[0] != '/' && path[0] != '@')) return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  size_t len = std::strlen(path);
  if (len >= sizeof addr.sun_path) return;
  std::memcpy(addr.sun_path, path, len);
  if (path[0] == '@') addr.sun_path[0] = '\0';  // abstract
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  if (sendto(fd, what.data(), what.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
             static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len)) < 0) {
    spdlog::warn("cannot notify systemd on {}: {}", path, std::strerror(errno));
  }
  close(fd);
}

// `imgfs mount --upgrade|--status MOUNTPOINT`: asks the mount's supervisor.
Outcome AskMount(const GlobalOptions& g, const MountArgs& a, const std::string& mountpoint) {
  std::string request = "status";
  if (a.upgrade) {
    std::string bin = a.binary.empty() ? "/proc/self/exe" : a.binary;
    auto path = Absolute(bin, "binary");
    if (!path.ok()) return Outcome{path.status()};
    if (access(path->c_str(), X_OK) != 0) {
      return Outcome{Status::FromErrno(errno, "binary " + *path)};
    }
    request = "upgrade " + *path;
  }
  auto answer = AskSupervisor(mountpoint, request);
  if (!answer.ok()) return Outcome{answer.status()};
  if (!answer->starts_with("ok ")) {
    std::string why = answer->starts_with("error ") ? answer->substr(6) : *answer;
    return Outcome{Status::IOError((a.upgrade ? "upgrade of " : "status of ") + mountpoint +
                                   " failed: " + why)};
  }
  std::string text = answer->substr(3);
  if (a.status) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (g.json || j.is_discarded()) {
      std::printf("%s\n", text.c_str());
    } else {
      for (auto& [k, v] : j.items()) {
        std::printf("%s: %s\n", k.c_str(),
                    v.is_string() ? v.get<std::string>().c_str() : v.dump().c_str());
      }
    }
  } else if (!g.quiet) {
    std::printf("%s\n", text.c_str());
  }
  return Outcome{};
}

Status DeadMount(const std::string& mountpoint) {
  return Status::Unavailable("mount point " + mountpoint + " is a mount whose server is gone (" +
                             std::strerror(ENOTCONN) + "): clear it with 'fusermount3 -u -z " +
                             mountpoint + "'");
}

// A mount point that already holds an imgfs mount is refused: a second
// mount would stack over the first, hiding it from new opens while what has
// it open goes on through it, and fusermount3 -u would remove only the top
// one (docs/operations.md, "The mount").
Status CheckNotMounted(const std::string& mountpoint) {
  auto info = ReadFile("/proc/self/mountinfo");
  if (!info.ok()) return Status::OK();  // no /proc: libfuse mounts as before
  if (auto store = ImgfsMountAt(*info, mountpoint)) {
    struct statfs sf {};
    if (statfs(mountpoint.c_str(), &sf) != 0 && errno == ENOTCONN) return DeadMount(mountpoint);
    return Status::AlreadyExists(mountpoint + " is already a mount of the imgfs store " + *store +
                                 " (unmount it first; 'imgfs mount --upgrade " + mountpoint +
                                 "' replaces its server)");
  }
  return Status::OK();
}

Outcome RunMount(const GlobalOptions& g, const MountArgs& a) {
  char resolved[PATH_MAX];
  if (!realpath(a.mountpoint.c_str(), resolved) && errno == ENOTCONN) {
    return Outcome{DeadMount(a.mountpoint)};
  }
  auto mountpoint = Absolute(a.mountpoint, "mount point");
  if (!mountpoint.ok()) return Outcome{mountpoint.status()};
  if (a.upgrade || a.status) return AskMount(g, a, *mountpoint);
  if (Status s = CheckNotMounted(*mountpoint); !s.ok()) return Outcome{s};
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
  char cwd[PATH_MAX];
  for (std::string* f : {&args.pid_file, &args.log_file}) {
    if (!f->empty() && (*f)[0] != '/' && getcwd(cwd, sizeof cwd)) *f = std::string(cwd) + "/" + *f;
  }

  // Bad options are refused here, before anything is mounted.
  SupervisorConfig cfg;
  fusefs::FsOptions fso;
  StoreOptions so;
  std::pair<int, int> crash_loop{cfg.crash_loop.deaths, cfg.crash_loop.seconds};
  MetricsOptions metrics;
  if (Status s = ParseMountOptions(args.options, &fso, &cfg.fuse, &so, &crash_loop, &metrics);
      !s.ok()) {
    return Outcome{s};
  }
  cfg.crash_loop = CrashLoopRule{crash_loop.first, crash_loop.second};
  cfg.fuse.mountpoint = *mountpoint;
  cfg.fuse.fsname = FsNameFor(*store_path);
  cfg.fuse.debug = args.debug;
  auto exe = Absolute("/proc/self/exe", "the imgfs binary");
  if (!exe.ok()) return Outcome{exe.status()};
  cfg.exe = *exe;
  cfg.pid_file = args.pid_file;
  if (!args.foreground) cfg.log_file = args.log_file;
  cfg.server_args = {"--store", *store_path};
  if (g.quiet) cfg.server_args.push_back("-q");
  for (int i = 0; i < g.verbose; ++i) cfg.server_args.push_back("-v");
  cfg.server_args.insert(cfg.server_args.end(), {"__serve", "--mountpoint", *mountpoint});
  for (const auto& o : args.options) cfg.server_args.insert(cfg.server_args.end(), {"-o", o});
  if (args.debug) cfg.server_args.push_back("-d");
  if (!args.foreground) {
    cfg.server_args.insert(cfg.server_args.end(),
                           {"--detach", args.log_file.empty() ? "/dev/null" : args.log_file});
  }

  if (args.foreground) {
    Status first;
    int rc = RunSupervisor(cfg, [&](const Status& s) {
      first = s;
      if (s.ok()) NotifySystemd("READY=1");
    });
    if (!first.ok()) return Outcome{first};
    return Outcome{Status::OK(), rc};
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
    return Outcome{Status::IOError("the mount's supervisor exited before the mount was ready")};
  }

  close(pipefd[0]);
  setsid();
  fcntl(pipefd[1], F_SETFD, FD_CLOEXEC);
  int report = pipefd[1];
  int rc = RunSupervisor(cfg, [&](const Status& s) {
    std::string msg = s.ok() ? "ok" : "error:" + s.message();
    if (s.ok()) {
      if (chdir("/") != 0) spdlog::warn("chdir /: {}", std::strerror(errno));
      RedirectStdio(args.log_file);
    }
    ssize_t w = write(report, msg.data(), msg.size());
    (void)w;
    close(report);
  });
  _exit(rc);
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
                   "crash_loop=DEATHS/SECONDS (default 5/30: then requests fail with EIO), "
                   "max_threads=N, max_write=N, max_background=N, splice_read, "
                   "splice_write, splice_move, writeback_cache, entry_timeout=S, "
                   "attr_timeout=S, pid_file=PATH, log_file=PATH, metrics=[HOST:]PORT "
                   "(Prometheus /metrics; HOST defaults to 127.0.0.1), metrics_file=PATH "
                   "(written every metrics_interval=S seconds, default 15), and libfuse's (e.g. "
                   "max_read=N); fstab's defaults, auto, noauto, nofail, _netdev, x-* are "
                   "ignored")
      ->allow_extra_args(false);
  mount->add_option("--pid-file", args->pid_file, "Write the serving process's pid here");
  mount->add_option("--log-file", args->log_file,
                    "In the background, append logs here (default: discarded)");
  mount->add_flag("-d,--debug-fuse", args->debug, "Trace every FUSE request on stderr");
  mount->add_flag("--upgrade", args->upgrade,
                  "Hand the live mount at MOUNTPOINT to a new server started from --binary (by "
                  "default this imgfs), then re-execute its supervisor from it; on failure the "
                  "old server goes on serving and the command fails");
  mount->add_option("--binary", args->binary, "With --upgrade: the imgfs binary to upgrade to");
  mount->add_flag("--status", args->status,
                  "Show the supervisor and server of the mount at MOUNTPOINT (--json: one object)");
  mount->callback(
      [&cli, args] { cli.action = [&cli, args] { return RunMount(cli.global, *args); }; });
}

}  // namespace imgfs::cli
