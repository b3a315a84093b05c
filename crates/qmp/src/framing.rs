//! Splitting QMP's byte stream into JSON messages.
//!
//! QMP is a stream of JSON objects. QEMU ends each one with `\r\n`, but a peer may
//! pretty-print (`-mon pretty=on`), pack several objects into one read or split one object
//! across many reads. [`FrameDecoder`] finds object boundaries by tracking nesting and string
//! state, one byte at a time and never twice, so a message costs O(length) however it is cut.

use crate::error::ProtocolError;

/// The default limit on one message, as in libvirt and Python's `qemu.qmp`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 10 * 1024 * 1024;

/// An incremental splitter of a QMP byte stream into complete JSON objects.
///
/// ```
/// use qmp::framing::FrameDecoder;
///
/// let mut decoder = FrameDecoder::new(1024);
/// decoder.extend(b"{\"return\": {}}\r\n{\"ev");
/// assert_eq!(decoder.next_frame().unwrap().unwrap(), b"{\"return\": {}}");
/// assert!(decoder.next_frame().unwrap().is_none());
/// decoder.extend(b"ent\": \"STOP\"}\n");
/// assert_eq!(decoder.next_frame().unwrap().unwrap(), b"{\"event\": \"STOP\"}");
/// ```
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes before this offset belong to frames already returned.
    consumed: usize,
    /// Bytes before this offset have been scanned.
    scanned: usize,
    /// Offset of the `{` that opened the current message, if one is open.
    start: Option<usize>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    max_message_size: usize,
}

