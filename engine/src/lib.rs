//! stasis: checkpoint/restore of Linux process trees in CRIU's image format.
//!
//! This library holds the engine (dump, restore) and the image inspector; the
//! `stasis` binary is its command line. `dump/` and `restore/` orchestrate;
//! each kernel object has its own module.

pub mod cpu;
pub mod creds;
pub mod dump;
pub mod error;
pub mod eventfd;
pub mod eventpoll;
pub mod fanotify;
pub mod file_lock;
pub mod files;
pub mod images;
pub mod inet;
pub mod inotify;
pub mod inspect;
pub mod ipc;
pub mod memfd;
pub mod mm;
pub mod mqueue;
pub mod netlink_sk;
pub mod netlock;
pub mod ns;
pub mod packet;
pub mod pidfd;
pub mod proc;
pub mod progress;
pub mod remote;
pub mod restore;
pub mod seccomp;
pub mod seize;
pub mod signalfd;
pub mod sk_opts;
pub mod sys;
pub mod task;
pub mod tcp;
pub mod timerfd;
pub mod timers;
pub mod tty;
pub mod unix;
pub mod workers;

pub use error::{EngineError, Result};
