//! CRIU's command-line options that stasis does not implement, so that a
//! tool or test driver written for `criu` gets an answer by name, not a
//! generic "unexpected argument". Options that only tune CRIU's own
//! internals, or relax a check stasis does not make, are accepted and
//! dropped (logged); options whose effect stasis lacks are refused with
//! the reason. Everything else is left to the command line's definition.

use anyhow::{Result, bail};

/// (option, whether it takes a value, why stasis can ignore it)
const IGNORED: &[(&str, bool, &str)] = &[
    ("log-pid", false, "stasis writes one log"),
    (
        "force-irmap",
        false,
        "inotify watches are found by their handles",
    ),
    (
        "irmap-scan-path",
        true,
        "inotify watches are found by their handles",
    ),
    (
        "weak-sysctls",
        false,
        "missing sysctls are not fatal to begin with",
    ),
    (
        "file-validation",
        true,
        "files are checked by size and inode kind",
    ),
    ("mntns-compat-mode", false, "mounts are made one way"),
    ("enable-fs", true, "a filesystem stasis can make is made"),
    ("evasive-devices", false, "a device is opened by its path"),
    ("cpu-cap", true, "the CPU is checked by stasis' own rules"),
    ("libdir", true, "stasis has no plugins"),
    (
        "link-remap",
        false,
        "files deleted while open are kept as ghost copies in the images; the file system is never changed",
    ),
    (
        "enable-external-sharing",
        false,
        "peer groups outside the tree are always joined again where the restore's namespace has them",
    ),
    (
        "enable-external-masters",
        false,
        "masters outside the tree are always joined again where the restore's namespace has them",
    ),
];

/// (option, whether it takes a value, what is missing)
const REFUSED: &[(&str, bool, &str)] = &[
    ("track-mem", false, "memory tracking (pre-dumps)"),
    ("prev-images-dir", true, "memory tracking (pre-dumps)"),
    ("pre-dump-mode", true, "memory tracking (pre-dumps)"),
    ("page-server", false, "the page server"),
    ("address", true, "the page server"),
    ("port", true, "the page server"),
    ("ps-socket", true, "the page server"),
    ("lazy-pages", false, "lazy restore"),
    ("auto-dedup", false, "deduplication of parent images"),
    ("join-ns", true, "joining existing namespaces"),
    ("skip-mnt", true, "skipping mounts"),
    ("cgroup-props", true, "cgroup properties"),
    ("cgroup-props-file", true, "cgroup properties"),
    ("cgroup-dump-controller", true, "cgroup properties"),
    ("cgroup-yard", true, "a cgroup yard"),
    ("tcp-close", false, "restoring connections closed"),
    ("lsm-profile", true, "LSM profiles"),
    ("lsm-mount-context", true, "LSM mount contexts"),
    ("exec-cmd", false, "running a command after the restore"),
    ("status-fd", true, "a status fd"),
    ("stream", false, "streaming images"),
    ("tls", false, "TLS for the page server"),
    ("tls-cacert", true, "TLS for the page server"),
    ("tls-cacrl", true, "TLS for the page server"),
    ("tls-cert", true, "TLS for the page server"),
    ("tls-key", true, "TLS for the page server"),
    ("tls-no-cn-verify", false, "TLS for the page server"),
    ("leave-stopped", false, "leaving the tree stopped"),
    (
        "orphan-pts-master",
        false,
        "handing a pty master to the caller",
    ),
];

/// The command line with the ignored options taken out; an error naming
/// the first refused one.
pub fn filter(args: Vec<std::ffi::OsString>) -> Result<Vec<std::ffi::OsString>> {
    // CRIU's verbs only.
    if !args
        .iter()
        .any(|a| a == "dump" || a == "restore" || a == "check")
    {
        return Ok(args);
    }
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let Some(opt) = a.to_str().and_then(|s| s.strip_prefix("--")) else {
            out.push(a);
            continue;
        };
        let (name, inline) = match opt.split_once('=') {
            Some((n, _)) => (n, true),
            None => (opt, false),
        };
        if let Some(&(_, value, why)) = IGNORED.iter().find(|o| o.0 == name) {
            if value && !inline {
                it.next();
            }
            tracing::debug!("--{name} accepted and not needed: {why}");
            continue;
        }
        if let Some(&(_, _, what)) = REFUSED.iter().find(|o| o.0 == name) {
            bail!("stasis does not support --{name} yet ({what}); nothing was done");
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<std::ffi::OsString> {
        v.iter().map(std::ffi::OsString::from).collect()
    }

    #[test]
    fn ignored_options_go_with_their_values_and_refused_ones_are_named() {
        let got = filter(args(&[
            "stasis",
            "dump",
            "--log-pid",
            "--irmap-scan-path",
            "/x",
            "--enable-fs=hugetlbfs",
            "-t",
            "1",
        ]))
        .unwrap();
        assert_eq!(got, args(&["stasis", "dump", "-t", "1"]));
        let e = filter(args(&["stasis", "dump", "--lazy-pages", "-t", "1"])).unwrap_err();
        assert!(e.to_string().contains("--lazy-pages"), "{e}");
        let e = filter(args(&["stasis", "dump", "--page-server=1"])).unwrap_err();
        assert!(e.to_string().contains("page server"), "{e}");
    }
}
