// The supervisor: see supervisor.h and docs/operations.md, "Crashes and
// upgrades". One thread, one poll loop, no request parsing while a server
// runs. Everything it keeps is in the Supervisor class below.
#include "tools/supervisor.h"

#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>
#include <optional>

#include "blockstore/log.h"
#include "tools/mount_options.h"

extern char** environ;

namespace imgfs::cli {

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

constexpr auto kReadyTimeout = std::chrono::seconds(120);     // a new server's start
constexpr auto kHandOverTimeout = std::chrono::seconds(120);  // an old server's flush and exit
constexpr int32_t kNotifyResend = 7;                          // FUSE_NOTIFY_RESEND (protocol 7.40)

// ---- messages on SOCK_SEQPACKET sockets, optionally carrying one fd ----

}  // namespace

bool SendMessage(int sock, const std::string& msg, int fd) {
  iovec iov{const_cast<char*>(msg.data()), msg.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  ssize_t n;
  do {
    n = sendmsg(sock, &mh, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(msg.size());
}

std::optional<std::string> RecvMessage(int sock, int* fd, int flags) {
  char buf[4096];
  iovec iov{buf, sizeof buf};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  mh.msg_control = cbuf;
  mh.msg_controllen = sizeof cbuf;
  ssize_t n;
  do {
    n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | flags);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return std::nullopt;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      int got;
      std::memcpy(&got, CMSG_DATA(c), sizeof(int));
      if (fd && *fd < 0) {
        *fd = got;
      } else {
        close(got);
      }
    }
  }
  return std::string(buf, static_cast<size_t>(n));
}

namespace {

bool Send(int sock, const std::string& msg) { return SendMessage(sock, msg); }
std::optional<std::string> Recv(int sock, int* fd, int flags = 0) {
  return RecvMessage(sock, fd, flags);
}

sockaddr_un ControlAddress(const std::string& mountpoint, socklen_t* len) {
  std::string name = ControlSocketName(mountpoint);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path + 1, name.data(), name.size());  // sun_path[0] = 0: abstract
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return a;
}

std::string Describe(int wait_status) {
  if (WIFSIGNALED(wait_status)) {
    return std::string("killed by signal ") + std::to_string(WTERMSIG(wait_status)) + " (" +
           strsignal(WTERMSIG(wait_status)) + ")";
  }
  return "exited with status " + std::to_string(WEXITSTATUS(wait_status));
}

void SetCloexec(int fd, bool on) {
  int f = fcntl(fd, F_GETFD);
  if (f >= 0) fcntl(fd, F_SETFD, on ? (f | FD_CLOEXEC) : (f & ~FD_CLOEXEC));
}

// ---- the supervisor ----

class Supervisor {
 public:
  // Fresh: mounted connection `fuse_fd`, no server yet.
  Supervisor(const SupervisorConfig& cfg, int fuse_fd);
  // After an upgrade re-executed the supervisor.
  explicit Supervisor(const json& saved);

  Status Listen();
  // Starts the first server and waits until it serves or fails.
  Status StartFirst();
  int Loop();

 private:
  // One server process and the socket pair end we talk to it on.
  struct Server {
    pid_t pid = 0;
    int ctl = -1;
    bool ready = false;    // said "ready" (standby: store opened, FUSE_INIT replayed)
    bool serving = false;  // said "serving"
    bool go_on_ready = true;
    bool go_sent = false;  // told to take over
    int exe_fd = -1;       // the binary it runs
    std::string exe;
    std::string fail;  // what it said before dying, if anything
    bool hup = false;  // closed its end (exiting): not polled any more
    Clock::time_point deadline{};
  };

  Status Spawn(Server* s, int exe_fd, const std::string& exe, bool go_on_ready);
  void Go(Server* s);
  void OnMessage(Server* s, const std::string& msg, int fd);
  void Drain(Server* s);  // every message it left, before its exit is handled
  void Reap();
  void OnServerDied(int wait_status);
  void OnCandidateDied(const std::string& why);
  void OnClient(int conn);
  void StartUpgrade(int conn, const std::string& path);
  void FinishUpgrade();
  void Answer(const std::string& text);
  void EnterFailing();
  void FailOneRequest();
  void Resend();
  void BeginStop(const char* why);
  bool ConnectionEnded();
  void ReExec(const std::string& exe);
  int Finish();

  std::string mountpoint_, pid_file_, log_file_;
  std::vector<std::string> server_args_;
  int fuse_fd_ = -1, state_fd_ = -1, listen_fd_ = -1, sig_fd_ = -1;
  Server cur_;         // the serving server (or the one starting to serve)
  Server next_;        // an upgrade's new server
  pid_t old_pid_ = 0;  // a server handing over to next_: told to stop, not yet exited
  int old_ctl_ = -1;
  Clock::time_point old_deadline_{};
  int client_ = -1;              // the `--upgrade` caller waiting for the answer
  std::string upgrade_failure_;  // why the upgrade's new server died
  CrashLoopRule crash_loop_;     // this many deaths this close: stop restarting
  std::deque<Clock::time_point> deaths_;
  int restarts_ = 0;
  int upgrades_ = 0;      // upgrades that took over
  bool failing_ = false;  // crash loop: requests get EIO
  bool stopping_ = false;
  bool served_ = false;  // a server has served (the first start is over)
  int last_exit_ = 0;    // the last server's exit status (for our own)
  std::vector<char> eio_buf_;
};

Supervisor::Supervisor(const SupervisorConfig& cfg, int fuse_fd)
    : mountpoint_(cfg.fuse.mountpoint),
      pid_file_(cfg.pid_file),
      log_file_(cfg.log_file),
      server_args_(cfg.server_args),
      fuse_fd_(fuse_fd),
      crash_loop_(cfg.crash_loop) {
  cur_.exe = cfg.exe;
}

Supervisor::Supervisor(const json& j)
    : mountpoint_(j.at("mountpoint")),
      pid_file_(j.at("pid_file")),
      log_file_(j.value("log_file", "")),
      server_args_(j.at("server_args").get<std::vector<std::string>>()),
      fuse_fd_(j.at("fuse_fd")),
      state_fd_(j.at("state_fd")),
      listen_fd_(j.at("listen_fd")),
      client_(j.at("client_fd")),
      crash_loop_{j.at("crash_loop_deaths"), j.at("crash_loop_seconds")},
      restarts_(j.at("restarts")),
      upgrades_(j.value("upgrades", 0)),
      served_(true) {
  cur_.pid = j.at("server_pid");
  cur_.ctl = j.at("server_ctl");
  cur_.exe_fd = j.at("exe_fd");
  cur_.exe = j.at("exe");
  cur_.ready = cur_.serving = true;
  for (int fd : {fuse_fd_, state_fd_, listen_fd_, client_, cur_.ctl, cur_.exe_fd}) {
    if (fd >= 0) SetCloexec(fd, true);
  }
}

Status Supervisor::Listen() {
  // SIGINT and SIGTERM always stop the mount, also when inherited as
  // ignored (a shell ignores SIGINT for what it starts with &); an ignored
  // SIGHUP (nohup) stays ignored.
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGCHLD, SIGTERM, SIGINT, SIGUSR1}) sigaddset(&set, s);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  struct sigaction hup {};
  if (sigaction(SIGHUP, nullptr, &hup) == 0 && hup.sa_handler != SIG_IGN) sigaddset(&set, SIGHUP);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  sig_fd_ = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sig_fd_ < 0) return Status::FromErrno(errno, "signalfd");
  if (state_fd_ < 0) {
    state_fd_ = memfd_create("imgfs-mount-state", MFD_CLOEXEC);
    if (state_fd_ < 0) return Status::FromErrno(errno, "memfd_create");
  }
  if (listen_fd_ < 0) {
    listen_fd_ = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (listen_fd_ < 0) return Status::FromErrno(errno, "socket");
    socklen_t len;
    sockaddr_un a = ControlAddress(mountpoint_, &len);
    if (bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 || listen(listen_fd_, 8)) {
      return Status::FromErrno(
          errno, "control socket for " + mountpoint_ + " (is another imgfs mount serving it?)");
    }
  }
  return Status::OK();
}

