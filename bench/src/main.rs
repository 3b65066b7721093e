//! `stasis-bench` (run through `ci/bench`): end-to-end dump and restore of
//! standard workloads — anonymous memory, process trees, fd tables, threads
//! — with the images on tmpfs and on disk, through stasis and optionally a
//! second engine speaking CRIU's command line (`--vs`), runs alternating.
//! Reports medians and min–max of wall time, dump throughput, frozen time
//! (from `stats-dump`) and the engine's peak RSS, as a markdown table and JSON.
#![forbid(unsafe_code)]

mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(name = "stasis-bench", about, term_width = 80)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// The engine to measure
    #[arg(long, default_value = "target/release/stasis")]
    engine: PathBuf,
    /// A second engine (CRIU's CLI) run side by side, runs alternating
    #[arg(long = "vs", value_name = "ENGINE")]
    vs: Option<PathBuf>,
    /// Runs per workload and engine
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Workloads, e.g. mem:64,tree:50 (default: the full sweep)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where the images go: tmpfs, disk or both
    #[arg(long, value_delimiter = ',', default_value = "tmpfs,disk")]
    on: Vec<String>,
    /// Write the results as JSON here
    #[arg(long, default_value = "target/bench/report.json")]
    json: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) run a workload process
    #[command(hide = true)]
    Workload {
        kind: String,
        n: u64,
        out: PathBuf,
        dir: Option<PathBuf>,
    },
}

/// The default sweep.
const SWEEP: &[(&str, u64)] = &[
    ("mem", 64),
    ("mem", 256),
    ("mem", 1024),
    ("tree", 10),
    ("tree", 50),
    ("tree", 200),
    ("fds", 100),
    ("fds", 1000),
    ("fds", 10000),
    ("threads", 1),
    ("threads", 16),
    ("threads", 64),
    ("container", 14),
];

/// One measured cycle.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    dump_ms: f64,
    restore_ms: f64,
    frozen_ms: f64,
    pages: u64,
    dump_rss_kib: i64,
    restore_rss_kib: i64,
    /// Writing the same bytes into a file next to the images, just before
    /// the dump (mem workloads): the medium's write limit of the moment.
    write_ms: Option<f64>,
}

/// Results of one workload, medium and engine.
#[derive(Debug, Serialize)]
struct Row {
    workload: String,
    images: String,
    engine: String,
    samples: Vec<Sample>,
    error: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Workload { kind, n, out, dir }) = &cli.cmd {
        return workload::run(kind, *n, out, dir.as_deref());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("ci/bench needs root: dumping and restoring needs ptrace and clone3 set_tid");
    }
    let workloads: Vec<(String, u64)> = if cli.only.is_empty() {
        SWEEP.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
    } else {
        cli.only
            .iter()
            .map(|w| {
                let (k, n) = w.split_once(':').context("workloads are KIND:N")?;
                Ok((k.to_owned(), n.parse()?))
            })
            .collect::<Result<_>>()?
    };
    let mut engines = vec![
        std::fs::canonicalize(&cli.engine)
            .with_context(|| format!("engine {}", cli.engine.display()))?,
    ];
    if let Some(v) = &cli.vs {
        engines.push(std::fs::canonicalize(v).with_context(|| format!("engine {}", v.display()))?);
    }
    let mut rows = Vec::new();
    for (kind, n) in &workloads {
        for medium in &cli.on {
            let base = match medium.as_str() {
                "tmpfs" => PathBuf::from("/dev/shm/stasis-bench"),
                "disk" => std::env::current_dir()?.join("target/bench/images"),
                other => bail!("--on takes tmpfs or disk, not {other:?}"),
            };
            let mut these: Vec<Row> = engines
                .iter()
                .map(|e| Row {
                    workload: format!("{kind}:{n}"),
                    images: medium.clone(),
                    engine: e.display().to_string(),
                    samples: Vec::new(),
                    error: None,
                })
                .collect();
            for _ in 0..cli.runs {
                for (e, row) in engines.iter().zip(these.iter_mut()) {
                    if row.error.is_some() {
                        continue;
                    }
                    match cycle(e, kind, *n, &base) {
                        Ok(s) => row.samples.push(s),
                        Err(err) => row.error = Some(format!("{err:#}")),
                    }
                }
            }
            for r in &these {
                eprintln!("{}", line(r));
            }
            rows.extend(these);
            // Each cycle removes its own directory; the base goes once empty.
            let _ = std::fs::remove_dir(&base);
        }
    }
    println!("{}", table(&rows, engines.len() > 1));
    let c = costs(&rows);
    if !c.is_empty() {
        println!("{c}");
    }
    if let Some(dir) = cli.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cli.json, serde_json::to_string_pretty(&rows)?)?;
    eprintln!("JSON: {}", cli.json.display());
    Ok(())
}

