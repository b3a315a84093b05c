//! The qtest reply parsers, over any line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_machine::qtest::{parse_hex_bytes, parse_irq, parse_number};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        let _ = parse_irq(line);
        let rest = line.strip_prefix("OK").unwrap_or(line);
        let _ = parse_number(rest);
        let _ = parse_hex_bytes(rest);
    }
});
