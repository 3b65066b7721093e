//! Asynchronous I/O: io_uring, and aio rings ([`aio`]: io_setup,
//! io_getevents, io_destroy, moving a ring).
//!
//! Wrappers return `Errno` without context; callers say what failed.

use std::os::fd::OwnedFd;

use nix::errno::Errno;

use crate::raw::{long, nr, syscall_fd};

/// `io_uring_setup(entries, params)`; returns the ring fd.
pub fn io_uring_setup(entries: u32) -> Result<OwnedFd, Errno> {
    let mut params = [0u8; 120];
    // SAFETY: params is a zeroed struct io_uring_params (120 bytes) the kernel fills.
    unsafe {
        syscall_fd(
            nr::IO_URING_SETUP,
            [long(entries), params.as_mut_ptr() as libc::c_long, 0, 0, 0],
        )
    }
}

/// `io_setup`, `io_getevents(0 events)`, `io_destroy` around a ring.
pub mod aio {
    use nix::errno::Errno;

    use crate::mm::{Mapping, mremap_fixed, munmap};
    use crate::raw::{check, long, syscall};

    /// `io_setup(nr, &ctx)`: the ring's address.
    pub fn setup(nr: u32) -> Result<u64, Errno> {
        let mut ctx: u64 = 0;
        // SAFETY: ctx is a live, zeroed aio_context_t the kernel fills.
        unsafe {
            syscall(
                libc::SYS_io_setup,
                [
                    long(nr),
                    std::ptr::from_mut(&mut ctx) as libc::c_long,
                    0,
                    0,
                    0,
                ],
            )
        }?;
        Ok(ctx)
    }

    /// `io_getevents(ctx, 0, 0, NULL, &zero_timeout)`.
    pub fn getevents_nowait(ctx: u64) -> Result<i64, Errno> {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: no events are requested, so the null events pointer is never written.
        check(unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                ctx,
                0,
                0,
                std::ptr::null_mut::<u8>(),
                std::ptr::from_ref(&ts),
            )
        })
    }

    /// An aio context whose ring we may move: no Rust reference ever
    /// points into the ring, the kernel alone reads and writes it.
    #[derive(Debug)]
    pub struct Ring(u64);

    impl Ring {
        /// `io_setup(nr)`.
        pub fn new(nr: u32) -> Result<Self, Errno> {
            setup(nr).map(Self)
        }

        /// The context id, which is the ring's address.
        pub fn id(&self) -> u64 {
            self.0
        }

        /// Moves the ring (`len` bytes) elsewhere with mremap; the kernel
        /// renames the context to the new address.
        pub fn remap(&mut self, len: u64) -> Result<(), Errno> {
            let dst = Mapping::anon(
                usize::try_from(len).map_err(|_| Errno::EINVAL)?,
                libc::PROT_NONE,
                0,
            )?;
            let to = dst.addr();
            dst.leak();
            // SAFETY: the ring is ours and nothing in Rust refers into it.
            match unsafe { mremap_fixed(self.0, len, to) } {
                Ok(new) => {
                    self.0 = new;
                    Ok(())
                }
                Err(e) => {
                    // SAFETY: the placeholder is ours and unused.
                    let _ = unsafe { munmap(to, len) };
                    Err(e)
                }
            }
        }
    }

    impl Drop for Ring {
        fn drop(&mut self) {
            destroy(self.0);
        }
    }

    /// `io_destroy(ctx)`.
    pub fn destroy(ctx: u64) {
        // SAFETY: ctx is a ring we created; destroying twice only returns EINVAL.
        let _ = unsafe { syscall(libc::SYS_io_destroy, [long(ctx), 0, 0, 0, 0]) };
    }
}
