//! Kernel feature probes for checkpoint/restore: the library behind
//! `stasis check`. Each probe will live in its own module with a stable name,
//! category, the kernel version and `CONFIG_` option it needs, and a `run()`
//! that exercises the feature. The probes themselves land with the `check`
//! issue; this crate holds the place the engine and the zdtm runner depend on.
