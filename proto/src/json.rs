//! Binary image <-> JSON, walking messages by reflection over the schema.
//!
//! The JSON follows crit's conventions so that tools written for crit's output
//! read ours: `{"magic": "CORE", "entries": [...]}`, fields by their schema
//! names in field-number order (only fields that are set), enums by name,
//! bytes and raw payloads (`"extra"`) in base64. With `pretty`, integers
//! carrying a presentation hint in the schema are shown as crit shows them:
//! hex (`"0x7f00"`), flag names (`"PROT_READ | PROT_WRITE"`), devices
//! (`"8:1"`), named values (`"Alive"`). Encoding accepts both forms.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{
    Cardinality, DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value,
};
use serde_json::{Map, Value as Json};

use crate::error::{ImageError, JsonError};
use crate::framing::{ImageReader, ImageWriter};
use crate::kind::{self, ImageKind, Layout, Payload};

const PACKAGE: &str = "stasis.images";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

struct Schema {
    pool: DescriptorPool,
    hints: HashMap<String, Hints>,
}

/// Presentation hints of one field (the `(criu)` field option).
#[derive(Debug, Default, Clone)]
struct Hints {
    hex: bool,
    ipadd: bool,
    flags: Option<String>,
    dev: bool,
    odev: bool,
    dict: Option<String>,
    conv: Option<String>,
}

static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    // The descriptor set is produced by build.rs from our own .proto files; a
    // failure here is a build defect, never an input problem.
    let pool = DescriptorPool::decode(crate::IMAGES_DESCRIPTOR)
        .expect("the embedded image descriptor set is valid");
    let hints = collect_hints(&pool);
    Schema { pool, hints }
});

fn collect_hints(pool: &DescriptorPool) -> HashMap<String, Hints> {
    let mut out = HashMap::new();
    let Some(ext) = pool.get_extension_by_name(&format!("{PACKAGE}.criu")) else {
        return out;
    };
    for msg in pool.all_messages() {
        for field in msg.fields() {
            let opts = field.options();
            if !opts.has_extension(&ext) {
                continue;
            }
            let Value::Message(h) = opts.get_extension(&ext).into_owned() else {
                continue;
            };
            let get_bool = |name: &str| {
                h.get_field_by_name(name)
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false)
            };
            let get_str = |name: &str| {
                h.get_field_by_name(name)
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .filter(|s| !s.is_empty())
            };
            out.insert(
                field.full_name().to_owned(),
                Hints {
                    hex: get_bool("hex"),
                    ipadd: get_bool("ipadd"),
                    flags: get_str("flags"),
                    dev: get_bool("dev"),
                    odev: get_bool("odev"),
                    dict: get_str("dict"),
                    conv: get_str("conv"),
                },
            );
        }
    }
    out
}

/// Whether `field` holds an IP address (the `ipadd` hint).
pub fn is_ip_field(field: &FieldDescriptor) -> bool {
    hints(field).ipadd
}

fn hints(field: &FieldDescriptor) -> Hints {
    SCHEMA
        .hints
        .get(field.full_name())
        .cloned()
        .unwrap_or_default()
}

/// The descriptor of image message `name` (`"core_entry"`).
pub fn message(name: &str) -> Option<MessageDescriptor> {
    SCHEMA
        .pool
        .get_message_by_name(&format!("{PACKAGE}.{name}"))
}

/// Every message of the image schema.
pub fn all_messages() -> impl Iterator<Item = MessageDescriptor> {
    SCHEMA
        .pool
        .all_messages()
        .filter(|m| m.package_name() == PACKAGE)
}

// ---------------------------------------------------------------------------
// flag and value tables (crit's names)

const MMAP_PROT: &[(&str, u64)] = &[("PROT_READ", 0x1), ("PROT_WRITE", 0x2), ("PROT_EXEC", 0x4)];
const MMAP_FLAGS: &[(&str, u64)] = &[
    ("MAP_SHARED", 0x1),
    ("MAP_PRIVATE", 0x2),
    ("MAP_ANON", 0x20),
    ("MAP_GROWSDOWN", 0x100),
];
const MMAP_STATUS: &[(&str, u64)] = &[
    ("VMA_AREA_REGULAR", 1 << 0),
    ("VMA_AREA_STACK", 1 << 1),
    ("VMA_AREA_VSYSCALL", 1 << 2),
    ("VMA_AREA_VDSO", 1 << 3),
    ("VMA_AREA_HEAP", 1 << 5),
    ("VMA_FILE_PRIVATE", 1 << 6),
    ("VMA_FILE_SHARED", 1 << 7),
    ("VMA_ANON_SHARED", 1 << 8),
    ("VMA_ANON_PRIVATE", 1 << 9),
    ("VMA_AREA_SYSVIPC", 1 << 10),
    ("VMA_AREA_SOCKET", 1 << 11),
    ("VMA_AREA_VVAR", 1 << 12),
    ("VMA_AREA_AIORING", 1 << 13),
    ("VMA_UNSUPP", 1 << 31),
];
const RFILE_FLAGS: &[(&str, u64)] = &[
    ("O_WRONLY", 0o1),
    ("O_RDWR", 0o2),
    ("O_CREAT", 0o100),
    ("O_EXCL", 0o200),
    ("O_NOCTTY", 0o400),
    ("O_TRUNC", 0o1000),
    ("O_APPEND", 0o2000),
    ("O_NONBLOCK", 0o4000),
    ("O_DSYNC", 0o10000),
    ("FASYNC", 0o20000),
    ("O_DIRECT", 0o40000),
    ("O_LARGEFILE", 0o100000),
    ("O_DIRECTORY", 0o200000),
    ("O_NOFOLLOW", 0o400000),
    ("O_NOATIME", 0o1000000),
    ("O_CLOEXEC", 0o2000000),
];
const SEALS_FLAGS: &[(&str, u64)] = &[
    ("F_SEAL_SEAL", 0x1),
    ("F_SEAL_SHRINK", 0x2),
    ("F_SEAL_GROW", 0x4),
    ("F_SEAL_WRITE", 0x8),
    ("F_SEAL_FUTURE_WRITE", 0x10),
];
// stasis' PE_GUARD (8) stays a number here, as crit shows it.
const PMAP_FLAGS: &[(&str, u64)] = &[("PE_PARENT", 1), ("PE_LAZY", 2), ("PE_PRESENT", 4)];

