//! Reports of a run: one progress line per case, a human summary, TAP,
//! JUnit XML and JSON files, and the closing `N passed, N failed, N skipped`
//! line CI reads.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use super::{CaseResult, Status};

/// Totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Passed cases.
    pub passed: usize,
    /// Failed cases, including unexpected passes.
    pub failed: usize,
    /// Skipped cases.
    pub skipped: usize,
    /// Failures the known-failures list expects (not counted as failed).
    pub expected: usize,
}

impl Totals {
    /// Count results.
    pub fn of(results: &[CaseResult]) -> Self {
        let mut t = Self::default();
        for r in results {
            match r.status {
                Status::Pass => t.passed += 1,
                Status::Fail | Status::UnexpectedPass => t.failed += 1,
                Status::Skip => t.skipped += 1,
                Status::ExpectedFail => t.expected += 1,
            }
        }
        t
    }

    /// The closing line.
    pub fn closing_line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

fn case_name(r: &CaseResult) -> String {
    format!("{}:{}", r.name, r.flavor.as_str())
}

/// `PASS  maps00:h  0.12 s  note`.
pub fn progress_line(r: &CaseResult) -> String {
    let mut s = format!(
        "{:<5} {:<28} {:>6.2} s",
        r.status.as_str(),
        case_name(r),
        r.duration.as_secs_f64()
    );
    if !r.reason.is_empty() {
        let _ = write!(s, "  {}", r.reason);
    }
    if let Some(d) = &r.dir
        && r.status != Status::Pass
    {
        let _ = write!(s, "  [{}]", d.display());
    }
    s
}

/// The human summary: failures and skips with reasons, then the totals.
pub fn summary(results: &[CaseResult]) -> String {
    let mut s = String::new();
    for (title, st) in [
        ("failed", Status::Fail),
        ("unexpected passes", Status::UnexpectedPass),
        ("expected failures", Status::ExpectedFail),
        ("skipped", Status::Skip),
    ] {
        let v: Vec<_> = results.iter().filter(|r| r.status == st).collect();
        if v.is_empty() {
            continue;
        }
        let _ = writeln!(s, "{title} ({}):", v.len());
        for r in v {
            let _ = writeln!(s, "  {:<28} {}", case_name(r), r.reason);
        }
    }
    let t = Totals::of(results);
    if t.expected > 0 {
        let _ = writeln!(s, "{} expected failures (known-failures list)", t.expected);
    }
    let _ = writeln!(s, "{}", t.closing_line());
    s
}

/// TAP version 13.
pub fn tap(results: &[CaseResult]) -> String {
    let mut s = format!("TAP version 13\n1..{}\n", results.len());
    for (i, r) in results.iter().enumerate() {
        let n = i + 1;
        let one_line = r.reason.replace('\n', " ");
        let _ = match r.status {
            Status::Pass => writeln!(s, "ok {n} - {}", case_name(r)),
            Status::Skip => writeln!(s, "ok {n} - {} # SKIP {one_line}", case_name(r)),
            Status::ExpectedFail => writeln!(s, "not ok {n} - {} # TODO {one_line}", case_name(r)),
            Status::Fail | Status::UnexpectedPass => {
                writeln!(s, "not ok {n} - {}\n  # {one_line}", case_name(r))
            }
        };
    }
    s
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// JUnit XML, one testcase per case, classname = category.
pub fn junit(results: &[CaseResult]) -> String {
    let t = Totals::of(results);
    let total: f64 = results.iter().map(|r| r.duration.as_secs_f64()).sum();
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuite name=\"zdtm\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{total:.3}\">",
        results.len(),
        t.failed,
        t.skipped + t.expected
    );
    for r in results {
        let _ = write!(
            s,
            "  <testcase classname=\"zdtm.{}\" name=\"{}\" time=\"{:.3}\"",
            r.category,
            xml_escape(&case_name(r)),
            r.duration.as_secs_f64()
        );
        let msg = xml_escape(&r.reason);
        let _ = match r.status {
            Status::Pass => writeln!(s, "/>"),
            Status::Skip => writeln!(s, "><skipped message=\"{msg}\"/></testcase>"),
            Status::ExpectedFail => writeln!(
                s,
                "><skipped message=\"expected failure: {msg}\"/></testcase>"
            ),
            Status::Fail | Status::UnexpectedPass => {
                writeln!(s, "><failure message=\"{msg}\"/></testcase>")
            }
        };
    }
    s.push_str("</testsuite>\n");
    s
}

/// JSON document (schema 1).
pub fn json(results: &[CaseResult]) -> serde_json::Value {
    let t = Totals::of(results);
    json!({
        "schema": 1,
        "totals": { "passed": t.passed, "failed": t.failed, "skipped": t.skipped, "expected_failures": t.expected },
        "cases": results.iter().map(|r| json!({
            "name": r.name,
            "flavor": r.flavor.as_str(),
            "category": r.category,
            "status": r.status.as_str(),
            "reason": r.reason,
            "seconds": r.duration.as_secs_f64(),
            "dir": r.dir.as_ref().map(|d| d.display().to_string()),
        })).collect::<Vec<_>>(),
    })
}

/// Write summary.txt, report.tap, report.xml and report.json into `dir`.
pub fn write_all(dir: &Path, results: &[CaseResult]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("summary.txt"), summary(results))?;
    std::fs::write(dir.join("report.tap"), tap(results))?;
    std::fs::write(dir.join("report.xml"), junit(results))?;
    let j = serde_json::to_string_pretty(&json(results)).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), j + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::Flavor;
    use std::time::Duration;

    fn r(status: Status, reason: &str) -> CaseResult {
        CaseResult {
            name: "t<1>",
            category: "memory",
            flavor: Flavor::H,
            status,
            reason: reason.into(),
            duration: Duration::from_millis(5),
            dir: None,
        }
    }

    #[test]
    fn totals_and_formats() {
        let v = vec![
            r(Status::Pass, ""),
            r(Status::Fail, "a & b"),
            r(Status::Skip, "arch"),
            r(Status::ExpectedFail, "x"),
        ];
        assert_eq!(
            Totals::of(&v).closing_line(),
            "1 passed, 1 failed, 1 skipped"
        );
        let tap = tap(&v);
        assert!(tap.contains(
            "1..4\nok 1 - t<1>:h\nnot ok 2 - t<1>:h\n  # a & b\nok 3 - t<1>:h # SKIP arch"
        ));
        let x = junit(&v);
        assert!(x.contains("name=\"t&lt;1&gt;:h\"") && x.contains("message=\"a &amp; b\""));
        assert_eq!(json(&v)["totals"]["expected_failures"], 1);
    }
}
