//! Live messages (`lua/lib.lua` writes them; [`encode`] writes the same
//! where the engine announces itself): an event announcement names its
//! targets (player, sequence number) and carries the event once, whether it
//! came on a player's channel (one target) or a room's (every member); a
//! membership notice (`+<room>` joined, `-<room>` left) comes on the
//! player's own channel. Anyone who may publish on the broker's Redis can
//! send anything on a live channel, so a message that does not decode is an
//! error, never a panic; the event's body is decoded only if a target has a
//! connection on this node.
//!
//! Owns: the framing of live messages and handing events to the
//! [`LiveSink`]. Must not touch: connections, subscriptions (a notice is
//! handed back to the supervisor).

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::engine::LiveSink;
use crate::protocol::{check_id, EventBody};

/// A membership change announced on a player's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Joined(String),
    Left(String),
}

/// The notice text for `room` (`+room` / `-room`).
pub fn notice(joined: bool, room: &str) -> String {
    format!("{}{room}", if joined { '+' } else { '-' })
}

/// Decodes a live message: an event announcement is handed to the local
/// connections of its targets (`Ok(None)`); a membership notice is returned.
pub fn route(hub: &dyn LiveSink, payload: &[u8]) -> Result<Option<Notice>, &'static str> {
    if let Some((&sign, room)) = payload.split_first() {
        if sign == b'+' || sign == b'-' {
            let room = text(room)?;
            check_id("room", room).map_err(|_| "not a room id")?;
            let room = room.to_string();
            return Ok(Some(if sign == b'+' {
                Notice::Joined(room)
            } else {
                Notice::Left(room)
            }));
        }
    }
    let mut rest = payload;
    let n: usize = number(frame(&mut rest)?)?;
    // Each target takes at least 4 bytes (`1:a1:1`): a count beyond what is
    // there is refused before anything is allocated for it.
    if n > rest.len() / 4 {
        return Err("more targets than bytes");
    }
    let mut targets = Vec::with_capacity(n);
    for _ in 0..n {
        let player = text(frame(&mut rest)?)?;
        let seq: u64 = number(frame(&mut rest)?)?;
        targets.push((player, seq));
    }
    if !hub.wants_any(&targets) {
        return Ok(None);
    }
    let body = Arc::new(body(&mut rest)?);
    hub.deliver_all(&targets, &body);
    Ok(None)
}

/// The announcement of `body` for `targets`, as `lua/lib.lua` `announce`
/// writes it for a room channel (the engine announces a room publish
/// itself where the script cannot: on a cluster the room's channel lives
/// on another slot than the members' keys).
pub fn encode(targets: &[(&str, u64)], body: &EventBody) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + 24 * targets.len() + body.data.get().len());
    let mut put = |b: &[u8]| {
        out.extend_from_slice(b.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(b);
    };
    put(targets.len().to_string().as_bytes());
    for (p, seq) in targets {
        put(p.as_bytes());
        put(seq.to_string().as_bytes());
    }
    put(super::super::flags_of(body).as_bytes());
    put(body.event_type.as_bytes());
    put(body.timestamp.as_bytes());
    put(body.room_id.as_deref().unwrap_or("").as_bytes());
    put(body.id.as_deref().unwrap_or("").as_bytes());
    put(body.data.get().as_bytes());
    out
}

/// `frame(flags) frame(event_type) frame(timestamp) frame(room_id) frame(id) frame(data)`.
fn body(rest: &mut &[u8]) -> Result<EventBody, &'static str> {
    let flags = frame(rest)?;
    let event_type = text(frame(rest)?)?;
    let timestamp = text(frame(rest)?)?;
    let room_id = text(frame(rest)?)?;
    let id = text(frame(rest)?)?;
    let data = text(frame(rest)?)?;
    Ok(EventBody::new(
        event_type,
        timestamp,
        RawValue::from_string(data.to_string()).map_err(|_| "data is not JSON")?,
        flags.contains(&b'r').then(|| room_id.to_string()),
        flags.contains(&b'i').then(|| id.to_string()),
    ))
}

