//! CRIU's RPC over a SOCK_SEQPACKET socket: `stasis swrk FD`, which
//! container runtimes (runc, crun, podman through go-criu) and pycriu or
//! libcriu start with one end of a socket pair as FD. Each packet is one
//! `criu_req`; each is answered with one `criu_resp`. The connection serves
//! requests while they ask to keep it open (`keep_open`), as CRIU's does.
//!
//! Honoured: VERSION (CRIU 4.2's numbers, named stasis), CHECK,
//! FEATURE_CHECK, WAIT_PID, DUMP and RESTORE with the options below, and their
//! action-script points as NOTIFY round trips (`notify_scripts`). Any other
//! request, and any option stasis does not honour, is refused by name in
//! `cr_errmsg`, never silently ignored.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use anyhow::{Context, Result};
use nix::sys::socket::{MsgFlags, recv, send};
use prost::Message;
use stasis_proto::rpc::{
    CriuDumpResp, CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp, CriuRestoreResp,
    CriuVersion,
};

/// CLONE_NEWNET, as `empty_ns` carries it.
const CLONE_NEWNET: u32 = 0x4000_0000;

/// What an answer says: success, or the message of a refusal or failure.
type Answer = std::result::Result<CriuResp, String>;

/// Serve requests on socket `fd` until the peer stops asking.
pub fn swrk(fd: i32) -> Result<()> {
    std_fds()?;
    let sock = stasis_engine::inherited_fd(fd)
        .with_context(|| format!("fd {fd} is not open: swrk takes the fd of its socket"))?;
    serve(&sock)
}

/// `stasis service`: accept connections on the SOCK_SEQPACKET socket at
/// `address` (or the one systemd passes, LISTEN_FDS), each served by a
/// process of its own; with `daemon`, in the background (its PID in
/// `pidfile`).
pub fn service(
    address: &std::path::Path,
    daemon: bool,
    pidfile: Option<&std::path::Path>,
) -> Result<()> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept, bind, listen, socket,
    };
    std_fds()?;
    let activated = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        == Some(nix::unistd::getpid().as_raw())
        && std::env::var("LISTEN_FDS").ok().as_deref() == Some("1");
    let listener = if activated {
        stasis_engine::inherited_fd(3).context("LISTEN_FDS=1 but fd 3 is not open")?
    } else {
        let s = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .context("cannot make the service socket")?;
        // Bound under a temporary name and renamed once it listens: a
        // client that waits for the path to appear never finds it refusing
        // (where the longer name still fits a socket address).
        let mut tmp = address.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp);
        let bound = if UnixAddr::new(&tmp).is_ok() {
            tmp.as_path()
        } else {
            address
        };
        // A socket file left by an earlier service.
        let _ = std::fs::remove_file(bound);
        let addr = UnixAddr::new(bound)
            .with_context(|| format!("{} is not a socket address", address.display()))?;
        bind(s.as_raw_fd(), &addr)
            .with_context(|| format!("cannot bind the service socket to {}", address.display()))?;
        listen(&s, Backlog::new(16).unwrap_or(Backlog::MAXCONN)).context("cannot listen")?;
        if bound != address
            && let Err(e) = std::fs::rename(bound, address)
        {
            let _ = std::fs::remove_file(bound);
            return Err(e).with_context(|| {
                format!("cannot put the service socket at {}", address.display())
            });
        }
        s
    };
    if daemon {
        match stasis_engine::fork_worker().context("cannot go to the background")? {
            Some(_) => return Ok(()),
            None => {
                nix::unistd::setsid().context("setsid")?;
            }
        }
    }
    if let Some(p) = pidfile {
        std::fs::write(p, format!("{}\n", nix::unistd::getpid()))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    loop {
        let conn = match accept(listener.as_raw_fd()) {
            Ok(fd) => stasis_engine::inherited_fd(fd).map(|d| (fd, d)),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e).context("cannot accept a connection"),
        };
        // Workers that ended.
        while let Ok(st) = nix::sys::wait::waitpid(
            None::<nix::unistd::Pid>,
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            if st == nix::sys::wait::WaitStatus::StillAlive {
                break;
            }
        }
        let Ok((raw, conn)) = conn else { continue };
        let _ = nix::unistd::close(raw);
        match stasis_engine::fork_worker() {
            // The worker ends with its connection.
            Ok(None) => return serve(&conn),
            Ok(Some(_)) => drop(conn),
            Err(e) => tracing::error!("cannot fork a worker for a connection: {e}"),
        }
    }
}

