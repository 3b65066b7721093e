//! The `stasis` command line: CRIU-compatible verbs and options, and the image
//! inspector (`stasis image ...`, the equivalent of CRIU's `crit`).
#![forbid(unsafe_code)]

mod compat;
mod config;
mod rpc;

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use stasis_engine::inspect::{self, View};
use stasis_proto::ImageReader;
use stasis_proto::json::{self, DecodeOptions};

/// Checkpoint/restore for Linux process trees, speaking CRIU's image format and CLI.
#[derive(Debug, Parser)]
#[command(
    name = "stasis",
    version,
    about,
    disable_help_subcommand = true,
    term_width = 80
)]
struct Cli {
    /// Log verbosity: -v0 nothing, -v1 errors, -v2 warnings (default), -v3 info, -v4 debug;
    /// -v alone, or -vv, -vvv, raises it from the default
    #[arg(short = 'v', long = "verbosity", value_name = "N", num_args = 0..=1,
          default_missing_value = "v", require_equals = false, global = true)]
    verbosity: Option<String>,

    /// Write the log to FILE instead of standard error
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    log_file: Option<PathBuf>,

    /// Do not read /etc/criu/default.conf and ~/.criu/default.conf
    /// ($CRIU_CONFIG_FILE and --config are still read)
    #[arg(long, global = true)]
    no_default_config: bool,

    /// Read options from FILE too (CRIU's syntax: one long option per line,
    /// without dashes); the command line overrides it
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and convert image files (the equivalent of CRIU's crit)
    #[command(subcommand)]
    Image(ImageCommand),
    /// Check whether the kernel supports what checkpoint/restore needs
    #[command(after_help = check_after_help())]
    Check(CheckArgs),
    /// Checkpoint a process tree into an images directory
    Dump(DumpArgs),
    /// Restore a process tree from an images directory
    Restore(RestoreArgs),
    /// Serve CRIU's RPC on the inherited socket FD (as container runtimes
    /// and pycriu start `criu swrk FD`)
    Swrk {
        /// The socket (SOCK_SEQPACKET) to serve
        fd: i32,
    },
    /// Print shell completions for bash, zsh or fish
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Write the manual pages: stasis(8) and one per command, stasis-dump(8), ...
    Man {
        /// The directory to write them to
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
    },
    /// Serve CRIU's RPC on a unix socket, a process per connection (as
    /// libcriu and pycriu connect to `criu service`)
    Service {
        /// Where the socket is made
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/var/run/criu_service.socket"
        )]
        address: PathBuf,
        /// Run in the background
        #[arg(short = 'd', long)]
        daemon: bool,
        /// Write the service's PID to FILE
        #[arg(long, value_name = "FILE")]
        pidfile: Option<PathBuf>,
    },
}

/// Options `dump` and `restore` share, as CRIU spells them.
#[derive(Debug, clap::Args)]
struct CrArgs {
    /// The images directory (must exist)
    #[arg(
        short = 'D',
        long = "images-dir",
        value_name = "DIR",
        default_value = "."
    )]
    images_dir: PathBuf,
    /// Write the log to FILE (relative to the images directory)
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Print the statistics of the run
    #[arg(long)]
    display_stats: bool,
    /// How established TCP connections are kept quiet from the dump until
    /// their restore: nftables drops their packets (iptables, CRIU's
    /// default, is taken to mean the same lock); skip leaves the network
    /// alone
    #[arg(long, value_name = "METHOD", default_value = "nftables", value_parser = ["nftables", "iptables", "skip"])]
    network_lock: String,
    /// Run SCRIPT at each action point (pre-dump, post-dump, pre-restore,
    /// setup-namespaces, post-setup-namespaces, post-restore, post-resume)
    /// with CRTOOLS_SCRIPT_ACTION, CRTOOLS_IMAGE_DIR and CRTOOLS_INIT_PID
    /// set; a failing script fails the dump (the tree keeps running) or
    /// the restore; repeatable
    #[arg(long, value_name = "SCRIPT")]
    action_script: Vec<PathBuf>,
}

impl CrArgs {
    /// Whether to lock (dump) or unlock (restore) the network.
    fn network_lock(&self) -> bool {
        self.network_lock != "skip"
    }

