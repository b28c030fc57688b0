//! Byte-level primitives of the trace format: LEB128 varints, zigzag, and a bounds-checked
//! cursor that turns every short or malformed input into an error instead of a panic.

/// Appends `v` as an unsigned LEB128 varint (1–10 bytes).
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A length-prefixed byte string.
#[inline]
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A tagged varint field: tag, byte length, value. Fields after an event's own (minor 3 on)
/// take this form, so that a reader can skip a tag it does not know.
#[inline]
pub fn put_varint_field(out: &mut Vec<u8>, tag: u64, v: u64) {
    put_varint(out, tag);
    let len = (64 - (v | 1).leading_zeros()).div_ceil(7);
    out.push(len as u8);
    put_varint(out, v);
}

/// Why a read from a [`Cursor`] failed; turned into a [`super::Damage`] message by the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// Fewer bytes left than the field needs.
    Short,
    /// A varint longer than 10 bytes or with bits beyond 64.
    BadVarint,
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::Short => f.write_str("field runs past the end of its record"),
            CodecError::BadVarint => f.write_str("malformed varint"),
        }
    }
}

pub type CResult<T> = Result<T, CodecError>;

/// Reads from a byte slice; every method checks bounds.
#[derive(Clone, Copy, Debug)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    pub fn u8(&mut self) -> CResult<u8> {
        let b = *self.buf.get(self.pos).ok_or(CodecError::Short)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub fn take(&mut self, n: usize) -> CResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(CodecError::Short);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    pub fn array<const N: usize>(&mut self) -> CResult<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    #[inline]
    pub fn u16_le(&mut self) -> CResult<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    #[inline]
    pub fn u32_le(&mut self) -> CResult<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    #[inline]
    pub fn varint(&mut self) -> CResult<u64> {
        // Fast path: one byte.
        let first = self.u8()?;
        if first < 0x80 {
            return Ok(first as u64);
        }
        let mut v = (first & 0x7f) as u64;
        let mut shift = 7u32;
        loop {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(CodecError::BadVarint);
            }
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(CodecError::BadVarint);
            }
        }
    }

    /// A varint that must fit a `u32`.
    pub fn varint_u32(&mut self) -> CResult<u32> {
        u32::try_from(self.varint()?).map_err(|_| CodecError::BadVarint)
    }

    pub fn bytes(&mut self) -> CResult<&'a [u8]> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| CodecError::Short)?;
        self.take(n)
    }

    /// A length-prefixed string; invalid UTF-8 is replaced rather than rejected (the text is
    /// informational: a process name, a kernel release).
    pub fn string(&mut self) -> CResult<String> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_width() {
        let mut vals = vec![
            0u64,
            1,
            127,
            128,
            300,
            16383,
            16384,
            u32::MAX as u64,
            u64::MAX,
        ];
        for s in 0..64 {
            vals.push(1u64 << s);
            vals.push((1u64 << s) - 1);
        }
        let mut buf = Vec::new();
        for v in &vals {
            put_varint(&mut buf, *v);
        }
        let mut c = Cursor::new(&buf);
        for v in &vals {
            assert_eq!(c.varint().unwrap(), *v);
        }
        assert!(c.is_empty());
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            i64::MAX,
            i64::MIN,
            123_456_789,
            -987_654_321,
        ] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn malformed_varints_are_errors() {
        assert_eq!(Cursor::new(&[0x80]).varint(), Err(CodecError::Short));
        assert_eq!(Cursor::new(&[]).varint(), Err(CodecError::Short));
        assert_eq!(
            Cursor::new(&[0xff; 11]).varint(),
            Err(CodecError::BadVarint)
        );
        // 10th byte may only carry the top bit of a u64.
        let mut over = vec![0xffu8; 9];
        over.push(0x02);
        assert_eq!(Cursor::new(&over).varint(), Err(CodecError::BadVarint));
        assert_eq!(Cursor::new(&[3, b'a']).bytes(), Err(CodecError::Short));
    }
}
