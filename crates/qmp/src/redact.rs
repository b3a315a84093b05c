//! Keeping secrets out of logs, transcripts and error values.
//!
//! What counts as a secret:
//! - in QMP JSON: `data` of any object whose `qom-type` is `secret*`; every string under a
//!   key such as `password`, `passwd`, `new-secret`, `key-secret` (also dotted, e.g.
//!   `server.password`); the userinfo password of URLs (`http://user:PASS@host`,
//!   `iscsi://user%PASS@host`); rbd's `:key=` in file names; and `human-monitor-command`'s
//!   `command-line` (see [`redact_hmp`]);
//! - in QEMU option strings (`-object secret,id=s,data=X`, `-drive file=...,password=X`):
//!   see [`redact_option_string`], which honours QEMU's `,,` escape;
//! - in HMP command lines (`set_password vnc X`, `change vnc password X`,
//!   `object_add secret,id=s,data=X`): see [`redact_hmp`].
//!
//! Transcripts and `tracing` records show `<redacted>` instead; so does
//! [`CommandError::arguments`](crate::CommandError::arguments).

use std::borrow::Cow;

use serde_json::Value;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "<redacted>";

const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "new-secret",
    "old-secret",
    "key-secret",
    "passphrase",
];

/// True if `key` (or its last dotted component, as in `server.password` or
/// `file.password`) names a secret value.
pub fn is_secret_key(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    SECRET_KEYS.contains(&last)
}

/// Replaces secret values in a QMP message, in place (see the [module docs](self)).
/// Returns true if anything was replaced.
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
                let sensitive = (is_secret && key == "data") || is_secret_key(key);
                if let Value::String(text) = value {
                    let redacted = if sensitive {
                        Some(REDACTED.to_string())
                    } else if key == "command-line" {
                        owned_if_changed(redact_hmp(text))
                    } else {
                        owned_if_changed(redact_value(text))
                    };
                    if let Some(redacted) = redacted {
                        *text = redacted;
                        changed = true;
                    }
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

fn owned_if_changed(text: Cow<'_, str>) -> Option<String> {
    match text {
        Cow::Borrowed(_) => None,
        Cow::Owned(text) => Some(text),
    }
}

/// A message for a log: the bytes themselves, or, when they hold a secret, a redacted copy.
pub fn redact_message(message: &[u8]) -> Cow<'_, [u8]> {
    let might_hold_a_secret = memmem(message, b"secret")
        || memmem(message, b"passw")
        || memmem(message, b"passphrase")
        || memmem(message, b"command-line")
        || memmem(message, b"key=")
        || (memmem(message, b"://") && message.contains(&b'@'));
    if !might_hold_a_secret {
        return Cow::Borrowed(message);
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(message) else {
        return Cow::Borrowed(message);
    };
    if redact_json(&mut value) {
        Cow::Owned(value.to_string().into_bytes())
    } else {
        Cow::Borrowed(message)
    }
}

/// Redacts a single value that may embed a secret: a URL's userinfo password
/// (`http://user:PASS@host`, `iscsi://user%PASS@host`) and rbd's `:key=PASS`.
///
/// ```
/// use qmp::redact::redact_value;
/// assert_eq!(redact_value("http://u:pw@h/x"), "http://u:<redacted>@h/x");
/// assert_eq!(redact_value("iscsi://u%pw@h/iqn/0"), "iscsi://u%<redacted>@h/iqn/0");
/// assert_eq!(redact_value("rbd:p/i:id=a:key=K:conf=/c"), "rbd:p/i:id=a:key=<redacted>:conf=/c");
/// ```
pub fn redact_value(value: &str) -> Cow<'_, str> {
    let url = redact_url_userinfo(value);
    match redact_rbd_key(&url) {
        Cow::Borrowed(_) => url,
        Cow::Owned(text) => Cow::Owned(text),
    }
}

