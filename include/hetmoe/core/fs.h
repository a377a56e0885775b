// File-system helpers that must not go through std::filesystem::remove_all: the PyPI libtorch.so
// exports its own, broken copy of it (a call jumps to address 0 on some machines, whatever the
// link order), so hetmoe removes trees with POSIX calls.
#pragma once

#include <string>

namespace hetmoe {

// Removes a file or a directory tree without following symlinks. A missing path is not an error.
// Returns false (and leaves what it could not remove) on failure, with the reason in *error.
bool remove_tree(const std::string& path, std::string* error = nullptr);

// Creates a new file named `prefix` followed by six random characters, never one that exists
// (concurrent callers each get their own), with the permissions a plain create would give (0666
// less the umask, where mkstemp alone gives 0600). Returns its descriptor and sets *name, or -1
// with errno set.
int create_unique_file(const std::string& prefix, std::string* name);

// An exclusive flock on a directory for as long as the object lives. Best effort: where the
// directory cannot be opened or the file system has no flock (some network ones), nothing is
// locked and failure() says why. With Wait::No, a lock held elsewhere (another process, or
// another DirectoryLock in this one) is not waited for: failure() is EWOULDBLOCK.
class DirectoryLock {
 public:
  enum class Wait { Yes, No };
  DirectoryLock(const std::string& dir, Wait wait);
  ~DirectoryLock();
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  bool locked() const { return failure_ == 0; }
  bool opened() const { return fd_ >= 0; }
  // The errno of the open or flock that failed; 0 when locked.
  int failure() const { return failure_; }
  // fsync of the directory: makes renames inside it durable (best effort, as the lock).
  void sync() const;

 private:
  int fd_ = -1;
  int failure_ = 0;
};

// A new, empty directory $TMPDIR/<prefix>-XXXXXX (or under /tmp), removed with everything in it
// when the object goes. Throws hetmoe::Error("[fs] ...") when it cannot be created.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace hetmoe
