//! QEMUMachine's event matching and argument-key conversion.

use serde_json::{Map, Value};

/// True when `event` contains `pattern`, recursively: `Null` in the pattern matches
/// anything; an object matches when every key is present and matches; anything else must
/// be equal. (As in the seed, a `null` value itself cannot be required.)
///
/// ```
/// use qemu_machine::event_match;
/// use serde_json::json;
///
/// let event = json!({"event": "BLOCK_JOB_READY", "data": {"device": "drive0", "len": 5}});
/// assert!(event_match(&event, &json!({"data": {"device": "drive0"}})));
/// assert!(event_match(&event, &json!({"data": null})));
/// assert!(!event_match(&event, &json!({"data": {"device": "drive1"}})));
/// assert!(!event_match(&event, &json!({"data": {"missing": null}})));
/// ```
pub fn event_match(event: &Value, pattern: &Value) -> bool {
    match pattern {
        Value::Null => true,
        Value::Object(pattern) => match event {
            Value::Object(event) => pattern
                .iter()
                .all(|(key, want)| event.get(key).is_some_and(|have| event_match(have, want))),
            _ => false,
        },
        other => other == event,
    }
}

/// Converts `_` to `-` in the top-level keys, as the seed does for keyword arguments.
///
/// ```
/// use qemu_machine::conv_keys;
/// use serde_json::json;
///
/// assert_eq!(
///     conv_keys(json!({"node_name": "n0", "x": {"inner_key": 1}})),
///     json!({"node-name": "n0", "x": {"inner_key": 1}})
/// );
/// ```
pub fn conv_keys(arguments: Value) -> Value {
    match arguments {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| (key.replace('_', "-"), value))
                .collect::<Map<String, Value>>(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seed_docstring_examples() {
        assert!(event_match(
            &json!({"foo": {"bar": 1}}),
            &json!({"foo": null})
        ));
        assert!(event_match(&json!({"foo": 5}), &json!({"foo": null})));
        assert!(!event_match(
            &json!({"foo": {"bar": 1}}),
            &json!({"foo": {"abc": null}})
        ));
        assert!(event_match(
            &json!({"foo": {"bar": 1, "rab": 2}}),
            &json!({"foo": {"rab": 2}})
        ));
        assert!(event_match(&json!(3), &json!(3)));
        assert!(!event_match(&json!(3), &json!({"a": 1})));
    }
}