/// The password in a URL's userinfo: `scheme://user:PASS@host` and iSCSI's
/// `iscsi://user%PASS@host`.
pub fn redact_url_userinfo(value: &str) -> Cow<'_, str> {
    let Some(scheme_end) = value.find("://") else {
        return Cow::Borrowed(value);
    };
    let authority_start = scheme_end + 3;
    let rest = &value[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return Cow::Borrowed(value);
    };
    let userinfo = &authority[..at];
    let Some(split) = userinfo.find([':', '%']) else {
        return Cow::Borrowed(value);
    };
    let secret_start = authority_start + split + 1;
    let secret_end = authority_start + at;
    if secret_start >= secret_end {
        return Cow::Borrowed(value);
    }
    Cow::Owned(format!(
        "{}{REDACTED}{}",
        &value[..secret_start],
        &value[secret_end..]
    ))
}

/// rbd's `:key=SECRET` (up to the next `:` not escaped with `\`).
pub fn redact_rbd_key(value: &str) -> Cow<'_, str> {
    let Some(at) = value.find(":key=") else {
        return Cow::Borrowed(value);
    };
    let start = at + ":key=".len();
    let bytes = value.as_bytes();
    let mut end = start;
    while end < bytes.len() {
        match bytes[end] {
            b'\\' => end += 2,
            b':' => break,
            _ => end += 1,
        }
    }
    let end = end.min(bytes.len());
    let rest = redact_rbd_key(&value[end..]);
    Cow::Owned(format!("{}{REDACTED}{rest}", &value[..start]))
}

/// Redacts a QEMU option string (`secret,id=s0,data=X`, `file=...,password=X`), honouring
/// QEMU's `,,` escape for a comma inside a value: `data=hun,,ter5` is one value. Redacted:
/// `data` when the string describes a `secret*` object, every key [`is_secret_key`] names
/// (except the flags `on`/`off`/`true`/`false`, as in `-vnc :0,password=on`), and URL and
/// rbd secrets inside any value ([`redact_value`]).
///
/// ```
/// use qmp::redact::redact_option_string;
/// assert_eq!(redact_option_string("secret,id=s,data=hun,,ter5"), "secret,id=s,data=<redacted>");
/// assert_eq!(redact_option_string(":0,password=on"), ":0,password=on");
/// assert_eq!(redact_option_string("driver=x,file.password=pw,,x,y=1"), "driver=x,file.password=<redacted>,y=1");
/// ```
pub fn redact_option_string(options: &str) -> Cow<'_, str> {
    let tokens = option_tokens(options);
    let secret_object = tokens.iter().any(|t| {
        let (key, value) = split_option(t);
        match value {
            None => key.starts_with("secret"),
            Some(v) => (key == "qom-type" || key == "type") && v.starts_with("secret"),
        }
    });
    let mut out = String::new();
    let mut changed = false;
    for (i, token) in tokens.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let (key, value) = split_option(token);
        match value {
            Some(value) => {
                let flag = matches!(value, "on" | "off" | "true" | "false");
                if (secret_object && key == "data") || (is_secret_key(key) && !flag) {
                    out.push_str(key);
                    out.push('=');
                    out.push_str(REDACTED);
                    changed = true;
                } else {
                    match redact_value(value) {
                        Cow::Borrowed(_) => out.push_str(token),
                        Cow::Owned(v) => {
                            out.push_str(key);
                            out.push('=');
                            out.push_str(&v);
                            changed = true;
                        }
                    }
                }
            }
            None => match redact_value(token) {
                Cow::Borrowed(_) => out.push_str(token),
                Cow::Owned(v) => {
                    out.push_str(&v);
                    changed = true;
                }
            },
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(options)
    }
}

