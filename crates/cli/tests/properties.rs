//! Property tests of the shell syntax: no line makes the parser panic, and generated
//! `key=value` lines (dotted keys included) come out as the objects they describe.

use proptest::prelude::*;
use qemu_machine_cli::shell_syntax::{parse_value, ShellParser};
use serde_json::{json, Map, Value};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_line_panics(lines in prop::collection::vec(".{0,80}", 1..6)) {
        let mut parser = ShellParser::new();
        for line in &lines {
            let _ = parser.feed(line);
        }
    }

    #[test]
    fn generated_arguments_round_trip(
        fields in prop::collection::btree_map("[a-z][a-z0-9-]{0,5}", prop_oneof![
            any::<i32>().prop_map(|n| json!(n)),
            any::<bool>().prop_map(|b| json!(b)),
            "[a-z][a-z0-9_/:-]{0,10}".prop_map(|s| json!(s)),
        ], 1..6),
        nest in "[a-z]{1,4}",
    ) {
        let mut line = String::from("cmd");
        for (key, value) in &fields {
            let text = match value { Value::String(s) => s.clone(), other => other.to_string() };
            line.push_str(&format!(" {nest}.{key}={text}"));
        }
        let command = ShellParser::new().feed(&line).unwrap().unwrap();
        let mut inner = Map::new();
        for (key, value) in fields {
            // A string that reads as a number or a bool is one, as in qmp-shell.
            let value = match value { Value::String(s) => parse_value(&s), other => other };
            inner.insert(key, value);
        }
        prop_assert_eq!(command, json!({"execute": "cmd", "arguments": {nest: Value::Object(inner)}}));
    }
}