impl FrameDecoder {
    /// A decoder that rejects messages longer than `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            consumed: 0,
            scanned: 0,
            start: None,
            depth: 0,
            in_string: false,
            escaped: false,
            max_message_size,
        }
    }

    /// Appends bytes read from the peer.
    pub fn extend(&mut self, data: &[u8]) {
        if self.consumed > 0 && self.consumed == self.buf.len() {
            self.buf.clear();
            self.scanned = 0;
            self.consumed = 0;
        } else if self.consumed > 64 * 1024 && self.consumed * 2 > self.buf.len() {
            self.buf.drain(..self.consumed);
            self.scanned -= self.consumed;
            self.start = self.start.map(|s| s - self.consumed);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Returns the next complete JSON object, `None` when more input is needed, or an error
    /// when the stream cannot be QMP (a byte outside an object that is not white space, or a
    /// message over the size limit). After an error the stream is unusable.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] when a byte outside an object is not white space, or a message
    /// exceeds the size limit.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, ProtocolError> {
        let mut i = self.scanned;
        while i < self.buf.len() {
            let byte = self.buf[i];
            match self.start {
                None => match byte {
                    // 0xFF is the guest agent's resync marker (`guest-sync-delimited`).
                    b' ' | b'\t' | b'\r' | b'\n' | 0xff => self.consumed = i + 1,
                    b'{' => {
                        self.start = Some(i);
                        self.depth = 1;
                    }
                    _ => {
                        self.scanned = i;
                        return Err(ProtocolError::Garbage {
                            near: snippet(&self.buf[i..]),
                        });
                    }
                },
                Some(start) => {
                    if self.in_string {
                        if self.escaped {
                            self.escaped = false;
                        } else if byte == b'\\' {
                            self.escaped = true;
                        } else if byte == b'"' {
                            self.in_string = false;
                        }
                    } else {
                        match byte {
                            b'"' => self.in_string = true,
                            b'{' | b'[' => self.depth += 1,
                            b'}' | b']' => {
                                self.depth -= 1;
                                if self.depth == 0 {
                                    self.start = None;
                                    self.consumed = i + 1;
                                    self.scanned = i + 1;
                                    self.check_size(i + 1 - start)?;
                                    return Ok(Some(&self.buf[start..=i]));
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
            i += 1;
        }
        self.scanned = i;
        if let Some(start) = self.start {
            self.check_size(i - start)?;
        }
        Ok(None)
    }

    /// After a [`ProtocolError::Garbage`] error: throws away the offending input up to and
    /// including the next newline (all of it if there is none yet), so decoding can go on.
    /// For a lenient server side (the multiplexer answers garbage with an error, as QEMU
    /// does, and keeps the session); a client of QEMU stays strict.
    pub fn skip_garbage(&mut self) {
        let from = self.scanned.max(self.consumed);
        let end = match self.buf[from..].iter().position(|&b| b == b'\n') {
            Some(at) => from + at + 1,
            None => self.buf.len(),
        };
        self.consumed = end;
        self.scanned = end;
        self.start = None;
        self.depth = 0;
        self.in_string = false;
        self.escaped = false;
    }

    fn check_size(&self, len: usize) -> Result<(), ProtocolError> {
        if len > self.max_message_size {
            Err(ProtocolError::MessageTooLarge {
                limit: self.max_message_size,
            })
        } else {
            Ok(())
        }
    }
}

/// A short, printable excerpt of raw bytes for error messages.
pub(crate) fn snippet(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(80)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > cut.len() {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(decoder: &mut FrameDecoder) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(f) = decoder.next_frame().unwrap() {
            out.push(String::from_utf8(f.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn packed_and_split_frames() {
        let stream = b"{\"a\": \"}{\\\"\"}\r\n{\"b\": [1, {\"c\": 2}]}\n  {\"d\": {}}";
        for chunk in 1..stream.len() {
            let mut decoder = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder.extend(piece);
                got.extend(frames(&mut decoder));
            }
            assert_eq!(
                got,
                [
                    "{\"a\": \"}{\\\"\"}",
                    "{\"b\": [1, {\"c\": 2}]}",
                    "{\"d\": {}}"
                ],
                "chunk size {chunk}"
            );
        }
    }

    #[test]
    fn pretty_printed_message() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.extend(b"{\n    \"return\": {\n        \"x\": 1\n    }\n}\n");
        assert_eq!(frames(&mut decoder).len(), 1);
    }

    #[test]
    fn guest_agent_resync_bytes_are_skipped() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.extend(b"\xff{\"return\": 7}\n\xff\xff{\"return\": 8}");
        assert_eq!(frames(&mut decoder), ["{\"return\": 7}", "{\"return\": 8}"]);
    }

    #[test]
    fn garbage_is_an_error() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.extend(b"{}\nhello");
        assert!(decoder.next_frame().unwrap().is_some());
        assert!(matches!(
            decoder.next_frame(),
            Err(ProtocolError::Garbage { .. })
        ));
    }

    #[test]
    fn garbage_can_be_skipped() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.extend(b"xyz {\"a\": 1}\n{\"b\": 2}\n[1]\n{\"c\": 3}");
        assert!(decoder.next_frame().is_err());
        decoder.skip_garbage();
        assert_eq!(frames_until_error(&mut decoder), ["{\"b\": 2}"]);
        decoder.skip_garbage();
        assert_eq!(frames(&mut decoder), ["{\"c\": 3}"]);
        decoder.extend(b"zz");
        assert!(decoder.next_frame().is_err());
        decoder.skip_garbage();
        decoder.extend(b"z\n{}");
        assert!(decoder.next_frame().is_err());
        decoder.skip_garbage();
        assert_eq!(frames(&mut decoder), ["{}"]);
    }

    fn frames_until_error(decoder: &mut FrameDecoder) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some(f)) = decoder.next_frame() {
            out.push(String::from_utf8(f.to_vec()).unwrap());
        }
        out
    }

    #[test]
    fn size_limit_applies_to_partial_messages() {
        let mut decoder = FrameDecoder::new(20);
        decoder.extend(b"{\"a\": \"0123456789");
        assert!(decoder.next_frame().unwrap().is_none());
        decoder.extend(b"0123456789");
        assert!(matches!(
            decoder.next_frame(),
            Err(ProtocolError::MessageTooLarge { limit: 20 })
        ));
    }

    #[test]
    fn buffer_is_compacted() {
        let mut decoder = FrameDecoder::new(1024);
        for _ in 0..100_000 {
            decoder.extend(b"{\"event\": \"X\"}\r\n{\"ev");
            assert_eq!(frames(&mut decoder).len(), 1);
            decoder.extend(b"ent\": \"Y\"}");
            assert_eq!(frames(&mut decoder).len(), 1);
        }
        assert!(decoder.buf.len() < 256 * 1024);
    }
}