fn flag_table(name: &str) -> Option<&'static [(&'static str, u64)]> {
    Some(match name {
        "mmap.prot" => MMAP_PROT,
        "mmap.flags" => MMAP_FLAGS,
        "mmap.status" => MMAP_STATUS,
        "rfile.flags" => RFILE_FLAGS,
        "seals.flags" => SEALS_FLAGS,
        "pmap.flags" => PMAP_FLAGS,
        _ => return None,
    })
}

fn dict_table(dict: &str, field: &str) -> Option<&'static [(u64, &'static str)]> {
    Some(match (dict, field) {
        ("gen", "task_state") => &[(1, "Alive"), (3, "Zombie"), (6, "Stopped")],
        ("sk", "family") => &[
            (1, "UNIX"),
            (2, "INET"),
            (10, "INET6"),
            (16, "NETLINK"),
            (17, "PACKET"),
        ],
        ("sk", "type") => &[
            (1, "STREAM"),
            (2, "DGRAM"),
            (3, "RAW"),
            (5, "SEQPACKET"),
            (10, "PACKET"),
        ],
        ("sk", "state") => &[
            (1, "ESTABLISHED"),
            (2, "SYN_SENT"),
            (3, "SYN_RECV"),
            (4, "FIN_WAIT1"),
            (5, "FIN_WAIT2"),
            (6, "TIME_WAIT"),
            (7, "CLOSE"),
            (8, "CLOSE_WAIT"),
            (9, "LAST_ACK"),
            (10, "LISTEN"),
        ],
        ("sk", "proto") => &[(0, "IP"), (6, "TCP"), (17, "UDP"), (136, "UDPLITE")],
        _ => return None,
    })
}

fn format_flags(value: u64, table: &[(&str, u64)]) -> String {
    let mut parts: Vec<String> = table
        .iter()
        .filter(|(_, bit)| value & bit != 0)
        .map(|(name, _)| (*name).to_owned())
        .collect();
    let known: u64 = table.iter().map(|(_, bit)| bit).fold(0, |a, b| a | b);
    if value & !known != 0 {
        parts.push(format!("{:#x}", value & !known));
    }
    parts.join(" | ")
}

fn parse_flags(text: &str, table: &[(&str, u64)]) -> Option<u64> {
    let mut value = 0;
    for part in text.split('|').map(str::trim).filter(|p| !p.is_empty()) {
        value |= match table.iter().find(|(name, _)| *name == part) {
            Some((_, bit)) => *bit,
            None => parse_int(part)?,
        };
    }
    Some(value)
}

// Kernel dev_t encoding (MINORBITS = 20), as in images' `dev` fields.
fn format_dev(value: u64, old: bool) -> String {
    if old {
        // glibc's encoding (major in bits 8-19 and 32-43, minor in 0-7 and 20-31)
        let major = ((value >> 8) & 0xfff) | ((value >> 32) & !0xfff);
        let minor = (value & 0xff) | ((value >> 12) & !0xff);
        format!("{major}:{minor}")
    } else {
        format!("{}:{}", value >> 20, value & 0xf_ffff)
    }
}

fn parse_dev(text: &str, old: bool) -> Option<u64> {
    let (major, minor) = text.split_once(':')?;
    let major: u64 = major.trim().parse().ok()?;
    let minor: u64 = minor.trim().parse().ok()?;
    Some(if old {
        ((major & 0xfff) << 8) | ((major & !0xfff) << 32) | (minor & 0xff) | ((minor & !0xff) << 12)
    } else {
        (major << 20) | minor
    })
}

/// Parse an integer written as Python's `int(text, 0)` accepts it.
fn parse_int(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, radix) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (h, 16)
    } else if let Some(o) = t.strip_prefix("0o").or_else(|| t.strip_prefix("0O")) {
        (o, 8)
    } else if let Some(b) = t.strip_prefix("0b").or_else(|| t.strip_prefix("0B")) {
        (b, 2)
    } else {
        (t, 10)
    };
    u64::from_str_radix(&digits.replace('_', ""), radix).ok()
}

// ---------------------------------------------------------------------------
// message -> JSON

/// JSON form of one message.
pub fn message_to_json(msg: &DynamicMessage, pretty: bool) -> Json {
    to_json(msg, pretty, false)
}

fn to_json(msg: &DynamicMessage, pretty: bool, hex_from_parent: bool) -> Json {
    let mut map = Map::new();
    let mut fields: Vec<_> = msg.fields().collect();
    fields.sort_by_key(|(f, _)| f.number());
    for (field, value) in fields {
        let h = hints(&field);
        let hex = hex_from_parent || h.hex;
        let json = match value {
            Value::List(items) if pretty && h.ipadd => ip_to_json(items),
            Value::List(items) => Json::Array(
                items
                    .iter()
                    .map(|v| value_to_json(&field, v, pretty, hex, &h))
                    .collect(),
            ),
            v => value_to_json(&field, v, pretty, hex, &h),
        };
        map.insert(field.name().to_owned(), json);
    }
    Json::Object(map)
}

