#include "tools/metrics_export.h"

#include <civetweb.h>
#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace imgfs::cli {

namespace {

sockaddr_un StatsAddress(pid_t pid, socklen_t* len) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::string name = "imgfs/serve/" + std::to_string(pid);
  std::memcpy(a.sun_path + 1, name.data(), name.size());  // abstract: sun_path[0] == 0
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return a;
}

bool WriteAll(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = send(fd, s.data() + done, s.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

int HandleMetrics(mg_connection* conn, void* data) {
  auto* m = static_cast<fusefs::MountMetrics*>(data);
  std::string body = m->ToPrometheus();
  mg_printf(conn,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            "Content-Length: %zu\r\nConnection: close\r\n\r\n",
            body.size());
  mg_write(conn, body.data(), body.size());
  return 200;
}

}  // namespace

MetricsExport::MetricsExport(fusefs::MountMetrics& metrics, MetricsOptions options)
    : metrics_(metrics), options_(std::move(options)) {}

void MetricsExport::Start() {
  listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  socklen_t len;
  sockaddr_un a = StatsAddress(getpid(), &len);
  if (listen_fd_ < 0 || bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 ||
      listen(listen_fd_, 16) != 0) {
    spdlog::error("server: the stats socket: {}", std::strerror(errno));
    if (listen_fd_ >= 0) close(listen_fd_);
    listen_fd_ = -1;
  } else {
    stats_thread_ = std::thread([this] { StatsLoop(); });
  }
  if (!options_.file.empty()) file_thread_ = std::thread([this] { FileLoop(); });
  if (!options_.listen.empty()) {
    mg_init_library(0);
    http_thread_ = std::thread([this] { HttpLoop(); });
  }
}

MetricsExport::~MetricsExport() {
  {
    MutexLock lock(mu_);
    stop_ = true;
  }
  cv_.NotifyAll();
  if (listen_fd_ >= 0) shutdown(listen_fd_, SHUT_RDWR);  // wakes accept
  for (std::thread* t : {&stats_thread_, &file_thread_, &http_thread_}) {
    if (t->joinable()) t->join();
  }
  if (listen_fd_ >= 0) close(listen_fd_);
  if (http_) {
    mg_stop(http_);
    mg_exit_library();
  }
}

void MetricsExport::StatsLoop() {
  for (;;) {
    int c = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // shut down
    }
    ucred who{};
    socklen_t wl = sizeof who;
    char req[32] = {};
    pollfd p{c, POLLIN, 0};
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &who, &wl) != 0 ||
        (who.uid != 0 && who.uid != getuid())) {
      WriteAll(c, "error permission denied");
    } else if (poll(&p, 1, 5000) == 1 && recv(c, req, sizeof req - 1, 0) > 0) {
      std::string r(req);
      while (!r.empty() && (r.back() == '\n' || r.back() == '\r')) r.pop_back();
      WriteAll(c, r == "prometheus" ? metrics_.ToPrometheus() : metrics_.ToJson().dump());
    }
    close(c);
  }
}

Status MetricsExport::WriteFile() {
  std::string text = metrics_.ToPrometheus();
  std::string tmp = options_.file + ".tmp." + std::to_string(getpid());
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::FromErrno(errno, "metrics file " + tmp);
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      close(fd);
      unlink(tmp.c_str());
      return Status::FromErrno(err, "metrics file " + tmp);
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  if (rename(tmp.c_str(), options_.file.c_str()) != 0) {
    int err = errno;
    unlink(tmp.c_str());
    return Status::FromErrno(err, "metrics file " + options_.file);
  }
  return Status::OK();
}

void MetricsExport::FileLoop() {
  bool warned = false;
  MutexLock lock(mu_);
  for (;;) {
    bool last = stop_;
    lock.Unlock();
    Status s = WriteFile();
    if (!s.ok() && !warned) spdlog::error("server: {}", s.ToString());
    warned = !s.ok();
    lock.Lock();
    if (last) return;
    cv_.WaitFor(mu_, std::chrono::seconds(options_.interval_s));
  }
}

void MetricsExport::HttpLoop() {
  const char* opts[] = {"listening_ports", options_.listen.c_str(), "num_threads", "2", nullptr};
  bool warned = false;
  MutexLock lock(mu_);
  while (!stop_) {
    mg_callbacks cb{};
    mg_context* ctx = mg_start(&cb, nullptr, opts);
    if (ctx) {
      mg_set_request_handler(ctx, "/metrics", HandleMetrics, &metrics_);
      http_ = ctx;
      spdlog::info("server: metrics on http://{}/metrics", options_.listen);
      return;
    }
    if (!warned) {
      spdlog::error("server: cannot serve metrics on {}; trying again every 5 s", options_.listen);
    }
    warned = true;
    cv_.WaitFor(mu_, std::chrono::seconds(5));
  }
}

Result<std::string> AskServer(pid_t pid, const std::string& request) {
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return Status::FromErrno(errno, "socket");
  socklen_t len;
  sockaddr_un a = StatsAddress(pid, &len);
  if (connect(s, reinterpret_cast<sockaddr*>(&a), len) != 0) {
    int err = errno;
    close(s);
    return Status::Unavailable("server pid " + std::to_string(pid) + " does not answer (" +
                               std::strerror(err) + ")");
  }
  std::string answer;
  if (!WriteAll(s, request + "\n")) {
    close(s);
    return Status::FromErrno(errno, "asking server pid " + std::to_string(pid));
  }
  char buf[65536];
  ssize_t n;
  while ((n = recv(s, buf, sizeof buf, 0)) > 0 || (n < 0 && errno == EINTR)) {
    if (n > 0) answer.append(buf, static_cast<size_t>(n));
  }
  close(s);
  if (answer.starts_with("error ")) return Status::PermissionDenied(answer.substr(6));
  return answer;
}

}  // namespace imgfs::cli
