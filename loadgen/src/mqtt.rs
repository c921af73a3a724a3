//! The same scenarios spoken as MQTT 3.1.1 at QoS 1, to measure a broker
//! (Mosquitto) side by side with OurChat: each user is a client `lg<i>`
//! subscribed to its own topic `u/<i>` (p2p) or its group's `g/<n>`; a send
//! is a PUBLISH to the peer's (or group's) topic, acked by the broker's
//! PUBACK; a delivery is a PUBLISH arriving, answered with a PUBACK (as
//! OurChat clients answer a push with a DeliveryAck). The payload carries
//! the scheduled send time, the sender and its send counter, so latency,
//! duplicates and order are judged as for OurChat.
//!
//! The codec is the handful of packets this needs, without I/O, with unit
//! tests; the driver mirrors `Conn::drive`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::time::Instant;

use super::{due_sends, follow_phase, unix_ns, Conn, Next, Phase, Scenario, Session, XorShift};

const CONNECT: u8 = 0x10;
const CONNACK: u8 = 0x20;
const PUBLISH: u8 = 0x30;
const PUBACK: u8 = 0x40;
const SUBSCRIBE: u8 = 0x82;
const SUBACK: u8 = 0x90;
const PINGREQ: u8 = 0xC0;

/// A packet the loadgen reads.
#[derive(Debug, PartialEq)]
pub(crate) enum Packet {
    ConnAck { code: u8 },
    SubAck,
    Publish { packet_id: u16, payload: Vec<u8> },
    PubAck { packet_id: u16 },
    Other,
}

fn put_len(mut len: usize, out: &mut BytesMut) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

fn put_str(text: &[u8], out: &mut BytesMut) {
    out.put_u16(text.len() as u16);
    out.put_slice(text);
}

/// CONNECT with a clean session and `keep_alive` seconds.
pub(crate) fn connect(client_id: &str, keep_alive: u16, out: &mut BytesMut) {
    out.put_u8(CONNECT);
    put_len(10 + 2 + client_id.len(), out);
    put_str(b"MQTT", out);
    out.put_u8(4); // 3.1.1
    out.put_u8(0x02); // clean session
    out.put_u16(keep_alive);
    put_str(client_id.as_bytes(), out);
}

/// SUBSCRIBE to one topic at QoS 1.
pub(crate) fn subscribe(packet_id: u16, topic: &str, out: &mut BytesMut) {
    out.put_u8(SUBSCRIBE);
    put_len(2 + 2 + topic.len() + 1, out);
    out.put_u16(packet_id);
    put_str(topic.as_bytes(), out);
    out.put_u8(1);
}

/// PUBLISH at QoS 1.
pub(crate) fn publish(packet_id: u16, topic: &str, payload: &[u8], out: &mut BytesMut) {
    out.put_u8(PUBLISH | 0x02);
    put_len(2 + topic.len() + 2 + payload.len(), out);
    put_str(topic.as_bytes(), out);
    out.put_u16(packet_id);
    out.put_slice(payload);
}

/// PUBACK of a received PUBLISH.
pub(crate) fn puback(packet_id: u16, out: &mut BytesMut) {
    out.put_u8(PUBACK);
    out.put_u8(2);
    out.put_u16(packet_id);
}

/// PINGREQ (the keep-alive).
pub(crate) fn pingreq(out: &mut BytesMut) {
    out.put_u8(PINGREQ);
    out.put_u8(0);
}

/// The next whole packet in `buf` (consumed), `Ok(None)` when more bytes
/// are needed, `Err` on what is not MQTT.
pub(crate) fn decode(buf: &mut BytesMut) -> Result<Option<Packet>, &'static str> {
    let mut len = 0usize;
    let mut header = 1;
    loop {
        let Some(&byte) = buf.get(header) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * (header - 1));
        header += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header > 4 {
            return Err("remaining length over 4 bytes");
        }
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(header);
    let mut body = buf.split_to(len);
    let packet = match first & 0xf0 {
        CONNACK if len == 2 => Packet::ConnAck { code: body[1] },
        SUBACK => Packet::SubAck,
        PUBACK if len == 2 => Packet::PubAck {
            packet_id: body.get_u16(),
        },
        PUBLISH => {
            let qos = (first >> 1) & 3;
            if body.len() < 2 {
                return Err("PUBLISH without a topic");
            }
            let topic = body.get_u16() as usize;
            if body.len() < topic + if qos > 0 { 2 } else { 0 } {
                return Err("PUBLISH cut short");
            }
            body.advance(topic);
            let packet_id = if qos > 0 { body.get_u16() } else { 0 };
            Packet::Publish {
                packet_id,
                payload: body.to_vec(),
            }
        }
        _ => Packet::Other,
    };
    Ok(Some(packet))
}

impl Session {
    async fn next_packet(&mut self) -> Option<Packet> {
        self.next_decoded(|buf| decode(buf).map_err(drop)).await
    }
}

impl Conn {
    /// The topic this user reads: its own, or its group's.
    fn mqtt_topic(&self) -> String {
        match self
            .plan
            .groups
            .as_ref()
            .and_then(|g| g.of(self.user.index))
        {
            Some((group, _)) => format!("g/{group}"),
            None => format!("u/{}", self.user.index),
        }
    }

