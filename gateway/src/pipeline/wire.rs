//! Validates protobuf bytes against a message descriptor without building the message.
//!
//! Decoding an untrusted body into a `DynamicMessage` keeps every unknown field: a 12 MiB body of
//! tiny unknown fields cost hundreds of MB and a long stall on an edge thread. This walker reads
//! the wire format in place: tags, lengths and nesting are checked, known fields must have a wire
//! type their kind allows, strings must be UTF-8, sub-messages are walked in turn (at most
//! [`MAX_DEPTH`] deep), unknown fields are skipped. It allocates nothing, so its cost is one pass
//! over the bytes; the body is then forwarded as it came (the backend decodes it anyway).

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};

/// Nesting allowed in a body (protobuf's own default recursion limit).
pub const MAX_DEPTH: usize = 100;

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// Ok when `bytes` is a well-formed `desc`; else why not, naming the field.
pub fn validate(desc: &MessageDescriptor, bytes: &[u8]) -> Result<(), String> {
    walk(desc, bytes, 0)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.buf.split_first().ok_or("truncated varint")?;
            self.buf = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|_| "length too large")?;
        if n > self.buf.len() {
            return Err(format!(
                "a length of {n} bytes runs past the end ({} left)",
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
}

/// The wire type a scalar kind uses unpacked; `None` for LEN kinds.
fn scalar_wire(kind: &Kind) -> Option<u8> {
    match kind {
        Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => Some(FIXED64),
        Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => Some(FIXED32),
        Kind::String | Kind::Bytes | Kind::Message(_) => None,
        _ => Some(VARINT),
    }
}

fn walk(desc: &MessageDescriptor, bytes: &[u8], depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} messages"));
    }
    let mut r = Reader { buf: bytes };
    while !r.buf.is_empty() {
        let key = r.varint()?;
        let number = key >> 3;
        let wire = (key & 7) as u8;
        if number == 0 || number > (1 << 29) - 1 {
            return Err(format!("field number {number} is out of range"));
        }
        let field = desc.get_field(number as u32);
        let value = match wire {
            VARINT => {
                r.varint()?;
                None
            }
            FIXED64 => {
                r.take(8)?;
                None
            }
            FIXED32 => {
                r.take(4)?;
                None
            }
            LEN => {
                let n = r.varint()?;
                Some(r.take(n)?)
            }
            3 | 4 => return Err(format!("field {number}: groups are not supported")),
            other => return Err(format!("field {number}: invalid wire type {other}")),
        };
        if let Some(field) = field {
            check_field(&field, wire, value, depth)?;
        }
    }
    Ok(())
}

fn check_field(
    field: &FieldDescriptor,
    wire: u8,
    value: Option<&[u8]>,
    depth: usize,
) -> Result<(), String> {
    let kind = field.kind();
    let name = field.name();
    let mismatch = || format!("field `{name}`: wire type {wire} does not fit its type");
    match (scalar_wire(&kind), value) {
        // Unpacked scalar.
        (Some(expected), None) if expected == wire => Ok(()),
        // Packed repeated scalars: a run of values of that wire type.
        (Some(expected), Some(packed)) if field.is_list() => {
            let mut r = Reader { buf: packed };
            while !r.buf.is_empty() {
                match expected {
                    VARINT => r.varint().map(drop)?,
                    FIXED64 => r.take(8).map(drop)?,
                    _ => r.take(4).map(drop)?,
                }
            }
            Ok(())
        }
        (None, Some(inner)) => match kind {
            Kind::String => std::str::from_utf8(inner)
                .map(drop)
                .map_err(|_| format!("field `{name}`: a string must be UTF-8")),
            Kind::Bytes => Ok(()),
            Kind::Message(sub) => walk(&sub, inner, depth + 1).map_err(|e| format!("{name}.{e}")),
            _ => Err(mismatch()),
        },
        _ => Err(mismatch()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::transcode::tests::desc;
    use prost::Message;

    #[test]
    fn well_formed_messages_pass_and_broken_ones_name_the_problem() {
        let d = desc("im.echo.v1.EchoRequest");
        let ok = im_proto::im::echo::v1::EchoRequest {
            text: "hi".into(),
            number: -5,
            tags: vec!["a".into(), "b".into()],
            flag: true,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(validate(&d, &ok), Ok(()));
        assert_eq!(validate(&d, &[]), Ok(()));
        assert!(
            validate(&d, &[0xff, 0xff, 0xff]).is_err(),
            "truncated varint"
        );
        assert!(
            validate(&d, &[0x0a, 0x05, b'h']).is_err(),
            "length past the end"
        );
        // Field 1 (`text`) as a varint: wrong wire type for a string.
        let e = validate(&d, &[0x08, 0x01]).unwrap_err();
        assert!(e.contains("text"), "{e}");
        // Invalid UTF-8 in a string.
        let e = validate(&d, &[0x0a, 0x02, 0xc3, 0x28]).unwrap_err();
        assert!(e.contains("UTF-8"), "{e}");
        // Unknown fields are skipped, however many there are.
        let unknown: Vec<u8> = std::iter::repeat_n([0xf8u8, 0x07, 0x01], 1000)
            .flatten()
            .collect();
        assert_eq!(validate(&d, &unknown), Ok(()));
        assert!(validate(&d, &[0x00, 0x01]).is_err(), "field number 0");
    }

    #[test]
    fn nesting_is_bounded() {
        let d = desc("im.message.v1.ChatMessageNotify");
        let e = walk(&d, &[], MAX_DEPTH + 1).unwrap_err();
        assert!(e.contains("nested deeper"), "{e}");
        // A sub-message field is walked: a broken MessageInfo inside is named by its path.
        let e = validate(&d, &[0x0a, 0x02, 0x08, 0xff]).unwrap_err();
        assert!(e.starts_with("message_info."), "{e}");
    }
}
