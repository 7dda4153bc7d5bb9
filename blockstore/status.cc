#include "blockstore/status.h"

#include <cerrno>
#include <cstring>

namespace imgfs {

std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "OK";
    case Code::kNotFound: return "NotFound";
    case Code::kAlreadyExists: return "AlreadyExists";
    case Code::kInvalidArgument: return "InvalidArgument";
    case Code::kCorruption: return "Corruption";
    case Code::kIOError: return "IOError";
    case Code::kBusy: return "Busy";
    case Code::kNoSpace: return "NoSpace";
    case Code::kPermissionDenied: return "PermissionDenied";
    case Code::kReadOnly: return "ReadOnly";
    case Code::kNotSupported: return "NotSupported";
    case Code::kNotEmpty: return "NotEmpty";
    case Code::kUnavailable: return "Unavailable";
    case Code::kTimedOut: return "TimedOut";
    case Code::kTooLarge: return "TooLarge";
  }
  return "Unknown";
}

Status Status::FromErrno(int err, std::string_view context) {
  if (err < 0) err = -err;
  std::string msg(context);
  msg += ": ";
  msg += std::strerror(err);
  switch (err) {
    case 0: return Status::OK();
    case ENOENT: return NotFound(std::move(msg));
    case EEXIST: return AlreadyExists(std::move(msg));
    case EINVAL:
    case ENAMETOOLONG:
    case ERANGE:
      return InvalidArgument(std::move(msg));
    case EFBIG: return TooLarge(std::move(msg));
    case EBUSY:
    case ETXTBSY:
    case EWOULDBLOCK:
      return Busy(std::move(msg));
    case ENOSPC:
    case EDQUOT:
      return NoSpace(std::move(msg));
    case EACCES:
    case EPERM:
      return PermissionDenied(std::move(msg));
    case EROFS: return ReadOnly(std::move(msg));
    case ENOTSUP: return NotSupported(std::move(msg));
    case ENOTEMPTY: return NotEmpty(std::move(msg));
    case ETIMEDOUT: return TimedOut(std::move(msg));
    case ECONNREFUSED:
    case EHOSTUNREACH:
    case ENETUNREACH:
    case ESHUTDOWN:
    case ENOTCONN:
      return Unavailable(std::move(msg));
    case EBADMSG:
    case EILSEQ:
      return Corruption(std::move(msg));
    default: return IOError(std::move(msg));
  }
}

int Status::ToErrno() const {
  switch (code_) {
    case Code::kOk: return 0;
    case Code::kNotFound: return ENOENT;
    case Code::kAlreadyExists: return EEXIST;
    case Code::kInvalidArgument: return EINVAL;
    case Code::kCorruption: return EIO;
    case Code::kIOError: return EIO;
    case Code::kBusy: return EBUSY;
    case Code::kNoSpace: return ENOSPC;
    case Code::kPermissionDenied: return EPERM;
    case Code::kReadOnly: return EROFS;
    case Code::kNotSupported: return EOPNOTSUPP;
    case Code::kNotEmpty: return ENOTEMPTY;
    case Code::kUnavailable: return EIO;
    case Code::kTimedOut: return ETIMEDOUT;
    case Code::kTooLarge: return EFBIG;
  }
  return EIO;
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  std::string s(CodeName(code_));
  s += ": ";
  s += msg_;
  return s;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string msg(context);
  msg += ": ";
  msg += msg_;
  return Status(code_, std::move(msg));
}

}  // namespace imgfs
