// Clang's thread-safety analysis (-Wthread-safety), as macros that vanish on
// other compilers. A member marked GUARDED_BY(mu_) may be read or written only
// with mu_ held; a function marked REQUIRES(mu_) is called with it held,
// EXCLUDES(mu_) without. The mutex types that carry these annotations are in
// blockstore/mutex.h; std::mutex has none, so the analysis sees only those.
// The clang build of .ci/run turns every finding into an error
// (docs/architecture.md, "Locks").
#pragma once

#if defined(__clang__)
#define IMGFS_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define IMGFS_THREAD_ANNOTATION(x)
#endif

#define CAPABILITY(x) IMGFS_THREAD_ANNOTATION(capability(x))
#define SCOPED_CAPABILITY IMGFS_THREAD_ANNOTATION(scoped_lockable)
#define GUARDED_BY(x) IMGFS_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) IMGFS_THREAD_ANNOTATION(pt_guarded_by(x))
#define ACQUIRED_BEFORE(...) IMGFS_THREAD_ANNOTATION(acquired_before(__VA_ARGS__))
#define ACQUIRED_AFTER(...) IMGFS_THREAD_ANNOTATION(acquired_after(__VA_ARGS__))
#define REQUIRES(...) IMGFS_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define REQUIRES_SHARED(...) IMGFS_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define ACQUIRE(...) IMGFS_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define ACQUIRE_SHARED(...) IMGFS_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define RELEASE(...) IMGFS_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define RELEASE_SHARED(...) IMGFS_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#define RELEASE_GENERIC(...) IMGFS_THREAD_ANNOTATION(release_generic_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) IMGFS_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
#define EXCLUDES(...) IMGFS_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define ASSERT_CAPABILITY(x) IMGFS_THREAD_ANNOTATION(assert_capability(x))
#define RETURN_CAPABILITY(x) IMGFS_THREAD_ANNOTATION(lock_returned(x))
#define NO_THREAD_SAFETY_ANALYSIS IMGFS_THREAD_ANNOTATION(no_thread_safety_analysis)
