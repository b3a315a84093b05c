//! Keeping secrets out of logs: `object-add` of a `secret` object carries the secret in
//! `data`; `set_password` and friends carry `password`. Transcripts and `tracing` records
//! show `<redacted>` instead.

use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "<redacted>";

const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "new-secret",
    "old-secret",
    "key-secret",
];

/// Replaces secret values in a QMP message, in place: `data` of any object whose
/// `qom-type` is `secret` (or `secret_keyring`), and every string under a key such as
/// `password`. Returns true if anything was replaced.
///
/// ```
/// use serde_json::json;
///
/// let mut message = json!({"execute": "object-add",
///     "arguments": {"qom-type": "secret", "id": "s0", "data": "hunter2"}});
/// assert!(qmp::redact::redact_json(&mut message));
/// assert_eq!(message["arguments"]["data"], "<redacted>");
/// ```
pub fn redact_json(value: &mut Value) -> bool {
    match value {
        Value::Object(map) => {
            let mut changed = false;
            let is_secret = map
                .get("qom-type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.starts_with("secret"));
            for (key, value) in map.iter_mut() {
                let sensitive = (is_secret && key == "data") || SECRET_KEYS.contains(&key.as_str());
                if sensitive && value.is_string() {
                    *value = Value::String(REDACTED.into());
                    changed = true;
                } else {
                    changed |= redact_json(value);
                }
            }
            changed
        }
        Value::Array(items) => items.iter_mut().fold(false, |acc, v| redact_json(v) | acc),
        _ => false,
    }
}

/// A message for a log: the bytes themselves, or, when they hold a secret, a redacted copy.
pub fn redact_message(message: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let might_hold_a_secret = memmem(message, b"secret") || memmem(message, b"passw");
    if !might_hold_a_secret {
        return std::borrow::Cow::Borrowed(message);
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(message) else {
        return std::borrow::Cow::Borrowed(message);
    };
    if redact_json(&mut value) {
        std::borrow::Cow::Owned(value.to_string().into_bytes())
    } else {
        std::borrow::Cow::Borrowed(message)
    }
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn redacts_secrets_and_passwords_only() {
        let message =
            br#"{"execute":"set_password","arguments":{"protocol":"vnc","password":"pw"}}"#;
        let redacted = redact_message(message);
        assert!(!String::from_utf8_lossy(&redacted).contains("\"pw\""));
        let plain = br#"{"execute":"query-status"}"#;
        assert!(matches!(
            redact_message(plain),
            std::borrow::Cow::Borrowed(_)
        ));
        let mut nested =
            json!({"arguments": {"props": [{"qom-type": "secret", "data": "x", "id": "s"}]}});
        assert!(redact_json(&mut nested));
        assert_eq!(nested["arguments"]["props"][0]["id"], "s");
    }
}
