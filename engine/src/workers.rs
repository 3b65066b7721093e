//! Work split over threads, one per CPU the engine may use (the page copies
//! of a dump and a restore, and the restore's per-task workers). No kernel
//! object of its own and no images.

/// Run every job on a scoped thread of its own and return their results in
/// order; a job that panicked gives `on_panic(index)` instead.
pub fn run<T: Send, F: FnOnce() -> T + Send>(
    jobs: Vec<F>,
    on_panic: impl Fn(usize) -> T,
) -> Vec<T> {
    run_beside(jobs, on_panic, || ()).1
}

/// [`run`], with `main` run on the calling thread meanwhile (a producer
/// feeding the jobs); its result, then theirs once every job is done.
pub fn run_beside<T: Send, F: FnOnce() -> T + Send, R>(
    jobs: Vec<F>,
    on_panic: impl Fn(usize) -> T,
    main: impl FnOnce() -> R,
) -> (R, Vec<T>) {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs.into_iter().map(|f| s.spawn(f)).collect();
        let mine = main();
        let theirs = handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| h.join().unwrap_or_else(|_| on_panic(i)))
            .collect();
        (mine, theirs)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_in_order_and_panics_replaced() {
        let jobs: Vec<Box<dyn FnOnce() -> usize + Send>> = vec![
            Box::new(|| 10),
            Box::new(|| panic!("job 1 fails")),
            Box::new(|| 30),
        ];
        assert_eq!(super::run(jobs, |i| 100 + i), vec![10, 101, 30]);
    }
}
