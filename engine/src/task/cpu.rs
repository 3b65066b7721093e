//! The CPU state of a thread (`thread_info_x86`, `thread_info_aarch64`,
//! `thread_info_ppc64` or `thread_info_s390` in `core-TID.img`): general
//! registers, FPU/vector registers and, on aarch64, the TLS register and
//! pointer-authentication keys. Dump reads them with ptrace regsets;
//! restore writes them back last, so the thread resumes exactly where it
//! was dumped.

use nix::unistd::Pid;
use stasis_arch::native::Regs;
use stasis_kernel as kernel;
use stasis_proto::images::CoreEntry;

use crate::error::{EngineError as Error, Result};
use crate::images::img;

#[cfg(not(any(
    target_arch = "aarch64",
    target_arch = "powerpc64",
    target_arch = "s390x"
)))]
pub use x86::*;

#[cfg(target_arch = "aarch64")]
pub use aarch64::*;

#[cfg(target_arch = "powerpc64")]
pub use ppc64::*;

#[cfg(target_arch = "s390x")]
pub use s390::*;

/// Refuse to run on an arch stasis does not support.
pub fn host_supported() -> Result<()> {
    if stasis_arch::Arch::host().is_none() {
        return Err(Error::Arch {
            what: format!(
                "this engine checkpoints x86_64, aarch64, ppc64le and s390x tasks only; this machine is {}",
                std::env::consts::ARCH
            ),
        });
    }
    Ok(())
}

/// Write regset `nt` of thread `tid`.
fn set_regset(tid: Pid, nt: u32, b: &[u8]) -> Result<()> {
    kernel::ptrace::setregset(tid, nt, b).map_err(Error::ptrace(tid, "SETREGSET"))
}

/// The general registers last, with an interrupted syscall set to restart.
fn set_regs(tid: Pid, regs: &Regs) -> Result<()> {
    kernel::ptrace::setregs(tid, &regs.with_syscall_restarted())
        .map_err(Error::ptrace(tid, "SETREGS"))
}

fn no_regs(tid: Pid, arch: &str) -> Error {
    img::CORE.bad(tid, format!("no {arch} registers"))
}

#[cfg(not(any(
    target_arch = "aarch64",
    target_arch = "powerpc64",
    target_arch = "s390x"
)))]
mod x86 {
    use super::*;
    use stasis_arch::x86;
    use stasis_proto::images::ThreadInfoX86;
    use stasis_proto::images::core_entry::March;

    /// The image's per-thread CPU state on this arch.
    pub type ThreadInfo = ThreadInfoX86;

    /// Thread `tid`'s CPU state; `regs` were read at the freeze.
    pub fn dump(tid: Pid, regs: &Regs, clear_tid_addr: u64) -> Result<ThreadInfo> {
        let xstate = kernel::ptrace::getregset(tid, x86::NT_X86_XSTATE)
            .map_err(Error::ptrace(tid, "GETREGSET"))?;
        Ok(ThreadInfoX86 {
            clear_tid_addr,
            gpregs: regs.to_proto(),
            fpregs: x86::fpregs_from_xsave(&xstate),
            tls: Vec::new(),
        })
    }

    /// Put thread `tid`'s CPU state back from its core.
    pub fn restore(tid: Pid, core: &CoreEntry) -> Result<()> {
        let ti = core
            .thread_info
            .as_ref()
            .ok_or_else(|| no_regs(tid, "x86-64"))?;
        let mut xs = kernel::ptrace::getregset(tid, x86::NT_X86_XSTATE)
            .map_err(Error::ptrace(tid, "GETREGSET"))?;
        x86::fpregs_into_xsave(&ti.fpregs, &mut xs);
        set_regset(tid, x86::NT_X86_XSTATE, &xs)?;
        set_regs(tid, &Regs::from_proto(&ti.gpregs))
    }

    /// The address the thread's tid is cleared at on exit.
    pub fn clear_tid_addr(core: &CoreEntry) -> Option<u64> {
        core.thread_info.as_ref().map(|t| t.clear_tid_addr)
    }

    /// Put the CPU state into a core entry.
    pub fn set(core: &mut CoreEntry, ti: ThreadInfo) {
        core.mtype = March::X8664 as i32;
        core.thread_info = Some(ti);
    }
}

