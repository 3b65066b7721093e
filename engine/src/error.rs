//! The engine's error type: one variant per failing step, each naming the
//! task and the object, so a message tells the user what to do.

use nix::errno::Errno;
use nix::unistd::Pid;
use stasis_proto::ImageError;

/// Result with the engine's error.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Everything dump and restore can fail at. A variant wrapping an error
/// (an errno, an I/O error) gives it as its `source`, not in its message:
/// print the whole chain with [`EngineError::chain`] (or anyhow's `{:#}`).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)]
pub enum EngineError {
    #[error("task {pid}: cannot read {path}")]
    Proc {
        pid: Pid,
        path: String,
        #[source]
        err: std::io::Error,
    },
    #[error("task {pid}: unexpected format of /proc/{pid}/{file}")]
    ProcFormat { pid: Pid, file: String },
    #[error("task {pid} does not exist (check the -t argument)")]
    NoSuchTask { pid: Pid },
    #[error(
        "task {pid}: stasis runs inside this tree (it is stasis or one of its ancestors, a shell \
         that started it say); dump it from outside, e.g. from another terminal, with --shell-job \
         for a job of a terminal; nothing was dumped"
    )]
    InsideTree { pid: Pid },
    #[error("task {pid}: cannot freeze it with ptrace ({errno}); is it traced by a debugger?")]
    Seize { pid: Pid, errno: Errno },
    #[error("thread {tid}: ptrace {op} failed")]
    Ptrace {
        tid: Pid,
        op: &'static str,
        #[source]
        errno: Errno,
    },
    #[error("thread {tid}: stopped unexpectedly while running {op} ({what})")]
    Unexpected {
        tid: Pid,
        op: &'static str,
        what: String,
    },
    #[error("thread {tid}: {syscall} inside the task failed")]
    Remote {
        tid: Pid,
        syscall: &'static str,
        #[source]
        errno: Errno,
    },
    #[error(
        "task {pid}: {what} is not supported yet; nothing was dumped and the task keeps running"
    )]
    Unsupported { pid: Pid, what: String },
    #[error("task {pid}: reading memory at {addr:#x}")]
    MemRead {
        pid: Pid,
        addr: u64,
        #[source]
        errno: Errno,
    },
    #[error("task {pid}: writing memory at {addr:#x}")]
    MemWrite {
        pid: Pid,
        addr: u64,
        #[source]
        errno: Errno,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("images directory {path}")]
    ImagesDir {
        path: String,
        #[source]
        err: std::io::Error,
    },
    #[error("image {path}: {what}")]
    BadImage { path: String, what: String },
    #[error(
        "PID {pid} is in use by another process; stop it or restore elsewhere (another PID namespace)"
    )]
    PidTaken { pid: Pid },
    #[error("task {pid}: cannot create it with its PID")]
    Fork {
        pid: Pid,
        #[source]
        errno: Errno,
    },
    #[error("task {pid}: reading {what} failed: {errno}; the task keeps running")]
    Dump {
        pid: Pid,
        what: String,
        errno: Errno,
    },
    #[error("task {pid}: restoring {what} failed")]
    Restore {
        pid: Pid,
        what: String,
        #[source]
        errno: Errno,
    },
    #[error("mount {path}: {what} failed: {errno}{hint}")]
    Mount {
        path: String,
        what: String,
        errno: Errno,
        hint: &'static str,
    },
    /// A network device, address or route of the tree's network namespace.
    #[error("network namespace: {what}: {errno}{hint}")]
    Net {
        what: String,
        errno: Errno,
        hint: &'static str,
    },
    /// A cgroup the restore joins or makes.
    #[error("cgroup {path}: {what}: {err}{hint}")]
    Cgroup {
        path: String,
        what: &'static str,
        err: std::io::Error,
        hint: &'static str,
    },
    #[error("mount {path}: {what}")]
    MountContents {
        path: String,
        what: &'static str,
        #[source]
        err: std::io::Error,
    },
    #[error("task {pid}: fd {fd}: cannot open {path}")]
    OpenFile {
        pid: Pid,
        fd: i32,
        path: String,
        #[source]
        err: std::io::Error,
    },
    #[error("task {pid}: fd {fd}: {path} changed since the dump ({what})")]
    FileChanged {
        pid: Pid,
        fd: i32,
        path: String,
        what: String,
    },
    #[error("task {pid} exited during {step}{status}")]
    TaskDied {
        pid: Pid,
        step: &'static str,
        status: String,
    },
    #[error("timed out after {secs} s while {step}")]
    Timeout { secs: u64, step: &'static str },
    #[error("{what}")]
    Arch { what: String },
    #[error(
        "pty {index}: its master was outside the tree (a container's console) and the restore \
         has no caller to hand a new one to; restore it through RPC with orphan_pts_master and \
         notify_scripts, as runc restore --console-socket does"
    )]
    OrphanPty { index: u32 },
    #[error("the caller refused the {script} point: {what}")]
    Notify { script: &'static str, what: String },
}

impl EngineError {
    /// The message and the errors under it, as `message: source: ...`.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut at: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = at {
            out.push_str(": ");
            out.push_str(&e.to_string());
            at = e.source();
        }
        out
    }

    /// A ptrace failure on a thread.
    pub fn ptrace(tid: Pid, op: &'static str) -> impl FnOnce(Errno) -> EngineError {
        move |errno| EngineError::Ptrace { tid, op, errno }
    }

    /// A failed step of reading a task's state at dump.
    pub fn dump(pid: Pid, what: impl Into<String>) -> impl FnOnce(Errno) -> EngineError {
        let what = what.into();
        move |errno| EngineError::Dump { pid, what, errno }
    }

    /// A failed step of restoring a task.
    pub fn restore(pid: Pid, what: impl Into<String>) -> impl FnOnce(Errno) -> EngineError {
        let what = what.into();
        move |errno| EngineError::Restore { pid, what, errno }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_the_step_then_the_errno() {
        let e = EngineError::Restore {
            pid: Pid::from_raw(7),
            what: "a pipe".into(),
            errno: Errno::EMFILE,
        };
        assert_eq!(e.to_string(), "task 7: restoring a pipe failed");
        assert_eq!(
            e.chain(),
            format!("task 7: restoring a pipe failed: {}", Errno::EMFILE)
        );
    }
}
