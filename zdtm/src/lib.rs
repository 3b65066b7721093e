//! The zdtm test corpus (one multicall binary of test programs) and the runner
//! that drives any engine speaking CRIU's command line through it. The corpus
//! and runner land with the zdtm issue; this crate holds their place in the
//! workspace layout.
