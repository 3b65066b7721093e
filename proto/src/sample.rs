//! Deterministic sample images with every field of every message set, for
//! tests (wire compatibility against crit, round trips) and fuzzing seeds.
//! Only built with the `test-utils` feature.

use prost::Message as _;
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, Value};

use crate::framing::ImageWriter;
use crate::json;
use crate::kind::{ImageKind, Layout, Payload};

struct Filler {
    seed: u64,
}

impl Filler {
    fn next(&mut self) -> u64 {
        self.seed += 1;
        self.seed
    }

    fn scalar(&mut self, kind: &Kind) -> Value {
        let n = self.next();
        match kind {
            Kind::Bool => Value::Bool(true),
            Kind::Int32 | Kind::Sfixed32 => {
                Value::I32(i32::try_from(n * 1009 % 100_000).unwrap_or(1))
            }
            Kind::Sint32 => Value::I32(-i32::try_from(n % 1000).unwrap_or(1) - 1),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                Value::I64(-i64::try_from(n).unwrap_or(1) * 1_000_003)
            }
            Kind::Uint32 | Kind::Fixed32 => {
                Value::U32(u32::try_from(n * 7919 % 4_000_000).unwrap_or(7))
            }
            Kind::Uint64 | Kind::Fixed64 => Value::U64(0x7f00_0000_0000 + n * 0x1000),
            Kind::Float => Value::F32(1.5),
            Kind::Double => Value::F64(2.5),
            Kind::String => Value::String(format!("s{n}/é")),
            Kind::Bytes => Value::Bytes(
                (0..(n % 13 + 3))
                    .map(|i| (i * 37 + n) as u8)
                    .collect::<Vec<u8>>()
                    .into(),
            ),
            Kind::Enum(e) => {
                let v = e.values().nth(1).or_else(|| e.values().next());
                Value::EnumNumber(v.map_or(0, |v| v.number()))
            }
            Kind::Message(m) => Value::Message(self.message(m, 0, 0)),
        }
    }

    /// Fill every field; for each oneof only member number `variant` (mod its size).
    fn message(
        &mut self,
        desc: &MessageDescriptor,
        depth: usize,
        variant: usize,
    ) -> DynamicMessage {
        let mut msg = DynamicMessage::new(desc.clone());
        if depth > 6 {
            return msg;
        }
        for field in desc.fields() {
            if let Some(oneof) = field.containing_oneof() {
                let members: Vec<_> = oneof.fields().collect();
                if members[variant % members.len()].number() != field.number() {
                    continue;
                }
            }
            let one = |f: &mut Self| match field.kind() {
                Kind::Message(m) => Value::Message(f.message(&m, depth + 1, 0)),
                k => f.scalar(&k),
            };
            // A message that contains itself (cgroup_dir_entry.children)
            // stops nesting with an empty list, which is always valid.
            if field.is_list() && depth >= 3 && matches!(field.kind(), Kind::Message(_)) {
                continue;
            }
            let value = if field.is_list() && crate::json::is_ip_field(&field) {
                // An IP address: one word (IPv4) or four (IPv6).
                Value::List((0..4).map(|_| one(self)).collect())
            } else if field.is_list() {
                Value::List(vec![one(self), one(self)])
            } else {
                one(self)
            };
            msg.set_field(&field, value);
        }
        msg
    }
}

fn set_u(msg: &mut DynamicMessage, field: &str, v: u64) {
    if let Some(f) = msg.descriptor_field(field) {
        let value = match f.kind() {
            Kind::Uint64 => Value::U64(v),
            _ => Value::U32(u32::try_from(v).unwrap_or(u32::MAX)),
        };
        msg.set_field(&f, value);
    }
}

trait FieldByName {
    fn descriptor_field(&self, name: &str) -> Option<prost_reflect::FieldDescriptor>;
}

impl FieldByName for DynamicMessage {
    fn descriptor_field(&self, name: &str) -> Option<prost_reflect::FieldDescriptor> {
        prost_reflect::ReflectMessage::descriptor(self).get_field_by_name(name)
    }
}

fn desc(name: &str) -> MessageDescriptor {
    json::message(name).unwrap_or_else(|| panic!("message {name} in schema"))
}

