//! `zdtm-tests`: every test program of the corpus in one binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    zdtm::testlib::main(&zdtm::corpus::all(), &args)
}