/// CRIU's callers close 0-2 before they exec it: keep them taken, so no
/// file the engine opens lands on them.
fn std_fds() -> Result<()> {
    for std_fd in 0..3 {
        if !std::path::Path::new(&format!("/proc/self/fd/{std_fd}")).exists() {
            // The lowest free fd: this one. Kept open for good.
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .context("cannot open /dev/null")?;
            std::mem::forget(null);
        }
    }
    Ok(())
}

/// Serve the requests of one connection.
fn serve(sock: &OwnedFd) -> Result<()> {
    // Descriptors named in requests are the caller's (CRIU opens them
    // through /proc/PEER/fd), so they need not be inherited.
    let peer = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.pid())
        .context("cannot read the credentials of the socket's peer")?;
    loop {
        let Some(req) = receive(sock)? else {
            return Ok(());
        };
        let kind = CriuReqType::try_from(req.r#type).unwrap_or(CriuReqType::Empty);
        let resp = match answer(&req, kind, peer, sock) {
            Ok(r) => r,
            Err(msg) => {
                tracing::error!("{msg}");
                CriuResp {
                    r#type: req.r#type,
                    success: false,
                    cr_errmsg: Some(msg),
                    cr_errno: Some(0),
                    ..CriuResp::default()
                }
            }
        };
        let bytes = resp.encode_to_vec();
        send(sock.as_raw_fd(), &bytes, MsgFlags::empty()).context("cannot answer on the socket")?;
        if !req.keep_open.unwrap_or(false) {
            return Ok(());
        }
    }
}

/// The next request, or `None` once the peer closed its end.
fn receive(sock: &OwnedFd) -> Result<Option<CriuReq>> {
    let mut probe = [0u8; 1];
    let len = recv(
        sock.as_raw_fd(),
        &mut probe,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
    )
    .context("cannot read a request")?;
    if len == 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; len];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).context("cannot read a request")?;
    buf.truncate(n);
    let req = CriuReq::decode(buf.as_slice()).context("the request is not a criu_req")?;
    Ok(Some(req))
}

fn ok(kind: CriuReqType) -> CriuResp {
    CriuResp {
        r#type: kind as i32,
        success: true,
        ..CriuResp::default()
    }
}

