//! Kernel feature probes for checkpoint/restore: the library behind
//! `stasis check`.
//!
//! Every [`Probe`] has a stable name, a [`Category`], a one-line description,
//! the kernel version and `CONFIG_` option it needs, and a `run` function that
//! really exercises the feature (makes the system call, sets the socket
//! option, reads the /proc field) and returns an [`Outcome`]. The probe set is
//! CRIU's (its 17 always-required probes, its 45 `--feature` names with their
//! meaning) plus stasis' own. Probes that change state do it in a child
//! process or in a throw-away namespace and undo what they created.
//!
//! [`run`] executes a selection on a few threads with a per-probe timeout;
//! [`report`] renders the result as a table or as JSON.
#![forbid(unsafe_code)]

pub mod probes;
pub mod report;
mod run;

pub use probes::{PROBES, by_name};
pub use run::{Finding, RunOptions, run};

use std::fmt;

/// Where a probe belongs, which decides when it runs and whether its failure
/// counts, exactly as in CRIU where CRIU has the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Always run; any failure means C/R cannot work ("Does not look good.").
    Required,
    /// Run with `--extra` or `--all`; a failure may break some process trees.
    Extra,
    /// Run with `--experimental` or `--all`.
    Experimental,
    /// CRIU feature names outside any category: asked for by clients with
    /// `--feature`, shown with `--all`, never counted.
    Feature,
    /// Always run, result only reported (CRIU's hardware-breakpoint probe).
    Informational,
    /// stasis' own probes, run with `--all`; reported, not counted, so exit
    /// codes keep CRIU's meaning.
    Stasis,
}

impl Category {
    /// The name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Extra => "extra",
            Self::Experimental => "experimental",
            Self::Feature => "feature",
            Self::Informational => "informational",
            Self::Stasis => "stasis",
        }
    }

    /// Whether a failure in this category makes `check` exit non-zero.
    pub fn counts(self) -> bool {
        matches!(self, Self::Required | Self::Extra | Self::Experimental)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a probe needs from the kernel: shown next to a failure so the reader
/// knows what would fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Needs {
    /// First mainline kernel version with the feature (e.g. "5.3").
    pub kernel: &'static str,
    /// Kernel configuration option(s), or "" when none is specific.
    pub config: &'static str,
}

/// The result of running one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The feature works; the text adds detail (may be empty).
    Supported(String),
    /// The feature is missing or broken; the text says how it failed
    /// (errno, missing field, wrong answer).
    Unsupported(String),
    /// Not checked on this system, and not needed here (for example AppArmor
    /// stacking when the LSM is not AppArmor). Never counted as a failure,
    /// but `--feature` reports it as not supported.
    NotApplicable(String),
    /// The probe could not run (a prerequisite failed); the text says why.
    Error(String),
    /// The probe did not finish within its time limit.
    TimedOut(std::time::Duration),
}

impl Outcome {
    /// Whether the feature is known to work.
    pub fn is_supported(&self) -> bool {
        matches!(self, Self::Supported(_))
    }

    /// Whether this outcome counts as a failure of the category's check.
    pub fn is_failure(&self) -> bool {
        !matches!(self, Self::Supported(_) | Self::NotApplicable(_))
    }

    /// Stable status word for JSON and scripts.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Supported(_) => "supported",
            Self::Unsupported(_) => "unsupported",
            Self::NotApplicable(_) => "not-applicable",
            Self::Error(_) => "error",
            Self::TimedOut(_) => "timeout",
        }
    }

    /// The explanation, or "" for a plain success.
    pub fn reason(&self) -> String {
        match self {
            Self::Supported(s) | Self::Unsupported(s) | Self::NotApplicable(s) | Self::Error(s) => {
                s.clone()
            }
            Self::TimedOut(d) => format!("the probe did not finish within {} ms", d.as_millis()),
        }
    }
}

/// One kernel feature probe.
#[derive(Clone, Copy)]
pub struct Probe {
    /// Stable name, accepted by `--feature` (CRIU's name where CRIU has one).
    pub name: &'static str,
    /// When it runs and whether it counts.
    pub category: Category,
    /// Whether `name` is one of CRIU's 45 `--feature` names.
    pub criu_feature: bool,
    /// One line: what is probed.
    pub description: &'static str,
    /// What the kernel needs for the probe to pass.
    pub needs: Needs,
    /// Exercises the feature.
    pub run: fn() -> Outcome,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe")
            .field("name", &self.name)
            .field("category", &self.category)
            .finish_non_exhaustive()
    }
}

