// imgfs __serve: one server of a mount, started by its supervisor
// (tools/supervisor.h; docs/operations.md, "Crashes and upgrades").
//
// 1. Opens the store and a libfuse session over the connection it was given.
// 2. Brings the session to the connection's negotiated state: the first
//    server answers the kernel's FUSE_INIT and records the exchange in the
//    state file; a later one replays the record (FuseServer::Negotiate).
// 3. Says "ready" and waits for "go": during an upgrade the old server still
//    serves until then.
// 4. Reads the state its predecessors left, marks their storage clients dead
//    (an rbd lock one of them still holds is broken, and that client
//    blocklisted), hands the supervisor a compacted state file, opens again
//    every file the kernel holds open, asks the kernel to send again what
//    the predecessor left unanswered, says "serving" and serves.
// 5. On SIGTERM (the supervisor's stop, or an upgrade's hand-over) it stops
//    reading requests, answers those it read, flushes and closes every disk
//    (releasing their locks) and exits 0; 1 when a flush failed.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <optional>
#include <thread>

#include "blockstore/log.h"
#include "blockstore/units.h"
#include "fusefs/fs.h"
#include "fusefs/fuse_adapter.h"
#include "fusefs/takeover.h"
#include "tools/cli.h"
#include "tools/metrics_export.h"
#include "tools/mount_options.h"
#include "tools/supervisor.h"

namespace imgfs::cli {

namespace {

struct ServeArgs {
  std::string mountpoint;
  std::vector<std::string> options;
  bool debug = false;
  int fuse_fd = -1;
  int state_fd = -1;
  int ctl_fd = -1;
  std::optional<std::string> detach;  // --detach LOG: once serving, stderr to LOG ("": none)
};

uint64_t EnvCount(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : 0;
}

int Serve(const GlobalOptions& g, const ServeArgs& a) {
  // Stop signals go to one thread that waits for them; blocked before any
  // other thread exists (librados starts many), so none of those gets one.
  sigset_t stop;
  sigemptyset(&stop);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGUSR1}) sigaddset(&stop, s);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  signal(SIGPIPE, SIG_IGN);
  for (int fd : {a.fuse_fd, a.state_fd, a.ctl_fd}) fcntl(fd, F_SETFD, FD_CLOEXEC);
  UseDaemonLogFormat();
  const int ctl = a.ctl_fd;
  auto fail = [&](const Status& s) {
    spdlog::error("server: {}", s.ToString());
    SendMessage(ctl, "fail " + s.message());
    return 1;
  };

  char store_path[PATH_MAX];
  if (!realpath(StorePath(g).c_str(), store_path)) {
    return fail(Status::NotFound("no store at " + StorePath(g) + ": run 'imgfs init'"));
  }
  fusefs::FsOptions fso;
  fso.uid = getuid();
  fso.gid = getgid();
  fusefs::FuseConfig fc;
  fc.mountpoint = a.mountpoint;
  fc.fsname = FsNameFor(store_path);
  fc.debug = a.debug;
  StoreOptions so;
  MetricsOptions mo;
  if (Status s = ParseMountOptions(a.options, &fso, &fc, &so, nullptr, &mo); !s.ok()) {
    return fail(s);
  }
  auto store = Store::Open(store_path, {}, so);
  if (!store.ok()) return fail(store.status());
  spdlog::info("chunk cache: {}", FormatSizeHuman((*store)->chunks().cache_bytes()));
  fusefs::FileSystem fs(**store, fso);
  fs.metrics().SetChunkStore(&(*store)->chunks());
  fs.metrics().SetInfo(
      {a.mountpoint, EnvCount("IMGFS_MOUNT_RESTARTS"), EnvCount("IMGFS_MOUNT_UPGRADES")});
  auto server = fusefs::FuseServer::Create(fs, fc, a.fuse_fd);
  if (!server.ok()) return fail(server.status());

  auto loaded = fusefs::LoadState(a.state_fd);
  if (!loaded.ok()) return fail(loaded.status());
  fusefs::StateLog first(a.state_fd);
  auto init = (*server)->Negotiate(
      loaded->init, [&](const fusefs::InitRecord& r) { return first.AppendInit(r); });
  if (!init.ok()) return fail(init.status());
  if (!SendMessage(ctl, "ready")) return 1;
  auto go = RecvMessage(ctl, nullptr);
  if (!go || *go != "go") return 0;  // the supervisor gave up on this server

