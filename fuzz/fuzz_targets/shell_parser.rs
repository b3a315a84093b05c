//! The qmp-shell line parser, over any lines, transactions included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_machine_cli::shell_syntax::ShellParser;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parser = ShellParser::new();
    for line in text.lines() {
        let _ = parser.feed(line);
    }
});