    /// The action scripts as a notification hook, if any.
    fn scripts(&self) -> Option<stasis_engine::notify::Notify> {
        if self.action_script.is_empty() {
            return None;
        }
        let (scripts, dir) = (self.action_script.clone(), self.images_dir.clone());
        Some(stasis_engine::notify::Notify::new(
            move |point, pid, _fd| {
                for s in &scripts {
                    let st = std::process::Command::new(s)
                        .env("CRTOOLS_SCRIPT_ACTION", point)
                        .env("CRTOOLS_IMAGE_DIR", &dir)
                        .env("CRTOOLS_INIT_PID", pid.to_string())
                        .stdin(std::process::Stdio::null())
                        .status()
                        .map_err(|e| format!("cannot run action script {}: {e}", s.display()))?;
                    if !st.success() {
                        return Err(format!("action script {} failed ({st})", s.display()));
                    }
                }
                Ok(())
            },
        ))
    }

    /// The log file: CRIU resolves a relative one against the images directory.
    fn log(&self) -> Option<PathBuf> {
        self.log_file.as_ref().map(|f| self.images_dir.join(f))
    }
}

/// `stasis dump`: CRIU's options.
#[derive(Debug, clap::Args)]
struct DumpArgs {
    /// PID of the root of the tree to dump
    #[arg(short = 't', long = "tree", value_name = "PID")]
    tree: i32,
    #[command(flatten)]
    cr: CrArgs,
    /// Leave the tree running after the dump
    #[arg(short = 'R', long = "leave-running")]
    leave_running: bool,
    /// The tree is a job of a shell: its terminal stays outside the dump
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Give up freezing after SECS seconds (the tree is left running)
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    /// Write the root's PID to FILE
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// Save files deleted while open up to SIZE bytes (suffixes K, M, G)
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    ghost_limit: u64,
    /// Dump the file locks the tree holds (flock, POSIX and OFD locks;
    /// without it, a held lock is refused)
    #[arg(short = 'l', long)]
    file_locks: bool,
    /// Dump established TCP connections (TCP repair; without it, one is refused)
    #[arg(long)]
    tcp_established: bool,
    /// Drop the connections a TCP listener has not accepted yet (without
    /// it, a listener with such connections is refused: they would be lost)
    #[arg(long)]
    skip_in_flight: bool,
    /// Allow datagram unix sockets connected to a named socket outside the
    /// tree: the restore connects them to that name again (CRIU's optional
    /// inode list is accepted and all such sockets are allowed)
    #[arg(long, value_name = "INODES", num_args = 0..=1, default_missing_value = "", require_equals = true)]
    ext_unix_sk: Option<String>,
    /// Accepted for CRIU's callers: the tasks' cgroups are always saved
    /// (cgroup.img) when they are not stasis' own; MODE is checked
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "soft", require_equals = true, value_parser = parse_cg_mode)]
    manage_cgroups: Option<stasis_engine::cgroup::Mode>,
    /// Freeze the tree through this freezer cgroup (a v2 cgroup, or a v1
    /// freezer cgroup) while seizing it: no task forks or exits meanwhile
    #[arg(long, value_name = "DIR")]
    freeze_cgroup: Option<PathBuf>,
    /// mnt[POINT]:KEY: the tree's mount at POINT is the caller's (a bind
    /// from outside): saved as external under KEY; repeatable (veth[A]:B
    /// is taken and means something at restore only)
    #[arg(long, value_name = "mnt[POINT]:KEY", value_parser = parse_external)]
    external: Vec<External>,
    /// POINT:KEY, the same as --external mnt[POINT]:KEY
    #[arg(long, value_name = "POINT:KEY", value_parser = parse_ext_mount_map)]
    ext_mount_map: Vec<(String, String)>,
    /// net: the network namespace's devices other than loopback are the
    /// caller's (set up again by it after the restore), not saved
    #[arg(long, value_name = "net", value_parser = ["net"])]
    empty_ns: Option<String>,
    /// Save the cgroups from PATH down (a container's cgroup above its
    /// tasks'), for the hierarchy with CONTROLLER only, or all; repeatable
    #[arg(long, value_name = "[CONTROLLER:]PATH")]
    cgroup_root: Vec<stasis_engine::cgroup::CgRoot>,
}