fn answer(req: &CriuReq, kind: CriuReqType, peer: i32, sock: &OwnedFd) -> Answer {
    match kind {
        CriuReqType::Version => Ok(CriuResp {
            version: Some(CriuVersion {
                major_number: 4,
                minor_number: 2,
                gitid: Some(format!("stasis-{}", env!("CARGO_PKG_VERSION"))),
                sublevel: Some(0),
                extra: None,
                name: Some("stasis".into()),
            }),
            ..ok(kind)
        }),
        CriuReqType::Check => check(kind),
        CriuReqType::FeatureCheck => {
            // Only the features asked for are answered; stasis has none of
            // the three yet.
            let asked = req.features.unwrap_or_default();
            Ok(CriuResp {
                features: Some(CriuFeatures {
                    mem_track: asked.mem_track.map(|_| false),
                    lazy_pages: asked.lazy_pages.map(|_| false),
                    pidfd_store: asked.pidfd_store.map(|_| false),
                }),
                ..ok(kind)
            })
        }
        CriuReqType::Dump => {
            let opts = configured(req.opts.clone().unwrap_or_default())?;
            dump(&opts, peer, notifier(&opts, sock)?).map(|()| CriuResp {
                dump: Some(CriuDumpResp {
                    restored: Some(false),
                }),
                ..ok(kind)
            })
        }
        CriuReqType::Restore => {
            let opts = configured(req.opts.clone().unwrap_or_default())?;
            restore(&opts, peer, notifier(&opts, sock)?).map(|pid| CriuResp {
                restore: Some(CriuRestoreResp { pid }),
                ..ok(kind)
            })
        }
        CriuReqType::WaitPid => {
            // A tree this process restored (its child): its wait status.
            let pid = req.pid.ok_or("WAIT_PID without a pid")?;
            let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid.cast_signed()), None)
                .map_err(|e| format!("waiting for {pid}: {e}"))?;
            let status = match st {
                nix::sys::wait::WaitStatus::Exited(_, c) => c << 8,
                nix::sys::wait::WaitStatus::Signaled(_, s, core) => {
                    s as i32 | if core { 0x80 } else { 0 }
                }
                other => return Err(format!("{pid} did not end: {other:?}")),
            };
            Ok(CriuResp {
                status: Some(status),
                ..ok(kind)
            })
        }
        other => Err(format!(
            "stasis does not serve {} requests yet",
            other.as_str_name()
        )),
    }
}

fn check(kind: CriuReqType) -> Answer {
    use stasis_check::{Selection, Verdict};
    let opts = stasis_check::RunOptions {
        timeout: std::time::Duration::from_secs(10),
        threads: 2,
    };
    let findings = stasis_check::run(&Selection::default().probes(), &opts);
    if Verdict::of(&findings).exit_code() == 0 {
        Ok(ok(kind))
    } else {
        Err("the kernel lacks features checkpoint/restore needs (stasis check says which)".into())
    }
}

/// The request's options with CRIU's configuration files applied: the
/// default files under them (an option the request sets wins), the
/// request's `config_file` over them (it wins), as CRIU evaluates them. A
/// `config_file` that does not exist is passed over (runc always names
/// /etc/criu/runc.conf).
fn configured(mut o: CriuOpts) -> std::result::Result<CriuOpts, String> {
    for (file, required) in crate::config::default_files(true) {
        apply_file(&mut o, &file, required, false)?;
    }
    if let Some(f) = o.config_file.take() {
        apply_file(&mut o, std::path::Path::new(&f), false, true)?;
    }
    Ok(o)
}

fn apply_file(
    o: &mut CriuOpts,
    file: &std::path::Path,
    required: bool,
    over: bool,
) -> std::result::Result<(), String> {
    match crate::config::read(file).map_err(|e| format!("{e:#}"))? {
        Some(settings) => settings.iter().try_for_each(|s| apply(o, s, over)),
        None if required => Err(format!(
            "configuration file {} does not exist",
            file.display()
        )),
        None => Ok(()),
    }
}

