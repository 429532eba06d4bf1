//! Event times: wall clock, RFC 3339 UTC with microseconds.
use std::{
    cell::Cell,
    time::{Duration, UNIX_EPOCH},
};

use serde::{Serialize, Serializer};

/// Wall-clock time, nanoseconds since the Unix epoch; serialised as RFC 3339 UTC with
/// microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Timestamp(pub u64);

/// `2025-11-24T16:00:00.123456Z`.
pub(crate) const RFC3339_MICROS_LEN: usize = 27;
/// Its date and time, `2025-11-24T16:00:00`.
const RFC3339_SECONDS_LEN: usize = 19;

/// `00` to `99` in ASCII.
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

thread_local! {
    /// The date and time of the last second formatted: events come in bursts within a
    /// second, and only the microseconds change between them.
    static LAST_SECOND: Cell<(u64, [u8; RFC3339_SECONDS_LEN])> =
        const { Cell::new((u64::MAX, [0; RFC3339_SECONDS_LEN])) };
}

impl Timestamp {
    pub(crate) fn rfc3339(&self) -> String {
        self.rfc3339_str(&mut [0; RFC3339_MICROS_LEN]).to_owned()
    }

    /// The text of [`Timestamp::rfc3339`], made in `buf`.
    fn rfc3339_str<'a>(&self, buf: &'a mut [u8; RFC3339_MICROS_LEN]) -> &'a str {
        self.rfc3339_ascii(buf);
        std::str::from_utf8(buf).expect("ASCII digits and separators")
    }

    /// The text of [`Timestamp::rfc3339`] (what humantime's `format_rfc3339_micros`
    /// writes) as ASCII, into `buf`.
    pub(crate) fn rfc3339_ascii(&self, buf: &mut [u8; RFC3339_MICROS_LEN]) {
        let secs = self.0 / 1_000_000_000;
        let micros = (self.0 % 1_000_000_000 / 1_000) as u32;
        let date_time = LAST_SECOND.with(|last| {
            let (cached, text) = last.get();
            if cached == secs {
                return text;
            }
            let mut text = [0; RFC3339_SECONDS_LEN];
            let full = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
                .to_string();
            // Always `YYYY-MM-DDTHH:MM:SSZ`: u64 nanoseconds end in the year 2554.
            text.copy_from_slice(&full.as_bytes()[..RFC3339_SECONDS_LEN]);
            last.set((secs, text));
            text
        });
        buf[..RFC3339_SECONDS_LEN].copy_from_slice(&date_time);
        buf[RFC3339_SECONDS_LEN] = b'.';
        // Two digits at a time (three divisions instead of six).
        let digits = &mut buf[RFC3339_SECONDS_LEN + 1..RFC3339_MICROS_LEN - 1];
        let (high, rest) = (micros / 10_000, micros % 10_000);
        digits[..2].copy_from_slice(&DIGIT_PAIRS[high as usize % 100]);
        digits[2..4].copy_from_slice(&DIGIT_PAIRS[(rest / 100) as usize]);
        digits[4..].copy_from_slice(&DIGIT_PAIRS[(rest % 100) as usize]);
        buf[RFC3339_MICROS_LEN - 1] = b'Z';
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.rfc3339_str(&mut [0; RFC3339_MICROS_LEN]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_formatted_as_humantime_does() {
        let humantime = |ns: u64| {
            humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
        };
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut cases = vec![
            0,
            999,
            1_000,
            999_999_999,
            1_000_000_000,
            951_782_400_000_000_000, // 2000-02-29
            1_764_000_000_123_456_789,
            1_764_000_000_999_999_999,
            1_764_000_001_000_000_000,
            u64::MAX,
        ];
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            cases.push(seed);
            // Neighbours in the same second and across it (the cached date and time).
            cases.push(seed.wrapping_add(seed % 1_000_000_000));
            cases.push(seed.wrapping_sub(1_000_000_000));
        }
        for ns in cases {
            let t = Timestamp(ns);
            assert_eq!(t.rfc3339(), humantime(ns), "{ns}");
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", humantime(ns)),
                "{ns}"
            );
        }
    }
}