Status Supervisor::Spawn(Server* s, int exe_fd, const std::string& exe_path, bool go_on_ready) {
  const std::string exe = exe_path;  // may alias s->exe, which is reset below
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return Status::FromErrno(errno, "socketpair");
  }
  std::vector<std::string> args = {exe};
  args.insert(args.end(), server_args_.begin(), server_args_.end());
  for (auto [flag, fd] :
       {std::pair{"--fuse-fd", fuse_fd_}, {"--state-fd", state_fd_}, {"--ctl-fd", sv[1]}}) {
    args.push_back(flag);
    args.push_back(std::to_string(fd));
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    close(sv[0]);
    close(sv[1]);
    return Status::FromErrno(errno, "fork");
  }
  if (pid == 0) {
    // The child: its own process group (a terminal's ^C is the supervisor's
    // to handle), no blocked signals, and the three descriptors kept.
    setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    for (int fd : {fuse_fd_, state_fd_, sv[1], exe_fd}) SetCloexec(fd, false);
    // What the server's metrics report of the supervisor (an environment
    // variable, which a binary that does not know it ignores).
    setenv("IMGFS_MOUNT_RESTARTS", std::to_string(restarts_).c_str(), 1);
    setenv("IMGFS_MOUNT_UPGRADES", std::to_string(upgrades_ + (s == &next_ ? 1 : 0)).c_str(), 1);
    syscall(SYS_execveat, exe_fd, "", argv.data(), environ, AT_EMPTY_PATH);
    std::string msg = "fail cannot run " + exe + ": " + std::strerror(errno);
    Send(sv[1], msg);
    _exit(127);
  }
  close(sv[1]);
  *s = Server{};
  s->pid = pid;
  s->ctl = sv[0];
  s->go_on_ready = go_on_ready;
  s->exe_fd = exe_fd;
  s->exe = exe;
  s->deadline = Clock::now() + kReadyTimeout;
  spdlog::info("supervisor: started server pid {} ({})", pid, exe);
  return Status::OK();
}