/// One setting of a configuration file on the request's options: set when
/// `over`, else only where the request left the option unset.
fn apply(
    o: &mut CriuOpts,
    s: &crate::config::Setting,
    over: bool,
) -> std::result::Result<(), String> {
    fn set<T>(field: &mut Option<T>, v: T, over: bool) {
        if over || field.is_none() {
            *field = Some(v);
        }
    }
    let value = || -> std::result::Result<&str, String> {
        match s.values.as_slice() {
            [v] => Ok(v.as_str()),
            _ => Err(format!("{}: option {} takes one value", s.at, s.name)),
        }
    };
    let flag = || -> std::result::Result<bool, String> {
        if s.values.is_empty() {
            Ok(true)
        } else {
            Err(format!("{}: option {} takes no value", s.at, s.name))
        }
    };
    let number = |v: &str| -> std::result::Result<u32, String> {
        v.parse()
            .map_err(|_| format!("{}: {v:?} is not a number for {}", s.at, s.name))
    };
    match s.name.as_str() {
        "leave-running" | "R" => set(&mut o.leave_running, flag()?, over),
        "tcp-established" => set(&mut o.tcp_established, flag()?, over),
        "shell-job" | "j" => set(&mut o.shell_job, flag()?, over),
        "file-locks" | "l" => set(&mut o.file_locks, flag()?, over),
        "ext-unix-sk" => set(&mut o.ext_unix_sk, flag()?, over),
        "restore-sibling" => set(&mut o.rst_sibling, flag()?, over),
        "tcp-close" => set(&mut o.tcp_close, flag()?, over),
        "skip-in-flight" | "tcp-skip-in-flight" => set(&mut o.tcp_skip_in_flight, flag()?, over),
        "link-remap" => set(&mut o.link_remap, flag()?, over),
        "evasive-devices" => set(&mut o.evasive_devices, flag()?, over),
        "manage-cgroups" => set(&mut o.manage_cgroups, flag()?, over),
        "auto-dedup" => set(&mut o.auto_dedup, flag()?, over),
        "track-mem" => set(&mut o.track_mem, flag()?, over),
        "lazy-pages" => set(&mut o.lazy_pages, flag()?, over),
        "timeout" => set(&mut o.timeout, number(value()?)?, over),
        "ghost-limit" => {
            let v = crate::parse_size(value()?).map_err(|e| format!("{}: {e}", s.at))?;
            let v = u32::try_from(v).map_err(|_| format!("{}: ghost-limit is too big", s.at))?;
            set(&mut o.ghost_limit, v, over);
        }
        "verbosity" | "v" => set(&mut o.log_level, number(value()?)?.cast_signed(), over),
        "log-file" | "o" => set(&mut o.log_file, value()?.to_owned(), over),
        "freeze-cgroup" => set(&mut o.freeze_cgroup, value()?.to_owned(), over),
        "network-lock" => {
            use stasis_proto::rpc::CriuNetworkLockMethod as M;
            let m = match value()? {
                "iptables" => M::Iptables,
                "nftables" => M::Nftables,
                "skip" => M::Skip,
                other => {
                    return Err(format!(
                        "{}: network-lock {other:?} is none of iptables, nftables, skip",
                        s.at
                    ));
                }
            };
            set(&mut o.network_lock, m as i32, over);
        }
        other => {
            return Err(format!(
                "{}: option {other} is not taken through RPC by stasis; nothing was done",
                s.at
            ));
        }
    }
    Ok(())
}

/// Options of `criu_opts` stasis does not honour yet, when set to anything
/// but their default: refused by name.
fn refuse_unknown(o: &CriuOpts) -> std::result::Result<(), String> {
    let mut set: Vec<&str> = Vec::new();
    let mut flag = |name: &'static str, on: bool| {
        if on {
            set.push(name);
        }
    };
    // evasive_devices only lets CRIU open a device by another path when
    // its own is gone: accepted, a device is opened by its path (a missing
    // one fails the restore, it is never replaced silently).
    flag("ps (page server)", o.ps.is_some());
    flag("parent_img", o.parent_img.is_some());
    flag("track_mem", o.track_mem == Some(true));
    flag("auto_dedup", o.auto_dedup == Some(true));
    flag("exec_cmd", !o.exec_cmd.is_empty());
    flag("auto_ext_mnt", o.auto_ext_mnt == Some(true));
    flag("skip_mnt", !o.skip_mnt.is_empty());
    flag("enable_fs", !o.enable_fs.is_empty());
    flag("unix_sk_ino", !o.unix_sk_ino.is_empty());
    flag("irmap_scan_paths", !o.irmap_scan_paths.is_empty());
    flag(
        "empty_ns (other than CLONE_NEWNET)",
        o.empty_ns.is_some_and(|v| v & !(CLONE_NEWNET) != 0),
    );
    flag("join_ns", !o.join_ns.is_empty());
    flag("cgroup_props", o.cgroup_props.is_some());
    flag("cgroup_props_file", o.cgroup_props_file.is_some());
    flag(
        "cgroup_dump_controller",
        !o.cgroup_dump_controller.is_empty(),
    );
    flag("lazy_pages", o.lazy_pages == Some(true));
    flag("status_fd", o.status_fd.is_some());
    flag("tcp_close", o.tcp_close == Some(true));
    flag("lsm_profile", o.lsm_profile.is_some());
    flag("tls", o.tls == Some(true));
    flag("cgroup_yard", o.cgroup_yard.is_some());
    flag("pidfd_store_sk", o.pidfd_store_sk.is_some());
    flag("lsm_mount_context", o.lsm_mount_context.is_some());
    flag("unprivileged", o.unprivileged == Some(true));
    flag("leave_stopped", o.leave_stopped == Some(true));
    flag(
        "cpu_cap",
        o.cpu_cap.is_some_and(|c| c != 0xffff_ffff && c != 0),
    );
    if set.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "stasis does not honour these criu_opts yet: {}; nothing was done",
            set.join(", ")
        ))
    }
}

