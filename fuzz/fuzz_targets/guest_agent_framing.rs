//! Guest-agent framing: replies with 0xFF resync markers anywhere, as qemu-ga sends after
//! `guest-sync-delimited`, and the sync-id check on what comes out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qmp::framing::FrameDecoder;
use qmp::Message;

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new(1 << 16);
    // Split at every 0xFF, as the agent would interleave them.
    for piece in data.split_inclusive(|&b| b == 0xff) {
        decoder.extend(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let Ok(Message::Response(response)) = Message::parse(frame) {
                        if let Ok(value) = response.result {
                            let _ = serde_json_value(value.get());
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

fn serde_json_value(text: &str) -> Option<u64> {
    text.trim().parse::<u64>().ok()
}
