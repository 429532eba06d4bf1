//! The one place where raw ring-buffer records become typed values.
use kaprobe_common::{
    CloseRecord, ErrorRecord, Header, ResetRecvRecord, ResetSentRecord, StateRecord, TimerRecord,
    kind,
};
use thiserror::Error;

/// A record from the kernel, checked and copied out of the ring buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEvent {
    Timer(TimerRecord),
    State(StateRecord),
    Close(CloseRecord),
    ResetSent(ResetSentRecord),
    ResetRecv(ResetRecvRecord),
    Error(ErrorRecord),
    Destroy(Header),
}

impl RawEvent {
    pub fn header(&self) -> &Header {
        match self {
            RawEvent::Timer(r) => &r.header,
            RawEvent::State(r) => &r.header,
            RawEvent::Close(r) => &r.header,
            RawEvent::ResetSent(r) => &r.header,
            RawEvent::ResetRecv(r) => &r.header,
            RawEvent::Error(r) => &r.header,
            RawEvent::Destroy(h) => h,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
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
        return Err(DecodeError::Truncated { kind, want, got: buf.len() });
    }
    // SAFETY: `buf` holds at least size_of::<T>() bytes (checked above), the read is
    // unaligned-safe, and `T: Wire` accepts any bit pattern.
    Ok(unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<T>()) })
}

/// Decodes one ring-buffer record. Never panics, whatever the bytes.
pub fn decode(buf: &[u8]) -> Result<RawEvent, DecodeError> {
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
        kind::DESTROY => RawEvent::Destroy(read(buf, k)?),
        other => return Err(DecodeError::UnknownKind(other)),
    })
}

/// The bytes of a wire struct, as the kernel would send them (for tests and benchmarks).
pub fn encode<T: Wire>(record: &T) -> Vec<u8> {
    // SAFETY: `T: Wire` has no implicit padding, so all size_of::<T>() bytes are
    // initialised and may be read as `u8`.
    unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}