fn ip_to_json(items: &[Value]) -> Json {
    let words: Vec<u32> = items.iter().filter_map(Value::as_u32).collect();
    let text = match words.as_slice() {
        [a] => Ipv4Addr::from(u32::from_be(*a)).to_string(),
        [a, b, c, d] => {
            let v = (u128::from(u32::from_be(*a)) << 96)
                | (u128::from(u32::from_be(*b)) << 64)
                | (u128::from(u32::from_be(*c)) << 32)
                | u128::from(u32::from_be(*d));
            Ipv6Addr::from(v).to_string()
        }
        _ => return Json::Array(words.into_iter().map(Json::from).collect()),
    };
    Json::Array(vec![Json::String(text)])
}

fn value_to_json(field: &FieldDescriptor, v: &Value, pretty: bool, hex: bool, h: &Hints) -> Json {
    let int = |n: u64, signed: Option<i64>| -> Json {
        if pretty {
            if hex {
                return Json::String(match signed {
                    Some(s) if s < 0 => format!("-{:#x}", s.unsigned_abs()),
                    _ => format!("{n:#x}"),
                });
            }
            if h.dev {
                return Json::String(format_dev(n, h.odev));
            }
            if let Some(table) = h.flags.as_deref().and_then(flag_table) {
                return Json::String(format_flags(n, table));
            }
            if h.flags.is_some() {
                return Json::String(format!("{n:#x}"));
            }
            if let Some(name) = h
                .dict
                .as_deref()
                .and_then(|d| dict_table(d, field.name()))
                .and_then(|t| t.iter().find(|(k, _)| *k == n).map(|(_, name)| *name))
            {
                return Json::String(name.to_owned());
            }
        }
        match signed {
            Some(s) => Json::from(s),
            None => Json::from(n),
        }
    };
    match v {
        Value::Bool(b) => Json::Bool(*b),
        Value::I32(n) => int(u64::from(n.cast_unsigned()), Some(i64::from(*n))),
        Value::I64(n) => int(n.cast_unsigned(), Some(*n)),
        Value::U32(n) => int(u64::from(*n), None),
        Value::U64(n) => int(*n, None),
        Value::F32(x) => Json::from(f64::from(*x)),
        Value::F64(x) => Json::from(*x),
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) if h.conv.as_deref() == Some("unix_name") => {
            Json::String(quoted_printable(b))
        }
        Value::Bytes(b) => Json::String(B64.encode(b)),
        Value::EnumNumber(n) => match field.kind() {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(ev) => Json::String(ev.name().to_owned()),
                None => Json::from(*n),
            },
            _ => Json::from(*n),
        },
        Value::Message(m) => to_json(m, pretty, hex),
        Value::List(items) => Json::Array(
            items
                .iter()
                .map(|i| value_to_json(field, i, pretty, hex, h))
                .collect(),
        ),
        Value::Map(_) => Json::Null,
    }
}

// ---------------------------------------------------------------------------
// JSON -> message

/// Build a message of type `desc` from its JSON form. `at` names the value in errors.
pub fn message_from_json(
    desc: &MessageDescriptor,
    json: &Json,
    at: &str,
) -> Result<DynamicMessage, JsonError> {
    let msg = from_json(desc, json, at)?;
    if let Some(missing) = missing_required(&msg) {
        return Err(JsonError::Field {
            at: at.to_owned(),
            what: format!("{} lacks required field {missing}", desc.name()),
        });
    }
    Ok(msg)
}

fn from_json(desc: &MessageDescriptor, json: &Json, at: &str) -> Result<DynamicMessage, JsonError> {
    let obj = json.as_object().ok_or_else(|| JsonError::Field {
        at: at.to_owned(),
        what: format!("expected an object for {}", desc.name()),
    })?;
    let mut msg = DynamicMessage::new(desc.clone());
    for (key, val) in obj {
        let here = format!("{at}.{key}");
        let field = desc
            .get_field_by_name(key)
            .ok_or_else(|| JsonError::Field {
                at: here.clone(),
                what: format!("{} has no field {key:?}", desc.name()),
            })?;
        let h = hints(&field);
        let value = if field.is_list() {
            let arr = val.as_array().ok_or_else(|| JsonError::Field {
                at: here.clone(),
                what: "expected an array".into(),
            })?;
            if h.ipadd && arr.first().is_some_and(Json::is_string) {
                ip_from_json(arr, &here)?
            } else {
                let mut items = Vec::with_capacity(arr.len());
                for (i, item) in arr.iter().enumerate() {
                    items.push(value_from_json(&field, item, &h, &format!("{here}[{i}]"))?);
                }
                Value::List(items)
            }
        } else {
            value_from_json(&field, val, &h, &here)?
        };
        msg.set_field(&field, value);
    }
    Ok(msg)
}

fn ip_from_json(arr: &[Json], at: &str) -> Result<Value, JsonError> {
    let text = arr.first().and_then(Json::as_str).unwrap_or_default();
    let bad = || JsonError::Field {
        at: at.to_owned(),
        what: format!("{text:?} is not an IP address"),
    };
    let words: Vec<u32> = if let Ok(v4) = text.parse::<Ipv4Addr>() {
        vec![u32::from(v4).to_be()]
    } else if let Ok(v6) = text.parse::<Ipv6Addr>() {
        let n = u128::from(v6);
        (0..4)
            .rev()
            .map(|i| {
                let word = (n >> (32 * i)) & 0xffff_ffff;
                u32::try_from(word).unwrap_or_default().to_be()
            })
            .collect()
    } else {
        return Err(bad());
    };
    Ok(Value::List(words.into_iter().map(Value::U32).collect()))
}

