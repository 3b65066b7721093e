//! The corpus: every test program, grouped by the kernel object it checks.
//! Each category module holds its metadata table (`TESTS`) next to the
//! bodies, so a test and its needs are read and changed in one place.

mod creds;
mod environment;
mod events;
mod files;
mod ipc;
mod memory;
mod namespaces;
mod pipes;
mod pstree;
mod restart;
mod signals;
mod sockets;
mod threads;
mod timers;
mod tty;
pub mod util;

use crate::meta::Test;

/// Every test, in listing order.
pub fn all() -> Vec<Test> {
    [
        memory::TESTS,
        files::TESTS,
        pipes::TESTS,
        pstree::TESTS,
        threads::TESTS,
        signals::TESTS,
        restart::TESTS,
        timers::TESTS,
        creds::TESTS,
        environment::TESTS,
        sockets::TESTS,
        events::TESTS,
        ipc::TESTS,
        tty::TESTS,
        namespaces::TESTS,
    ]
    .concat()
}
