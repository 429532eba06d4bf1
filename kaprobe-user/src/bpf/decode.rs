//! The one place where raw ring-buffer records become typed values.
use kaprobe_common::{
    CloseRecord, ErrorRecord, Header, Record, ResetRecvRecord, ResetSentRecord, StateRecord,
    TimerRecord, Tuple, kind,
};
use thiserror::Error;

/// A record from the kernel, checked and copied out of the ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawEvent {
    Timer(TimerRecord),
    State(StateRecord),
    Close(CloseRecord),
    ResetSent(ResetSentRecord),
    ResetRecv(ResetRecvRecord),
    Error(ErrorRecord),
}

impl RawEvent {
    /// The record, whatever its kind.
    fn record(&self) -> &dyn Record {
        match self {
            RawEvent::Timer(r) => r,
            RawEvent::State(r) => r,
            RawEvent::Close(r) => r,
            RawEvent::ResetSent(r) => r,
            RawEvent::ResetRecv(r) => r,
            RawEvent::Error(r) => r,
        }
    }

    /// The connection the record is about.
    pub(crate) fn tuple(&self) -> &Tuple {
        self.record().tuple()
    }

    pub(crate) fn header(&self) -> &Header {
        self.record().header()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("record of {0} bytes is too short for a header")]
    NoHeader(usize),
    #[error("record kind {kind} needs {want} bytes, got {got}")]
    Truncated { kind: u32, want: usize, got: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

/// Marker for the plain-integer wire structs of `kaprobe-common`.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, made only of integers and integer arrays, so that
/// every bit pattern is a valid value.
pub unsafe trait Wire: Copy + 'static {}
// SAFETY: all of these are `#[repr(C)]` structs of integers with explicit padding
// (see the size assertions in kaprobe-common).
unsafe impl Wire for Header {}
// SAFETY: as above.
unsafe impl Wire for TimerRecord {}
// SAFETY: as above.
unsafe impl Wire for StateRecord {}
// SAFETY: as above.
unsafe impl Wire for CloseRecord {}
// SAFETY: as above.
unsafe impl Wire for ResetSentRecord {}
// SAFETY: as above.
unsafe impl Wire for ResetRecvRecord {}
// SAFETY: as above.
unsafe impl Wire for ErrorRecord {}

fn read<T: Wire>(buf: &[u8], kind: u32) -> Result<T, DecodeError> {
    let want = size_of::<T>();
    if buf.len() < want {
        return Err(DecodeError::Truncated {
            kind,
            want,
            got: buf.len(),
        });
    }
    // SAFETY: `buf` holds at least size_of::<T>() bytes (checked above), the read is
    // unaligned-safe, and `T: Wire` accepts any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record. Never panics, whatever the bytes.
pub(crate) fn decode(buf: &[u8]) -> Result<RawEvent, DecodeError> {
    if buf.len() < size_of::<Header>() {
        return Err(DecodeError::NoHeader(buf.len()));
    }
    let k = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    Ok(match k {
        kind::KA_TIMER => RawEvent::Timer(read(buf, k)?),
        kind::STATE => RawEvent::State(read(buf, k)?),
        kind::CLOSE => RawEvent::Close(read(buf, k)?),
        kind::RST_SENT => RawEvent::ResetSent(read(buf, k)?),
        kind::RST_RECV => RawEvent::ResetRecv(read(buf, k)?),
        kind::SK_ERROR => RawEvent::Error(read(buf, k)?),
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

/// The bytes of a wire struct, as the kernel would send them (for tests and benchmarks).
pub fn encode<T: Wire>(record: &T) -> Vec<u8> {
    // SAFETY: `T: Wire` has no implicit padding, so all size_of::<T>() bytes are
    // initialised and may be read as `u8`.
    unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

#[cfg(test)]
mod tests {
    use kaprobe_common::tcp_state;

    use super::*;

    #[test]
    fn round_trip() {
        let rec = StateRecord {
            header: Header {
                kind: kind::STATE,
                cpu: 1,
                ts_ns: 42,
                sk: 7,
            },
            tuple: Tuple {
                sport: 1,
                dport: 2,
                ..Tuple::default()
            },
            old_state: tcp_state::ESTABLISHED,
            new_state: tcp_state::CLOSE_WAIT,
            _pad: [0; 6],
            owner: kaprobe_common::Owner::default(),
        };
        assert_eq!(decode(&encode(&rec)), Ok(RawEvent::State(rec)));
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        let rec = TimerRecord {
            header: Header {
                kind: kind::KA_TIMER,
                ..Header::default()
            },
            ..TimerRecord::default()
        };
        let bytes = encode(&rec);
        assert_eq!(decode(&bytes[..10]), Err(DecodeError::NoHeader(10)));
        assert_eq!(
            decode(&bytes[..100]),
            Err(DecodeError::Truncated {
                kind: kind::KA_TIMER,
                want: size_of::<TimerRecord>(),
                got: 100
            })
        );
        let mut unknown = bytes.clone();
        unknown[0] = 99;
        assert_eq!(decode(&unknown), Err(DecodeError::UnknownKind(99)));
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..400 {
            for _ in 0..20 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                let mut b = bytes.clone();
                if b.len() >= 4 {
                    b[..4].copy_from_slice(&((seed % 9) as u32).to_ne_bytes());
                }
                let _ = decode(&bytes);
                let _ = decode(&b);
            }
        }
    }
}
