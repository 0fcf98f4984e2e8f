//! Fuzz tests of the decoders in this crate that read bytes from outside: the cloud–edge frames,
//! the stream frames, SPDY (kubectl's fallback streaming protocol, header compression included),
//! CRI log records, quantities, cron schedules and twin values. Each must answer every input
//! with a value or an error, never a panic or a hang; where a decoder has an encoder, what it
//! reads must encode and read back the same. See `wedge_testkit_fuzz` for how they run.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};
use wedge_testkit_fuzz::Mutation;

use crate::protocol::envelope::Envelope;
use crate::protocol::stream::StreamFrame;
use crate::spdy;

const ENVELOPES: &[&str] = &[
    r#"{"v":1,"id":7,"timestamp":1764950400000,"resourceVersion":"42","operation":"update","resource":{"kind":"pod","namespace":"default","name":"web","uid":"5f0c"},"payload":{"metadata":{"name":"web","labels":{"app":"x"}},"spec":{"containers":[{"name":"c","image":"i"}]}}}"#,
    r#"{"v":1,"id":8,"parent":7,"timestamp":1764950400001,"operation":"ack"}"#,
    r#"{"v":1,"id":9,"parent":3,"timestamp":1764950400002,"operation":"error","payload":{"reason":"Refused","message":"no"}}"#,
    r#"{"v":1,"id":1,"timestamp":0,"operation":"hello","payload":{"node":"edge-a","lastSeen":{"pod/default/web":"41"}}}"#,
];

#[test]
fn envelopes_decode_or_are_refused() {
    for seed in ENVELOPES {
        assert!(Envelope::decode(seed.as_bytes()).is_ok(), "{seed}");
    }
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let bytes = m.apply_str(ENVELOPES).into_bytes();
        if let Ok(frame) = Envelope::decode(&bytes) {
            assert_eq!(Envelope::decode(&frame.encode()), Ok(frame));
        }
    });
}

fn stream_seeds() -> Vec<Vec<u8>> {
    let open = |json: &str| {
        let mut frame = vec![crate::protocol::stream::OPEN, 0, 0, 0, 3];
        frame.extend_from_slice(json.as_bytes());
        frame
    };
    vec![
        open(r#"{"kind":"exec","namespace":"d","pod":"p","container":"c","command":["sh","-c","id"],"stdin":true,"stdout":true,"tty":true}"#),
        open(r#"{"kind":"logs","namespace":"d","pod":"p","container":"c","follow":true,"tailLines":10,"sinceTime":"2026-12-05T00:00:00Z"}"#),
        open(r#"{"kind":"portForward","namespace":"d","pod":"p","port":8080}"#),
        vec![crate::protocol::stream::DATA, 0, 0, 0, 3, 1, b'h', b'i'],
        vec![crate::protocol::stream::CREDIT, 0, 0, 0, 3, 0, 4, 0, 0],
        vec![crate::protocol::stream::EOF, 0, 0, 0, 3, 0],
        [&[crate::protocol::stream::CLOSE, 0, 0, 0, 3][..], br#"{"status":"Failure","message":"command terminated with non-zero exit code","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"2"}]}}"#].concat(),
    ]
}

#[test]
fn stream_frames_decode_or_are_refused() {
    let seeds = stream_seeds();
    for seed in &seeds {
        assert!(StreamFrame::decode(seed).is_ok(), "{seed:?}");
    }
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let bytes = m.apply(&seeds);
        let plain = StreamFrame::decode(&bytes);
        let shared = StreamFrame::decode_shared(&bytes::Bytes::from(bytes));
        assert_eq!(plain, shared);
        if let Ok(frame) = plain {
            assert_eq!(StreamFrame::decode(&frame.encode()), Ok(frame));
        }
    });
}

fn spdy_seeds() -> Vec<Vec<u8>> {
    let mut headers = spdy::HeaderEncoder::default();
    let mut out = BytesMut::new();
    let mut codec = spdy::Codec;
    let frames = [
        spdy::Frame::SynStream {
            stream: 1,
            associated: 0,
            priority: 0,
            fin: false,
            unidirectional: false,
            headers: headers
                .block(&[
                    ("streamtype", "error"),
                    ("port", "8080"),
                    ("requestid", "0"),
                ])
                .unwrap_or_default(),
        },
        spdy::Frame::SynReply {
            stream: 1,
            fin: false,
            headers: headers.block(&[("x", "a\0b")]).unwrap_or_default(),
        },
        spdy::Frame::Data {
            stream: 1,
            fin: true,
            data: bytes::Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
        },
        spdy::Frame::Settings {
            clear: false,
            settings: vec![spdy::Setting {
                id: spdy::SETTINGS_INITIAL_WINDOW_SIZE,
                flags: 0,
                value: 65536,
            }],
        },
        spdy::Frame::WindowUpdate {
            stream: 1,
            delta: 4096,
        },
        spdy::Frame::Ping { id: 1 },
        spdy::Frame::GoAway {
            last_good: 1,
            status: 0,
        },
    ];
    // One seed holds every frame in order (header blocks share one zlib stream); the others
    // are single frames.
    let mut seeds = Vec::new();
    for frame in frames {
        let mut one = BytesMut::new();
        if codec.encode(frame.clone(), &mut one).is_ok() {
            seeds.push(one.to_vec());
        }
        let _ = codec.encode(frame, &mut out);
    }
    seeds.push(out.to_vec());
    seeds
}

#[test]
fn spdy_frames_and_header_blocks_decode_or_are_refused() {
    let seeds = spdy_seeds();
    assert_eq!(seeds.len(), 8, "every seed frame encodes");
    let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let mut input = BytesMut::from(&m.apply(&seeds)[..]);
        let mut codec = spdy::Codec;
        let mut headers = spdy::HeaderDecoder::default();
        // Read frames as a connection would, decompressing every header block in order.
        while let Ok(Some(frame)) = codec.decode_eof(&mut input) {
            if let spdy::Frame::SynStream { headers: block, .. }
            | spdy::Frame::SynReply { headers: block, .. }
            | spdy::Frame::Headers { headers: block, .. } = &frame
                && let Ok(pairs) = headers.block(block)
            {
                let size: usize = pairs.iter().map(|(n, v)| n.len() + v.len()).sum();
                assert!(size <= spdy::MAX_HEADER_BLOCK);
            }
            let mut again = BytesMut::new();
            if codec.encode(frame.clone(), &mut again).is_ok() {
                assert_eq!(codec.decode_eof(&mut again).ok().flatten(), Some(frame));
            }
        }
    });
}