fn value_from_json(
    field: &FieldDescriptor,
    json: &Json,
    h: &Hints,
    at: &str,
) -> Result<Value, JsonError> {
    let err = |what: String| JsonError::Field {
        at: at.to_owned(),
        what,
    };
    let int = || -> Result<i128, JsonError> {
        match json {
            Json::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
                .ok_or_else(|| err(format!("{n} is not an integer"))),
            Json::String(s) => {
                let parsed = if h.dev && s.contains(':') {
                    parse_dev(s, h.odev)
                } else if let Some(table) = h.flags.as_deref().and_then(flag_table) {
                    parse_flags(s, table)
                } else if let Some(t) = h.dict.as_deref().and_then(|d| dict_table(d, field.name()))
                {
                    t.iter()
                        .find(|(_, name)| name == s)
                        .map(|(k, _)| *k)
                        .or_else(|| parse_int(s))
                } else if let Some(neg) = s.trim().strip_prefix('-') {
                    return parse_int(neg)
                        .map(|v| -i128::from(v))
                        .ok_or_else(|| err(format!("{s:?} is not an integer")));
                } else {
                    parse_int(s)
                };
                parsed
                    .map(i128::from)
                    .ok_or_else(|| err(format!("{s:?} is not an integer")))
            }
            other => Err(err(format!("expected an integer, found {other}"))),
        }
    };
    let range = |v: i128, lo: i128, hi: i128| {
        if v < lo || v > hi {
            Err(err(format!("{v} is out of range for {}", field.name())))
        } else {
            Ok(v)
        }
    };
    Ok(match field.kind() {
        Kind::Bool => Value::Bool(
            json.as_bool()
                .ok_or_else(|| err("expected true or false".into()))?,
        ),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            let v = range(int()?, i128::from(i32::MIN), i128::from(i32::MAX))?;
            Value::I32(i32::try_from(v).unwrap_or_default())
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            let v = range(int()?, i128::from(i64::MIN), i128::from(i64::MAX))?;
            Value::I64(i64::try_from(v).unwrap_or_default())
        }
        Kind::Uint32 | Kind::Fixed32 => {
            let v = range(int()?, 0, i128::from(u32::MAX))?;
            Value::U32(u32::try_from(v).unwrap_or_default())
        }
        Kind::Uint64 | Kind::Fixed64 => {
            let v = range(int()?, 0, i128::from(u64::MAX))?;
            Value::U64(u64::try_from(v).unwrap_or_default())
        }
        Kind::Float => {
            let x = json
                .as_f64()
                .ok_or_else(|| err("expected a number".into()))?;
            // JSON numbers are doubles; a float field keeps the nearest float.
            #[allow(clippy::cast_possible_truncation)]
            Value::F32(x as f32)
        }
        Kind::Double => Value::F64(
            json.as_f64()
                .ok_or_else(|| err("expected a number".into()))?,
        ),
        Kind::String => Value::String(
            json.as_str()
                .ok_or_else(|| err("expected a string".into()))?
                .to_owned(),
        ),
        Kind::Bytes if hints(field).conv.as_deref() == Some("unix_name") => Value::Bytes(
            unquote_printable(
                json.as_str()
                    .ok_or_else(|| err("expected a quoted-printable string".into()))?,
            )
            .ok_or_else(|| err("invalid quoted-printable text".into()))?
            .into(),
        ),
        Kind::Bytes => Value::Bytes(decode_base64(json, at)?.into()),
        Kind::Enum(e) => match json {
            Json::String(s) => Value::EnumNumber(
                e.get_value_by_name(s)
                    .ok_or_else(|| err(format!("{s:?} is not a value of {}", e.name())))?
                    .number(),
            ),
            Json::Number(_) => {
                let v = range(int()?, i128::from(i32::MIN), i128::from(i32::MAX))?;
                Value::EnumNumber(i32::try_from(v).unwrap_or_default())
            }
            other => return Err(err(format!("expected an enum name, found {other}"))),
        },
        Kind::Message(m) => Value::Message(from_json(&m, json, at)?),
    })
}

/// Quoted-printable text (RFC 2045, as Python's `quopri.encodestring`):
/// crit's form of unix socket names, where abstract names start with `=00`.
fn quoted_printable(b: &[u8]) -> String {
    const MAX: usize = 76;
    let mut out = String::new();
    let lines: Vec<&[u8]> = b.split(|&c| c == b'\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        if last && line.is_empty() {
            break;
        }
        let mut cur = String::new();
        for (k, &c) in line.iter().enumerate() {
            let trailing_space = k + 1 == line.len() && (c == b' ' || c == b'\t');
            let piece = if c == b'=' || !(b' '..=b'~').contains(&c) && c != b'\t' || trailing_space
            {
                format!("={c:02X}")
            } else {
                char::from(c).to_string()
            };
            if cur.len() + piece.len() > MAX - 1 {
                out.push_str(&cur);
                out.push_str("=\n");
                cur.clear();
            }
            cur.push_str(&piece);
        }
        out.push_str(&cur);
        if !last {
            out.push('\n');
        }
    }
    out
}

