//! `zdtm`: list the corpus, or run it through a C/R engine's CLI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use zdtm::meta::Flavor;
use zdtm::runner::{self, KeepImg, Options, engine::Engine, known::KnownFailures, report};

/// The zdtm test corpus runner: checks that an engine speaking CRIU's CLI
/// dumps and restores every kind of kernel object correctly.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List tests: name, category, flavors, flags, features, options
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Run tests
    Run(Box<RunArgs>),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Keep {
    Always,
    Failed,
    Never,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Run this test (repeatable; also runs noauto tests)
    #[arg(short = 't', long = "test")]
    tests: Vec<String>,
    /// Run tests whose name matches this regex
    #[arg(short = 'T', long = "tests-regex")]
    regex: Option<String>,
    /// Run all tests (except noauto ones)
    #[arg(short = 'a', long)]
    all: bool,
    /// Exclude tests whose name matches this regex
    #[arg(short = 'x', long)]
    exclude: Option<String>,
    /// Flavors, comma-separated: h, ns, uns
    #[arg(short = 'f', long, default_value = "h")]
    flavors: String,
    /// The engine binary (default: `stasis` next to this binary, then in PATH)
    #[arg(long)]
    engine: Option<PathBuf>,
    /// The test-program binary (default: `zdtm-tests` next to this binary)
    #[arg(long)]
    tests_bin: Option<PathBuf>,
    /// Cases to run at once
    #[arg(short = 'j', long, default_value_t = 1)]
    jobs: usize,
    /// Dump/restore cycles per case
    #[arg(long, default_value_t = 1)]
    iters: u32,
    /// Dump with --leave-running and do not restore
    #[arg(long)]
    norst: bool,
    /// Pre-dump N times (memory tracked, --prev-images-dir chained) before each dump
    #[arg(long, value_name = "N", default_value_t = 0)]
    pre: u32,
    /// With --pre: take full snapshots (dump --leave-running --track-mem) instead of pre-dumps
    #[arg(long, requires = "pre")]
    snaps: bool,
    /// No C/R: only start each test, then stop it and read its verdict
    #[arg(long)]
    nocr: bool,
    /// Ask every test to damage its own state first; the test must then FAIL
    #[arg(long)]
    sabotage: bool,
    /// When to keep case directories (images, logs)
    #[arg(long, value_enum, default_value = "failed")]
    keep_img: Keep,
    /// Where case directories go (default: a fresh directory under /tmp)
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write summary.txt, report.tap, report.xml and report.json here
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// Failures listed here (NAME[:flavor] reason) do not fail the run;
    /// listed tests that pass do
    #[arg(long)]
    known_failures: Option<PathBuf>,
    /// Seconds each step may take (start, dump, restore, verify)
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zdtm: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let tests = zdtm::corpus::all();
    match cli.cmd {
        Cmd::List { json } => {
            list(&tests, json);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run(args) => run(&tests, *args),
    }
}

fn list(tests: &[zdtm::meta::Test], json: bool) {
    if json {
        let v: Vec<_> = tests
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name, "category": t.category.as_str(), "about": t.about,
                    "kind": format!("{:?}", t.kind).to_lowercase(),
                    "flavors": t.flavors.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
                    "flags": t.flags.words(), "features": t.features, "opts": t.opts,
                    "arch": t.arch, "cpu_flag": t.cpu_flag,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return;
    }
    println!(
        "{:<24} {:<12} {:<10} {:<8} {:<14} NEEDS",
        "NAME", "CATEGORY", "FLAVORS", "KIND", "FLAGS"
    );
    for t in tests {
        let flavors: Vec<_> = t.flavors.iter().map(|f| f.as_str()).collect();
        let mut needs: Vec<String> = t.features.iter().map(|f| format!("feature:{f}")).collect();
        needs.extend(t.opts.iter().map(|o| (*o).to_owned()));
        needs.extend(t.arch.map(|a| format!("arch:{a}")));
        needs.extend(t.cpu_flag.map(|c| format!("cpu:{c}")));
        println!(
            "{:<24} {:<12} {:<10} {:<8} {:<14} {}",
            t.name,
            t.category.as_str(),
            flavors.join(","),
            if t.kind == zdtm::meta::Kind::Static {
                "static"
            } else {
                "trans"
            },
            t.flags.words().join(","),
            needs.join(" ")
        );
    }
    let cats: std::collections::BTreeSet<_> = tests.iter().map(|t| t.category).collect();
    println!("{} tests in {} categories", tests.len(), cats.len());
}

fn sibling(name: &str) -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let p = me.parent()?.join(name);
    p.exists().then_some(p)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.exists())
    })
}