/// The images directory of a request: its fd in the caller (`peer`), or
/// its path.
fn images_dir(o: &CriuOpts, peer: i32) -> std::result::Result<PathBuf, String> {
    if o.images_dir_fd >= 0 {
        let path = PathBuf::from(format!("/proc/{peer}/fd/{}", o.images_dir_fd));
        // Resolved now: the caller may close it once it has the answer.
        return std::fs::canonicalize(&path)
            .ok()
            .filter(|p| p.is_dir())
            .ok_or_else(|| {
                format!(
                    "images_dir_fd {} is not an open directory in the caller (pid {peer})",
                    o.images_dir_fd
                )
            });
    }
    o.images_dir
        .as_ref()
        .map(PathBuf::from)
        .ok_or_else(|| "neither images_dir_fd nor images_dir is set".to_owned())
}

/// Where the log goes: `log_file` relative to `work_dir_fd`, else to the
/// images directory, as CRIU has it.
fn log_to(o: &CriuOpts, dir: &std::path::Path, peer: i32) -> Option<PathBuf> {
    let file = o.log_file.as_ref()?;
    let base = match o.work_dir_fd {
        Some(fd) if fd >= 0 => std::fs::canonicalize(format!("/proc/{peer}/fd/{fd}")).ok()?,
        _ => dir.to_owned(),
    };
    Some(base.join(file))
}

/// Run one request with its log: the request's options first, then its
/// outcome, with `Error:` leading a failure (runc and others grep for it).
fn with_log<T>(
    o: &CriuOpts,
    dir: &std::path::Path,
    peer: i32,
    what: &str,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    let log = log_to(o, dir, peer);
    let write = |line: String| {
        if let Some(path) = &log {
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut w| std::io::Write::write_all(&mut w, line.as_bytes()));
        }
    };
    write(format!("stasis {what} request from pid {peer}: {o:?}\n"));
    let res = f();
    match &res {
        Ok(_) => write(format!("stasis {what}: done\n")),
        Err(msg) => write(format!("Error: {msg}\n")),
    }
    res
}

