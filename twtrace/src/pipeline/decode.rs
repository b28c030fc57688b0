//! Kernel record bytes → [`TwRecord`], with explicit size and kind checks: the bytes come from
//! a ring buffer or an iterator file, never trusted blindly.

use twtrace_common::{kind, TwRecord};

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than a record.
    Short { len: usize },
    /// A kind this build does not know (a newer kernel object, or garbage).
    UnknownKind(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short { len } => {
                write!(f, "record of {len} bytes, expected {}", TwRecord::SIZE)
            }
            DecodeError::UnknownKind(k) => write!(f, "unknown record kind {k}"),
        }
    }
}

impl std::error::Error for DecodeError {}

pub fn decode(bytes: &[u8]) -> Result<TwRecord, DecodeError> {
    if bytes.len() < TwRecord::SIZE {
        return Err(DecodeError::Short { len: bytes.len() });
    }
    // SAFETY: length checked; TwRecord is plain old data valid for any bit pattern; the read
    // is unaligned-safe.
    let r: TwRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if !(kind::TIMER_START..=kind::LAST).contains(&r.kind) {
        return Err(DecodeError::UnknownKind(r.kind));
    }
    Ok(r)
}

/// The bytes of a record, for tests and for writing records back out.
pub fn encode(r: &TwRecord) -> [u8; TwRecord::SIZE] {
    // SAFETY: TwRecord is repr(C) plain old data of exactly SIZE bytes.
    unsafe { std::mem::transmute_copy(r) }
}

#[cfg(test)]
pub(crate) fn blank(k: u8) -> TwRecord {
    TwRecord {
        ts_ns: 0,
        tw: 0,
        expires: 0,
        jiffies: 0,
        netns: 0,
        pid: 0,
        entry_stamp: 0,
        ts_recent_stamp: 0,
        kind: k,
        family: twtrace_common::AF_INET,
        substate: twtrace_common::TCP_TIME_WAIT,
        flags: 0,
        cpu: 0,
        lport: 0,
        rport: 0,
        aux2: 0,
        aux: 0,
        laddr: [0; 16],
        raddr: [0; 16],
        comm: [0; 16],
        conf: twtrace_common::NetConf::NONE,
        cgroup: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let mut r = blank(kind::TIMER_CANCEL);
        r.tw = 0xdead_beef;
        r.lport = 4242;
        let b = encode(&r);
        assert_eq!(decode(&b), Ok(r));
        assert_eq!(decode(&b[..10]), Err(DecodeError::Short { len: 10 }));
        let mut bad = b;
        bad[std::mem::offset_of!(TwRecord, kind)] = 99;
        assert_eq!(decode(&bad), Err(DecodeError::UnknownKind(99)));
        // Unaligned input decodes too.
        let mut v = vec![0u8; 1];
        v.extend_from_slice(&b);
        assert_eq!(decode(&v[1..]), Ok(r));
    }
}