/// One of CRIU's `--external` forms stasis takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum External {
    /// `mnt[A]:B`: at dump, the mount at A is the caller's, known by key
    /// B; at restore, bind B at the mount known by key A.
    Mnt(String, String),
    /// `veth[INNER]:OUTER[@BRIDGE]` (restore): the peer outside the tree
    /// of veth INNER is made again in stasis' network namespace, named
    /// OUTER (and added to BRIDGE there, up).
    Veth(String, String),
    /// `tty[RDEV:DEV]` (dump): the terminal with that device number (hex)
    /// on that device is the caller's (a container's console); the
    /// restore takes it from `--inherit-fd fd[N]:tty[RDEV:DEV]`.
    Tty(String),
    /// `macvlan[INNER]:OUTER` (restore): macvlan INNER of the tree's
    /// network namespace is made on device OUTER of stasis'.
    Macvlan(String, String),
    /// `net[INO]:KEY` (dump): the network namespace with inode INO is the
    /// caller's; the restore joins the one given by `--inherit-fd
    /// fd[N]:KEY`.
    Net(u64, String),
    /// `KEY:VALUE` without a kind: CRIU keeps such strings for plugins to
    /// look up; none of stasis' objects does (LXC passes its console so).
    Other(String),
}

/// Parse CRIU's `--external KIND[A]:B`; kinds stasis does not take are
/// refused by name.
pub(crate) fn parse_external(s: &str) -> std::result::Result<External, String> {
    let Some((kind, rest)) = s.split_once('[') else {
        return s
            .split_once(':')
            .map(|_| External::Other(s.to_owned()))
            .ok_or_else(|| format!("--external {s}: write KIND[A]:B"));
    };
    if kind == "tty" {
        return rest
            .strip_suffix(']')
            .and_then(|k| k.split_once(':'))
            .filter(|(r, d)| {
                u64::from_str_radix(r, 16).is_ok() && u64::from_str_radix(d, 16).is_ok()
            })
            .map(|_| External::Tty(s.to_owned()))
            .ok_or_else(|| format!("--external {s}: write tty[RDEV:DEV], both in hex"));
    }
    let (a, b) = rest
        .split_once("]:")
        .ok_or_else(|| format!("--external {s}: write {kind}[A]:B"))?;
    let (a, b) = (a.to_owned(), b.to_owned());
    match kind {
        "mnt" => Ok(External::Mnt(a, b)),
        "veth" => Ok(External::Veth(a, b)),
        "macvlan" => Ok(External::Macvlan(a, b)),
        "net" => a
            .parse()
            .map(|ino| External::Net(ino, b))
            .map_err(|_| format!("--external {s}: write net[INODE]:KEY")),
        _ => Err(format!(
            "--external {s}: mnt[...], veth[...], macvlan[...], net[...] and tty[...] are taken"
        )),
    }
}

/// The mounts of `ext` (`mnt[A]:B`) and `ext_mount_map`, as (A, B).
fn mounts_of(ext: &[External], map: &[(String, String)]) -> Vec<(String, String)> {
    ext.iter()
        .filter_map(|e| match e {
            External::Mnt(a, b) => Some((a.clone(), b.clone())),
            _ => None,
        })
        // `auto`: CRIU finds binds from outside by itself; stasis saves
        // a bind of the engine's file systems as such and needs no key.
        .chain(map.iter().filter(|m| m.0 != "auto").cloned())
        .collect()
}

/// The veths of `ext` (`veth[INNER]:OUTER`) and `--veth-pair`, as (INNER, OUTER).
fn veths_of(ext: &[External], pairs: &[(String, String)]) -> Vec<(String, String)> {
    ext.iter()
        .filter_map(|e| match e {
            External::Veth(a, b) => Some((a.clone(), b.clone())),
            _ => None,
        })
        .chain(pairs.iter().cloned())
        .collect()
}

/// CRIU's older `--veth-pair IN=OUT`, the same as `--external veth[IN]:OUT`.
fn parse_veth_pair(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| format!("--veth-pair {s}: write INNER=OUTER"))
}

/// CRIU's older `--ext-mount-map A:B`, the same as `--external mnt[A]:B`.
fn parse_ext_mount_map(s: &str) -> std::result::Result<(String, String), String> {
    if s == "auto" {
        return Ok(("auto".into(), String::new()));
    }
    s.split_once(':')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| format!("--ext-mount-map {s}: write A:B"))
}

/// CRIU's `--manage-cgroups` modes stasis honours.
fn parse_cg_mode(s: &str) -> std::result::Result<stasis_engine::cgroup::Mode, String> {
    stasis_engine::cgroup::Mode::from_criu(s)
}

