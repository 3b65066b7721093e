//! zdtm: the stasis test corpus and its engine-agnostic runner.
//!
//! - [`corpus`]: the test programs, one multicall binary (`zdtm-tests NAME
//!   --pidfile F --outfile O`), each setting up kernel objects, waiting for
//!   SIGTERM and verifying concrete values (zdtm protocol, see [`testlib`]).
//! - [`meta`]: what each test needs (flavors, `check` features, engine
//!   options, flags, architecture).
//! - [`runner`]: `zdtm run`, which starts tests, records their visible state,
//!   dumps and restores them through any engine speaking CRIU's command line,
//!   compares, and reports (text, TAP, JUnit XML, JSON).

pub mod corpus;
pub mod meta;
pub mod runner;
pub mod testlib;
