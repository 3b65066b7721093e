//! The image kinds stasis reads and writes: their CRIU magic numbers, the
//! head magic that precedes them, the message their entries hold and the raw
//! payload some entries carry.
//!
//! Magic values are the ones in CRIU's `magic.h` (a wire fact: every engine and
//! `crit` recognise an image type by them).

/// `IMG_COMMON_MAGIC`: the first u32 of every framed image except inventory and the service files.
pub const COMMON_MAGIC: u32 = 0x5456_4319;
/// `IMG_SERVICE_MAGIC`: the first u32 of `stats-*` and `irmap-cache`.
pub const SERVICE_MAGIC: u32 = 0x5510_5940;
/// `inventory.img` starts with this magic only.
pub const INVENTORY_MAGIC: u32 = 0x5831_3116;
/// The image format version stored in `inventory_entry.img_version` (CRIU's "V1_1").
pub const IMAGES_VERSION: u32 = 2;

/// What precedes the per-type magic of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// No head magic (only `inventory`).
    None,
    /// [`COMMON_MAGIC`].
    Common,
    /// [`SERVICE_MAGIC`].
    Service,
}

/// How the body of an image is laid out after the magics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `u32 length + message` entries, all of one message type.
    Entries(&'static str),
    /// A `pagemap_head`, then `pagemap_entry` entries.
    Pagemap,
    /// A `ghost_file_entry`; then either the raw contents up to EOF, or, when
    /// `chunks` is set, `ghost_chunk_entry` + `len` raw bytes, repeated.
    GhostFile,
    /// Entries of the message, each followed by a raw payload whose length is
    /// given by the named field(s) of the entry.
    WithPayload(&'static str, Payload),
    /// `ipc_sem_entry` entries, each followed by `nsems` u16 values padded
    /// to 8 bytes.
    SemSet,
    /// `ipc_msg_entry` entries, each followed by `qnum` messages: an
    /// `ipc_msg` frame and `msize` bytes padded to 8.
    MsgQueue,
    /// `ipc_shm_entry` entries, each followed by `size` bytes padded to 4.
    ShmSegment,
    /// One `tcp_stream_entry`, then `inq_len` bytes and `outq_len` bytes.
    TcpStream,
}

/// Where the length of the raw payload after an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The value of one u32/u64 field of the entry (`pipe_data_entry.bytes`).
    Field(&'static str),
}

/// One image type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageKind {
    /// crit's name for the magic (`"CORE"`), used in JSON.
    pub name: &'static str,
    /// The per-type magic.
    pub magic: u32,
    /// The head magic written before it.
    pub head: Head,
    /// The body layout.
    pub layout: Layout,
    /// The file-name pattern in an images directory (`%d` = task or object id).
    pub file_pattern: &'static str,
}

/// A kind under the common head magic.
const fn common(
    name: &'static str,
    magic: u32,
    layout: Layout,
    file_pattern: &'static str,
) -> ImageKind {
    ImageKind {
        name,
        magic,
        head: Head::Common,
        layout,
        file_pattern,
    }
}

const fn entries(
    name: &'static str,
    magic: u32,
    message: &'static str,
    file_pattern: &'static str,
) -> ImageKind {
    common(name, magic, Layout::Entries(message), file_pattern)
}

const fn with_payload(
    name: &'static str,
    magic: u32,
    message: &'static str,
    length_field: &'static str,
    file_pattern: &'static str,
) -> ImageKind {
    common(
        name,
        magic,
        Layout::WithPayload(message, Payload::Field(length_field)),
        file_pattern,
    )
}