/// `stasis restore`: CRIU's options.
#[derive(Debug, clap::Args)]
struct RestoreArgs {
    #[command(flatten)]
    cr: CrArgs,
    /// Detach: exit once the tree runs instead of waiting for its root
    #[arg(short = 'd', long = "restore-detached")]
    restore_detached: bool,
    /// Write the restored root's PID to FILE
    #[arg(long, value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// The tree is a job of a shell (reopen its terminal by path)
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Accepted for CRIU's callers: the locks in the images are always taken again
    #[arg(short = 'l', long)]
    file_locks: bool,
    /// Accepted for CRIU's callers
    #[arg(long)]
    tcp_established: bool,
    /// Accepted for CRIU's callers: sockets dumped with it are connected
    /// to their outside peer's name again
    #[arg(long, value_name = "INODES", num_args = 0..=1, default_missing_value = "", require_equals = true)]
    ext_unix_sk: Option<String>,
    /// Put the tasks back in their cgroups, making missing ones with their
    /// properties (soft, the default), also writing the properties of
    /// existing ones (full), refusing existing ones (strict), joining
    /// existing ones only, with (props) or without (none) their properties;
    /// or leave the tasks in stasis' (ignore)
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "soft", require_equals = true, value_parser = parse_cg_mode)]
    manage_cgroups: Option<stasis_engine::cgroup::Mode>,
    /// Put the tree's cgroups under PATH instead of under its root task's
    /// (for the hierarchy with CONTROLLER only, or all); repeatable
    #[arg(long, value_name = "[CONTROLLER:]PATH")]
    cgroup_root: Vec<stasis_engine::cgroup::CgRoot>,
    /// The root file system of a tree that had a root of its own (a
    /// pivot_root'ed tree, a container): its mounts are made under DIR,
    /// which becomes the root of its mount namespace
    #[arg(short = 'r', long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// mnt[KEY]:PATH: bind PATH at the tree's external mount KEY;
    /// veth[INNER]:OUTER[@BRIDGE]: make the peer outside the tree of its
    /// veth INNER in stasis' network namespace, named OUTER (added to
    /// BRIDGE there, up); repeatable
    #[arg(long, value_name = "KIND[A]:B", value_parser = parse_external)]
    external: Vec<External>,
    /// INNER=OUTER[@BRIDGE], the same as --external veth[INNER]:OUTER[@BRIDGE]
    /// (CRIU's older form)
    #[arg(long, value_name = "INNER=OUTER", value_parser = parse_veth_pair)]
    veth_pair: Vec<(String, String)>,
    /// KEY:PATH, the same as --external mnt[KEY]:PATH
    #[arg(long, value_name = "KEY:PATH", value_parser = parse_ext_mount_map)]
    ext_mount_map: Vec<(String, String)>,
    /// fd[N]:pipe:[INO]: stasis' fd N takes the place of the tree's pipe
    /// INO (whose other end was outside the tree: a runtime's stdio), or
    /// fd[N]:tty[RDEV:DEV] of a terminal dumped as external; repeatable
    #[arg(long, value_name = "fd[N]:KEY", value_parser = parse_inherit_fd)]
    inherit_fd: Vec<(String, i32)>,
    /// The restored root becomes a sibling of stasis (a child of its
    /// parent, as LXC wants it), not its child
    #[arg(long)]
    restore_sibling: bool,
}

/// `fd[N]:KEY` as (KEY, N).
fn parse_inherit_fd(s: &str) -> std::result::Result<(String, i32), String> {
    let bad = || format!("--inherit-fd {s}: write fd[N]:KEY");
    let rest = s.strip_prefix("fd[").ok_or_else(bad)?;
    let (n, key) = rest.split_once("]:").ok_or_else(bad)?;
    Ok((key.to_owned(), n.parse().map_err(|_| bad())?))
}

/// A size with an optional K, M or G suffix (powers of 1024), as CRIU takes it.
pub(crate) fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size (a number, optionally with K, M or G)"))
}

/// A progress bar on standard error, only when it is a terminal; cleared
/// when dropped.
struct Bar(Option<indicatif::ProgressBar>);

/// Whether the bar may redraw itself on a thread of its own. Not while
/// restoring: the restore forks the tree's tasks with their PIDs, which it
/// may only do from a single-threaded engine.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tick {
    Steady,
    OnReport,
}