fn unquote_printable(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'=' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        match b.get(i + 1..i + 3) {
            Some([b'\r', b'\n']) => i += 3,
            Some([b'\n', ..]) => i += 2,
            Some(h) => {
                out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
                i += 3;
            }
            None if b.get(i + 1) == Some(&b'\n') => i += 2,
            None => return None,
        }
    }
    Some(out)
}

fn decode_base64(json: &Json, at: &str) -> Result<Vec<u8>, JsonError> {
    let text = json.as_str().ok_or_else(|| JsonError::Field {
        at: at.to_owned(),
        what: "expected a base64 string".into(),
    })?;
    // crit wraps base64 at 76 columns; accept any ASCII whitespace.
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    B64.decode(compact.as_bytes())
        .map_err(|e| JsonError::Field {
            at: at.to_owned(),
            what: format!("invalid base64: {e}"),
        })
}

/// Dotted name of the first required field missing in `msg` or its sub-messages.
pub fn missing_required(msg: &DynamicMessage) -> Option<String> {
    for field in prost_reflect::ReflectMessage::descriptor(msg).fields() {
        let present = msg.has_field(&field);
        if field.cardinality() == Cardinality::Required && !present {
            return Some(field.name().to_owned());
        }
        if !present || !matches!(field.kind(), Kind::Message(_)) {
            continue;
        }
        let value = msg.get_field(&field);
        let subs: Vec<&DynamicMessage> = match value.as_ref() {
            Value::Message(m) => vec![m],
            Value::List(items) => items.iter().filter_map(Value::as_message).collect(),
            _ => Vec::new(),
        };
        for (i, sub) in subs.into_iter().enumerate() {
            if let Some(inner) = missing_required(sub) {
                let idx = if field.is_list() {
                    format!("[{i}]")
                } else {
                    String::new()
                };
                return Some(format!("{}{idx}.{inner}", field.name()));
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// whole images

/// How to render an image as JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeOptions {
    /// Hex, flag names, devices and named values, as `crit decode --pretty`.
    pub pretty: bool,
    /// Replace payloads by their size (`"... <12B>"`), as `crit show --nopl`.
    pub no_payload: bool,
}

fn decode_entry<R: BufRead>(
    rd: &mut ImageReader<R>,
    desc: &MessageDescriptor,
    buf: &[u8],
) -> Result<DynamicMessage, ImageError> {
    let msg = DynamicMessage::decode(desc.clone(), buf).map_err(|source| ImageError::Decode {
        path: rd.path().to_owned(),
        offset: rd.entry_offset(),
        message: desc.name().to_owned(),
        source,
    })?;
    if let Some(field) = missing_required(&msg) {
        return Err(ImageError::MissingField {
            path: rd.path().to_owned(),
            offset: rd.entry_offset(),
            message: desc.name().to_owned(),
            field,
        });
    }
    Ok(msg)
}

/// Read the next entry of `desc`'s type; `None` at a clean end of file.
pub fn next_dynamic<R: BufRead>(
    rd: &mut ImageReader<R>,
    desc: &MessageDescriptor,
) -> Result<Option<DynamicMessage>, ImageError> {
    match rd.next_frame()? {
        None => Ok(None),
        Some(buf) => decode_entry(rd, desc, &buf).map(Some),
    }
}

fn schema_message(name: &str) -> MessageDescriptor {
    // Every message named in `kind::KINDS` is defined in the schema; the
    // `every_kind_has_its_message` test holds this.
    message(name).unwrap_or_else(|| panic!("image message {name} is missing from the schema"))
}

fn payload_len(msg: &DynamicMessage, field: &str) -> Option<u64> {
    match msg.get_field_by_name(field)?.as_ref() {
        Value::U32(v) => Some(u64::from(*v)),
        Value::U64(v) => Some(*v),
        _ => None,
    }
}

/// `n` rounded up to a multiple of 8 (IPC payloads are padded so).
pub fn padded(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

fn with_extra(mut entry: Json, extra: Json) -> Json {
    if let Json::Object(map) = &mut entry {
        map.insert("extra".into(), extra);
    }
    entry
}

fn payload_json<R: BufRead>(
    rd: &mut ImageReader<R>,
    len: u64,
    opts: DecodeOptions,
) -> Result<Json, ImageError> {
    if opts.no_payload {
        rd.skip_payload(len)?;
        Ok(Json::String(format!("... <{}>", human_size(len))))
    } else {
        Ok(Json::String(B64.encode(rd.read_payload(len)?)))
    }
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut unit = 0;
    let mut whole = n;
    while whole >= 1024 && unit + 1 < UNITS.len() {
        whole /= 1024;
        unit += 1;
    }
    format!("{whole}{}", UNITS[unit])
}

/// Decode a whole image into crit-style JSON.
pub fn decode_image<R: BufRead>(
    mut rd: ImageReader<R>,
    opts: DecodeOptions,
) -> Result<Json, ImageError> {
    let kind = rd.kind();
    let mut entries = Vec::new();
    match kind.layout {
        Layout::Entries(name) => {
            let desc = schema_message(name);
            while let Some(msg) = next_dynamic(&mut rd, &desc)? {
                entries.push(message_to_json(&msg, opts.pretty));
            }
        }
        Layout::Pagemap => {
            let head = schema_message("pagemap_head");
            let entry = schema_message("pagemap_entry");
            if let Some(msg) = next_dynamic(&mut rd, &head)? {
                entries.push(message_to_json(&msg, opts.pretty));
                while let Some(msg) = next_dynamic(&mut rd, &entry)? {
                    entries.push(message_to_json(&msg, opts.pretty));
                }
            }
        }
        Layout::WithPayload(name, Payload::Field(field)) => {
            let desc = schema_message(name);
            while let Some(msg) = next_dynamic(&mut rd, &desc)? {
                let at = rd.entry_offset();
                let len = payload_len(&msg, field).ok_or_else(|| ImageError::BadPayloadLength {
                    path: rd.path().to_owned(),
                    offset: at,
                    message: name,
                    field,
                    value: "missing".into(),
                })?;
                let json = message_to_json(&msg, opts.pretty);
                entries.push(with_extra(json, payload_json(&mut rd, len, opts)?));
            }
        }
        Layout::SemSet => {
            let desc = schema_message("ipc_sem_entry");
            while let Some(msg) = next_dynamic(&mut rd, &desc)? {
                let n = payload_len(&msg, "nsems").unwrap_or(0);
                let raw = rd.read_payload(padded(n * 2))?;
                let values: Vec<Json> = raw
                    .chunks_exact(2)
                    .take(usize::try_from(n).unwrap_or(0))
                    .map(|c| Json::from(u16::from_ne_bytes([c[0], c[1]])))
                    .collect();
                let json = message_to_json(&msg, opts.pretty);
                entries.push(with_extra(json, Json::Array(values)));
            }
        }
        Layout::TcpStream => {
            let desc = schema_message("tcp_stream_entry");
            while let Some(msg) = next_dynamic(&mut rd, &desc)? {
                let json = message_to_json(&msg, opts.pretty);
                let mut extra = serde_json::Map::new();
                for (key, field) in [("inq", "inq_len"), ("outq", "outq_len")] {
                    let len = payload_len(&msg, field).unwrap_or(0);
                    extra.insert(key.into(), payload_json(&mut rd, len, opts)?);
                }
                entries.push(with_extra(json, Json::Object(extra)));
            }
        }
        Layout::ShmSegment => {
            let desc = schema_message("ipc_shm_entry");
            while let Some(msg) = next_dynamic(&mut rd, &desc)? {
                let size = payload_len(&msg, "size").unwrap_or(0);
                let json = message_to_json(&msg, opts.pretty);
                let mut data = rd.read_payload(size.div_ceil(4) * 4)?;
                data.truncate(usize::try_from(size).unwrap_or(0));
                let extra = if opts.no_payload {
                    Json::String(format!("... <{}>", human_size(size)))
                } else {
                    Json::String(B64.encode(data))
                };
                entries.push(with_extra(json, extra));
            }
        }
        Layout::MsgQueue => {
            let desc = schema_message("ipc_msg_entry");
            let one = schema_message("ipc_msg");
            while let Some(msg) = next_dynamic(&mut rd, &desc)? {
                let mut extra = Vec::new();
                for _ in 0..payload_len(&msg, "qnum").unwrap_or(0) {
                    let Some(m) = next_dynamic(&mut rd, &one)? else {
                        break;
                    };
                    let size = payload_len(&m, "msize").unwrap_or(0);
                    let mut data = rd.read_payload(padded(size))?;
                    data.truncate(usize::try_from(size).unwrap_or(0));
                    extra.push(message_to_json(&m, opts.pretty));
                    extra.push(Json::String(B64.encode(data)));
                }
                let json = message_to_json(&msg, opts.pretty);
                entries.push(with_extra(json, Json::Array(extra)));
            }
        }
        Layout::GhostFile => {
            let desc = schema_message("ghost_file_entry");
            let chunk = schema_message("ghost_chunk_entry");
            if let Some(msg) = next_dynamic(&mut rd, &desc)? {
                let chunked = msg
                    .get_field_by_name("chunks")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                let first = message_to_json(&msg, opts.pretty);
                if chunked {
                    entries.push(first);
                    while let Some(c) = next_dynamic(&mut rd, &chunk)? {
                        let len = payload_len(&c, "len").unwrap_or(0);
                        let json = message_to_json(&c, opts.pretty);
                        entries.push(with_extra(json, payload_json(&mut rd, len, opts)?));
                    }
                } else {
                    let mut data = Vec::new();
                    let n = rd.copy_rest(&mut data)?;
                    let extra = if opts.no_payload {
                        Json::String(format!("... <{}>", human_size(n)))
                    } else {
                        Json::String(B64.encode(&data))
                    };
                    entries.push(with_extra(first, extra));
                }
            }
        }
    }
    let mut top = Map::new();
    top.insert("magic".into(), Json::String(kind.name.to_owned()));
    top.insert("entries".into(), Json::Array(entries));
    Ok(Json::Object(top))
}

/// Magic name and number of entries of an image (`crit info`). For pagemap
/// images the head is not counted.
pub fn image_info<R: BufRead>(
    rd: ImageReader<R>,
) -> Result<(&'static ImageKind, usize), ImageError> {
    let kind = rd.kind();
    let json = decode_image(
        rd,
        DecodeOptions {
            pretty: false,
            no_payload: true,
        },
    )?;
    let n = json["entries"].as_array().map_or(0, Vec::len);
    let n = if kind.layout == Layout::Pagemap {
        n.saturating_sub(1)
    } else {
        n
    };
    Ok((kind, n))
}

/// crit before CRIU 4 names field 2 of pagemap_entry `nr_pages`; CRIU 4 renamed
/// it `compat_nr_pages` and added a 64-bit `nr_pages` (field 5). Accept the old
/// JSON by deriving the required field 2 from `nr_pages` when it is absent.
fn compat_nr_pages(entry: &mut Json) {
    if let Json::Object(map) = entry
        && !map.contains_key("compat_nr_pages")
        && let Some(n) = map.get("nr_pages").and_then(Json::as_u64)
    {
        map.insert(
            "compat_nr_pages".into(),
            Json::from(n.min(u64::from(u32::MAX))),
        );
    }
}

/// The payloads of IPC entries from their JSON `extra` (semaphore values;
/// messages and their bytes), or `None` for other layouts.
fn encode_ipc_extra<W: Write>(
    layout: Layout,
    msg: &DynamicMessage,
    entry: &Json,
    at: &str,
    w: &mut ImageWriter<W>,
) -> Result<Option<Result<(), ImageError>>, JsonError> {
    let items = || {
        entry
            .get("extra")
            .and_then(Json::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let field = |what: String| JsonError::Field {
        at: format!("{at}.extra"),
        what,
    };
    match layout {
        Layout::SemSet => {
            let n = payload_len(msg, "nsems").unwrap_or(0);
            let vals = items();
            if vals.len() as u64 != n {
                return Err(field(format!("{} values but nsems is {n}", vals.len())));
            }
            let mut raw = Vec::new();
            for v in &vals {
                let v = v
                    .as_u64()
                    .and_then(|v| u16::try_from(v).ok())
                    .ok_or_else(|| field(format!("{v} is not a semaphore value")))?;
                raw.extend_from_slice(&v.to_ne_bytes());
            }
            raw.resize(usize::try_from(padded(n * 2)).unwrap_or(0), 0);
            Ok(Some(w.write_payload(&raw)))
        }
        Layout::MsgQueue => {
            let vals = items();
            let want = payload_len(msg, "qnum").unwrap_or(0);
            if vals.len() as u64 != want * 2 {
                return Err(field(format!(
                    "{} items but qnum is {want} (a message and its bytes each)",
                    vals.len()
                )));
            }
            let one = schema_message("ipc_msg");
            for (k, pair) in vals.chunks(2).enumerate() {
                let m = message_from_json(&one, &pair[0], &format!("{at}.extra[{}]", 2 * k))?;
                let mut data = decode_base64(&pair[1], &format!("{at}.extra[{}]", 2 * k + 1))?;
                let size = payload_len(&m, "msize").unwrap_or(0);
                if size != data.len() as u64 {
                    return Err(field(format!(
                        "message {k} holds {} bytes but msize is {size}",
                        data.len()
                    )));
                }
                data.resize(usize::try_from(padded(size)).unwrap_or(0), 0);
                if let Err(e) = w.write_frame(&m.encode_to_vec()) {
                    return Ok(Some(Err(e)));
                }
                if let Err(e) = w.write_payload(&data) {
                    return Ok(Some(Err(e)));
                }
            }
            Ok(Some(Ok(())))
        }
        _ => Ok(None),
    }
}

fn extra_of(entry: &Json, at: &str) -> Result<Option<Vec<u8>>, JsonError> {
    match entry.get("extra") {
        None => Ok(None),
        Some(v) => decode_base64(v, &format!("{at}.extra")).map(Some),
    }
}

fn without_extra(entry: &Json) -> Json {
    match entry {
        Json::Object(map) => {
            let mut m = map.clone();
            m.remove("extra");
            Json::Object(m)
        }
        other => other.clone(),
    }
}

/// Encode crit-style JSON into a binary image on `dst`.
pub fn encode_image<W: Write>(json: &Json, dst: W, path: &str) -> Result<W, JsonError> {
    let magic = json
        .get("magic")
        .and_then(Json::as_str)
        .ok_or_else(|| JsonError::Shape("expected a \"magic\" string at the top level".into()))?;
    let kind = kind::by_name(magic).ok_or_else(|| JsonError::UnknownMagic(magic.to_owned()))?;
    let entries = json
        .get("entries")
        .and_then(Json::as_array)
        .ok_or_else(|| JsonError::Shape("expected an \"entries\" array at the top level".into()))?;
    let io = |e: ImageError| match e {
        ImageError::Io { source, .. } => JsonError::Write(source),
        other => JsonError::Write(std::io::Error::other(other.to_string())),
    };
    let mut w = ImageWriter::new(dst, path, kind).map_err(io)?;
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("[{i}]");
        let name = match kind.layout {
            Layout::Entries(name) | Layout::WithPayload(name, _) => name,
            Layout::SemSet => "ipc_sem_entry",
            Layout::MsgQueue => "ipc_msg_entry",
            Layout::ShmSegment => "ipc_shm_entry",
            Layout::TcpStream => "tcp_stream_entry",
            Layout::Pagemap if i == 0 => "pagemap_head",
            Layout::Pagemap => "pagemap_entry",
            Layout::GhostFile if i == 0 => "ghost_file_entry",
            Layout::GhostFile => "ghost_chunk_entry",
        };
        let mut fields = without_extra(entry);
        if name == "pagemap_entry" {
            compat_nr_pages(&mut fields);
        }
        let msg = message_from_json(&schema_message(name), &fields, &at)?;
        w.write_frame(&msg.encode_to_vec()).map_err(io)?;
        if kind.layout == Layout::TcpStream {
            for (key, field) in [("inq", "inq_len"), ("outq", "outq_len")] {
                let v = entry.get("extra").and_then(|e| e.get(key)).ok_or_else(|| {
                    JsonError::Field {
                        at: format!("{at}.extra"),
                        what: format!("expected {{\"inq\", \"outq\"}}, {key} is missing"),
                    }
                })?;
                let data = decode_base64(v, &format!("{at}.extra.{key}"))?;
                if payload_len(&msg, field) != Some(data.len() as u64) {
                    return Err(JsonError::Field {
                        at: format!("{at}.extra.{key}"),
                        what: format!("{} bytes but {field} says otherwise", data.len()),
                    });
                }
                w.write_payload(&data).map_err(io)?;
            }
            continue;
        }
        if let Some(done) = encode_ipc_extra(kind.layout, &msg, entry, &at, &mut w)? {
            done.map_err(io)?;
            continue;
        }
        let extra = extra_of(entry, &at)?;
        match kind.layout {
            Layout::WithPayload(_, Payload::Field(field)) => {
                let data = extra.unwrap_or_default();
                let want = payload_len(&msg, field).unwrap_or(0);
                if want != data.len() as u64 {
                    return Err(JsonError::Field {
                        at: format!("{at}.extra"),
                        what: format!("payload holds {} bytes but {field} says {want}", data.len()),
                    });
                }
                w.write_payload(&data).map_err(io)?;
            }
            Layout::GhostFile => {
                if let Some(data) = extra {
                    w.write_payload(&data).map_err(io)?;
                }
            }
            Layout::ShmSegment => {
                let mut data = extra.unwrap_or_default();
                let size = payload_len(&msg, "size").unwrap_or(0);
                if size != data.len() as u64 {
                    return Err(JsonError::Field {
                        at: format!("{at}.extra"),
                        what: format!("segment holds {} bytes but size says {size}", data.len()),
                    });
                }
                data.resize(usize::try_from(size.div_ceil(4) * 4).unwrap_or(0), 0);
                w.write_payload(&data).map_err(io)?;
            }
            Layout::SemSet | Layout::MsgQueue => {}
            Layout::TcpStream => {}
            Layout::Entries(_) | Layout::Pagemap => {
                if extra.is_some() {
                    return Err(JsonError::Field {
                        at: format!("{at}.extra"),
                        what: format!("{} entries carry no payload", kind.name),
                    });
                }
            }
        }
    }
    w.finish().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_message() {
        for k in kind::KINDS {
            match k.layout {
                Layout::Entries(m) | Layout::WithPayload(m, _) => {
                    assert!(message(m).is_some(), "{m}");
                }
                Layout::SemSet => assert!(message("ipc_sem_entry").is_some()),
                Layout::ShmSegment => assert!(message("ipc_shm_entry").is_some()),
                Layout::TcpStream => assert!(message("tcp_stream_entry").is_some()),
                Layout::MsgQueue => {
                    assert!(message("ipc_msg_entry").is_some());
                    assert!(message("ipc_msg").is_some());
                }
                Layout::Pagemap => {
                    assert!(message("pagemap_head").is_some());
                    assert!(message("pagemap_entry").is_some());
                }
                Layout::GhostFile => {
                    assert!(message("ghost_file_entry").is_some());
                    assert!(message("ghost_chunk_entry").is_some());
                }
            }
        }
    }

    #[test]
    fn hints_are_read_from_the_schema() {
        let vma = message("vma_entry").unwrap();
        let start = vma.get_field_by_name("start").unwrap();
        assert!(hints(&start).hex);
        let prot = vma.get_field_by_name("prot").unwrap();
        assert_eq!(hints(&prot).flags.as_deref(), Some("mmap.prot"));
    }

    #[test]
    fn flags_format_and_parse() {
        assert_eq!(format_flags(0x3, MMAP_PROT), "PROT_READ | PROT_WRITE");
        assert_eq!(format_flags(0x9, MMAP_PROT), "PROT_READ | 0x8");
        assert_eq!(format_flags(0, MMAP_PROT), "");
        assert_eq!(parse_flags("PROT_READ | 0x8", MMAP_PROT), Some(0x9));
        assert_eq!(parse_flags("", MMAP_PROT), Some(0));
        assert_eq!(parse_flags("PROT_BOGUS", MMAP_PROT), None);
    }

    #[test]
    fn devices_format_and_parse() {
        assert_eq!(format_dev((8 << 20) | 1, false), "8:1");
        assert_eq!(parse_dev("8:1", false), Some((8 << 20) | 1));
        for (maj, min) in [(8u64, 1u64), (259, 70000), (4095, 255)] {
            let s = format!("{maj}:{min}");
            let v = parse_dev(&s, true).unwrap();
            assert_eq!(format_dev(v, true), s);
        }
    }

    #[test]
    fn ints_parse_like_python() {
        assert_eq!(parse_int("0x1f"), Some(31));
        assert_eq!(parse_int("0o17"), Some(15));
        assert_eq!(parse_int("42"), Some(42));
        assert_eq!(parse_int("zz"), None);
    }
}

#[cfg(test)]
mod quoted_printable_tests {
    use super::{quoted_printable, unquote_printable};

    /// Expected strings are Python's `quopri.encodestring`, which crit uses.
    #[test]
    fn matches_python_quopri() {
        let long = vec![b'x'; 100];
        let cases: [(&[u8], String); 6] = [
            (b"\0abstract-name", "=00abstract-name".into()),
            (b"/tmp/a b=c.sock", "/tmp/a b=3Dc.sock".into()),
            (b"trail ", "trail=20".into()),
            (&long, format!("{}=\n{}", "x".repeat(75), "x".repeat(25))),
            (b"a\nb", "a\nb".into()),
            (b"\xff\t", "=FF=09".into()),
        ];
        for (raw, want) in cases {
            assert_eq!(quoted_printable(raw), want);
            assert_eq!(unquote_printable(&want).as_deref(), Some(raw));
        }
    }
}