/// Every image kind stasis knows, in no particular order.
pub const KINDS: &[ImageKind] = &[
    ImageKind {
        name: "INVENTORY",
        magic: INVENTORY_MAGIC,
        head: Head::None,
        layout: Layout::Entries("inventory_entry"),
        file_pattern: "inventory.img",
    },
    entries("PSTREE", 0x5027_3030, "pstree_entry", "pstree.img"),
    entries("CORE", 0x5505_3847, "core_entry", "core-%d.img"),
    entries("IDS", 0x5443_2030, "task_kobj_ids_entry", "ids-%d.img"),
    entries("MM", 0x5749_2820, "mm_entry", "mm-%d.img"),
    entries("VMAS", 0x5412_3737, "vma_entry", "vmas-%d.img"),
    common("PAGEMAP", 0x5608_4025, Layout::Pagemap, "pagemap-%d.img"),
    entries("FDINFO", 0x5621_3732, "fdinfo_entry", "fdinfo-%d.img"),
    entries("FILES", 0x5630_3138, "file_entry", "files.img"),
    entries("REG_FILES", 0x5036_3636, "reg_file_entry", "reg-files.img"),
    entries("PIPES", 0x5651_3555, "pipe_entry", "pipes.img"),
    with_payload(
        "PIPES_DATA",
        0x5645_3709,
        "pipe_data_entry",
        "bytes",
        "pipes-data.img",
    ),
    entries("FIFO", 0x5836_4939, "fifo_entry", "fifo.img"),
    with_payload(
        "FIFO_DATA",
        0x5933_3054,
        "pipe_data_entry",
        "bytes",
        "fifo-data.img",
    ),
    entries("TTY_FILES", 0x5943_3025, "tty_file_entry", "tty.img"),
    entries("TTY_INFO", 0x5945_3036, "tty_info_entry", "tty-info.img"),
    entries("TTY_DATA", 0x5941_3026, "tty_data_entry", "tty-data.img"),
    entries("FS", 0x5140_3912, "fs_entry", "fs-%d.img"),
    entries("CREDS", 0x5402_3547, "creds_entry", "creds-%d.img"),
    entries("SIGACT", 0x5534_4201, "sa_entry", "sigacts-%d.img"),
    entries("ITIMERS", 0x5746_4056, "itimer_entry", "itimers-%d.img"),
    entries(
        "POSIX_TIMERS",
        0x5260_3957,
        "posix_timer_entry",
        "posix-timers-%d.img",
    ),
    entries("RLIMIT", 0x5711_3925, "rlimit_entry", "rlimit-%d.img"),
    entries("SECCOMP", 0x6441_3049, "seccomp_entry", "seccomp.img"),
    common(
        "GHOST_FILE",
        0x5258_3605,
        Layout::GhostFile,
        "ghost-file-%x.img",
    ),
    entries(
        "REMAP_FPATH",
        0x5913_3954,
        "remap_file_path_entry",
        "remap-fpath.img",
    ),
    with_payload(
        "SK_QUEUES",
        0x5626_4026,
        "sk_packet_entry",
        "length",
        "sk-queues.img",
    ),
    entries(
        "FILE_LOCKS",
        0x5432_3616,
        "file_lock_entry",
        "filelocks.img",
    ),
    entries("UTSNS", 0x5447_3203, "utsns_entry", "utsns-%d.img"),
    common("IPCNS_SEM", 0x5957_3019, Layout::SemSet, "ipcns-sem-%d.img"),
    common(
        "IPCNS_MSG",
        0x5545_3737,
        Layout::MsgQueue,
        "ipcns-msg-%d.img",
    ),
    common(
        "IPCNS_SHM",
        0x4628_3044,
        Layout::ShmSegment,
        "ipcns-shm-%d.img",
    ),
    // stasis' own: CRIU has no image of POSIX message queues.
    entries(
        "POSIX_MQUEUE",
        0x5354_4d51,
        "posix_mqueue_entry",
        "posix-mqueue.img",
    ),
    common(
        "TCP_STREAM",
        0x5146_5506,
        Layout::TcpStream,
        "tcp-stream-%x.img",
    ),
    entries("NETDEV", 0x5737_3951, "net_device_entry", "netdev-%d.img"),
    entries("NETNS", 0x5593_3752, "netns_entry", "netns-%d.img"),
    entries("MNTS", 0x5556_3928, "mnt_entry", "mountpoints-%d.img"),
    entries("TIMENS", 0x4311_4433, "timens_entry", "timens-%d.img"),
    entries("CGROUP", 0x5938_3330, "cgroup_entry", "cgroup.img"),
    entries("USERNS", 0x5547_4906, "userns_entry", "userns-%d.img"),
    entries("IPC_VAR", 0x5311_5007, "ipc_var_entry", "ipcns-var-%d.img"),
    entries("MEMFD_INODE", 0x4845_3499, "memfd_inode_entry", "memfd.img"),
    ImageKind {
        name: "STATS",
        magic: 0x5709_3306,
        head: Head::Service,
        layout: Layout::Entries("stats_entry"),
        file_pattern: "stats-%s",
    },
];

/// The kind whose per-type magic is `magic`.
pub fn by_magic(magic: u32) -> Option<&'static ImageKind> {
    KINDS.iter().find(|k| k.magic == magic)
}

/// The kind crit calls `name` (`"CORE"`).
pub fn by_name(name: &str) -> Option<&'static ImageKind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Guess the kind of an image from its file name (`core-42.img` -> CORE).
/// Raw images (`pages-N.img`) have no kind and return `None`.
pub fn by_file_name(file_name: &str) -> Option<&'static ImageKind> {
    KINDS
        .iter()
        .find(|k| pattern_matches(k.file_pattern, file_name))
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    match pattern.find('%') {
        None => pattern == name,
        Some(at) => {
            let (prefix, rest) = pattern.split_at(at);
            let suffix = &rest[2..];
            let Some(middle) = name
                .strip_prefix(prefix)
                .and_then(|n| n.strip_suffix(suffix))
            else {
                return false;
            };
            let conv = rest.as_bytes().get(1).copied();
            !middle.is_empty()
                && match conv {
                    Some(b'd') => middle.bytes().all(|b| b.is_ascii_digit()),
                    Some(b'x') => middle.bytes().all(|b| b.is_ascii_hexdigit()),
                    _ => true,
                }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics_are_unique() {
        for (i, a) in KINDS.iter().enumerate() {
            for b in &KINDS[i + 1..] {
                assert_ne!(a.magic, b.magic, "{} and {}", a.name, b.name);
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn file_names_map_to_kinds() {
        assert_eq!(by_file_name("core-42.img").map(|k| k.name), Some("CORE"));
        assert_eq!(
            by_file_name("inventory.img").map(|k| k.name),
            Some("INVENTORY")
        );
        assert_eq!(
            by_file_name("pagemap-1.img").map(|k| k.name),
            Some("PAGEMAP")
        );
        assert_eq!(by_file_name("stats-dump").map(|k| k.name), Some("STATS"));
        assert_eq!(
            by_file_name("ghost-file-1a.img").map(|k| k.name),
            Some("GHOST_FILE")
        );
        assert_eq!(by_file_name("pages-1.img"), None);
        assert_eq!(by_file_name("core-.img"), None);
        assert_eq!(by_file_name("core-x.img"), None);
    }
}
