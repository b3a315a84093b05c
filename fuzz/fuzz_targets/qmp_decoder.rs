//! The QMP decoder: any byte stream, cut anywhere, through framing, envelope
//! classification and typed event decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qmp::framing::FrameDecoder;
use qmp::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = FrameDecoder::new(4096);
    for chunk in stream.chunks(usize::from(cut).max(1)) {
        decoder.extend(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let Ok(Message::Event(event)) = Message::parse(frame) {
                        let _ = event.typed();
                        let _ = event.to_json();
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
