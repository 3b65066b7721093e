//! Rendering of findings: the human table (grouped by category, ✓/✗ with the
//! reason and what would fix it), the JSON document, and the name list.
//!
//! JSON schema (version 1), stable for scripts:
//!
//! ```text
//! { "schema": 1, "kernel": "6.18.0", "arch": "x86_64",
//!   "verdict": "good" | "good-but-missing" | "bad", "exit_code": 0,
//!   "probes": [ { "name": "map_files", "category": "required",
//!                 "criu_feature": false, "supported": true,
//!                 "status": "supported" | "unsupported" | "not-applicable" | "error" | "timeout",
//!                 "reason": "...", "description": "...",
//!                 "needs": { "kernel": "3.3", "config": "CONFIG_..." },
//!                 "elapsed_us": 120 } ] }
//! ```

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::{Category, Finding, Outcome, PROBES, Verdict};

const ORDER: [(Category, &str); 6] = [
    (
        Category::Required,
        "required: C/R cannot work without these",
    ),
    (
        Category::Extra,
        "extra (--extra): some process trees need these",
    ),
    (Category::Experimental, "experimental (--experimental)"),
    (Category::Feature, "CRIU client features (--feature NAME)"),
    (
        Category::Informational,
        "informational: reported, never counted",
    ),
    (
        Category::Stasis,
        "stasis: beyond CRIU's probes, reported, never counted",
    ),
];

fn paint(s: &str, code: &str, color: bool) -> String {
    if color {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_string()
    }
}

fn needs(f: &Finding) -> String {
    let n = &f.probe.needs;
    let mut parts = Vec::new();
    if !n.kernel.is_empty() && n.kernel != "-" {
        parts.push(format!("Linux {}+", n.kernel));
    }
    if !n.config.is_empty() {
        parts.push(n.config.replace(' ', ", "));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" [needs {}]", parts.join(", "))
    }
}

/// The human-readable table, grouped by category, ending with the verdict.
pub fn table(findings: &[Finding], color: bool) -> String {
    let width = findings
        .iter()
        .map(|f| f.probe.name.len())
        .max()
        .unwrap_or(10);
    let mut out = String::new();
    for (cat, title) in ORDER {
        let rows: Vec<&Finding> = findings
            .iter()
            .filter(|f| f.probe.category == cat)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{}", paint(title, "1", color));
        for f in rows {
            let (mark, text) = match &f.outcome {
                Outcome::Supported(d) => (
                    paint("✓", "32", color),
                    if d.is_empty() {
                        f.probe.description.to_string()
                    } else {
                        d.clone()
                    },
                ),
                Outcome::Unsupported(r) => (paint("✗", "31", color), format!("{r}{}", needs(f))),
                Outcome::NotApplicable(r) => {
                    (paint("-", "2", color), format!("not applicable: {r}"))
                }
                o @ (Outcome::Error(_) | Outcome::TimedOut(_)) => (
                    paint("!", "33", color),
                    format!("could not run: {}", o.reason()),
                ),
            };
            let _ = writeln!(out, "  {mark} {:<width$}  {text}", f.probe.name);
        }
        out.push('\n');
    }
    let count = |p: fn(&Outcome) -> bool| findings.iter().filter(|f| p(&f.outcome)).count();
    let _ = writeln!(
        out,
        "{} probes: {} supported, {} not supported, {} not applicable, {} could not run",
        findings.len(),
        count(|o| matches!(o, Outcome::Supported(_))),
        count(|o| matches!(o, Outcome::Unsupported(_))),
        count(|o| matches!(o, Outcome::NotApplicable(_))),
        count(|o| matches!(o, Outcome::Error(_) | Outcome::TimedOut(_))),
    );
    out.push_str(Verdict::of(findings).message());
    out.push('\n');
    out
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One probe's JSON object.
pub fn finding_json(f: &Finding) -> Value {
    json!({
        "name": f.probe.name,
        "category": f.probe.category,
        "criu_feature": f.probe.criu_feature,
        "supported": f.outcome.is_supported(),
        "status": f.outcome.status(),
        "reason": f.outcome.reason(),
        "description": f.probe.description,
        "needs": f.probe.needs,
        "elapsed_us": u64::try_from(f.elapsed.as_micros()).unwrap_or(u64::MAX),
    })
}

/// The whole JSON document (schema 1, see the module docs).
pub fn json(findings: &[Finding]) -> Value {
    let verdict = Verdict::of(findings);
    json!({
        "schema": 1,
        "kernel": kernel_release(),
        "arch": std::env::consts::ARCH,
        "verdict": match verdict {
            Verdict::Good => "good",
            Verdict::GoodButMissing => "good-but-missing",
            Verdict::Bad => "bad",
        },
        "exit_code": verdict.exit_code(),
        "probes": findings.iter().map(finding_json).collect::<Vec<_>>(),
    })
}

/// Every probe name, one per line, in table order.
pub fn list() -> String {
    PROBES.iter().map(|p| format!("{}\n", p.name)).collect()
}

/// CRIU's 45 feature names, in CRIU's order.
pub fn criu_feature_names() -> Vec<&'static str> {
    PROBES
        .iter()
        .filter(|p| p.criu_feature)
        .map(|p| p.name)
        .collect()
}