/// Splits at single commas; `,,` stays inside a token (still escaped, as written).
fn option_tokens(options: &str) -> Vec<&str> {
    let bytes = options.as_bytes();
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b',' {
            if bytes.get(i + 1) == Some(&b',') {
                i += 2;
                continue;
            }
            tokens.push(&options[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    tokens.push(&options[start..]);
    tokens
}

fn split_option(token: &str) -> (&str, Option<&str>) {
    match token.split_once('=') {
        Some((key, value)) => (key, Some(value)),
        None => (token, None),
    }
}

/// Redacts an HMP command line (`human-monitor-command`'s `command-line`):
/// `set_password PROTOCOL PASSWORD ...`, `change vnc password PASSWORD`, and the option
/// strings of every other command (`object_add secret,id=s,data=X`, `drive_add`, ...).
///
/// ```
/// use qmp::redact::redact_hmp;
/// assert_eq!(redact_hmp("set_password vnc hunter2"), "set_password vnc <redacted>");
/// assert_eq!(redact_hmp("change vnc password hunter2"), "change vnc password <redacted>");
/// assert_eq!(redact_hmp("object_add secret,id=s,data=X"), "object_add secret,id=s,data=<redacted>");
/// assert_eq!(redact_hmp("info status"), "info status");
/// ```
pub fn redact_hmp(line: &str) -> Cow<'_, str> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let secret_word = match words.as_slice() {
        ["set_password", _, _, ..] => Some(2),
        ["change", "vnc", "password", _, ..] => Some(3),
        _ => None,
    };
    let mut changed = false;
    let redacted: Vec<Cow<'_, str>> = words
        .iter()
        .enumerate()
        .map(|(i, word)| {
            if Some(i) == secret_word {
                changed = true;
                Cow::Borrowed(REDACTED)
            } else if i == 0 {
                Cow::Borrowed(*word)
            } else {
                let r = redact_option_string(word);
                changed |= matches!(r, Cow::Owned(_));
                r
            }
        })
        .collect();
    if changed {
        Cow::Owned(redacted.join(" "))
    } else {
        Cow::Borrowed(line)
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
        assert!(matches!(redact_message(plain), Cow::Borrowed(_)));
        let mut nested =
            json!({"arguments": {"props": [{"qom-type": "secret", "data": "x", "id": "s"}]}});
        assert!(redact_json(&mut nested));
        assert_eq!(nested["arguments"]["props"][0]["id"], "s");
    }

    #[test]
    fn option_strings() {
        for (input, expected) in [
            ("secret,id=s,data=hun,,ter5", "secret,id=s,data=<redacted>"),
            ("secret,data=a,,b,,c,id=s", "secret,data=<redacted>,id=s"),
            (
                "qom-type=secret,id=s,data=x",
                "qom-type=secret,id=s,data=<redacted>",
            ),
            ("driver=rbd,password=p,,q", "driver=rbd,password=<redacted>"),
            ("server.password=p", "server.password=<redacted>"),
            ("x.passwd=p,y=1", "x.passwd=<redacted>,y=1"),
            ("file=http://u:pw@h/i", "file=http://u:<redacted>@h/i"),
            (
                "file=iscsi://u%pw@h/iqn/0",
                "file=iscsi://u%<redacted>@h/iqn/0",
            ),
            (
                "file=rbd:p/i:key=K\\:x:conf=c",
                "file=rbd:p/i:key=<redacted>:conf=c",
            ),
            (":0,password=on", ":0,password=on"),
            ("id=data,data=public", "id=data,data=public"),
        ] {
            assert_eq!(redact_option_string(input), expected, "{input}");
            assert!(!redact_option_string(input).contains("ter5"));
        }
        assert!(matches!(redact_option_string("a=b,,c"), Cow::Borrowed(_)));
    }

    #[test]
    fn urls() {
        assert_eq!(redact_value("http://user@h/x"), "http://user@h/x");
        assert_eq!(
            redact_value("https://u:p@h:8080/a@b"),
            "https://u:<redacted>@h:8080/a@b"
        );
        assert_eq!(redact_value("no url"), "no url");
    }

    #[test]
    fn hmp_inside_json() {
        let mut message = json!({"execute": "human-monitor-command",
            "arguments": {"command-line": "object_add secret,id=s,data=hun,,ter5"}});
        assert!(redact_json(&mut message));
        assert_eq!(
            message["arguments"]["command-line"],
            "object_add secret,id=s,data=<redacted>"
        );
        let raw = br#"{"execute":"human-monitor-command","arguments":{"command-line":"set_password vnc hunter2"}}"#;
        assert!(!String::from_utf8_lossy(&redact_message(raw)).contains("hunter2"));
    }
}