void Supervisor::Go(Server* s) {
  s->go_sent = true;
  Send(s->ctl, "go");
}

void Supervisor::OnMessage(Server* s, const std::string& msg, int fd) {
  if (msg == "ready") {
    s->ready = true;
    if (s->go_on_ready) Go(s);
    if (s == &next_) FinishUpgrade();  // next step of the hand-over
  } else if (msg == "serving") {
    s->serving = true;
    s->deadline = {};
    if (s == &cur_) served_ = true;
    if (s == &next_) FinishUpgrade();
  } else if (msg == "state" && fd >= 0) {
    // The server's compacted state replaces the old file (see fusefs/takeover.h).
    close(state_fd_);
    state_fd_ = fd;
    fd = -1;
  } else if (msg.starts_with("fail ")) {
    s->fail = msg.substr(5);
  }
  if (fd >= 0) close(fd);
}

void Supervisor::Drain(Server* s) {
  if (s->ctl < 0) return;
  for (;;) {
    int fd = -1;
    auto m = Recv(s->ctl, &fd, MSG_DONTWAIT);
    if (!m) break;
    OnMessage(s, *m, fd);
  }
}

bool Supervisor::ConnectionEnded() {
  pollfd p{fuse_fd_, 0, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP | POLLNVAL));
}

Status Supervisor::StartFirst() {
  int exe_fd = open(cur_.exe.c_str(), O_PATH | O_CLOEXEC);
  if (exe_fd < 0) return Status::FromErrno(errno, "opening " + cur_.exe);
  RETURN_IF_ERROR(Spawn(&cur_, exe_fd, cur_.exe, true));
  while (!cur_.serving) {
    pollfd p{cur_.ctl, POLLIN, 0};
    int r = poll(&p, 1, 1000);
    if (r < 0 && errno != EINTR) return Status::FromErrno(errno, "poll");
    if (r > 0) {
      int fd = -1;
      auto m = Recv(cur_.ctl, &fd);
      if (m) {
        OnMessage(&cur_, *m, fd);
        continue;
      }
      // The server closed its end: it is exiting.
      int st = 0;
      while (waitpid(cur_.pid, &st, 0) < 0 && errno == EINTR) {
      }
      std::string why = cur_.fail.empty() ? "the server " + Describe(st) : cur_.fail;
      cur_.pid = 0;
      return Status::IOError(why);
    }
  }
  served_ = true;
  return Status::OK();
}