impl Bar {
    fn new(verb: &'static str, tick: Tick) -> Bar {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let pb = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {prefix} {msg}") {
            pb.set_style(style);
        }
        pb.set_prefix(verb);
        if tick == Tick::Steady {
            pb.enable_steady_tick(std::time::Duration::from_millis(100));
        }
        Bar(Some(pb))
    }

    /// The hook the engine reports to.
    fn progress(&self) -> Option<stasis_engine::progress::Progress> {
        use stasis_engine::progress::{Progress, Step};
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        let pb = self.0.clone()?;
        let pages = AtomicU64::new(0);
        let tasks = (AtomicUsize::new(0), AtomicUsize::new(0));
        Some(Progress::new(move |step| {
            match step {
                Step::Pages(n) => {
                    pages.fetch_add(n, Ordering::Relaxed);
                }
                Step::Tasks { done, total } => {
                    tasks.0.store(done, Ordering::Relaxed);
                    tasks.1.store(total, Ordering::Relaxed);
                }
            }
            pb.set_message(format!(
                "{}/{} processes, {} MiB",
                tasks.0.load(Ordering::Relaxed),
                tasks.1.load(Ordering::Relaxed),
                pages.load(Ordering::Relaxed) >> 8
            ));
        }))
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

fn write_pidfile(path: &Path, pid: i32) -> Result<()> {
    std::fs::write(path, format!("{pid}\n"))
        .with_context(|| format!("cannot write pidfile {}", path.display()))
}

fn run_dump(a: &DumpArgs) -> Result<ExitCode> {
    use stasis_engine::dump;
    let bar = Bar::new("dump", Tick::Steady);
    let opts = dump::Opts {
        progress: bar.progress(),
        pid: nix::unistd::Pid::from_raw(a.tree),
        dir: a.cr.images_dir.clone(),
        leave_running: a.leave_running,
        shell_job: a.shell_job,
        // RPC only, as in CRIU: runtimes hold the console's master.
        orphan_pts_master: false,
        timeout: std::time::Duration::from_secs(a.timeout.max(1)),
        ghost_limit: a.ghost_limit,
        file_locks: a.file_locks,
        tcp_established: a.tcp_established,
        skip_in_flight: a.skip_in_flight,
        ext_unix_sk: a.ext_unix_sk.is_some(),
        network_lock: a.cr.network_lock(),
        notify: a.cr.scripts(),
        freeze_cgroup: a.freeze_cgroup.clone(),
        ext_mounts: mounts_of(&a.external, &a.ext_mount_map),
        ext_ttys: a
            .external
            .iter()
            .filter_map(|e| match e {
                External::Tty(k) => Some(k.clone()),
                _ => None,
            })
            .collect(),
        empty_net: a.empty_ns.as_deref() == Some("net"),
        ext_netns: a
            .external
            .iter()
            .filter_map(|e| match e {
                External::Net(i, k) => Some((*i, k.clone())),
                _ => None,
            })
            .collect(),
        cgroup_roots: a.cgroup_root.clone(),
    };
    let stats = dump::dump(&opts)?;
    drop(bar);
    tracing::info!(?stats, "dump finished");
    if let Some(p) = &a.pidfile {
        write_pidfile(p, a.tree)?;
    }
    if a.cr.display_stats {
        println!("Displaying dump stats:");
        println!("Freezing time: {} us", stats.freezing_us);
        println!("Frozen time: {} us", stats.frozen_us);
        println!("Memory dump time: {} us", stats.memdump_us);
        println!("Memory pages scanned: {}", stats.pages.scanned);
        println!("Memory pages written: {}", stats.pages.written);
    }
    Ok(ExitCode::SUCCESS)
}

fn run_restore(a: &RestoreArgs) -> Result<ExitCode> {
    use stasis_engine::restore;
    let bar = Bar::new("restore", Tick::OnReport);
    let opts = restore::Opts {
        progress: bar.progress(),
        dir: a.cr.images_dir.clone(),
        shell_job: a.shell_job,
        orphan_pts_master: false,
        detached: a.restore_detached,
        network_lock: a.cr.network_lock(),
        sibling: a.restore_sibling,
        notify: a.cr.scripts(),
        cgroups: a.manage_cgroups.unwrap_or_default(),
        cgroup_roots: a.cgroup_root.clone(),
        root: a.root.clone(),
        ext_mounts: mounts_of(&a.external, &a.ext_mount_map),
        ext_veths: veths_of(&a.external, &a.veth_pair),
        ext_macvlans: a
            .external
            .iter()
            .filter_map(|e| match e {
                External::Macvlan(a, b) => Some((a.clone(), b.clone())),
                _ => None,
            })
            .collect(),
        inherit_fds: a.inherit_fd.clone(),
    };
    let t = std::time::Instant::now();
    let done = restore::restore(&opts)?;
    drop(bar);
    if let Some(p) = &a.pidfile {
        write_pidfile(p, done.root.as_raw())?;
    }
    if a.cr.display_stats {
        println!("Displaying restore stats:");
        println!("Pages restored: {}", done.pages);
        println!("Restore time: {} us", t.elapsed().as_micros());
    }
    if a.restore_detached {
        return Ok(ExitCode::SUCCESS);
    }
    let code = match &done.terminal {
        Some(tty) => restore::wait_foreground(done.root, tty),
        None => restore::wait_root(done.root),
    };
    Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)))
}