/// Run `cmd` and wait for it, with its wall time and peak RSS (KiB).
fn timed(cmd: &mut Command) -> Result<(Duration, i64)> {
    let t = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = i32::try_from(child.id())?;
    let waited = stasis_kernel::process::wait4(nix::unistd::Pid::from_raw(pid));
    let took = t.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    let (status, max_rss) = waited
        .as_ref()
        .map_or((-1, 0), |(status, ru)| (*status, ru.ru_maxrss));
    if waited.is_err() || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "{:?} failed ({status:#x}): {}",
            cmd.get_program(),
            err.trim()
        );
    }
    Ok((took, max_rss))
}

fn wait_text(file: &Path, prefixes: &[&str], limit: Duration) -> Result<String> {
    let t = Instant::now();
    loop {
        let s = std::fs::read_to_string(file).unwrap_or_default();
        if prefixes.iter().any(|p| s.starts_with(p)) {
            return Ok(s);
        }
        if t.elapsed() > limit {
            bail!("{} says {s:?} after {limit:?}", file.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn pids(out: &Path) -> Vec<i32> {
    std::fs::read_to_string(workload::pids_file(out))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn wait_gone(pids: &[i32]) -> Result<()> {
    let t = Instant::now();
    for p in pids {
        while Path::new(&format!("/proc/{p}")).exists() {
            if t.elapsed() > Duration::from_secs(20) {
                bail!("pid {p} does not go away");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// Kills the workload's processes (all started by us) when dropped.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let list = pids(&self.0);
        for p in &list {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = wait_gone(&list);
    }
}

/// Start the workload, dump it, restore it, have it check itself.
fn cycle(engine: &Path, kind: &str, n: u64, base: &Path) -> Result<Sample> {
    let work = base.join(format!("{kind}-{n}"));
    let _ = std::fs::remove_dir_all(&work);
    let img = work.join("img");
    let files = work.join("files");
    std::fs::create_dir_all(&img)?;
    std::fs::create_dir_all(&files)?;
    let out = work.join("status");
    let me = std::env::current_exe()?;
    let mut root = Command::new("setsid")
        .arg(&me)
        .args(["workload", kind, &n.to_string()])
        .arg(&out)
        .arg(&files)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start the workload with setsid")?;
    let guard = Cleanup(out.clone());
    let ready = wait_text(&out, &["ready"], Duration::from_secs(120));
    if let Err(e) = ready {
        let _ = root.kill();
        let _ = root.wait();
        return Err(e);
    }
    let pid = i32::try_from(root.id())?;
    let write_ms = if kind == "mem" {
        Some(write_limit(&work.join("limit.bin"), n)?)
    } else {
        None
    };
    // A container's tree is its init's: the process that made its
    // namespaces stays outside, as a runtime does.
    let target = if kind == "container" {
        let digits = ["1", "2", "3", "4", "5", "6", "7", "8", "9"];
        wait_text(&workload::root_file(&out), &digits, Duration::from_secs(5))?
            .trim()
            .parse::<i32>()?
    } else {
        pid
    };
    let dumped = timed(
        Command::new(engine)
            .args(["dump", "-t", &target.to_string(), "-D"])
            .arg(&img)
            .args(["-o", "dump.log", "-v0"]),
    );
    if dumped.is_err() || target != pid {
        let _ = root.kill();
    }
    let _ = root.wait();
    let (dump, dump_rss) = dumped?;
    wait_gone(&pids(&out))?;
    let (frozen_ms, pages) = stats(&img)?;
    std::fs::remove_file(&out)?;
    let pidfile = work.join("restored.pid");
    let restored = timed(
        Command::new(engine)
            .args(["restore", "-d", "-D"])
            .arg(&img)
            .args(["-o", "restore.log", "-v0", "--pidfile"])
            .arg(&pidfile),
    );
    // A tree in a PID namespace of its own comes back with another PID
    // outside: killed by it too.
    if let Ok(p) = std::fs::read_to_string(&pidfile) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(workload::pids_file(&out))?;
        std::io::Write::write_all(&mut f, format!("{}\n", p.trim()).as_bytes())?;
    }
    let (restore, restore_rss) = restored?;
    std::fs::write(out.with_extension("go"), "")?;
    let verdict = wait_text(&out, &["ok", "bad"], Duration::from_secs(120))?;
    drop(guard);
    if !verdict.starts_with("ok") {
        bail!("the restored workload says {verdict:?}");
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(Sample {
        dump_ms: dump.as_secs_f64() * 1e3,
        restore_ms: restore.as_secs_f64() * 1e3,
        frozen_ms,
        pages,
        dump_rss_kib: dump_rss,
        restore_rss_kib: restore_rss,
        write_ms,
    })
}

/// Milliseconds to write `mib` MiB into `path` in 4 MiB writes, the second
/// of two writes: a VM hands the first fresh memory that its host has yet
/// to back (many times slower); the second, like the dump after it, gets
/// the pages the first freed. The file is removed after.
fn write_limit(path: &Path, mib: u64) -> Result<f64> {
    use std::io::Write;
    let chunk: Vec<u8> = (0..4u32 << 20)
        .map(|i| u8::try_from(i % 251).unwrap_or(0) | 1)
        .collect();
    let mut ms = 0.0;
    for _ in 0..2 {
        let t = Instant::now();
        let mut f = std::fs::File::create(path)?;
        for _ in 0..mib.div_ceil(4) {
            f.write_all(&chunk)?;
        }
        drop(f);
        ms = t.elapsed().as_secs_f64() * 1e3;
        std::fs::remove_file(path)?;
    }
    Ok(ms)
}

/// Frozen time (ms) and pages written, from `stats-dump`.
fn stats(img: &Path) -> Result<(f64, u64)> {
    let mut r = stasis_proto::ImageReader::open(&img.join("stats-dump"))?;
    let e: stasis_proto::images::StatsEntry = r.read_entry()?.context("empty stats-dump")?;
    let d = e.dump.context("stats-dump without dump figures")?;
    Ok((f64::from(d.frozen_time) / 1e3, d.pages_written))
}

fn median(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let m = if v.len().is_multiple_of(2) {
        f64::midpoint(v[mid - 1], v[mid])
    } else {
        v[mid]
    };
    Some((m, v[0], v[v.len() - 1]))
}

fn col(r: &Row, f: impl Fn(&Sample) -> f64) -> Option<(f64, f64, f64)> {
    median(r.samples.iter().map(f).collect())
}

fn fmt3(v: Option<(f64, f64, f64)>) -> String {
    v.map_or("-".into(), |(m, lo, hi)| {
        format!("{m:.1} ({lo:.1}–{hi:.1})")
    })
}

fn line(r: &Row) -> String {
    match &r.error {
        Some(e) => format!(
            "{} on {} with {}: FAILED: {e}",
            r.workload, r.images, r.engine
        ),
        None => format!(
            "{} on {} with {}: dump {} ms, restore {} ms",
            r.workload,
            r.images,
            r.engine,
            fmt3(col(r, |s| s.dump_ms)),
            fmt3(col(r, |s| s.restore_ms))
        ),
    }
}

fn table(rows: &[Row], ratios: bool) -> String {
    let mut t = String::from(
        "| workload | images | engine | dump ms, median (min–max) | restore ms, median (min–max) | dump GB/s | frozen ms | peak RSS dump / restore MiB |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let name = Path::new(&r.engine)
            .file_name()
            .map_or(r.engine.clone(), |n| n.to_string_lossy().into_owned());
        if let Some(e) = &r.error {
            t.push_str(&format!(
                "| {} | {} | {name} | failed: {} | | | | |\n",
                r.workload,
                r.images,
                e.replace('|', "/").lines().next().unwrap_or("")
            ));
            continue;
        }
        let gbs = col(r, |s| s.pages as f64 * 4096.0 / (s.dump_ms / 1e3) / 1e9)
            .map_or("-".into(), |(m, _, _)| format!("{m:.2}"));
        // Against writing the same bytes, run by run.
        let share: Vec<f64> = r
            .samples
            .iter()
            .filter_map(|s| s.write_ms.map(|w| 100.0 * w / s.dump_ms))
            .collect();
        let gbs = match median(share) {
            Some((m, _, _)) => format!("{gbs} ({m:.0}% of a plain write)"),
            None => gbs,
        };
        let mib = |v: Option<(f64, f64, f64)>| {
            v.map_or("-".into(), |(m, _, _)| format!("{:.0}", m / 1024.0))
        };
        t.push_str(&format!(
            "| {} | {} | {name} | {} | {} | {gbs} | {} | {} / {} |\n",
            r.workload,
            r.images,
            fmt3(col(r, |s| s.dump_ms)),
            fmt3(col(r, |s| s.restore_ms)),
            col(r, |s| s.frozen_ms).map_or("-".into(), |(m, _, _)| format!("{m:.1}")),
            mib(col(r, |s| s.dump_rss_kib as f64)),
            mib(col(r, |s| s.restore_rss_kib as f64)),
        ));
    }
    if ratios {
        t.push_str("\n| workload | images | dump: other / first | restore: other / first |\n|---|---|---|---|\n");
        for pair in rows.chunks(2) {
            if let [a, b] = pair {
                let ratio = |f: fn(&Sample) -> f64| match (col(a, f), col(b, f)) {
                    (Some((x, _, _)), Some((y, _, _))) if x > 0.0 => format!("{:.2}", y / x),
                    _ => "-".into(),
                };
                t.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    a.workload,
                    a.images,
                    ratio(|s| s.dump_ms),
                    ratio(|s| s.restore_ms)
                ));
            }
        }
    }
    t
}

/// Least-squares line through `pts` (x, y): slope, intercept and r².
fn fit(pts: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return None;
    }
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = pts.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    let sxy: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let syy: f64 = pts.iter().map(|(_, y)| (y - my) * (y - my)).sum();
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 {
        1.0
    } else {
        sxy * sxy / (sxx * syy)
    };
    Some((slope, my - slope * mx, r2))
}

/// The marginal cost of each unit of a workload (page, task, fd, thread)
/// from the sizes swept: a line through the medians, with its fixed part
/// and how straight it is (r²).
fn costs(rows: &[Row]) -> String {
    let page_kib = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4.0, |p| p as f64 / 1024.0);
    // (kind, images, engine) -> (units, dump ms, restore ms) per size
    type Points = Vec<(f64, f64, f64)>;
    let mut groups: std::collections::BTreeMap<(String, String, String), Points> =
        std::collections::BTreeMap::new();
    for r in rows.iter().filter(|r| r.error.is_none()) {
        let Some((kind, n)) = r.workload.split_once(':') else {
            continue;
        };
        let Ok(n) = n.parse::<f64>() else { continue };
        // mem:N is in MiB: count pages.
        let units = if kind == "mem" {
            n * 1024.0 / page_kib
        } else {
            n
        };
        if let (Some((d, _, _)), Some((rs, _, _))) =
            (col(r, |s| s.dump_ms), col(r, |s| s.restore_ms))
        {
            groups
                .entry((kind.to_owned(), r.images.clone(), r.engine.clone()))
                .or_default()
                .push((units, d, rs));
        }
    }
    let mut t = String::new();
    for ((kind, images, engine), pts) in &groups {
        let unit = match kind.as_str() {
            "mem" => "page",
            "tree" => "task",
            "fds" => "fd",
            "threads" => "thread",
            other => other,
        };
        let d: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1)).collect();
        let r: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.2)).collect();
        let (Some(fd), Some(fr)) = (fit(&d), fit(&r)) else {
            continue;
        };
        if t.is_empty() {
            t.push_str("| workload | images | engine | dump µs per unit (fixed ms, r²) | restore µs per unit (fixed ms, r²) |\n|---|---|---|---|---|\n");
        }
        let name = Path::new(engine)
            .file_name()
            .map_or(engine.clone(), |n| n.to_string_lossy().into_owned());
        let cell = |(slope, fixed, r2): (f64, f64, f64)| {
            format!("{:.2} µs/{unit} ({fixed:.1} ms, {r2:.3})", slope * 1000.0)
        };
        t.push_str(&format!(
            "| {kind} ({} sizes) | {images} | {name} | {} | {} |\n",
            pts.len(),
            cell(fd),
            cell(fr)
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::{fit, median};

    #[test]
    fn a_line_through_points() {
        let (slope, fixed, r2) = fit(&[(1.0, 3.0), (2.0, 5.0), (4.0, 9.0)]).expect("fit");
        assert!(
            (slope - 2.0).abs() < 1e-9 && (fixed - 1.0).abs() < 1e-9 && (r2 - 1.0).abs() < 1e-9
        );
        assert_eq!(fit(&[(1.0, 1.0)]), None);
        assert_eq!(fit(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(median(Vec::new()), None);
    }
}