void Supervisor::Reap() {
  int st = 0;
  pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
    if (pid == cur_.pid) {
      Drain(&cur_);
      close(cur_.ctl);
      cur_.ctl = -1;
      cur_.pid = 0;
      last_exit_ = st;
      OnServerDied(st);
    } else if (pid == next_.pid) {
      Drain(&next_);
      std::string why = next_.fail.empty() ? "it " + Describe(st) : next_.fail;
      close(next_.ctl);
      OnCandidateDied(why);
    } else if (pid == old_pid_) {
      old_pid_ = 0;
      if (old_ctl_ >= 0) {
        Server tmp;
        tmp.ctl = old_ctl_;
        Drain(&tmp);  // its last state file
        close(old_ctl_);
        old_ctl_ = -1;
      }
      last_exit_ = st;
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        spdlog::error("supervisor: the old server {} while handing over", Describe(st));
      }
      if (stopping_) return;
      if (next_.pid) {
        Go(&next_);
      } else if (!cur_.pid) {
        // The new server died while the old one handed over: the old binary
        // serves again.
        Answer("error the new server failed to take over (" + upgrade_failure_ +
               "); a server from the previous binary serves again");
        (void)Spawn(&cur_, cur_.exe_fd, cur_.exe, true);
      }
    }
  }
}

void Supervisor::OnServerDied(int st) {
  if (ConnectionEnded()) BeginStop("unmounted");  // also ends a server waiting to take over
  if (stopping_) return;
  ++restarts_;
  auto now = Clock::now();
  deaths_.push_back(now);
  while (deaths_.size() > static_cast<size_t>(crash_loop_.deaths)) deaths_.pop_front();
  spdlog::error("supervisor: server {} ({}); starting another on the same connection", Describe(st),
                cur_.fail.empty() ? "no message" : cur_.fail);
  if (deaths_.size() == static_cast<size_t>(crash_loop_.deaths) &&
      now - deaths_.front() <= std::chrono::seconds(crash_loop_.seconds)) {
    EnterFailing();
    return;
  }
  Status s = Spawn(&cur_, cur_.exe_fd, cur_.exe, true);
  if (!s.ok()) {
    spdlog::error("supervisor: {}", s.ToString());
    EnterFailing();
  }
}

void Supervisor::EnterFailing() {
  failing_ = true;
  spdlog::critical(
      "supervisor: the server died {} times in {} s: CRASH LOOP. Not restarting it; every "
      "request to {} now fails with EIO. Fix the cause and run 'imgfs mount --upgrade {}' to "
      "start a server again, or unmount.",
      crash_loop_.deaths, crash_loop_.seconds, mountpoint_, mountpoint_);
  Resend();  // what the dead server left unanswered fails now too, rather than hang
}

void Supervisor::Resend() {
  fuse_out_header h{sizeof(fuse_out_header), kNotifyResend, 0};
  if (write(fuse_fd_, &h, sizeof h) < 0) {
    spdlog::warn("supervisor: FUSE_NOTIFY_RESEND: {}", std::strerror(errno));
  }
}

// The one place the supervisor reads a request: after a crash loop, to fail
// it. Only the fixed header is looked at: its length, opcode and id.
void Supervisor::FailOneRequest() {
  eio_buf_.resize(8u << 20);  // more than any request the kernel may send
  ssize_t n = read(fuse_fd_, eio_buf_.data(), eio_buf_.size());
  if (n < static_cast<ssize_t>(sizeof(fuse_in_header))) return;
  fuse_in_header in;
  std::memcpy(&in, eio_buf_.data(), sizeof in);
  if (in.opcode == FUSE_FORGET || in.opcode == FUSE_BATCH_FORGET || in.opcode == FUSE_INTERRUPT) {
    return;  // these take no answer
  }
  fuse_out_header out{sizeof(fuse_out_header), -EIO, in.unique};
  (void)!write(fuse_fd_, &out, sizeof out);
}

void Supervisor::OnCandidateDied(const std::string& why) {
  close(next_.exe_fd);
  bool went = next_.go_sent;
  std::string exe = next_.exe;
  next_ = Server{};
  upgrade_failure_ = why;
  if (stopping_) return;
  if (old_pid_) return;  // the old server is handing over: its exit restarts the old binary
  if (!went) {
    Answer("error the new server (" + exe + ") did not start: " + why +
           (failing_ ? "; requests still fail with EIO" : "; the old server goes on serving"));
    return;
  }
  // It died after the old server had handed over (or while the mount was
  // failing): the previous binary again, under the crash-loop rule.
  Answer("error the new server failed to take over (" + why +
         "); a server from the previous binary serves again");
  if (failing_) {
    Resend();
  } else {
    (void)Spawn(&cur_, cur_.exe_fd, cur_.exe, true);
  }
}

