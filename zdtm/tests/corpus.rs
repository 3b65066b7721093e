#![allow(clippy::tests_outside_test_module)]
//! `cargo test -p zdtm`: the corpus as cargo tests (libtest-mimic, so
//! filters, `--list`, `--exact` and nextest work).
//!
//! Every test runs as `nocr::NAME` (start, stop, the test must PASS) and
//! `sabotage::NAME` (the test damages its own state on request and must
//! FAIL). With `ZDTM_ENGINE=/path/to/engine` each is also dumped and
//! restored through that engine (`cr::NAME`, flavor h), honouring
//! `zdtm/known-failures.txt` (`ci/test` sets it to the built stasis). Tests need root; as another user
//! they fail saying so. Skips (architecture, CPU flag, missing engine
//! feature) are reported as ignored, with the reason printed first.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use zdtm::meta::Flavor;
use zdtm::runner::{self, KeepImg, Options, Status, engine::Engine, known::KnownFailures};

fn options(
    engine: Option<PathBuf>,
    sabotage: bool,
    work: &std::path::Path,
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
        flavors: vec![Flavor::H],
        jobs: 1,
        iters: 1,
        norst: false,
        pre: 0,
        snaps: false,
        sabotage,
        keep_img: KeepImg::Failed,
        work_dir: work.to_owned(),
        timeout: Duration::from_secs(30),
        known,
        progress: false,
    })
}

fn trial(prefix: &str, t: zdtm::meta::Test, opts: &Arc<Options>) -> Trial {
    let skip = runner::skip_reason(&t, Flavor::H, opts);
    let name = format!("{prefix}::{}", t.name);
    if let Some(why) = &skip {
        eprintln!("skip {name}: {why}");
    }
    let opts = Arc::clone(opts);
    Trial::test(name, move || {
        let r = runner::run_case(&t, Flavor::H, &opts);
        let dir = r
            .dir
            .as_ref()
            .map(|d| format!(" [kept: {}]", d.display()))
            .unwrap_or_default();
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

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let work = std::env::temp_dir().join(format!("zdtm-cargo-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("cannot create {}: {e}", work.display());
        return ExitCode::FAILURE;
    }
    let engine = std::env::var_os("ZDTM_ENGINE")
        .filter(|e| !e.is_empty())
        .map(PathBuf::from);
    let mut trials = Vec::new();
    let mut modes: Vec<(&str, bool, Option<PathBuf>)> =
        vec![("nocr", false, None), ("sabotage", true, None)];
    if let Some(e) = engine {
        modes.push(("cr", false, Some(e)));
    }
    for (prefix, sabotage, engine) in modes {
        let opts = match options(engine, sabotage, &work) {
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
    let conclusion = libtest_mimic::run(&args, trials);
    // Kept case directories of failures stay; an empty work dir goes.
    let _ = std::fs::remove_dir(&work);
    conclusion.exit_code()
}
