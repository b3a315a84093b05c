//! Property tests of the qtest reply parsers and the seed's event matching: no input
//! panics, and what they accept they read right.

use proptest::prelude::*;
use qemu_machine::event_match;
use qemu_machine::qtest::{parse_hex_bytes, parse_irq, parse_number, IrqEvent};
use serde_json::json;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_reply_line_panics(line in ".{0,100}") {
        let _ = parse_irq(&line);
        let _ = parse_number(&line);
        let _ = parse_hex_bytes(&line);
    }

    #[test]
    fn replies_read_back(value in any::<u64>(), bytes in prop::collection::vec(any::<u8>(), 0..64), line in any::<u32>(), raised in any::<bool>()) {
        prop_assert_eq!(parse_number(&format!("0x{value:016x}")), Some(value));
        prop_assert_eq!(parse_number(&value.to_string()), Some(value));
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        prop_assert_eq!(parse_hex_bytes(&format!("0x{hex}")), Some(bytes));
        let text = format!("IRQ {} {line}", if raised { "raise" } else { "lower" });
        prop_assert_eq!(parse_irq(&text), Some(IrqEvent { line, raised }));
    }

    #[test]
    fn an_event_always_matches_itself_and_null(device in "[a-z0-9]{0,8}", len in any::<u32>()) {
        let event = json!({"event": "BLOCK_JOB_READY", "data": {"device": device, "len": len}});
        prop_assert!(event_match(&event, &event));
        prop_assert!(event_match(&event, &json!(null)));
        let same = json!({"data": {"device": device}});
        let other = json!({"data": {"device": format!("{device}x")}});
        prop_assert!(event_match(&event, &same));
        prop_assert!(!event_match(&event, &other));
    }
}