/// Which probes a `check` invocation runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Selection {
    /// `--extra`.
    pub extra: bool,
    /// `--experimental`.
    pub experimental: bool,
    /// stasis' own probes and the client feature names (`--all`).
    pub stasis: bool,
}

impl Selection {
    /// `--all`: everything.
    pub fn all() -> Self {
        Self {
            extra: true,
            experimental: true,
            stasis: true,
        }
    }

    /// Whether a probe of `category` runs under this selection.
    pub fn includes(self, category: Category) -> bool {
        match category {
            Category::Required | Category::Informational => true,
            Category::Extra => self.extra,
            Category::Experimental => self.experimental,
            Category::Feature | Category::Stasis => self.stasis,
        }
    }

    /// The probes this selection runs, in table order.
    pub fn probes(self) -> Vec<&'static Probe> {
        PROBES
            .iter()
            .filter(|p| self.includes(p.category))
            .collect()
    }
}

/// The overall verdict of a category run, with CRIU's wording and exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything that counts passed: "Looks good.", exit 0.
    Good,
    /// Only extra/experimental probes failed: exit 1 with CRIU's warning.
    GoodButMissing,
    /// A required probe failed: "Does not look good.", exit 1.
    Bad,
}

impl Verdict {
    /// Computes the verdict from findings.
    pub fn of(findings: &[Finding]) -> Self {
        let failed = |c: fn(Category) -> bool| {
            findings
                .iter()
                .any(|f| c(f.probe.category) && f.outcome.is_failure())
        };
        if failed(|c| c == Category::Required) {
            Self::Bad
        } else if failed(|c| matches!(c, Category::Extra | Category::Experimental)) {
            Self::GoodButMissing
        } else {
            Self::Good
        }
    }

