// Logging setup. Logs always go to stderr, never to stdout (where --json and
// command results go). Call InitLogging once, early in main; spdlog's default
// logger is then usable from any thread.
#pragma once

namespace imgfs {

// verbosity: -1 for --quiet (errors only), 0 default (warnings), 1 for -v
// (info), 2 or more for -vv (debug).
void InitLogging(int verbosity);

// For long-running processes (the mount's supervisor and servers), whose
// stderr is a log file: each line carries the time and the process id.
void UseDaemonLogFormat();

}  // namespace imgfs
