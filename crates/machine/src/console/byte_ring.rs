//! The console's buffer: a fixed-size ring that keeps the newest bytes and counts the ones
//! it drops, allocated once (fallibly) so a flood costs no memory beyond its capacity.

/// A fixed-size ring of the newest bytes.
#[derive(Debug)]
pub(super) struct ByteRing {
    buf: Box<[u8]>,
    /// Physical index of the oldest byte.
    head: usize,
    len: usize,
}

impl ByteRing {
    /// A ring of `capacity` bytes; an allocation failure is an error, not an abort.
    pub(super) fn new(
        capacity: usize,
    ) -> std::result::Result<ByteRing, std::collections::TryReserveError> {
        let mut buf = Vec::new();
        buf.try_reserve_exact(capacity.max(1))?;
        buf.resize(capacity.max(1), 0);
        Ok(ByteRing {
            buf: buf.into_boxed_slice(),
            head: 0,
            len: 0,
        })
    }

    /// Appends, dropping the oldest bytes as needed; returns how many were dropped.
    pub(super) fn push(&mut self, mut data: &[u8]) -> usize {
        let capacity = self.buf.len();
        let mut dropped = 0;
        if data.len() >= capacity {
            dropped = self.len + data.len() - capacity;
            data = &data[data.len() - capacity..];
            self.head = 0;
            self.len = 0;
        }
        let overflow = (self.len + data.len()).saturating_sub(capacity);
        if overflow > 0 {
            self.head = (self.head + overflow) % capacity;
            self.len -= overflow;
            dropped += overflow;
        }
        let tail = (self.head + self.len) % capacity;
        let first = data.len().min(capacity - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.len += data.len();
        dropped
    }

    /// Appends the bytes from logical offset `from` (0 = oldest) to the end to `out`.
    pub(super) fn copy_from(&self, from: usize, out: &mut Vec<u8>) {
        let capacity = self.buf.len();
        let start = (self.head + from) % capacity;
        let count = self.len - from;
        let first = count.min(capacity - start);
        out.extend_from_slice(&self.buf[start..start + first]);
        out.extend_from_slice(&self.buf[..count - first]);
    }

    /// How many bytes the ring holds.
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_bytes() {
        let mut ring = ByteRing::new(8).unwrap();
        assert_eq!(ring.push(b"abcdef"), 0);
        assert_eq!(ring.push(b"ghij"), 2);
        let mut out = Vec::new();
        ring.copy_from(0, &mut out);
        assert_eq!(out, b"cdefghij");
        assert_eq!(ring.push(b"0123456789AB"), 12);
        out.clear();
        ring.copy_from(0, &mut out);
        assert_eq!(out, b"456789AB");
        out.clear();
        ring.copy_from(5, &mut out);
        assert_eq!(out, b"9AB");
    }
}