/// With `notify_scripts`, each action-script point is a NOTIFY answer
/// (script, pid) the caller acknowledges with a NOTIFY request
/// (`notify_success`), as CRIU sequences them.
fn notifier(
    o: &CriuOpts,
    sock: &OwnedFd,
) -> std::result::Result<Option<stasis_engine::notify::Notify>, String> {
    if o.notify_scripts != Some(true) {
        return Ok(None);
    }
    let sock = sock
        .try_clone()
        .map_err(|e| format!("cannot keep the socket for notifications: {e}"))?;
    Ok(Some(stasis_engine::notify::Notify::new(
        move |script, pid, fd| {
            let resp = CriuResp {
                r#type: CriuReqType::Notify as i32,
                success: true,
                notify: Some(stasis_proto::rpc::CriuNotify {
                    script: Some(script.to_owned()),
                    // A point with an fd carries no PID, as in CRIU.
                    pid: fd.is_none().then_some(pid),
                }),
                ..CriuResp::default()
            };
            let bytes = resp.encode_to_vec();
            match fd {
                // The fd rides with the message (SCM_RIGHTS).
                Some(fd) => {
                    let fds = [fd.as_raw_fd()];
                    nix::sys::socket::sendmsg::<()>(
                        sock.as_raw_fd(),
                        &[std::io::IoSlice::new(&bytes)],
                        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
                        MsgFlags::empty(),
                        None,
                    )
                    .map(drop)
                }
                None => send(sock.as_raw_fd(), &bytes, MsgFlags::empty()).map(drop),
            }
            .map_err(|e| format!("cannot send the notification: {e}"))?;
            match receive(&sock) {
                Ok(Some(req)) if req.r#type == CriuReqType::Notify as i32 => {
                    if req.notify_success == Some(true) {
                        Ok(())
                    } else {
                        Err("the caller answered notify_success = false".into())
                    }
                }
                Ok(Some(req)) => Err(format!(
                    "the caller answered a notification with a {} request",
                    CriuReqType::try_from(req.r#type).map_or("unknown", |t| t.as_str_name())
                )),
                Ok(None) => Err("the caller closed the socket".into()),
                Err(e) => Err(format!("{e:#}")),
            }
        },
    )))
}

/// The cgroup mode of a request: `manage_cgroups_mode`, else the legacy
/// `manage_cgroups` (true: soft, false: ignore), else soft, as CRIU reads
/// them.
fn cg_mode(o: &CriuOpts) -> std::result::Result<stasis_engine::cgroup::Mode, String> {
    use stasis_proto::rpc::CriuCgMode as M;
    match o.manage_cgroups_mode.map(M::try_from) {
        Some(Ok(M::Ignore)) => Ok(stasis_engine::cgroup::Mode::Ignore),
        Some(Ok(M::Soft | M::Default)) => Ok(stasis_engine::cgroup::Mode::Soft),
        Some(Ok(m)) => stasis_engine::cgroup::Mode::from_criu(
            &m.as_str_name().to_lowercase().replace("cg_", ""),
        ),
        Some(Err(_)) => Err("manage_cgroups_mode is not one of criu_cg_mode".into()),
        None if o.manage_cgroups == Some(false) => Ok(stasis_engine::cgroup::Mode::Ignore),
        None => Ok(stasis_engine::cgroup::Mode::Soft),
    }
}

/// What `pick` takes of the `external` strings (those it cannot parse are
/// for the other readers to refuse).
fn externals<T>(o: &CriuOpts, pick: impl Fn(crate::External) -> Option<T>) -> Vec<T> {
    o.external
        .iter()
        .filter_map(|e| crate::parse_external(e).ok().and_then(&pick))
        .collect()
}

/// `cg_root`, as the engine takes it.
fn cg_roots(o: &CriuOpts) -> Vec<stasis_engine::cgroup::CgRoot> {
    o.cg_root
        .iter()
        .map(|r| stasis_engine::cgroup::CgRoot {
            ctrl: r.ctrl.clone(),
            path: r.path.clone(),
        })
        .collect()
}

/// `ext_mnt` and the `mnt[...]` strings of `external`, as (A, B).
fn ext_mounts(o: &CriuOpts) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = o
        .ext_mnt
        .iter()
        .map(|m| (m.key.clone(), m.val.clone()))
        .collect();
    for e in &o.external {
        if let crate::External::Mnt(a, b) = crate::parse_external(e)? {
            out.push((a, b));
        }
    }
    Ok(out)
}

