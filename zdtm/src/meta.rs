//! Test metadata: what each test is, what it needs and how the runner must
//! treat it (CRIU's `.desc` keys, kept in code next to the test body).

use crate::testlib::Ctx;
use crate::testlib::Res;

/// The kind of kernel object a test is about (one per test).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Mappings and their contents.
    Memory,
    /// Regular files, directories, fd table shape.
    Files,
    /// Pipes and FIFOs.
    Pipes,
    /// Process tree shape: sessions, groups, zombies, stopped tasks.
    Pstree,
    /// Threads and their per-thread state.
    Threads,
    /// Signal handlers, masks and pending signals.
    Signals,
    /// Interval timers, POSIX timers, timerfd.
    Timers,
    /// Ids, groups, capabilities, securebits, seccomp.
    Creds,
    /// Command line, environment, umask, rlimits, prctl state.
    Environment,
    /// Register state (general purpose, FPU, vector).
    Cpu,
    /// AF_UNIX sockets.
    Unix,
    /// AF_INET/AF_INET6 sockets.
    Inet,
    /// eventfd, epoll, signalfd, inotify, fanotify, pidfd.
    Events,
    /// SysV IPC and POSIX message queues.
    Ipc,
    /// Terminals and pseudo-terminals.
    Tty,
    /// Namespaces the test creates itself.
    Namespaces,
}

impl Category {
    /// Every category, in listing order.
    pub const ALL: [Self; 16] = [
        Self::Memory,
        Self::Files,
        Self::Pipes,
        Self::Pstree,
        Self::Threads,
        Self::Signals,
        Self::Timers,
        Self::Creds,
        Self::Environment,
        Self::Cpu,
        Self::Unix,
        Self::Inet,
        Self::Events,
        Self::Ipc,
        Self::Tty,
        Self::Namespaces,
    ];

    /// Short lower-case name used in listings and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Files => "files",
            Self::Pipes => "pipes",
            Self::Pstree => "pstree",
            Self::Threads => "threads",
            Self::Signals => "signals",
            Self::Timers => "timers",
            Self::Creds => "creds",
            Self::Environment => "environment",
            Self::Cpu => "cpu",
            Self::Unix => "unix",
            Self::Inet => "inet",
            Self::Events => "events",
            Self::Ipc => "ipc",
            Self::Tty => "tty",
            Self::Namespaces => "namespaces",
        }
    }
}

/// Where the test runs: CRIU's three flavors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flavor {
    /// In the runner's namespaces.
    H,
    /// In new pid, mount, net, uts and ipc namespaces.
    Ns,
    /// Like `Ns`, plus a new user namespace.
    Uns,
}

impl Flavor {
    /// The flavor's name as given to `-f`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::H => "h",
            Self::Ns => "ns",
            Self::Uns => "uns",
        }
    }

    /// Parse a flavor name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "h" => Some(Self::H),
            "ns" => Some(Self::Ns),
            "uns" => Some(Self::Uns),
            _ => None,
        }
    }
}

/// Static tests set their state up once; transition tests keep changing it
/// until they are told to verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// State set up once before readiness.
    Static,
    /// State keeps changing while the test is dumped.
    Transition,
}

/// Runner flags (CRIU's `.desc` `flags`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// Dump or restore is expected to fail.
    pub crfail: bool,
    /// Must run alone, never in parallel with other tests.
    pub excl: bool,
    /// Runs as root and relies on it (changes ids or capabilities).
    pub suid: bool,
    /// Only run when named with `-t`, never by `-a` or `-T`.
    pub noauto: bool,
}

impl Flags {
    /// The set flags as words, for listings.
    pub fn words(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        for (on, word) in [
            (self.crfail, "crfail"),
            (self.excl, "excl"),
            (self.suid, "suid"),
            (self.noauto, "noauto"),
        ] {
            if on {
                v.push(word);
            }
        }
        v
    }
}

/// The body of a test program.
pub type TestFn = fn(&mut Ctx) -> Res;

/// One test of the corpus.
#[derive(Debug, Clone, Copy)]
pub struct Test {
    /// Unique name (`zdtm-tests NAME`).
    pub name: &'static str,
    /// What it is about.
    pub category: Category,
    /// One line saying what state it checks.
    pub about: &'static str,
    /// The program.
    pub run: TestFn,
    /// Flavors the test may run in.
    pub flavors: &'static [Flavor],
    /// `check --feature` names C/R of this test needs.
    pub features: &'static [&'static str],
    /// Engine options for both dump and restore.
    pub opts: &'static [&'static str],
    /// Runner flags.
    pub flags: Flags,
    /// Only on this `uname -m` architecture.
    pub arch: Option<&'static str>,
    /// Needs this CPU flag (from /proc/cpuinfo) to be present.
    pub cpu_flag: Option<&'static str>,
    /// Programs it runs, which must be on PATH (`ip`, `nft`).
    pub tools: &'static [&'static str],
    /// Static or transition.
    pub kind: Kind,
}

const ALL_FLAVORS: &[Flavor] = &[Flavor::H, Flavor::Ns, Flavor::Uns];

impl Test {
    /// A static test that runs in every flavor with no needs.
    pub const fn new(
        name: &'static str,
        category: Category,
        about: &'static str,
        run: TestFn,
    ) -> Self {
        Self {
            name,
            category,
            about,
            run,
            flavors: ALL_FLAVORS,
            features: &[],
            opts: &[],
            flags: Flags {
                crfail: false,
                excl: false,
                suid: false,
                noauto: false,
            },
            arch: None,
            cpu_flag: None,
            tools: &[],
            kind: Kind::Static,
        }
    }

    /// Needs these programs on PATH.
    pub const fn tools(mut self, t: &'static [&'static str]) -> Self {
        self.tools = t;
        self
    }

    /// Mark as a transition test.
    pub const fn transition(mut self) -> Self {
        self.kind = Kind::Transition;
        self
    }

    /// Restrict the flavors.
    pub const fn flavors(mut self, f: &'static [Flavor]) -> Self {
        self.flavors = f;
        self
    }

    /// Require `check` features.
    pub const fn features(mut self, f: &'static [&'static str]) -> Self {
        self.features = f;
        self
    }

    /// Pass engine options to dump and restore.
    pub const fn opts(mut self, o: &'static [&'static str]) -> Self {
        self.opts = o;
        self
    }

    /// C/R must fail.
    pub const fn crfail(mut self) -> Self {
        self.flags.crfail = true;
        self
    }

    /// Run alone.
    pub const fn excl(mut self) -> Self {
        self.flags.excl = true;
        self
    }

    /// Relies on running as root.
    pub const fn suid(mut self) -> Self {
        self.flags.suid = true;
        self
    }

    /// Only when named explicitly.
    pub const fn noauto(mut self) -> Self {
        self.flags.noauto = true;
        self
    }

    /// Only on one architecture (`uname -m`).
    pub const fn arch(mut self, a: &'static str) -> Self {
        self.arch = Some(a);
        self
    }

    /// Needs a CPU flag.
    pub const fn cpu_flag(mut self, f: &'static str) -> Self {
        self.cpu_flag = Some(f);
        self
    }

    /// Whether the test may run in `f`.
    pub fn has_flavor(&self, f: Flavor) -> bool {
        self.flavors.contains(&f)
    }
}
