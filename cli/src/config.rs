//! CRIU's configuration files: `/etc/criu/default.conf`,
//! `$HOME/.criu/default.conf`, `$CRIU_CONFIG_FILE` and `--config FILE` for
//! the command line, and the RPC's `config_file`. One long option per line,
//! without its dashes, its value after a space or `=`; `#` starts a
//! comment, double quotes keep spaces in a value.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// One option of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The option's long name, without dashes.
    pub name: String,
    /// Its values (none for a flag).
    pub values: Vec<String>,
    /// `FILE:LINE`, for messages.
    pub at: String,
}

/// The words of one line: whitespace separates them, double quotes keep
/// spaces, `\"` is a literal double quote (any other backslash is itself),
/// `#` outside quotes ends the line.
fn words(line: &str, at: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.get_or_insert_with(String::new);
            }
            '\\' if chars.clone().next() == Some('"') => {
                chars.next();
                cur.get_or_insert_with(String::new).push('"');
            }
            '#' if !quoted => break,
            c if c.is_whitespace() && !quoted => {
                if let Some(w) = cur.take() {
                    out.push(w);
                }
            }
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    if quoted {
        bail!("{at}: a double quote is not closed");
    }
    out.extend(cur);
    Ok(out)
}

/// Parse the text of configuration file `file`.
pub fn parse(text: &str, file: &Path) -> Result<Vec<Setting>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("{}:{}", file.display(), n + 1);
        let mut w = words(line, &at)?.into_iter();
        let Some(first) = w.next() else { continue };
        let first = first.strip_prefix("--").unwrap_or(&first).to_owned();
        let (name, mut values) = match first.split_once('=') {
            Some((k, v)) => (k.to_owned(), vec![v.to_owned()]),
            None => (first, Vec::new()),
        };
        if name.is_empty() || name.starts_with('-') {
            bail!("{at}: {name:?} is not an option name (write it without dashes)");
        }
        values.extend(w);
        out.push(Setting { name, values, at });
    }
    Ok(out)
}

/// Read and parse `file`; `None` when it does not exist.
pub fn read(file: &Path) -> Result<Option<Vec<Setting>>> {
    match std::fs::read_to_string(file) {
        Ok(text) => parse(&text, file).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            Err(e).with_context(|| format!("cannot read configuration file {}", file.display()))
        }
    }
}

/// The files read under the command line's or the RPC's options: the
/// defaults (with `defaults`), then `$CRIU_CONFIG_FILE` (which must exist).
pub fn default_files(defaults: bool) -> Vec<(PathBuf, bool)> {
    let mut files = Vec::new();
    if defaults {
        files.push((PathBuf::from("/etc/criu/default.conf"), false));
        if let Some(home) = std::env::var_os("HOME") {
            files.push((Path::new(&home).join(".criu/default.conf"), false));
        }
    }
    if let Some(f) = std::env::var_os("CRIU_CONFIG_FILE") {
        files.push((PathBuf::from(f), true));
    }
    files
}

/// The command line's files, in the order CRIU reads them (a later one
/// overrides an earlier): the defaults unless `--no-default-config`,
/// `$CRIU_CONFIG_FILE`, then `--config FILE`. An explicitly named file
/// must exist.
fn cli_files(args: &[std::ffi::OsString]) -> Result<Vec<(PathBuf, bool)>> {
    let mut files = default_files(!args.iter().any(|a| a == "--no-default-config"));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            let Some(f) = it.next() else {
                bail!("--config needs a file");
            };
            files.push((PathBuf::from(f), true));
        } else if let Some(f) = a.to_str().and_then(|s| s.strip_prefix("--config=")) {
            files.push((PathBuf::from(f), true));
        }
    }
    Ok(files)
}

/// The command line with the configuration files' options put in front of
/// the user's, right after the verb, so that the command line wins. An
/// option the verb does not take but another verb does is left out (CRIU
/// ignores options of other actions); one no verb takes is an error naming
/// its file and line.
pub fn expand(
    mut cmd: clap::Command,
    args: Vec<std::ffi::OsString>,
) -> Result<Vec<std::ffi::OsString>> {
    // Built, so that each argument knows whether it takes a value.
    cmd.build();
    let cmd = &cmd;
    // Only the verbs CRIU's configuration applies to.
    const VERBS: &[&str] = &["dump", "restore", "check"];
    let Some(at) = args
        .iter()
        .position(|a| a.to_str().is_some_and(|s| VERBS.contains(&s)))
    else {
        return Ok(args);
    };
    let verb = args[at].to_str().unwrap_or_default().to_owned();
    let Some(sub) = cmd.find_subcommand(&verb) else {
        return Ok(args);
    };
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    for (file, required) in cli_files(&args)? {
        let settings = match read(&file)? {
            Some(s) => s,
            None if required => bail!("configuration file {} does not exist", file.display()),
            None => continue,
        };
        for s in settings {
            let takes = |c: &clap::Command| {
                c.get_arguments()
                    .find(|a| a.get_long() == Some(s.name.as_str()))
                    .map(|a| a.get_action().takes_values())
            };
            match takes(sub).or_else(|| takes(cmd)) {
                Some(true) => {
                    if s.values.is_empty() {
                        bail!("{}: option {} needs a value", s.at, s.name);
                    }
                    extra.push(format!("--{}={}", s.name, s.values.join(" ")).into());
                }
                Some(false) => {
                    if !s.values.is_empty() {
                        bail!("{}: option {} takes no value", s.at, s.name);
                    }
                    extra.push(format!("--{}", s.name).into());
                }
                None if cmd.get_subcommands().any(|c| takes(c).is_some()) => {
                    tracing::debug!("{}: {} is not an option of {verb}: left out", s.at, s.name);
                }
                None => bail!(
                    "{}: stasis has no option {} (see stasis {verb} --help)",
                    s.at,
                    s.name
                ),
            }
        }
    }
    let mut out = args;
    out.splice(at + 1..at + 1, extra);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_options_with_values_quotes_and_comments() {
        let text = "# a comment\n\ntcp-established\nlog-file \"/tmp/a b.log\" # why\n\
                    ghost-limit=2M\n  --leave-running\nwork-dir \"/a \\\"w\\\" d\\x\"\n";
        let s = parse(text, Path::new("f.conf")).unwrap();
        let got: Vec<(&str, Vec<&str>)> = s
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.values.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("tcp-established", vec![]),
                ("log-file", vec!["/tmp/a b.log"]),
                ("ghost-limit", vec!["2M"]),
                ("leave-running", vec![]),
                ("work-dir", vec!["/a \"w\" d\\x"]),
            ]
        );
        assert_eq!(s[1].at, "f.conf:4");
    }

    #[test]
    fn broken_lines_are_errors_with_their_place() {
        let e = parse("log-file \"x\n", Path::new("f.conf")).unwrap_err();
        assert!(e.to_string().contains("f.conf:1"), "{e}");
        let e = parse("-x\n", Path::new("f.conf")).unwrap_err();
        assert!(e.to_string().contains("without dashes"), "{e}");
    }
}