/// `stasis check`: CRIU's options plus --json, --list and --timeout.
#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Also check extra kernel features (some process trees need them)
    #[arg(long)]
    extra: bool,
    /// Also check experimental kernel features
    #[arg(long)]
    experimental: bool,
    /// Check everything: --extra --experimental, the CRIU client feature
    /// names and stasis' own probes
    #[arg(long)]
    all: bool,
    /// Only check this feature (repeatable); exit 0 only if all are supported
    #[arg(long = "feature", value_name = "FEAT")]
    feature: Vec<String>,
    /// Print the results as JSON (schema documented in README)
    #[arg(long)]
    json: bool,
    /// Print every probe name and exit
    #[arg(long)]
    list: bool,
    /// Per-probe time limit in seconds
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,
    /// Probes run at once (they mostly wait in the kernel)
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = RunOptions::default().threads)]
    jobs: usize,
}

use stasis_check::RunOptions;

fn check_after_help() -> String {
    let names = stasis_check::report::criu_feature_names();
    let mut out = String::from("CRIU feature names for --feature (see --list for every probe):\n");
    let mut line = String::from(" ");
    for n in names {
        if line.len() + n.len() + 1 > 78 {
            out.push_str(&line);
            out.push('\n');
            line = String::from(" ");
        }
        line.push(' ');
        line.push_str(n);
    }
    out.push_str(&line);
    out
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Convert a binary image to JSON
    Decode {
        /// Input image (default: standard input)
        #[arg(short = 'i', long = "in")]
        input: Option<PathBuf>,
        /// Output file (default: standard output)
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
        /// Indent, and show hex, flag names and devices as crit --pretty does
        #[arg(long)]
        pretty: bool,
    },
    /// Convert JSON (from decode, or from crit) back to a binary image
    Encode {
        /// Input JSON (default: standard input)
        #[arg(short = 'i', long = "in")]
        input: Option<PathBuf>,
        /// Output image (default: standard output)
        #[arg(short = 'o', long = "out")]
        output: Option<PathBuf>,
    },
    /// Show an image as pretty JSON
    Show {
        /// The image file
        file: PathBuf,
        /// Replace raw payloads by their size
        #[arg(long)]
        nopl: bool,
    },
    /// Print an image's type and number of entries
    Info {
        /// The image file
        file: PathBuf,
    },
    /// Explore a dump directory
    X {
        /// The images directory
        dir: PathBuf,
        /// What to show
        #[arg(value_enum)]
        what: XView,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum XView {
    /// Process tree
    Ps,
    /// Open files of each task
    Fds,
    /// Memory maps of each task
    Mems,
    /// Dumped pages per mapping
    Rss,
}

/// CRIU's numeric verbosity from `-v`, `-vN`, `-vv...`.
fn verbosity(arg: Option<&str>) -> Result<u8> {
    const DEFAULT: u8 = 2;
    match arg {
        None => Ok(DEFAULT),
        Some(s) if !s.is_empty() && s.bytes().all(|b| b == b'v') => {
            Ok(DEFAULT.saturating_add(u8::try_from(s.len()).unwrap_or(u8::MAX)))
        }
        Some(s) => s
            .parse::<u8>()
            .with_context(|| format!("invalid verbosity {s:?}: expected a number 0-4 or v's")),
    }
}

fn init_logging(level: u8, log_file: Option<&Path>) -> Result<()> {
    use tracing_subscriber::filter::LevelFilter;
    let filter = match level {
        0 => LevelFilter::OFF,
        1 => LevelFilter::ERROR,
        2 => LevelFilter::WARN,
        3 => LevelFilter::INFO,
        4 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_target(level >= 4);
    match log_file {
        Some(path) => {
            let file = File::create(path)
                .with_context(|| format!("cannot create log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(io::stderr).init(),
    }
    Ok(())
}

fn open_output(path: Option<&Path>) -> Result<Box<dyn Write>> {
    Ok(match path {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    })
}

fn image_reader(input: Option<&Path>) -> Result<ImageReader<Box<dyn io::BufRead>>> {
    Ok(match input {
        Some(p) => {
            let name = p.display().to_string();
            let file = File::open(p).with_context(|| format!("cannot open {name}"))?;
            let size = file.metadata().ok().map(|m| m.len());
            ImageReader::new(
                Box::new(BufReader::new(file)) as Box<dyn io::BufRead>,
                name,
                size,
            )?
        }
        None => ImageReader::new(
            Box::new(BufReader::new(io::stdin().lock())) as Box<dyn io::BufRead>,
            "<stdin>",
            None,
        )?,
    })
}

fn write_json(out: &mut dyn Write, value: &serde_json::Value, pretty: bool) -> Result<()> {
    if pretty {
        // crit indents by four spaces
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut *out, fmt);
        serde::Serialize::serialize(value, &mut ser)?;
    } else {
        serde_json::to_writer(&mut *out, value)?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn run_image(cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Decode {
            input,
            output,
            pretty,
        } => {
            let rd = image_reader(input.as_deref())?;
            let json = json::decode_image(
                rd,
                DecodeOptions {
                    pretty,
                    no_payload: false,
                },
            )?;
            write_json(&mut *open_output(output.as_deref())?, &json, pretty)
        }
        ImageCommand::Encode { input, output } => {
            let (name, text) = match &input {
                Some(p) => (
                    p.display().to_string(),
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read {}", p.display()))?,
                ),
                None => {
                    let mut s = String::new();
                    io::stdin()
                        .read_to_string(&mut s)
                        .context("cannot read standard input")?;
                    ("<stdin>".to_owned(), s)
                }
            };
            let value: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{name}: not valid JSON"))?;
            let out_name = output
                .as_ref()
                .map_or_else(|| "<stdout>".to_owned(), |p| p.display().to_string());
            let out = open_output(output.as_deref())?;
            let mut out = json::encode_image(&value, out, &out_name)?;
            out.flush()?;
            Ok(())
        }
        ImageCommand::Show { file, nopl } => {
            let rd = image_reader(Some(&file))?;
            let json = json::decode_image(
                rd,
                DecodeOptions {
                    pretty: true,
                    no_payload: nopl,
                },
            )?;
            write_json(&mut *open_output(None)?, &json, true)
        }
        ImageCommand::Info { file } => {
            let rd = image_reader(Some(&file))?;
            let (kind, count) = json::image_info(rd)?;
            let value = serde_json::json!({ "magic": kind.name, "count": count });
            write_json(&mut *open_output(None)?, &value, true)
        }
        ImageCommand::X { dir, what } => {
            let view = match what {
                XView::Ps => View::Ps,
                XView::Fds => View::Fds,
                XView::Mems => View::Mems,
                XView::Rss => View::Rss,
            };
            let text = inspect::explore(&dir, view)?;
            let mut out = open_output(None)?;
            out.write_all(text.as_bytes())?;
            out.flush()?;
            Ok(())
        }
    }
}

fn run_check(args: &CheckArgs) -> Result<ExitCode> {
    use stasis_check::{Selection, Verdict, report};
    use std::io::IsTerminal;
    if args.list {
        print!("{}", report::list());
        return Ok(ExitCode::SUCCESS);
    }
    let opts = RunOptions {
        timeout: std::time::Duration::try_from_secs_f64(args.timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--timeout must be a positive number of seconds")?,
        threads: args.jobs.max(1),
    };
    if !args.feature.is_empty() {
        let mut probes = Vec::new();
        for name in &args.feature {
            let probe = stasis_check::by_name(name).with_context(|| {
                format!("unknown feature {name:?}; `stasis check --list` prints every name")
            })?;
            probes.push(probe);
        }
        let findings = stasis_check::run(&probes, &opts);
        if args.json {
            let v: Vec<_> = findings.iter().map(report::finding_json).collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        let mut ok = true;
        for f in &findings {
            if f.outcome.is_supported() {
                if !args.json {
                    println!("{} is supported", f.probe.name);
                }
            } else {
                ok = false;
                eprintln!("{} is not supported: {}", f.probe.name, f.outcome.reason());
            }
        }
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let sel = if args.all {
        Selection::all()
    } else {
        Selection {
            extra: args.extra,
            experimental: args.experimental,
            stasis: false,
        }
    };
    let findings = stasis_check::run(&sel.probes(), &opts);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&findings))?
        );
    } else {
        let color = io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", report::table(&findings, color));
    }
    Ok(ExitCode::from(Verdict::of(&findings).exit_code()))
}

fn run(cli: Cli) -> Result<ExitCode> {
    let level = verbosity(cli.verbosity.as_deref())?;
    let log = match &cli.command {
        Command::Dump(a) => a.cr.log(),
        Command::Restore(a) => a.cr.log(),
        _ => None,
    }
    .or(cli.log_file);
    init_logging(level, log.as_deref())?;
    // The error also goes to the log file; on stderr main prints it once.
    let to_file = log.is_some();
    let log_err = |e: &anyhow::Error| {
        if to_file {
            tracing::error!("{e:#}");
        }
    };
    match cli.command {
        Command::Image(cmd) => run_image(cmd).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => run_check(&args),
        Command::Dump(a) => run_dump(&a).inspect_err(log_err),
        Command::Restore(a) => run_restore(&a).inspect_err(log_err),
        Command::Swrk { fd } => rpc::swrk(fd).map(|()| ExitCode::SUCCESS),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "stasis", &mut io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => write_man(&dir).map(|()| ExitCode::SUCCESS),
        Command::Service {
            address,
            daemon,
            pidfile,
        } => rpc::service(&address, daemon, pidfile.as_deref()).map(|()| ExitCode::SUCCESS),
    }
}

/// Write stasis.8 and a page per command (stasis-dump.8, ...) into `dir`.
fn write_man(dir: &Path) -> Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = Cli::command().name("stasis");
    let page = |cmd: clap::Command, name: &str| -> Result<()> {
        let path = dir.join(format!("{name}.8"));
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd).section("8").render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("cannot write {}", path.display()))
    };
    page(cmd.clone(), "stasis")?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("stasis-{}", sub.get_name());
        page(sub.clone().display_name(&name).bin_name(&name), &name)?;
    }
    Ok(())
}

/// The CRIU release whose contracts (images, CLI, RPC) stasis follows:
/// what `criu --version` reports through the `criu` symlink.
const CRIU_VERSION: &str = "4.2";

/// Whether this binary was started under the name `criu` (a symlink).
fn invoked_as_criu() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n == "criu"))
        .unwrap_or(false)
}

/// The command line's definition; a repeated option takes its last value,
/// so the command line overrides the configuration files put before it.
fn cli_command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = Cli::command().args_override_self(true);
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    for n in names {
        cmd = cmd.mut_subcommand(n, |c| c.args_override_self(true));
    }
    cmd
}

fn main() -> ExitCode {
    // Tools that drive CRIU (LXC) read its `Version:` and `GitID:` lines.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if invoked_as_criu() && args.len() == 1 && (args[0] == "--version" || args[0] == "-V") {
        println!("Version: {CRIU_VERSION}");
        println!("GitID: stasis-{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let parsed = config::expand(cli_command(), std::env::args_os().collect())
        .and_then(compat::filter)
        .and_then(|argv| {
            use clap::FromArgMatches;
            cli_command()
                .try_get_matches_from(argv)
                .and_then(|m| Cli::from_arg_matches(&m))
                .map_err(anyhow::Error::from)
        });
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let Some(e) = e.downcast_ref::<clap::Error>() else {
                eprintln!("Error: {e:#}");
                return ExitCode::FAILURE;
            };
            // Help and --version go to stdout with status 0; usage errors are
            // failures like any other (CRIU exits 1 on a bad option).
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if e.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