  auto t0 = std::chrono::steady_clock::now();
  loaded = fusefs::LoadState(a.state_fd);
  if (!loaded.ok()) return fail(loaded.status());
  (*store)->disks().SetDeadLockOwners(loaded->clients);
  std::string me = (*store)->disks().LockOwnerId();
  if (!me.empty() &&
      std::find(loaded->clients.begin(), loaded->clients.end(), me) == loaded->clients.end()) {
    loaded->clients.push_back(me);
  }
  // The compacted state goes to the supervisor before any disk is opened,
  // so a successor knows this server's client if it dies holding a lock.
  int state = memfd_create("imgfs-mount-state", MFD_CLOEXEC);
  if (state < 0) return fail(Status::FromErrno(errno, "memfd_create"));
  if (Status s = fusefs::WriteState(state, *loaded); !s.ok()) return fail(s);
  fusefs::StateLog log(state);
  fs.SetStateSink(&log);
  if (!SendMessage(ctl, "state", state)) return fail(Status::IOError("lost the supervisor"));
  close(a.state_fd);  // the supervisor holds the new file instead
  size_t broken = fs.Restore(loaded->fs);
  bool resent = (*server)->Resend();
  auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  spdlog::info(
      "server pid {}: took over {} names, {} open files ({} could not be opened), {} "
      "open directories in {} ms{}",
      getpid(), loaded->fs.inos.size(), loaded->fs.opens.size(), broken, loaded->fs.dirs.size(), ms,
      resent ? "; asked the kernel to resend" : "");

  // After "go": during an upgrade the old server has exited by now, so the
  // metrics port is free.
  MetricsExport exporter(fs.metrics(), mo);
  exporter.Start();

  fusefs::FuseServer* srv = server->get();
  std::string log_file = a.detach.value_or("");
  std::thread([stop, srv, log_file] {
    int sig = 0;
    for (;;) {
      if (sigwait(&stop, &sig) != 0) continue;
      if (sig != SIGUSR1) break;
      if (!log_file.empty()) ReopenLog(log_file);  // logrotate (the supervisor passes it on)
      spdlog::info("server pid {}: SIGUSR1: reopened the log", getpid());
    }
    spdlog::info("server pid {}: {}: stopping", getpid(), strsignal(sig));
    srv->Stop();
  }).detach();
  SendMessage(ctl, "serving");
  // What went before reached the terminal of `imgfs mount`, as the
  // supervisor's own messages do until the mount is ready.
  if (a.detach) RedirectStdio(*a.detach);
  bool unmounted = false;
  Status st = srv->Run(&unmounted);
  if (!st.ok()) {
    spdlog::error("server pid {}: {}", getpid(), st.ToString());
    return 1;
  }
  spdlog::info("server pid {}: {}", getpid(), unmounted ? "unmounted" : "stopped");
  return 0;
}

}  // namespace

void RegisterServeCommands(Cli& cli) {
  auto args = std::make_shared<ServeArgs>();
  auto* serve = cli.app.add_subcommand("__serve", "One server of a mount (run by its supervisor)");
  serve->group("");  // hidden
  serve->add_option("--mountpoint", args->mountpoint)->required();
  serve->add_option("-o", args->options);
  serve->add_flag("-d", args->debug);
  serve->add_option("--fuse-fd", args->fuse_fd)->required();
  serve->add_option("--state-fd", args->state_fd)->required();
  serve->add_option("--ctl-fd", args->ctl_fd)->required();
  serve->add_option("--detach", args->detach);
  serve->callback([&cli, args] {
    cli.action = [&cli, args] {
      int rc = Serve(cli.global, *args);
      return Outcome{Status::OK(), rc};
    };
  });

  auto state = std::make_shared<std::string>();
  auto* sup = cli.app.add_subcommand("__supervise", "A supervisor resuming after an upgrade");
  sup->group("");
  sup->add_option("STATE", *state)->required();
  sup->callback([&cli, state] {
    cli.action = [state] { return Outcome{Status::OK(), ResumeSupervisor(*state)}; };
  });
}

}  // namespace imgfs::cli
