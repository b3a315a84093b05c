//! What the commands print on stdout: one JSON printer for every reply, result and
//! `--json` document, so that compact and pretty output look the same everywhere.

use serde_json::Value;

/// Prints `value` as one line of compact JSON, or pretty-printed over several lines.
pub(crate) fn print_json(value: &Value, pretty: bool) {
    if pretty {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{value}");
    }
}