fn run(tests: &[zdtm::meta::Test], a: RunArgs) -> Result<ExitCode> {
    let pattern = a
        .regex
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .context("bad -T regex")?;
    let exclude = a
        .exclude
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .context("bad -x regex")?;
    if a.tests.is_empty() && pattern.is_none() && !a.all {
        bail!("nothing selected: give -t NAME, -T REGEX or -a");
    }
    let selected = runner::select(tests, &a.tests, pattern.as_ref(), a.all, exclude.as_ref())
        .map_err(anyhow::Error::msg)?;
    let flavors = a
        .flavors
        .split(',')
        .map(|f| {
            Flavor::parse(f.trim()).with_context(|| format!("unknown flavor {f:?} (h, ns, uns)"))
        })
        .collect::<Result<Vec<_>>>()?;
    let tests_bin = a
        .tests_bin
        .or_else(|| sibling("zdtm-tests"))
        .context("zdtm-tests not found next to zdtm; give --tests-bin")?;
    let engine = if a.nocr {
        None
    } else {
        let p = a
            .engine
            .or_else(|| sibling("stasis"))
            .or_else(|| find_in_path("stasis"))
            .context("no engine: give --engine PATH (or --nocr)")?;
        Some(Engine::new(std::path::absolute(&p).context("engine path")?))
    };
    let known = a
        .known_failures
        .as_deref()
        .map(KnownFailures::load)
        .transpose()?;
    if let Some(k) = &known {
        for n in k.names() {
            if !tests.iter().any(|t| t.name == n) {
                eprintln!("zdtm: warning: the known-failures list names no test {n:?}");
            }
        }
    }
    let work_dir = match a.work_dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("zdtm-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work_dir).with_context(|| format!("create {}", work_dir.display()))?;
    let opts = Options {
        tests_bin,
        engine,
        flavors,
        jobs: a.jobs,
        iters: a.iters,
        nocr: a.nocr,
        norst: a.norst,
        pre: a.pre,
        snaps: a.snaps,
        sabotage: a.sabotage,
        keep_img: match a.keep_img {
            Keep::Always => KeepImg::Always,
            Keep::Failed => KeepImg::Failed,
            Keep::Never => KeepImg::Never,
        },
        work_dir: work_dir.clone(),
        timeout: Duration::from_secs(a.timeout),
        known,
        progress: true,
    };
    let mode = if a.nocr {
        "no C/R".to_owned()
    } else if a.norst {
        "dump --leave-running".to_owned()
    } else {
        let pre = match (a.pre, a.snaps) {
            (0, _) => String::new(),
            (n, false) => format!(", {n} pre-dumps each"),
            (n, true) => format!(", {n} snapshots each"),
        };
        format!("dump+restore x{}{pre}", a.iters)
    };
    let engine_name = opts
        .engine
        .as_ref()
        .map_or("-".to_owned(), |e| e.path().display().to_string());
    println!(
        "zdtm: {} tests x {} flavors, mode: {mode}{}, engine: {engine_name}, -j {}",
        selected.len(),
        opts.flavors.len(),
        if a.sabotage { " + sabotage" } else { "" },
        opts.jobs
    );
    let started = Instant::now();
    let results = runner::run(&selected, &opts);
    println!("time: {:.1} s", started.elapsed().as_secs_f64());
    if let Some(dir) = &a.report_dir {
        report::write_all(dir, &results)
            .with_context(|| format!("write reports to {}", dir.display()))?;
        println!("reports: {}", dir.display());
    }
    // Remove the work dir when nothing in it is kept.
    if results.iter().all(|r| r.dir.is_none()) {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    let totals = report::Totals::of(&results);
    // The summary ends with the closing line CI reads.
    print!("{}", report::summary(&results));
    Ok(if totals.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
