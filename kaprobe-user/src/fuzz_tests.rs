//! Property tests: whatever the ring buffer holds (garbage, truncated or bit-flipped
//! records, well-formed records with nonsense in every field, in any order), decoding,
//! correlation, both output formats and the metrics never panic.
use std::collections::HashMap;

use kaprobe_common::*;
use proptest::prelude::*;

use crate::{
    bpf::decode::{RawEvent, decode, encode},
    cli::Format,
    correlate::{Clock, Correlator, Settings},
    event::Totals,
    sink::Output,
    sink::metrics::{AgentInfo, Metrics},
};

/// Size of the record of each kind the kernel sends.
fn record_size(k: u32) -> usize {
    match k {
        kind::KA_TIMER => size_of::<TimerRecord>(),
        kind::STATE => size_of::<StateRecord>(),
        kind::CLOSE => size_of::<CloseRecord>(),
        kind::RST_SENT => size_of::<ResetSentRecord>(),
        kind::RST_RECV => size_of::<ResetRecvRecord>(),
        kind::SK_ERROR => size_of::<ErrorRecord>(),
        _ => size_of::<Header>(),
    }
}

const KINDS: [u32; 6] = [
    kind::KA_TIMER,
    kind::STATE,
    kind::CLOSE,
    kind::RST_SENT,
    kind::RST_RECV,
    kind::SK_ERROR,
];

/// A record of a real kind whose other bytes are arbitrary, except that the socket is one
/// of a few (so that records meet in the correlator) and the time moves forward.
fn record() -> impl Strategy<Value = Vec<u8>> {
    (0..KINDS.len(), 0u64..4, 0u64..5_000_000_000, any::<bool>()).prop_flat_map(
        |(i, sk, dt, zero_sk)| {
            let k = KINDS[i];
            proptest::collection::vec(any::<u8>(), record_size(k)).prop_map(move |mut b| {
                b[..4].copy_from_slice(&k.to_ne_bytes());
                // ts_ns at offset 8 is filled in by the sequence; keep the delta here.
                b[8..16].copy_from_slice(&dt.to_ne_bytes());
                let sk = if zero_sk {
                    0
                } else {
                    0xffff_8880_0000_0000 + sk * 0x1000
                };
                b[16..24].copy_from_slice(&sk.to_ne_bytes());
                b
            })
        },
    )
}

fn correlator(max_connections: usize) -> Correlator {
    let mut reasons = HashMap::new();
    reasons.insert(1, "no_socket".to_owned());
    reasons.insert(15, "tcp_keepalive_timeout".to_owned());
    Correlator::new(Settings {
        clock: Clock {
            realtime_offset_ns: 1_700_000_000_000_000_000,
            hz: 250,
        },
        reset_reasons: reasons,
        max_connections,
        traced_since_ns: 0,
        nat_timeout_ms: 350_000,
    })
}

/// Runs records through correlation and both formats; returns the events made.
fn run(records: &[Vec<u8>], max_connections: usize) -> usize {
    let mut c = correlator(max_connections);
    let mut events = Vec::new();
    let mut now = 1_000_000_000u64;
    for bytes in records {
        let mut b = bytes.clone();
        if b.len() >= 16 {
            let dt = u64::from_ne_bytes(b[8..16].try_into().expect("8 bytes"));
            now = now.saturating_add(dt);
            b[8..16].copy_from_slice(&now.to_ne_bytes());
        }
        if let Ok(raw) = decode(&b) {
            c.handle(&raw, &mut events);
        }
        c.tick(now, &mut events);
    }
    c.flush(&mut events);
    let mut totals = Totals::default();
    let info = AgentInfo {
        version: "0",
        kernel: "fuzz",
        attach: "tp_btf",
        mode: "all",
        ring_buffer_bytes: 4096,
    };
    let metrics = Metrics::new(true, &info);
    for e in &events {
        metrics.observe(e);
    }
    assert!(metrics.render().ends_with("# EOF\n"));
    for format in [Format::Json, Format::Human] {
        let mut out = Output::new(Box::new(std::io::sink()), format);
        for e in &events {
            out.write(e).expect("write to a sink");
            totals.count(e);
        }
    }
    events.len()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decode_truncated_records_are_errors(rec in record(), cut in 0usize..400) {
        let cut = cut.min(rec.len());
        let short = &rec[..cut];
        if cut < rec.len() {
            prop_assert!(decode(short).is_err(), "{} of {} bytes decoded", cut, rec.len());
        } else {
            prop_assert!(decode(short).is_ok());
        }
    }

    #[test]
    fn decode_round_trips(rec in record()) {
        let raw = decode(&rec).expect("a whole record of a known kind");
        let again = match raw {
            RawEvent::Timer(r) => encode(&r),
            RawEvent::State(r) => encode(&r),
            RawEvent::Close(r) => encode(&r),
            RawEvent::ResetSent(r) => encode(&r),
            RawEvent::ResetRecv(r) => encode(&r),
            RawEvent::Error(r) => encode(&r),
        };
        prop_assert_eq!(again, rec);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn correlation_and_output_never_panic(records in proptest::collection::vec(record(), 0..60)) {
        run(&records, 1000);
        // A tiny table: evictions in the middle of sequences.
        run(&records, 2);
    }

    #[test]
    fn bit_flipped_sequences_never_panic(
        records in proptest::collection::vec(record(), 1..30),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0u8..8), 0..20),
    ) {
        let mut records = records;
        for (r, at, bit) in flips {
            let n = records.len();
            let rec = &mut records[r.index(n)];
            let i = at.index(rec.len());
            rec[i] ^= 1 << bit;
        }
        run(&records, 1000);
    }
}