#[cfg(target_arch = "aarch64")]
mod aarch64 {
    use super::*;
    use stasis_arch::aarch64::{self as a64, Fpsimd};
    use stasis_proto::images::ThreadInfoAarch64;
    use stasis_proto::images::core_entry::March;

    /// The image's per-thread CPU state on this arch.
    pub type ThreadInfo = ThreadInfoAarch64;

    /// Thread `tid`'s CPU state; `regs` were read at the freeze.
    pub fn dump(tid: Pid, regs: &Regs, clear_tid_addr: u64) -> Result<ThreadInfo> {
        let fp = kernel::ptrace::getregset(tid, a64::NT_PRFPREG)
            .map_err(Error::ptrace(tid, "GETREGSET"))?;
        let fp = Fpsimd::from_regset(&fp).ok_or(Error::Ptrace {
            tid,
            op: "GETREGSET(NT_PRFPREG) gave a short buffer",
            errno: nix::errno::Errno::EIO,
        })?;
        let tls = kernel::ptrace::getregset(tid, a64::NT_ARM_TLS)
            .map_err(Error::ptrace(tid, "GETREGSET"))?;
        // Without pointer authentication the regsets are absent (EINVAL).
        let pac_keys = match (
            kernel::ptrace::getregset(tid, a64::NT_ARM_PACA_KEYS),
            kernel::ptrace::getregset(tid, a64::NT_ARM_PACG_KEYS),
        ) {
            (Ok(a), Ok(g)) => a64::pac_keys_from_regsets(&a, &g),
            _ => None,
        };
        Ok(ThreadInfoAarch64 {
            clear_tid_addr,
            tls: a64::tls_from_regset(&tls).unwrap_or(0),
            gpregs: regs.to_proto(),
            fpsimd: fp.to_proto(),
            pac_keys,
        })
    }

    /// Put thread `tid`'s CPU state back from its core.
    pub fn restore(tid: Pid, core: &CoreEntry) -> Result<()> {
        let ti = core
            .ti_aarch64
            .as_ref()
            .ok_or_else(|| no_regs(tid, "aarch64"))?;
        set_regset(
            tid,
            a64::NT_PRFPREG,
            &Fpsimd::from_proto(&ti.fpsimd).to_regset(),
        )?;
        set_regset(tid, a64::NT_ARM_TLS, &ti.tls.to_le_bytes())?;
        if let Some(k) = &ti.pac_keys {
            let (a, g) = a64::pac_keys_to_regsets(k);
            if let Some(b) = a {
                set_regset(tid, a64::NT_ARM_PACA_KEYS, &b)?;
            }
            if let Some(b) = g {
                set_regset(tid, a64::NT_ARM_PACG_KEYS, &b)?;
            }
        }
        set_regs(tid, &Regs::from_proto(&ti.gpregs))
    }

    /// The address the thread's tid is cleared at on exit.
    pub fn clear_tid_addr(core: &CoreEntry) -> Option<u64> {
        core.ti_aarch64.as_ref().map(|t| t.clear_tid_addr)
    }

    /// Put the CPU state into a core entry.
    pub fn set(core: &mut CoreEntry, ti: ThreadInfo) {
        core.mtype = March::Aarch64 as i32;
        core.ti_aarch64 = Some(ti);
    }
}

#[cfg(target_arch = "powerpc64")]
mod ppc64 {
    use super::*;
    use stasis_arch::ppc64::{self as p64, Fpu};
    use stasis_proto::images::ThreadInfoPpc64;
    use stasis_proto::images::core_entry::March;

    /// The image's per-thread CPU state on this arch.
    pub type ThreadInfo = ThreadInfoPpc64;

    /// Thread `tid`'s CPU state; `regs` were read at the freeze (the TLS
    /// pointer is r13, among them).
    pub fn dump(tid: Pid, regs: &Regs, clear_tid_addr: u64) -> Result<ThreadInfo> {
        let fp = kernel::ptrace::getregset(tid, p64::NT_PRFPREG)
            .map_err(Error::ptrace(tid, "GETREGSET"))?;
        // Absent (ENODEV) on CPUs without Altivec or VSX.
        let vmx = kernel::ptrace::getregset(tid, p64::NT_PPC_VMX).unwrap_or_default();
        let vsx = kernel::ptrace::getregset(tid, p64::NT_PPC_VSX).unwrap_or_default();
        let (fpstate, vrstate, vsxstate) = Fpu::from_regsets(&fp, &vmx, &vsx).to_proto();
        Ok(ThreadInfoPpc64 {
            clear_tid_addr,
            gpregs: regs.to_proto(),
            fpstate: Some(fpstate),
            vrstate,
            vsxstate,
            tmstate: None,
        })
    }

