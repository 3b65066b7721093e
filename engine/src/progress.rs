//! Progress of a dump or a restore, reported to the caller as it goes (the
//! `stasis` CLI draws a bar from it when standard error is a terminal).

use std::sync::Arc;

/// One step forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `done` of `total` processes are dumped or restored.
    Tasks {
        /// Finished so far.
        done: usize,
        /// In the tree.
        total: usize,
    },
    /// This many more pages were written (to the images or into a task).
    Pages(u64),
}

/// Where progress goes.
#[derive(Clone)]
pub struct Progress(Arc<dyn Fn(Step) + Send + Sync>);

impl Progress {
    /// Report to `f`.
    pub fn new(f: impl Fn(Step) + Send + Sync + 'static) -> Progress {
        Progress(Arc::new(f))
    }

    /// Report `step`.
    pub fn report(&self, step: Step) {
        (self.0)(step);
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// Report `step` if anyone listens.
pub fn report(p: Option<&Progress>, step: Step) {
    if let Some(p) = p {
        p.report(step);
    }
}
