//! Required fields of image messages, checked on the encoded bytes: prost
//! decodes a missing required field as zero, so the image reader looks
//! for each one itself. The table of fields is generated from the schema
//! at build time (`build.rs`), so no reflection pool is built at run time
//! (that costs milliseconds, on every restore).

/// A field: its number, its name, whether it is required, and its message
/// type ("" for a scalar).
type Field = (u32, &'static str, bool, &'static str);

include!(concat!(env!("OUT_DIR"), "/required.rs"));

/// The fields of message `name` (`"core_entry"`), if it is in the schema.
fn fields(name: &str) -> Option<&'static [Field]> {
    MESSAGES
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .and_then(|i| MESSAGES.get(i))
        .map(|(_, f)| *f)
}

/// A varint at the start of `b`: its value and length.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Dotted name of the first required field missing in the encoded message
/// `name` or its sub-messages; `None` when all are there, or when the
/// bytes cannot be walked (the typed decode reports those).
pub fn missing(name: &str, buf: &[u8]) -> Option<String> {
    let fields = fields(name)?;
    let mut seen = vec![false; fields.len()];
    let mut at = 0;
    while at < buf.len() {
        let (tag, n) = varint(buf.get(at..)?)?;
        at += n;
        let number = u32::try_from(tag >> 3).ok()?;
        let field = fields.iter().position(|f| f.0 == number);
        if let Some(i) = field
            && let Some(s) = seen.get_mut(i)
        {
            *s = true;
        }
        match tag & 7 {
            0 => at += varint(buf.get(at..)?)?.1,
            1 => at += 8,
            5 => at += 4,
            2 => {
                let (len, n) = varint(buf.get(at..)?)?;
                at += n;
                let end = at.checked_add(usize::try_from(len).ok()?)?;
                let sub = buf.get(at..end)?;
                if let Some((_, fname, _, msg)) = field.and_then(|i| fields.get(i))
                    && !msg.is_empty()
                    && let Some(inner) = missing(msg, sub)
                {
                    return Some(format!("{fname}.{inner}"));
                }
                at = end;
            }
            _ => return None,
        }
    }
    fields
        .iter()
        .zip(&seen)
        .find(|((_, _, required, _), seen)| *required && !**seen)
        .map(|((_, fname, _, _), _)| (*fname).to_owned())
}

#[cfg(test)]
#[cfg(feature = "test-utils")]
mod tests {
    use prost::Message;
    use prost_reflect::{DynamicMessage, ReflectMessage, Value};

    use crate::kind::{KINDS, Layout};

    /// The message with required field `path` (names) taken out.
    fn without(msg: &DynamicMessage, path: &[String]) -> DynamicMessage {
        let mut m = msg.clone();
        let mut cur = &mut m;
        for (k, name) in path.iter().enumerate() {
            if k + 1 == path.len() {
                cur.clear_field_by_name(name);
                break;
            }
            match cur.get_field_by_name_mut(name) {
                Some(Value::Message(sub)) => cur = sub,
                _ => break,
            }
        }
        m
    }

    /// Paths to every required field of `msg` and of its set sub-messages
    /// (the first of a list).
    fn required_paths(msg: &DynamicMessage, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for f in msg.descriptor().fields() {
            let mut path = prefix.to_vec();
            path.push(f.name().to_owned());
            if f.cardinality() == prost_reflect::Cardinality::Required && msg.has_field(&f) {
                out.push(path.clone());
            }
            if let Some(Value::Message(sub)) =
                msg.has_field(&f).then(|| msg.get_field(&f)).as_deref()
            {
                required_paths(sub, &path, out);
            }
        }
    }

    /// On sample entries of every image kind with every field set, the raw
    /// check and the reflection check agree: nothing missing, then, with
    /// each required field taken out in turn, the same dotted name.
    #[test]
    fn agrees_with_the_reflection_check_on_every_image_message() {
        let mut checked = 0;
        for kind in KINDS {
            let Layout::Entries(name) = kind.layout else {
                continue;
            };
            let desc = crate::json::message(name).expect("schema message");
            let image = crate::sample::sample_image(kind, 1);
            let mut r = crate::ImageReader::new(image.as_slice(), kind.name, None).expect("sample");
            let frame = r.next_frame().expect("frame").expect("entry");
            let msg = DynamicMessage::decode(desc, frame.as_slice()).expect("decode");
            assert_eq!(super::missing(name, &frame), None, "{name}");
            let mut paths = Vec::new();
            required_paths(&msg, &[], &mut paths);
            for path in paths {
                let cut = without(&msg, &path);
                let want = crate::json::missing_required(&cut);
                assert_eq!(
                    super::missing(name, &cut.encode_to_vec()),
                    want,
                    "{name} without {path:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 50, "only {checked} required fields checked");
    }
}