    /// Connects, sends CONNECT and SUBSCRIBE, waits for both answers.
    pub(super) async fn mqtt_connect(&self) -> Option<Session> {
        let mut session = self.open_stream().await?;
        let mut out = BytesMut::new();
        let keep_alive = (self.plan.heartbeat.as_secs() * 2).min(u64::from(u16::MAX)) as u16;
        connect(&format!("lg{}", self.user.index), keep_alive, &mut out);
        subscribe(1, &self.mqtt_topic(), &mut out);
        session.write(&out).await.ok()?;
        let wait = Duration::from_secs(30);
        match tokio::time::timeout(wait, session.next_packet())
            .await
            .ok()??
        {
            Packet::ConnAck { code: 0 } => {}
            _ => return None,
        }
        match tokio::time::timeout(wait, session.next_packet())
            .await
            .ok()??
        {
            Packet::SubAck => Some(session),
            _ => None,
        }
    }

    /// `Conn::drive` over MQTT.
    pub(super) async fn mqtt_drive(&self, session: &mut Session) -> Next {
        let plan = &self.plan;
        let counters = &self.shared.counters;
        let mut phase_rx = self.shared.phase.clone();
        let mut phase = *phase_rx.borrow_and_update();
        let mut rng = XorShift::new((self.user.index as u64 + 1) ^ unix_ns());
        let mut next_heartbeat = Instant::now() + plan.heartbeat;
        let period = plan.send_period;
        let mut next_send = Instant::now() + period.mul_f64(rng.unit());
        let mut packet_id: u16 = 1;
        let mut sent: u64 = 0;
        let mut awaiting_ack: HashMap<u16, u64> = HashMap::new();
        // Sender -> its last counter seen: what order is judged by.
        let mut seen: HashMap<u64, i64> = HashMap::new();
        let group = plan.groups.as_ref().and_then(|g| g.of(self.user.index));
        let me = self.user.index as u64;
        let mut out = BytesMut::new();
        loop {
            let sending = matches!(plan.scenario, Scenario::P2p | Scenario::Group)
                && matches!(phase, Phase::Go(_));
            tokio::select! {
                packet = session.next_packet() => {
                    let Some(packet) = packet else { return Next::Closed };
                    match packet {
                        Packet::PubAck { packet_id } => {
                            if let Some(scheduled) = awaiting_ack.remove(&packet_id) {
                                self.count_ack(scheduled);
                            }
                        }
                        Packet::Publish { packet_id, payload } => {
                            out.clear();
                            puback(packet_id, &mut out);
                            if session.write(&out).await.is_err() {
                                return Next::Closed;
                            }
                            let Some((scheduled, sender, counter)) = parse_payload(&payload) else {
                                continue;
                            };
                            // MQTT 3.1.1 hands a group send back to its sender.
                            if sender == me {
                                continue;
                            }
                            let mark = seen.entry(sender).or_insert(0);
                            self.count_delivery(mark, counter as i64, Some(scheduled));
                        }
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(next_send), if sending => {
                    out.clear();
                    for scheduled in due_sends(&mut next_send, period, Instant::now()) {
                        let topic = match group {
                            Some((group, _)) => format!("g/{group}"),
                            None => format!("u/{}", self.pick_peer_index(&mut rng)),
                        };
                        packet_id = packet_id.wrapping_add(1).max(2);
                        awaiting_ack.insert(packet_id, scheduled);
                        sent += 1;
                        let payload = format!("{scheduled} {me} {sent}");
                        publish(packet_id, &topic, payload.as_bytes(), &mut out);
                        counters.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    if session.write(&out).await.is_err() {
                        return Next::Closed;
                    }
                }
                _ = tokio::time::sleep_until(next_heartbeat) => {
                    next_heartbeat += plan.heartbeat;
                    out.clear();
                    pingreq(&mut out);
                    if session.write(&out).await.is_err() {
                        return Next::Closed;
                    }
                }
                changed = phase_rx.changed() => {
                    let new = changed.ok().map(|()| *phase_rx.borrow_and_update());
                    let step = (plan.scenario, new);
                    if let Some(next) = follow_phase(step, &mut phase, &mut next_send, period, &mut rng) {
                        return next;
                    }
                }
            }
        }
    }
}

/// "scheduled_ns sender counter".
fn parse_payload(payload: &[u8]) -> Option<(u64, u64, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut fields = text.split(' ').map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??, fields.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_read_back_and_partial_input_waits() {
        let mut out = BytesMut::new();
        publish(7, "u/12", b"123 4 5", &mut out);
        puback(9, &mut out);
        out.extend_from_slice(&[CONNACK, 2, 0, 0, SUBACK, 3, 0, 1, 1]);
        let whole = out.clone();
        // Byte by byte: nothing until a packet is whole.
        let mut fed = BytesMut::new();
        let mut packets = Vec::new();
        for byte in whole.iter() {
            fed.put_u8(*byte);
            while let Some(packet) = decode(&mut fed).unwrap() {
                packets.push(packet);
            }
        }
        assert_eq!(
            packets,
            vec![
                Packet::Publish {
                    packet_id: 7,
                    payload: b"123 4 5".to_vec()
                },
                Packet::PubAck { packet_id: 9 },
                Packet::ConnAck { code: 0 },
                Packet::SubAck,
            ]
        );
        assert_eq!(parse_payload(b"123 4 5"), Some((123, 4, 5)));
        assert_eq!(parse_payload(b"x"), None);
        // A long payload takes a two-byte remaining length.
        let mut big = BytesMut::new();
        publish(1, "t", &[b'a'; 300], &mut big);
        assert_eq!(big[1] & 0x80, 0x80);
        assert!(matches!(
            decode(&mut big).unwrap(),
            Some(Packet::Publish { payload, .. }) if payload.len() == 300
        ));
        let mut connect_bytes = BytesMut::new();
        connect("lg1", 60, &mut connect_bytes);
        assert_eq!(connect_bytes[1] as usize, connect_bytes.len() - 2);
    }
}