/// Takes one `<len>:<bytes>` frame off the front of `rest`. The length is
/// checked against what is there before it is used, whatever its value.
fn frame<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], &'static str> {
    // A length has at most 20 digits: look no further for the colon.
    let colon = rest
        .iter()
        .take(21)
        .position(|&b| b == b':')
        .ok_or("missing frame")?;
    let len: usize = number(&rest[..colon])?;
    let body = &rest[colon + 1..];
    if len > body.len() {
        return Err("short frame");
    }
    let (out, tail) = body.split_at(len);
    *rest = tail;
    Ok(out)
}

fn text(b: &[u8]) -> Result<&str, &'static str> {
    std::str::from_utf8(b).map_err(|_| "not UTF-8")
}

fn number<T: std::str::FromStr>(b: &[u8]) -> Result<T, &'static str> {
    text(b)?.parse().map_err(|_| "not a number")
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use crate::hub::{Hub, Live};
    use crate::protocol::Event;

    use super::*;

    /// Records what the engine hands over, for one followed player.
    struct Sink(Mutex<Vec<(String, Event)>>);

    impl LiveSink for Sink {
        fn wants_any(&self, targets: &[(&str, u64)]) -> bool {
            targets.iter().any(|(p, _)| *p == "a")
        }
        fn deliver(&self, player: &str, event: &Event) {
            let mut got = self.0.lock().unwrap_or_else(|e| e.into_inner());
            got.push((player.to_string(), event.clone()));
        }
        fn nudge_all(&self) {}
        fn nudge(&self, _: &str) {}
    }

    #[test]
    fn routes_a_fan_out() {
        let sink = Sink(Mutex::new(Vec::new()));
        let payload = b"1:21:a1:71:b2:120:4:chat24:2026-11-23T10:30:00.123Z0:0:7:{\"x\":1}";
        route(&sink, payload).expect("decodes");
        let got = sink.0.into_inner().unwrap_or_default();
        let (player, ev) = &got[0];
        assert_eq!((player.as_str(), ev.sequence_number), ("a", 7));
        assert_eq!(ev.body.event_type, "chat");
        assert_eq!(ev.body.data.get(), r#"{"x":1}"#);
        assert_eq!(ev.body.room_id, None);
        assert_eq!(got[1].0, "b");
    }

    #[test]
    fn membership_notices() {
        let sink = Sink(Mutex::new(Vec::new()));
        assert_eq!(
            route(&sink, notice(true, "hall").as_bytes()),
            Ok(Some(Notice::Joined("hall".into())))
        );
        assert_eq!(
            route(&sink, notice(false, "hall").as_bytes()),
            Ok(Some(Notice::Left("hall".into())))
        );
        // Not a room id: refused, nothing followed.
        assert!(route(&sink, b"+").is_err());
        assert!(route(&sink, b"-a b").is_err());
        assert!(route(&sink, "+caf\u{e9}".as_bytes()).is_err());
    }

    /// A room announcement the engine encodes (cluster) decodes like the
    /// script's: one message, every member at its own sequence number.
    #[test]
    fn engine_encoded_room_announcements_route() {
        let sink = Sink(Mutex::new(Vec::new()));
        let data = RawValue::from_string(r#"{"x":"y"}"#.into()).expect("json");
        let body = EventBody::new(
            "say",
            "2026-11-23T10:30:00.123Z",
            data,
            Some("hall".into()),
            Some("k1".into()),
        );
        let payload = encode(&[("b", 4), ("a", 9), ("c", 1)], &body);
        assert_eq!(route(&sink, &payload), Ok(None));
        let got = sink.0.into_inner().unwrap_or_default();
        let seqs: Vec<(&str, u64)> = got
            .iter()
            .map(|(p, ev)| (p.as_str(), ev.sequence_number))
            .collect();
        assert_eq!(seqs, [("b", 4), ("a", 9), ("c", 1)]);
        let ev = &got[1].1;
        assert!(Arc::ptr_eq(&ev.body, &got[0].1.body), "one body for all");
        assert_eq!(ev.body.room_id.as_deref(), Some("hall"));
        assert_eq!(ev.body.id.as_deref(), Some("k1"));
        assert_eq!(ev.body.data.get(), r#"{"x":"y"}"#);
    }

    /// A count of targets beyond what the message holds is refused before
    /// anything is allocated for it.
    #[test]
    fn absurd_target_counts_are_errors() {
        let sink = Sink(Mutex::new(Vec::new()));
        assert!(route(&sink, b"20:18446744073709551615").is_err());
        assert!(route(&sink, b"7:1000000").is_err());
    }

    #[test]
    fn rejects_truncation() {
        let sink = Sink(Mutex::new(Vec::new()));
        assert!(route(&sink, b"1:11:a1:72:r").is_err());
        assert!(route(&sink, b"9").is_err());
    }

    /// A length field of u64::MAX (or any length past the end) is an error,
    /// not an overflow: before, `colon + 1 + len` panicked in the listener.
    #[test]
    fn huge_lengths_are_errors() {
        let hub = Hub::new(8);
        let _a = hub.subscribe("a");
        for p in [
            &b"18446744073709551615:x"[..],
            b"1:118446744073709551615:a",
            b"1:11:a1:718446744073709551614:",
            b"99999999999999999999999:",
            b"1:11:a1:71:r18446744073709551615:chat",
        ] {
            assert!(route(&*hub, p).is_err(), "{:?}", String::from_utf8_lossy(p));
        }
    }

    fn frame_of(b: &[u8]) -> Vec<u8> {
        let mut out = format!("{}:", b.len()).into_bytes();
        out.extend_from_slice(b);
        out
    }

    proptest::proptest! {
        /// Whatever arrives on the channel: decoded or an error, never a panic.
        #[test]
        fn live_messages_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let hub = Hub::new(8);
            let _a = hub.subscribe("a");
            let _ = route(&*hub, &bytes);
        }

        /// What `lua/lib.lua` announces (the same framing) decodes to the event, for each target.
        #[test]
        fn announcements_round_trip(
            seqs in proptest::collection::vec(1u64..u64::MAX, 1..5),
            event_type in "[a-z_]{1,20}",
            data in "[1-9][0-9]{0,9}",
            room in proptest::option::of("[a-z]{1,8}"),
        ) {
            let hub = Hub::new(64);
            let mut subs: Vec<_> = (0..seqs.len()).map(|i| hub.subscribe(&format!("p{i}"))).collect();
            let mut msg = frame_of(seqs.len().to_string().as_bytes());
            for (i, s) in seqs.iter().enumerate() {
                msg.extend(frame_of(format!("p{i}").as_bytes()));
                msg.extend(frame_of(s.to_string().as_bytes()));
            }
            let flags = if room.is_some() { "r" } else { "" };
            for f in [flags, &event_type, "2026-11-23T10:30:00.123Z", room.as_deref().unwrap_or(""), "", &data] {
                msg.extend(frame_of(f.as_bytes()));
            }
            route(&*hub, &msg).expect("decodes");
            for (sub, s) in subs.iter_mut().zip(&seqs) {
                match sub.rx.try_recv() {
                    Ok(Live::Event(ev)) => {
                        proptest::prop_assert_eq!(ev.sequence_number, *s);
                        proptest::prop_assert_eq!(&ev.body.event_type, &event_type);
                        proptest::prop_assert_eq!(ev.body.data.get(), data.as_str());
                        proptest::prop_assert_eq!(&ev.body.room_id, &room);
                    }
                    other => proptest::prop_assert!(false, "expected an event, got {:?}", other),
                }
            }
        }
    }
}