void Supervisor::StartUpgrade(int conn, const std::string& path) {
  if (client_ >= 0 || next_.pid || old_pid_) {
    Send(conn, "error an upgrade of " + mountpoint_ + " is already under way");
    close(conn);
    return;
  }
  client_ = conn;
  int exe_fd = open(path.c_str(), O_PATH | O_CLOEXEC);
  if (exe_fd < 0) {
    Answer("error cannot open " + path + ": " + std::strerror(errno));
    return;
  }
  Status s = Spawn(&next_, exe_fd, path, false);
  if (!s.ok()) {
    close(exe_fd);
    Answer("error " + s.ToString());
  }
}

// Called as the new server reports: ready -> the old one hands over; the
// old one exited -> (Reap) go; serving -> done.
void Supervisor::FinishUpgrade() {
  if (next_.serving) {
    spdlog::info("supervisor: server pid {} ({}) took over", next_.pid, next_.exe);
    ++upgrades_;
    if (cur_.exe_fd >= 0 && cur_.exe_fd != next_.exe_fd) close(cur_.exe_fd);
    cur_ = next_;
    next_ = Server{};
    served_ = true;
    if (failing_) {
      failing_ = false;
      deaths_.clear();
    }
    ReExec(cur_.exe);  // returns only when the supervisor could not re-execute
    Answer("ok the server and the supervisor run " + cur_.exe +
           " (the supervisor could not re-execute itself and runs the old binary)");
    return;
  }
  if (!next_.ready) return;
  if (cur_.pid) {
    // The old server stops reading, answers what it read, flushes, releases
    // its disks and exits; then the new one is told to go (Reap).
    old_pid_ = cur_.pid;
    old_ctl_ = cur_.ctl;
    old_deadline_ = Clock::now() + kHandOverTimeout;
    cur_.pid = 0;
    cur_.ctl = -1;
    kill(old_pid_, SIGTERM);
  } else {
    failing_ = false;  // the supervisor stops answering EIO; the new server takes over
    Go(&next_);
  }
}

void Supervisor::Answer(const std::string& text) {
  if (text.starts_with("error")) spdlog::error("supervisor: upgrade: {}", text.substr(6));
  if (client_ < 0) return;
  Send(client_, text);
  close(client_);
  client_ = -1;
}

void Supervisor::OnClient(int conn) {
  ucred who{};
  socklen_t len = sizeof who;
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &who, &len) != 0 ||
      (who.uid != 0 && who.uid != getuid())) {
    Send(conn, "error permission denied");
    close(conn);
    return;
  }
  pollfd p{conn, POLLIN, 0};
  auto req = poll(&p, 1, 5000) == 1 ? Recv(conn, nullptr) : std::nullopt;
  if (!req) {
    close(conn);
  } else if (req->starts_with("upgrade ")) {
    StartUpgrade(conn, req->substr(8));
  } else if (*req == "status") {
    json j = {{"mountpoint", mountpoint_},
              {"supervisor_pid", getpid()},
              {"server_pid", cur_.pid},
              {"server_binary", cur_.exe},
              {"restarts", restarts_},
              {"upgrades", upgrades_},
              {"state", failing_       ? "failing"
                        : cur_.serving ? "serving"
                                       : "starting"}};
    Send(conn, "ok " + j.dump());
    close(conn);
  } else {
    Send(conn, "error unknown request");
    close(conn);
  }
}

void Supervisor::BeginStop(const char* why) {
  if (stopping_) return;
  stopping_ = true;
  spdlog::info("supervisor: {}: stopping the mount {}", why, mountpoint_);
  if (next_.pid) kill(next_.pid, SIGKILL);
  if (cur_.pid) kill(cur_.pid, SIGTERM);
}