/// A sample image of `kind` with `entries` entries whose every field is set
/// (different oneof members in different entries), payloads included.
pub fn sample_image(kind: &'static ImageKind, entries: usize) -> Vec<u8> {
    let mut filler = Filler {
        seed: u64::from(kind.magic % 1000),
    };
    let mut w = ImageWriter::new(Vec::new(), kind.name, kind).expect("writing to memory");
    match kind.layout {
        Layout::Entries(name) => {
            for i in 0..entries {
                let m = filler.message(&desc(name), 0, i);
                w.write_frame(&m.encode_to_vec()).expect("memory");
            }
        }
        Layout::Pagemap => {
            let head = filler.message(&desc("pagemap_head"), 0, 0);
            w.write_frame(&head.encode_to_vec()).expect("memory");
            for i in 0..entries {
                let m = filler.message(&desc("pagemap_entry"), 0, i);
                w.write_frame(&m.encode_to_vec()).expect("memory");
            }
        }
        Layout::WithPayload(name, Payload::Field(field)) => {
            for i in 0..entries {
                let mut m = filler.message(&desc(name), 0, i);
                let data: Vec<u8> = (0..(17 * (i + 1))).map(|b| (b * 31 + i) as u8).collect();
                set_u(&mut m, field, data.len() as u64);
                w.write_frame(&m.encode_to_vec()).expect("memory");
                w.write_payload(&data).expect("memory");
            }
        }
        Layout::SemSet => {
            for i in 0..entries {
                let mut m = filler.message(&desc("ipc_sem_entry"), 0, i);
                let n = i + 1;
                set_u(&mut m, "nsems", n as u64);
                w.write_frame(&m.encode_to_vec()).expect("memory");
                let mut raw: Vec<u8> = (0..n)
                    .flat_map(|k| ((k * 1000 + i) as u16).to_ne_bytes())
                    .collect();
                raw.resize(crate::json::padded(2 * n as u64) as usize, 0);
                w.write_payload(&raw).expect("memory");
            }
        }
        Layout::TcpStream => {
            let mut m = filler.message(&desc("tcp_stream_entry"), 0, 0);
            let (inq, outq): (Vec<u8>, Vec<u8>) = (
                (0..37).map(|b| b as u8).collect(),
                (0..11).map(|b| (b * 3) as u8).collect(),
            );
            set_u(&mut m, "inq_len", inq.len() as u64);
            set_u(&mut m, "outq_len", outq.len() as u64);
            w.write_frame(&m.encode_to_vec()).expect("memory");
            w.write_payload(&inq).expect("memory");
            w.write_payload(&outq).expect("memory");
        }
        Layout::ShmSegment => {
            for i in 0..entries {
                let mut m = filler.message(&desc("ipc_shm_entry"), 0, i);
                if let Some(f) = m.descriptor_field("in_pagemaps") {
                    m.set_field(&f, Value::Bool(false));
                }
                let data: Vec<u8> = (0..(9 * i + 3)).map(|b| (b * 7 + i) as u8).collect();
                set_u(&mut m, "size", data.len() as u64);
                w.write_frame(&m.encode_to_vec()).expect("memory");
                let mut padded = data.clone();
                padded.resize(data.len().div_ceil(4) * 4, 0);
                w.write_payload(&padded).expect("memory");
            }
        }
        Layout::MsgQueue => {
            for i in 0..entries {
                let mut m = filler.message(&desc("ipc_msg_entry"), 0, i);
                let n = i % 3;
                set_u(&mut m, "qnum", n as u64);
                w.write_frame(&m.encode_to_vec()).expect("memory");
                for k in 0..n {
                    let mut one = filler.message(&desc("ipc_msg"), 0, k);
                    let data: Vec<u8> = (0..(5 + 3 * k)).map(|b| (b + i) as u8).collect();
                    set_u(&mut one, "msize", data.len() as u64);
                    w.write_frame(&one.encode_to_vec()).expect("memory");
                    let mut padded = data.clone();
                    padded.resize(crate::json::padded(data.len() as u64) as usize, 0);
                    w.write_payload(&padded).expect("memory");
                }
            }
        }
        Layout::GhostFile => {
            let mut head = filler.message(&desc("ghost_file_entry"), 0, 0);
            if let Some(f) = head.descriptor_field("chunks") {
                head.set_field(&f, Value::Bool(true));
            }
            w.write_frame(&head.encode_to_vec()).expect("memory");
            for i in 0..entries {
                let mut c = filler.message(&desc("ghost_chunk_entry"), 0, 0);
                let data: Vec<u8> = (0..(100 + i)).map(|b| b as u8).collect();
                set_u(&mut c, "len", data.len() as u64);
                w.write_frame(&c.encode_to_vec()).expect("memory");
                w.write_payload(&data).expect("memory");
            }
        }
    }
    w.finish().expect("memory")
}

/// A ghost-file image without chunks: the entry, then the whole contents.
pub fn sample_plain_ghost(contents: &[u8]) -> Vec<u8> {
    let kind = crate::kind::by_name("GHOST_FILE").expect("GHOST_FILE kind");
    let mut filler = Filler { seed: 5 };
    let mut head = filler.message(&desc("ghost_file_entry"), 0, 0);
    if let Some(f) = head.descriptor_field("chunks") {
        head.set_field(&f, Value::Bool(false));
    }
    let mut w = ImageWriter::new(Vec::new(), "ghost", kind).expect("memory");
    w.write_frame(&head.encode_to_vec()).expect("memory");
    w.write_payload(contents).expect("memory");
    w.finish().expect("memory")
}
