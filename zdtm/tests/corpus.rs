#![allow(clippy::tests_outside_test_module)]
//! `cargo test -p zdtm`: the corpus as cargo tests (libtest-mimic, so
//! filters, `--list`, `--exact` and nextest work).
//!
//! Every test runs as `nocr::NAME` (start, stop, the test must PASS) and
//! `sabotage::NAME` (the test damages its own state on request and must
//! FAIL). With `ZDTM_ENGINE=/path/to/engine` each is also dumped and
//! restored through that engine (`cr::NAME`, flavor h; `cr-ns::NAME`,
//! flavor ns: new pid, mount, net, uts, ipc and time namespaces; and
//! `cr-uns::NAME`, flavor uns: the same inside a new user namespace), honouring
//! `zdtm/known-failures.txt` (`ci/test` sets it to the built stasis). Tests need root; as another user
//! they fail saying so. Skips (architecture, CPU flag, missing engine
//! feature) are reported as ignored, with the reason printed first.
//!
//! Case directories go to a fresh `/tmp/zdtm-cargo-PID`, one subdirectory
//! per mode (`nocr::X` and `sabotage::X` run at the same time on different
//! threads and must not share a directory), removed when the harness ends,
//! whatever the outcome. To keep the directories of failed cases, set
//! `ZDTM_KEEP_DIR` to a directory of your own: they are left there.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use zdtm::meta::Flavor;
use zdtm::runner::{self, KeepImg, Options, Status, engine::Engine, known::KnownFailures};

fn options(
    flavor: Flavor,
    engine: Option<PathBuf>,
    sabotage: bool,
    work: &Path,
    keep_img: KeepImg,
) -> Result<Options, String> {
    let known = match &engine {
        Some(_) => {
            let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/known-failures.txt"));
            Some(KnownFailures::load(&path).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    Ok(Options {
        tests_bin: PathBuf::from(env!("CARGO_BIN_EXE_zdtm-tests")),
        nocr: engine.is_none(),
        engine: engine.map(Engine::new),
        flavors: vec![flavor],
        jobs: 1,
        iters: 1,
        norst: false,
        pre: 0,
        snaps: false,
        sabotage,
        keep_img,
        work_dir: work.to_owned(),
        timeout: Duration::from_secs(30),
        known,
        progress: false,
    })
}

fn trial(prefix: &str, t: zdtm::meta::Test, opts: &Arc<Options>) -> Trial {
    let flavor = opts.flavors.first().copied().unwrap_or(Flavor::H);
    let skip = runner::skip_reason(&t, flavor, opts);
    let name = format!("{prefix}::{}", t.name);
    if let Some(why) = &skip {
        eprintln!("skip {name}: {why}");
    }
    let opts = Arc::clone(opts);
    Trial::test(name, move || {
        let r = runner::run_case(&t, flavor, &opts);
        let dir = r.dir.as_ref().map_or_else(
            || " [set ZDTM_KEEP_DIR=DIR to keep the case directory]".to_owned(),
            |d| format!(" [kept: {}]", d.display()),
        );
        match r.status {
            Status::Pass | Status::ExpectedFail => Ok(()),
            Status::Skip => Err(Failed::from(format!("skipped at run time: {}", r.reason))),
            Status::Fail | Status::UnexpectedPass => {
                Err(Failed::from(format!("{}{dir}", r.reason)))
            }
        }
    })
    .with_kind(t.category.as_str())
    .with_ignored_flag(skip.is_some())
}

/// The harness's directory of case directories: a fresh one under the
/// temporary directory, removed on every way out of `main` (failures and
/// panics included), or `ZDTM_KEEP_DIR`, which is left in place.
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn new() -> std::io::Result<Self> {
        let (path, remove) = match std::env::var_os("ZDTM_KEEP_DIR").filter(|d| !d.is_empty()) {
            Some(d) => (PathBuf::from(d), false),
            None => (
                std::env::temp_dir().join(format!("zdtm-cargo-{}", std::process::id())),
                true,
            ),
        };
        // Created before it is owned, so a failure here removes nothing.
        std::fs::create_dir_all(&path)?;
        Ok(Self { path, remove })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let work = match WorkDir::new() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("zdtm harness: cannot create the work directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let keep_img = if work.remove {
        KeepImg::Never
    } else {
        KeepImg::Failed
    };
    let engine = std::env::var_os("ZDTM_ENGINE")
        .filter(|e| !e.is_empty())
        .map(PathBuf::from);
    let mut trials = Vec::new();
    let mut modes: Vec<(&str, Flavor, bool, Option<PathBuf>)> = vec![
        ("nocr", Flavor::H, false, None),
        ("sabotage", Flavor::H, true, None),
    ];
    if let Some(e) = engine {
        modes.push(("cr", Flavor::H, false, Some(e.clone())));
        modes.push(("cr-ns", Flavor::Ns, false, Some(e.clone())));
        modes.push(("cr-uns", Flavor::Uns, false, Some(e)));
    }
    for (prefix, flavor, sabotage, engine) in modes {
        // A directory per mode: the same test runs in every mode, and the
        // modes' cases run side by side.
        let opts = match options(flavor, engine, sabotage, &work.path.join(prefix), keep_img) {
            Ok(o) => Arc::new(o),
            Err(e) => {
                eprintln!("zdtm harness: {e}");
                return ExitCode::FAILURE;
            }
        };
        trials.extend(
            zdtm::corpus::all()
                .into_iter()
                .map(|t| trial(prefix, t, &opts)),
        );
    }
    libtest_mimic::run(&args, trials).exit_code()
}