    /// CRIU's closing sentence.
    pub fn message(self) -> &'static str {
        match self {
            Self::Good => "Looks good.",
            Self::GoodButMissing => {
                "Looks good but some kernel features are missing\nwhich, depending on your process tree, may cause\ndump or restore failure."
            }
            Self::Bad => "Does not look good.",
        }
    }

    /// The process exit code CRIU uses.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Good => 0,
            Self::GoodButMissing | Self::Bad => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn finding(name: &str, outcome: Outcome) -> Finding {
        Finding {
            probe: by_name(name).expect("known probe"),
            outcome,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn table_has_criu_counts_and_order() {
        let count = |c: Category| PROBES.iter().filter(|p| p.category == c).count();
        assert_eq!(count(Category::Required), 17);
        // 38 extra probes plus apparmor_stacking, as in CRIU.
        assert_eq!(count(Category::Extra), 39);
        assert_eq!(count(Category::Experimental), 2);
        assert!(
            count(Category::Stasis) >= 30,
            "at least 30 probes of our own"
        );
        let names: Vec<&str> = report::criu_feature_names();
        assert_eq!(names.len(), 45);
        let mut seen = std::collections::HashSet::new();
        for p in PROBES {
            assert!(seen.insert(p.name), "duplicate probe name {}", p.name);
            assert!(
                !p.description.is_empty() && !p.needs.kernel.is_empty(),
                "{} lacks metadata",
                p.name
            );
        }
    }

    #[test]
    fn criu_feature_names_are_criu_order() {
        // criu --help order (shared/reference/criu.md §3.2); breakpoints is
        // listed with the required probes here but keeps its CRIU name.
        let want = [
            "breakpoints",
            "mnt_id",
            "mem_dirty_track",
            "aio_remap",
            "timerfd",
            "tun",
            "tun_ns",
            "userns",
            "fdinfo_lock",
            "seccomp_suspend",
            "seccomp_filters",
            "loginuid",
            "cgroupns",
            "autofs",
            "tcp_half_closed",
            "compat_cr",
            "uffd",
            "uffd-noncoop",
            "can_map_vdso",
            "sk_ns",
            "sk_unix_file",
            "net_diag_raw",
            "nsid",
            "link_nsid",
            "kcmp_epoll",
            "timens",
            "external_net_ns",
            "clone3_set_tid",
            "newifindex",
            "nftables",
            "has_ipt_legacy",
            "pidfd_store",
            "ns_pid",
            "apparmor_stacking",
            "network_lock_nftables",
            "sockopt_buf_lock",
            "memfd_hugetlb",
            "move_mount_set_group",
            "openat2",
            "get_rseq_conf",
            "ipv6_freebind",
            "pagemap_scan",
            "timer_cr_ids",
            "overlayfs_maps",
            "pagemap_scan_guard_pages",
        ];
        let mut got = report::criu_feature_names();
        got.sort_unstable();
        let mut w = want.to_vec();
        w.sort_unstable();
        assert_eq!(got, w);
    }

    #[test]
    fn selection_follows_criu_options() {
        let plain = Selection::default();
        assert!(plain.includes(Category::Required) && plain.includes(Category::Informational));
        assert!(!plain.includes(Category::Extra) && !plain.includes(Category::Stasis));
        let extra = Selection {
            extra: true,
            ..Selection::default()
        };
        assert!(extra.includes(Category::Extra) && !extra.includes(Category::Experimental));
        assert_eq!(Selection::all().probes().len(), PROBES.len());
    }

    #[test]
    fn verdict_counts_only_criu_categories() {
        let ok = Outcome::Supported(String::new());
        let bad = Outcome::Unsupported("x".into());
        let base = || {
            vec![
                finding("map_files", ok.clone()),
                finding("mnt_id", ok.clone()),
            ]
        };
        assert_eq!(Verdict::of(&base()), Verdict::Good);

        let mut f = base();
        f.push(finding("pidfd_open", bad.clone()));
        f.push(finding("breakpoints", bad.clone()));
        f.push(finding("has_ipt_legacy", bad.clone()));
        f.push(finding(
            "apparmor_stacking",
            Outcome::NotApplicable("no AppArmor".into()),
        ));
        assert_eq!(
            Verdict::of(&f),
            Verdict::Good,
            "stasis, informational, feature-only and n/a never count"
        );

        let mut f = base();
        f.push(finding("autofs", Outcome::TimedOut(Duration::from_secs(1))));
        assert_eq!(Verdict::of(&f), Verdict::GoodButMissing);
        assert_eq!(Verdict::GoodButMissing.exit_code(), 1);

        let mut f = base();
        f.push(finding("kcmp", Outcome::Error("fork: EAGAIN".into())));
        assert_eq!(Verdict::of(&f), Verdict::Bad);
        assert_eq!(Verdict::Bad.message(), "Does not look good.");
    }

    #[test]
    fn table_shows_reason_fix_and_verdict_without_color() {
        let f = vec![
            finding("map_files", Outcome::Supported(String::new())),
            finding(
                "mem_dirty_track",
                Outcome::Unsupported("no soft-dirty bit".into()),
            ),
            finding(
                "apparmor_stacking",
                Outcome::NotApplicable("the LSM is not AppArmor".into()),
            ),
        ];
        let t = report::table(&f, false);
        assert!(!t.contains('\x1b'));
        assert!(t.contains("✓ map_files"));
        assert!(
            t.contains("✗ mem_dirty_track")
                && t.contains("no soft-dirty bit [needs Linux 3.11+, CONFIG_MEM_SOFT_DIRTY]")
        );
        assert!(t.contains("- apparmor_stacking"));
        assert!(t.trim_end().ends_with("dump or restore failure."));
        assert!(
            !t.contains("Error"),
            "a table that ends well never shows an Error line"
        );
        assert!(report::table(&f, true).contains("\x1b[31m✗\x1b[0m"));
    }

    static SLOW: Probe = Probe {
        name: "slow",
        category: Category::Stasis,
        criu_feature: false,
        description: "sleeps",
        needs: Needs {
            kernel: "-",
            config: "",
        },
        run: || {
            std::thread::sleep(Duration::from_secs(3));
            Outcome::Supported(String::new())
        },
    };
    static PANICS: Probe = Probe {
        name: "panics",
        category: Category::Stasis,
        criu_feature: false,
        description: "panics",
        needs: Needs {
            kernel: "-",
            config: "",
        },
        run: || panic!("probe bug"),
    };
    static FAST: Probe = Probe {
        name: "fast",
        category: Category::Stasis,
        criu_feature: false,
        description: "returns at once",
        needs: Needs {
            kernel: "-",
            config: "",
        },
        run: || Outcome::Unsupported("nope".into()),
    };

    #[test]
    fn runner_times_out_and_survives_panics_in_order() {
        // Generous limit: printing the panic's backtrace can take a while.
        let opts = RunOptions {
            threads: 1,
            timeout: Duration::from_secs(1),
        };
        let f = run(&[&SLOW, &PANICS, &FAST], &opts);
        let names: Vec<&str> = f.iter().map(|f| f.probe.name).collect();
        assert_eq!(names, ["slow", "panics", "fast"]);
        assert_eq!(f[0].outcome, Outcome::TimedOut(Duration::from_secs(1)));
        assert!(
            matches!(&f[1].outcome, Outcome::Error(e) if e.contains("panicked")),
            "{:?}",
            f[1].outcome
        );
        assert_eq!(f[2].outcome, Outcome::Unsupported("nope".into()));
    }
}