/// `veths` and the `veth[...]` strings of `external`, as (inner, outer).
fn ext_veths(o: &CriuOpts) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = o
        .veths
        .iter()
        .map(|v| (v.if_in.clone(), v.if_out.clone()))
        .collect();
    for e in &o.external {
        if let crate::External::Veth(a, b) = crate::parse_external(e)? {
            out.push((a, b));
        }
    }
    Ok(out)
}

fn dump(
    o: &CriuOpts,
    peer: i32,
    notify: Option<stasis_engine::notify::Notify>,
) -> std::result::Result<(), String> {
    let dir = images_dir(o, peer)?;
    with_log(o, &dir, peer, "dump", || {
        refuse_unknown(o)?;
        // Checked only: the tasks' cgroups are always saved.
        cg_mode(o)?;
        let pid = o
            .pid
            .ok_or("no pid: stasis does not dump the requesting process (set opts.pid)")?;
        let opts = stasis_engine::dump::Opts {
            pid: nix::unistd::Pid::from_raw(pid),
            dir: dir.clone(),
            leave_running: o.leave_running.unwrap_or(false),
            shell_job: o.shell_job.unwrap_or(false),
            orphan_pts_master: o.orphan_pts_master.unwrap_or(false),
            timeout: std::time::Duration::from_secs(u64::from(o.timeout.unwrap_or(10)).max(1)),
            ghost_limit: u64::from(o.ghost_limit.unwrap_or(1 << 20)),
            file_locks: o.file_locks.unwrap_or(false),
            tcp_established: o.tcp_established.unwrap_or(false),
            skip_in_flight: o.tcp_skip_in_flight.unwrap_or(false),
            ext_unix_sk: o.ext_unix_sk.unwrap_or(false),
            network_lock: o.network_lock
                != Some(stasis_proto::rpc::CriuNetworkLockMethod::Skip as i32),
            progress: None,
            notify,
            freeze_cgroup: o.freeze_cgroup.as_ref().map(PathBuf::from),
            ext_mounts: ext_mounts(o)?,
            ext_ttys: o
                .external
                .iter()
                .filter(|e| e.starts_with("tty["))
                .cloned()
                .collect(),
            ext_netns: externals(o, |e| match e {
                crate::External::Net(i, k) => Some((i, k)),
                _ => None,
            }),
            cgroup_roots: cg_roots(o),
            empty_net: o.empty_ns.is_some_and(|v| v & CLONE_NEWNET != 0),
        };
        stasis_engine::dump::dump(&opts)
            .map(drop)
            .map_err(|e| e.chain())
    })
}

fn restore(
    o: &CriuOpts,
    peer: i32,
    notify: Option<stasis_engine::notify::Notify>,
) -> std::result::Result<i32, String> {
    let dir = images_dir(o, peer)?;
    with_log(o, &dir, peer, "restore", || {
        refuse_unknown(o)?;
        let opts = stasis_engine::restore::Opts {
            dir: dir.clone(),
            shell_job: o.shell_job.unwrap_or(false),
            orphan_pts_master: o.orphan_pts_master.unwrap_or(false),
            // The caller waits for the tree, not stasis.
            detached: true,
            sibling: o.rst_sibling.unwrap_or(false),
            network_lock: o.network_lock
                != Some(stasis_proto::rpc::CriuNetworkLockMethod::Skip as i32),
            progress: None,
            notify,
            cgroups: cg_mode(o)?,
            cgroup_roots: cg_roots(o),
            root: o.root.as_ref().map(PathBuf::from),
            ext_mounts: ext_mounts(o)?,
            ext_veths: ext_veths(o)?,
            ext_macvlans: externals(o, |e| match e {
                crate::External::Macvlan(a, b) => Some((a, b)),
                _ => None,
            }),
            // The caller passes them to this process (runc's ExtraFiles).
            inherit_fds: o.inherit_fd.iter().map(|i| (i.key.clone(), i.fd)).collect(),
        };
        stasis_engine::restore::restore(&opts)
            .map(|r| r.root.as_raw())
            .map_err(|e| e.chain())
    })
}
