//! Decoding Redis stream replies (`XRANGE`, `XREADGROUP`, `XAUTOCLAIM`) into
//! entries whose fields keep their order.
//!
//! Owns: the shape of stream replies in RESP2 and RESP3. Must not touch: I/O.

use redis::Value;

use crate::engine::EngineError;

/// One stream entry. `fields` is `None` for an entry that was deleted while
/// still pending (Redis reports it with a nil field list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub fields: Option<Vec<(String, Vec<u8>)>>,
}

impl Entry {
    /// The value of field `name`, if present.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

fn corrupt(what: &str) -> EngineError {
    EngineError::Corrupt(format!("unexpected stream reply: {what}"))
}

fn items(v: Value) -> Result<Vec<Value>, EngineError> {
    match v {
        Value::Array(a) | Value::Set(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        Value::Map(m) => Ok(m.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        _ => Err(corrupt("expected an array")),
    }
}

fn string(v: Value) -> Result<String, EngineError> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).map_err(|_| corrupt("non-UTF-8 name")),
        Value::SimpleString(s) => Ok(s),
        _ => Err(corrupt("expected a string")),
    }
}

fn bytes(v: Value) -> Result<Vec<u8>, EngineError> {
    match v {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Int(i) => Ok(i.to_string().into_bytes()),
        _ => Err(corrupt("expected a value")),
    }
}

/// Decodes a list of entries (`XRANGE`, or one stream of `XREADGROUP`).
pub fn entries(v: Value) -> Result<Vec<Entry>, EngineError> {
    items(v)?.into_iter().map(entry).collect()
}

fn entry(v: Value) -> Result<Entry, EngineError> {
    let mut it = items(v)?.into_iter();
    let id = string(it.next().ok_or_else(|| corrupt("entry without id"))?)?;
    let fields = match it.next() {
        None | Some(Value::Nil) => None,
        Some(list) => {
            let flat = items(list)?;
            let mut out = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((string(k)?, bytes(v)?));
            }
            Some(out)
        }
    };
    Ok(Entry { id, fields })
}

/// Decodes an `XREADGROUP` reply for one stream (nil when it timed out).
pub fn read_group(v: Value) -> Result<Vec<Entry>, EngineError> {
    let streams = items(v)?;
    let mut out = Vec::new();
    let mut it = streams.into_iter().peekable();
    while let Some(s) = it.next() {
        // RESP2: [[key, entries], ...]; RESP3 map flattened: key, entries, ...
        let list = match s {
            Value::Array(pair) => pair.into_iter().nth(1).unwrap_or(Value::Nil),
            _ => it.next().unwrap_or(Value::Nil),
        };
        out.extend(entries(list)?);
    }
    Ok(out)
}

/// Decodes an `XAUTOCLAIM` reply: the next cursor and the claimed entries
/// (pending entries that no longer exist are dropped from the pending list by
/// Redis and not reported).
pub fn autoclaim(v: Value) -> Result<(String, Vec<Entry>), EngineError> {
    let mut it = items(v)?.into_iter();
    let next = string(it.next().ok_or_else(|| corrupt("no cursor"))?)?;
    Ok((next, entries(it.next().unwrap_or(Value::Nil))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn decodes_entries_in_order() {
        let v = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("b"), bulk("2"), bulk("a"), bulk("1")]),
            ]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
        ]);
        let e = entries(v).expect("decodes");
        assert_eq!(e[0].id, "1-0");
        assert_eq!(e[0].get("a"), Some(&b"1"[..]));
        assert_eq!(e[0].fields.as_ref().map(|f| f[0].0.as_str()), Some("b"));
        assert_eq!(e[1].fields, None);
    }
}