    /// Put thread `tid`'s CPU state back from its core.
    pub fn restore(tid: Pid, core: &CoreEntry) -> Result<()> {
        let ti = core
            .ti_ppc64
            .as_ref()
            .ok_or_else(|| no_regs(tid, "ppc64"))?;
        let f = Fpu::from_proto(
            ti.fpstate.as_ref(),
            ti.vrstate.as_ref(),
            ti.vsxstate.as_ref(),
        );
        set_regset(tid, p64::NT_PRFPREG, &f.fp_regset())?;
        if let Some(b) = f.vmx_regset() {
            set_regset(tid, p64::NT_PPC_VMX, &b)?;
        }
        if let Some(b) = f.vsx_regset() {
            set_regset(tid, p64::NT_PPC_VSX, &b)?;
        }
        set_regs(tid, &Regs::from_proto(&ti.gpregs))
    }

    /// The address the thread's tid is cleared at on exit.
    pub fn clear_tid_addr(core: &CoreEntry) -> Option<u64> {
        core.ti_ppc64.as_ref().map(|t| t.clear_tid_addr)
    }

    /// Put the CPU state into a core entry.
    pub fn set(core: &mut CoreEntry, ti: ThreadInfo) {
        core.mtype = March::Ppc64 as i32;
        core.ti_ppc64 = Some(ti);
    }
}

#[cfg(target_arch = "s390x")]
mod s390 {
    use super::*;
    use stasis_arch::s390::{self as z, Fpu};
    use stasis_proto::images::ThreadInfoS390;
    use stasis_proto::images::core_entry::March;

    /// The image's per-thread CPU state on this arch.
    pub type ThreadInfo = ThreadInfoS390;

    /// Thread `tid`'s CPU state; `regs` were read at the freeze (the TLS
    /// pointer is in access registers 0 and 1, among them).
    pub fn dump(tid: Pid, regs: &Regs, clear_tid_addr: u64) -> Result<ThreadInfo> {
        let fp = kernel::ptrace::getregset(tid, z::NT_PRFPREG)
            .map_err(Error::ptrace(tid, "GETREGSET"))?;
        // Absent (ENODEV) without the vector facility.
        let low = kernel::ptrace::getregset(tid, z::NT_S390_VXRS_LOW).unwrap_or_default();
        let high = kernel::ptrace::getregset(tid, z::NT_S390_VXRS_HIGH).unwrap_or_default();
        let (fpregs, vxrs_low, vxrs_high) = Fpu::from_regsets(&fp, &low, &high).to_proto();
        Ok(ThreadInfoS390 {
            clear_tid_addr,
            gpregs: regs.to_proto(),
            fpregs,
            vxrs_low,
            vxrs_high,
            gs_cb: None,
            gs_bc: None,
            ri_cb: None,
        })
    }

    /// Put thread `tid`'s CPU state back from its core.
    pub fn restore(tid: Pid, core: &CoreEntry) -> Result<()> {
        let ti = core.ti_s390.as_ref().ok_or_else(|| no_regs(tid, "s390x"))?;
        let f = Fpu::from_proto(&ti.fpregs, ti.vxrs_low.as_ref(), ti.vxrs_high.as_ref());
        set_regset(tid, z::NT_PRFPREG, &f.fp_regset())?;
        if let Some((low, high)) = f.vx_regsets() {
            set_regset(tid, z::NT_S390_VXRS_LOW, &low)?;
            set_regset(tid, z::NT_S390_VXRS_HIGH, &high)?;
        }
        set_regs(tid, &Regs::from_proto(&ti.gpregs))
    }

    /// The address the thread's tid is cleared at on exit.
    pub fn clear_tid_addr(core: &CoreEntry) -> Option<u64> {
        core.ti_s390.as_ref().map(|t| t.clear_tid_addr)
    }

    /// Put the CPU state into a core entry.
    pub fn set(core: &mut CoreEntry, ti: ThreadInfo) {
        core.mtype = March::S390 as i32;
        core.ti_s390 = Some(ti);
    }
}
