//! Parsing the text of qtest lines (replies and IRQ notices).

use super::IrqEvent;

/// An `IRQ raise N` / `IRQ lower N` line.
pub fn parse_irq(line: &str) -> Option<IrqEvent> {
    let rest = line.strip_prefix("IRQ ")?;
    let (level, number) = rest.split_once(' ')?;
    let raised = match level {
        "raise" => true,
        "lower" => false,
        _ => return None,
    };
    Some(IrqEvent {
        line: number.trim().parse().ok()?,
        raised,
    })
}

/// The number after `OK`: `0x` hex or decimal.
pub fn parse_number(text: &str) -> Option<u64> {
    let word = text.split_whitespace().next()?;
    match word.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

/// The bytes of a `read` reply: `0x` and two hex digits per byte.
pub fn parse_hex_bytes(text: &str) -> Option<Vec<u8>> {
    let hex = text.trim().strip_prefix("0x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}