// Re-executes the supervisor from `exe`, keeping every descriptor and child.
void Supervisor::ReExec(const std::string& exe) {
  json j = {{"mountpoint", mountpoint_},
            {"pid_file", pid_file_},
            {"log_file", log_file_},
            {"server_args", server_args_},
            {"fuse_fd", fuse_fd_},
            {"state_fd", state_fd_},
            {"listen_fd", listen_fd_},
            {"client_fd", client_},
            {"restarts", restarts_},
            {"upgrades", upgrades_},
            {"server_pid", cur_.pid},
            {"crash_loop_deaths", crash_loop_.deaths},
            {"crash_loop_seconds", crash_loop_.seconds},
            {"server_ctl", cur_.ctl},
            {"exe_fd", cur_.exe_fd},
            {"exe", cur_.exe}};
  std::vector<int> keep = {fuse_fd_, state_fd_, listen_fd_, client_, cur_.ctl, cur_.exe_fd};
  for (int fd : keep) {
    if (fd >= 0) SetCloexec(fd, false);
  }
  std::string state = j.dump();
  std::vector<std::string> args = {exe, "__supervise", state};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  spdlog::info("supervisor: re-executing from {}", exe);
  spdlog::default_logger()->flush();
  syscall(SYS_execveat, cur_.exe_fd, "", argv.data(), environ, AT_EMPTY_PATH);
  spdlog::error("supervisor: cannot re-execute {}: {}", exe, std::strerror(errno));
  for (int fd : keep) {
    if (fd >= 0) SetCloexec(fd, true);
  }
}

int Supervisor::Loop() {
  if (client_ >= 0) {
    Answer("ok the server and the supervisor run " + cur_.exe + " (server pid " +
           std::to_string(cur_.pid) + ", supervisor pid " + std::to_string(getpid()) + ")");
  }
  Reap();  // a server that exited while the supervisor re-executed
  for (;;) {
    if (stopping_ && !cur_.pid && !next_.pid && !old_pid_) return Finish();
    // The connection is polled only while the supervisor answers requests
    // itself: a poller of /dev/fuse is woken by every request the kernel
    // queues, which cost the servers a quarter of their 1 MiB throughput.
    // Otherwise the servers see the unmount and exit, and Reap finds the
    // connection ended.
    std::vector<pollfd> fds = {{sig_fd_, POLLIN, 0},
                               {listen_fd_, POLLIN, 0},
                               {failing_ ? fuse_fd_ : -1, POLLIN, 0},
                               {cur_.hup ? -1 : cur_.ctl, POLLIN, 0},
                               {next_.hup ? -1 : next_.ctl, POLLIN, 0}};
    const pid_t polled[2] = {cur_.pid, next_.pid};
    auto now = Clock::now();
    Clock::time_point deadline = now + std::chrono::hours(1);
    if (next_.pid && !next_.serving) deadline = std::min(deadline, next_.deadline);
    if (old_pid_) deadline = std::min(deadline, old_deadline_);
    int timeout = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count());
    int r = poll(fds.data(), fds.size(), std::max(0, timeout) + 1);
    if (r < 0 && errno != EINTR) {
      spdlog::critical("supervisor: poll: {}", std::strerror(errno));
      BeginStop("poll failed");
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo si;
      while (read(sig_fd_, &si, sizeof si) == sizeof si) {
        if (si.ssi_signo == SIGCHLD) {
          Reap();
        } else if (si.ssi_signo == SIGUSR1) {
          // logrotate moved the log: write to a new file, and so does the server.
          if (!log_file_.empty()) ReopenLog(log_file_);
          spdlog::info("supervisor: SIGUSR1: reopened the log");
          if (cur_.pid && cur_.serving) kill(cur_.pid, SIGUSR1);
        } else {
          BeginStop(strsignal(static_cast<int>(si.ssi_signo)));
        }
      }
    }
    if (fds[2].revents & (POLLERR | POLLHUP | POLLNVAL)) {
      // The serving server sees the end of the connection itself; one
      // waiting to take over would wait for ever.
      BeginStop("unmounted");
      if (failing_ && !cur_.pid && !next_.pid && !old_pid_) return Finish();
    } else if (fds[2].revents & POLLIN) {
      FailOneRequest();
    }
    for (auto [s, i] : {std::pair{&cur_, 3}, {&next_, 4}}) {
      // Only if it is still the server polled (Reap may have replaced it).
      if (!(fds[i].revents & (POLLIN | POLLHUP)) || s->pid != polled[i - 3] || s->ctl < 0) continue;
      int fd = -1;
      auto m = Recv(s->ctl, &fd, MSG_DONTWAIT);
      if (m) {
        OnMessage(s, *m, fd);
      } else if (fds[i].revents & POLLHUP) {
        s->hup = true;  // it is exiting; Reap handles the rest
      }
    }
    if (fds[1].revents & POLLIN) {
      int conn = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn >= 0) OnClient(conn);
    }
    now = Clock::now();
    if (next_.pid && !next_.serving && now >= next_.deadline) {
      next_.fail =
          "it did not take over within " +
          std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kReadyTimeout).count()) +
          " s";
      kill(next_.pid, SIGKILL);
      next_.deadline = now + std::chrono::hours(1);
    }
    if (old_pid_ && now >= old_deadline_) {
      spdlog::error("supervisor: the old server did not hand over in time; killing it");
      kill(old_pid_, SIGKILL);
      old_deadline_ = now + std::chrono::hours(1);
    }
  }
}

