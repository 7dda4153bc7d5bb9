// Status and Result<T>: errors are values everywhere in imgfs.
//
// A Status is OK or carries a Code and a one-line message. Result<T> holds
// either a T or a non-OK Status. Both are [[nodiscard]]. errno values enter
// through Status::FromErrno and leave through Status::ToErrno; those are the
// only two translations between the two worlds.
//
// Thread safety: plain values; safe to copy between threads.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace imgfs {

using Bytes = std::vector<uint8_t>;
using ByteView = std::span<const uint8_t>;
using MutableByteView = std::span<uint8_t>;

enum class Code : uint8_t {
  kOk = 0,
  kNotFound,
  kAlreadyExists,
  kInvalidArgument,
  kCorruption,
  kIOError,
  kBusy,
  kNoSpace,
  kPermissionDenied,
  kReadOnly,
  kNotSupported,
  kNotEmpty,
  kUnavailable,  // a remote service cannot be reached; a retry may help
  kTimedOut,     // a bounded wait ran out; a retry may help
  kTooLarge,     // a size beyond what the backend can hold (EFBIG)
};

std::string_view CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;

  static Status OK() { return Status(); }
  static Status NotFound(std::string msg) { return Status(Code::kNotFound, std::move(msg)); }
  static Status AlreadyExists(std::string msg) {
    return Status(Code::kAlreadyExists, std::move(msg));
  }
  static Status InvalidArgument(std::string msg) {
    return Status(Code::kInvalidArgument, std::move(msg));
  }
  static Status Corruption(std::string msg) { return Status(Code::kCorruption, std::move(msg)); }
  static Status IOError(std::string msg) { return Status(Code::kIOError, std::move(msg)); }
  static Status Busy(std::string msg) { return Status(Code::kBusy, std::move(msg)); }
  static Status NoSpace(std::string msg) { return Status(Code::kNoSpace, std::move(msg)); }
  static Status PermissionDenied(std::string msg) {
    return Status(Code::kPermissionDenied, std::move(msg));
  }
  static Status ReadOnly(std::string msg) { return Status(Code::kReadOnly, std::move(msg)); }
  static Status NotSupported(std::string msg) {
    return Status(Code::kNotSupported, std::move(msg));
  }
  static Status NotEmpty(std::string msg) { return Status(Code::kNotEmpty, std::move(msg)); }
  static Status Unavailable(std::string msg) { return Status(Code::kUnavailable, std::move(msg)); }
  static Status TimedOut(std::string msg) { return Status(Code::kTimedOut, std::move(msg)); }
  static Status TooLarge(std::string msg) { return Status(Code::kTooLarge, std::move(msg)); }

  // Translates an errno value (positive or negative, as librados returns them)
  // into a Status whose message is "context: strerror(err)".
  static Status FromErrno(int err, std::string_view context);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return msg_; }

  bool IsNotFound() const { return code_ == Code::kNotFound; }
  bool IsAlreadyExists() const { return code_ == Code::kAlreadyExists; }
  bool IsInvalidArgument() const { return code_ == Code::kInvalidArgument; }
  bool IsCorruption() const { return code_ == Code::kCorruption; }
  bool IsIOError() const { return code_ == Code::kIOError; }
  bool IsBusy() const { return code_ == Code::kBusy; }
  bool IsNoSpace() const { return code_ == Code::kNoSpace; }
  bool IsPermissionDenied() const { return code_ == Code::kPermissionDenied; }
  bool IsTooLarge() const { return code_ == Code::kTooLarge; }
  // Whether trying the same call again may succeed.
  bool IsRetryable() const { return code_ == Code::kUnavailable || code_ == Code::kTimedOut; }

  // The errno the FUSE layer replies with for this status (0 when OK).
  int ToErrno() const;

  // "NotFound: message", for logs.
  std::string ToString() const;

  // The same status with "context: " put before its message.
  Status WithContext(std::string_view context) const;

  bool operator==(const Status& other) const = default;

 private:
  Status(Code code, std::string msg) : code_(code), msg_(std::move(msg)) {}

  Code code_ = Code::kOk;
  std::string msg_;
};

// Holds a T on success or a non-OK Status on failure.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace imgfs

#define IMGFS_CONCAT_INNER_(a, b) a##b
#define IMGFS_CONCAT_(a, b) IMGFS_CONCAT_INNER_(a, b)

// Returns the status of `expr` from the calling function when it is not OK.
#define RETURN_IF_ERROR(expr)                            \
  do {                                                   \
    ::imgfs::Status imgfs_status_ = (expr);              \
    if (!imgfs_status_.ok()) return imgfs_status_;       \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, ResultExpr())` declares x from the value, or
// returns the error status from the calling function.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(IMGFS_CONCAT_(imgfs_result_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()