#[test]
fn cri_log_records_parse_or_are_refused() {
    const RECORDS: &[&str] = &[
        "2026-12-05T10:00:00.123456789Z stdout F hello world",
        "2026-12-05T10:00:00Z stderr P part of a line",
        "2026-12-05T10:00:00.1+01:00 stdout F ",
    ];
    for record in RECORDS {
        assert!(
            crate::crilog::parse_record(record.as_bytes()).is_ok(),
            "{record}"
        );
    }
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let line = m.apply_str(RECORDS);
        if let Ok(record) = crate::crilog::parse_record(line.as_bytes()) {
            let mut out = Vec::new();
            crate::crilog::format_record(
                &mut out,
                record.time,
                record.stream,
                record.tag,
                record.content,
            );
            let again = out.strip_suffix(b"\n").unwrap_or(&out);
            let reread =
                crate::crilog::parse_record(again).map(|r| (r.stream, r.tag, r.content.to_vec()));
            assert_eq!(
                reread,
                Ok((record.stream, record.tag, record.content.to_vec()))
            );
        }
    });
}

#[test]
fn quantities_cron_schedules_and_twin_values_parse_or_are_refused() {
    const TEXT: &[&str] = &[
        "128Mi",
        "1.5Gi",
        "250m",
        "2",
        "1e3",
        "0.1",
        "*/5 * * * *",
        "CRON_TZ=Europe/Berlin 0 9 * * 1-5",
        "@hourly",
        "0 0 29 2 *",
        "true",
        "-17",
        "3.25",
        "30s",
        "1h30m",
    ];
    bolero::check!().with_type::<Mutation>().for_each(|m| {
        let text = m.apply_str(TEXT);
        let _ = crate::quantity::parse_bytes(&text);
        let _ = crate::quantity::parse_millicores(&text);
        let _ = crate::quantity::parse_milli(&text);
        let _ = crate::cron::Schedule::parse(&text, jiff::tz::TimeZone::UTC);
        let _ = crate::grants::parse_interval(&text);
        for kind in ["int", "float", "double", "string", "boolean", "bytes"] {
            if let Some(kind) = crate::device::property_type(kind)
                && let Ok(value) = crate::device::parse_value(&text, kind)
            {
                let formatted = crate::device::format_value(&value);
                assert_eq!(
                    crate::device::parse_value(&formatted, kind).ok(),
                    Some(value)
                );
            }
        }
    });
}

#[test]
fn a_grant_covers_only_topics_it_matches() {
    const TOPICS: &[&str] = &[
        "$hw/events/device/thermo-1/twin/update",
        "$hw/events/device/+/twin/#",
        "apps/default/telemetry/readings",
        "apps/+/telemetry/#",
        "#",
        "+/+",
    ];
    bolero::check!()
        .with_type::<(Mutation, Mutation, Mutation)>()
        .for_each(|(outer, inner, topic)| {
            let (outer, inner, topic) = (
                outer.apply_str(TOPICS),
                inner.apply_str(TOPICS),
                topic.apply_str(TOPICS),
            );
            let valid = crate::topic::validate_filter(&outer).is_ok()
                && crate::topic::validate_filter(&inner).is_ok()
                && crate::topic::validate_name(&topic).is_ok();
            // A subscription inside a pod's grant never receives a topic outside it.
            if valid
                && crate::topic::filter_covers(&outer, &inner)
                && crate::topic::matches(&inner, &topic)
            {
                assert!(
                    crate::topic::matches(&outer, &topic),
                    "{outer} covers {inner} and {inner} matches {topic}"
                );
            }
        });
}