int Supervisor::Finish() {
  if (!ConnectionEnded()) {
    Status s = fusefs::UnmountFuse(mountpoint_);
    if (!s.ok()) spdlog::error("supervisor: {}", s.ToString());
  }
  close(fuse_fd_);
  if (!pid_file_.empty()) unlink(pid_file_.c_str());
  spdlog::info("supervisor: unmounted {}", mountpoint_);
  return WIFEXITED(last_exit_) && WEXITSTATUS(last_exit_) == 0 ? 0 : 1;
}

}  // namespace

std::string ControlSocketName(const std::string& mountpoint) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a: stable across builds
  for (unsigned char c : mountpoint) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "imgfs/mount/%016llx", static_cast<unsigned long long>(h));
  return buf;
}

Result<std::string> AskSupervisor(const std::string& mountpoint, const std::string& request) {
  int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) return Status::FromErrno(errno, "socket");
  socklen_t len;
  sockaddr_un a = ControlAddress(mountpoint, &len);
  if (connect(s, reinterpret_cast<sockaddr*>(&a), len) != 0) {
    int err = errno;
    close(s);
    return Status::Unavailable("no imgfs supervisor serves " + mountpoint + " (" +
                               std::strerror(err) + ")");
  }
  if (!Send(s, request)) {
    close(s);
    return Status::FromErrno(errno, "asking the supervisor of " + mountpoint);
  }
  auto answer = Recv(s, nullptr);
  close(s);
  if (!answer) return Status::IOError("the supervisor of " + mountpoint + " did not answer");
  return *answer;
}

int RunSupervisor(const SupervisorConfig& cfg, const std::function<void(const Status&)>& ready) {
  UseDaemonLogFormat();
  auto fd = fusefs::MountFuse(cfg.fuse);
  if (!fd.ok()) {
    ready(fd.status());
    return 1;
  }
  Supervisor sup(cfg, *fd);
  Status s = sup.Listen();
  if (s.ok()) s = sup.StartFirst();
  if (!s.ok()) {
    (void)fusefs::UnmountFuse(cfg.fuse.mountpoint);
    ready(s);
    return 1;
  }
  if (!cfg.pid_file.empty()) {
    FILE* f = std::fopen(cfg.pid_file.c_str(), "w");
    if (!f || std::fprintf(f, "%d\n", getpid()) < 0 || std::fclose(f) != 0) {
      spdlog::warn("cannot write pid file {}", cfg.pid_file);
    }
  }
  spdlog::info("mounted at {}", cfg.fuse.mountpoint);
  ready(Status::OK());
  return sup.Loop();
}

int ResumeSupervisor(const std::string& state) {
  UseDaemonLogFormat();
  json j;
  try {
    j = json::parse(state);
    Supervisor sup(j);
    Status s = sup.Listen();
    if (!s.ok()) {
      spdlog::critical("supervisor: resuming: {}", s.ToString());
      return 1;
    }
    spdlog::info("supervisor: resumed after an upgrade");
    return sup.Loop();
  } catch (const std::exception& e) {
    spdlog::critical("supervisor: cannot resume from '{}': {}", state, e.what());
    return 1;
  }
}

}  // namespace imgfs::cli
