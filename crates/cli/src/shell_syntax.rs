//! qmp-shell's command syntax: `command key=value ...`.
//!
//! - Values: an integer; `true`/`false` (any case); JSON when it starts with `{` or `[`,
//!   else "loose" JSON (single quotes, `True`/`False`/`None`, as qmp-shell's FuzzyJSON);
//!   a quoted string (quotes removed); anything else as a plain string.
//! - Dotted keys build nested objects: `file.driver=null-co` → `{"file": {"driver": ...}}`.
//! - `transaction(` starts a transaction: each following line is one action
//!   (`type key=value ...`), and `)` ends it; `transaction( type k=v )` is one line.

use serde_json::{json, Map, Number, Value};

/// Why a line is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    /// `key` without `=value`.
    #[error("expected key=value, got {0:?}")]
    NotKeyValue(String),
    /// The same key twice.
    #[error("cannot set {0:?} more than once")]
    Duplicate(String),
    /// `a=1 a.b=2`.
    #[error("cannot use {0:?} both as a value and as an object")]
    LeafAndObject(String),
    /// An empty key or key segment.
    #[error("empty key in {0:?}")]
    EmptyKey(String),
    /// A quote that does not close.
    #[error("unterminated quote in {0:?}")]
    Unterminated(String),
    /// `)` with no transaction open.
    #[error("')' closes no transaction")]
    NoTransaction,
}

/// Splits a line at white space, keeping quoted parts (`key="a b"`) together.
pub fn tokenize(line: &str) -> Result<Vec<String>, SyntaxError> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut in_token = false;
    for c in line.chars() {
        if let Some(q) = quote {
            current.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_whitespace() {
            if in_token {
                tokens.push(std::mem::take(&mut current));
                in_token = false;
            }
            continue;
        }
        in_token = true;
        current.push(c);
        if c == '"' || c == '\'' {
            quote = Some(c);
        }
    }
    if quote.is_some() {
        return Err(SyntaxError::Unterminated(line.to_string()));
    }
    if in_token {
        tokens.push(current);
    }
    Ok(tokens)
}

/// One value, as qmp-shell reads it.
pub fn parse_value(text: &str) -> Value {
    if let Ok(n) = text.parse::<i64>() {
        return Value::Number(n.into());
    }
    if let Ok(n) = text.parse::<u64>() {
        return Value::Number(n.into());
    }
    if text.eq_ignore_ascii_case("true") {
        return Value::Bool(true);
    }
    if text.eq_ignore_ascii_case("false") {
        return Value::Bool(false);
    }
    if text.starts_with(['{', '[']) {
        if let Ok(value) = serde_json::from_str(text) {
            return value;
        }
        if let Some(value) = loose_json(text) {
            return value;
        }
    }
    for q in ['"', '\''] {
        if text.len() >= 2 && text.starts_with(q) && text.ends_with(q) {
            return Value::String(unescape(&text[1..text.len() - 1]));
        }
    }
    Value::String(text.to_string())
}

/// The inside of a quoted value: `\n` and `\t` as in C, `\x` as `x` for any other `x`.
fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(match next {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Python-literal-ish JSON: either quote style, `True/False/None` and `true/false/null`.
fn loose_json(text: &str) -> Option<Value> {
    let mut parser = Loose {
        chars: text.chars().collect(),
        at: 0,
    };
    let value = parser.value()?;
    parser.space();
    (parser.at == parser.chars.len()).then_some(value)
}

/// A recursive-descent reader of [`loose_json`].
struct Loose {
    /// The text.
    chars: Vec<char>,
    /// Where the next value starts.
    at: usize,
}

impl Loose {
    /// Skips white space.
    fn space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    /// Skips white space and `c`, if `c` comes next.
    fn eat(&mut self, c: char) -> bool {
        self.space();
        if self.chars.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// One value (and the white space before it), or `None` if there is none here.
    fn value(&mut self) -> Option<Value> {
        self.space();
        match *self.chars.get(self.at)? {
            '{' => {
                self.at += 1;
                let mut map = Map::new();
                if self.eat('}') {
                    return Some(Value::Object(map));
                }
                loop {
                    let Value::String(key) = self.value()? else {
                        return None;
                    };
                    if !self.eat(':') {
                        return None;
                    }
                    map.insert(key, self.value()?);
                    if self.eat('}') {
                        return Some(Value::Object(map));
                    }
                    if !self.eat(',') {
                        return None;
                    }
                }
            }
            '[' => {
                self.at += 1;
                let mut items = Vec::new();
                if self.eat(']') {
                    return Some(Value::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    if self.eat(']') {
                        return Some(Value::Array(items));
                    }
                    if !self.eat(',') {
                        return None;
                    }
                }
            }
            q @ ('"' | '\'') => {
                self.at += 1;
                let mut text = String::new();
                loop {
                    let c = *self.chars.get(self.at)?;
                    self.at += 1;
                    match c {
                        '\\' => {
                            text.push(*self.chars.get(self.at)?);
                            self.at += 1;
                        }
                        c if c == q => return Some(Value::String(text)),
                        c => text.push(c),
                    }
                }
            }
            _ => {
                let start = self.at;
                while self
                    .chars
                    .get(self.at)
                    .is_some_and(|c| c.is_alphanumeric() || "+-._".contains(*c))
                {
                    self.at += 1;
                }
                let word: String = self.chars[start..self.at].iter().collect();
                match word.as_str() {
                    "true" | "True" => Some(Value::Bool(true)),
                    "false" | "False" => Some(Value::Bool(false)),
                    "null" | "None" => Some(Value::Null),
                    _ => {
                        if let Ok(n) = word.parse::<i64>() {
                            Some(Value::Number(n.into()))
                        } else {
                            word.parse::<f64>()
                                .ok()
                                .and_then(Number::from_f64)
                                .map(Value::Number)
                        }
                    }
                }
            }
        }
    }
}

/// `key=value` pairs (dotted keys nest) into one arguments object.
pub fn parse_arguments(tokens: &[String]) -> Result<Map<String, Value>, SyntaxError> {
    let mut arguments = Map::new();
    for token in tokens {
        let (key, value) = token
            .split_once('=')
            .ok_or_else(|| SyntaxError::NotKeyValue(token.clone()))?;
        let path: Vec<&str> = key.split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(SyntaxError::EmptyKey(token.clone()));
        }
        let mut object = &mut arguments;
        for (depth, segment) in path[..path.len() - 1].iter().enumerate() {
            let entry = object
                .entry(segment.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            object = entry
                .as_object_mut()
                .ok_or_else(|| SyntaxError::LeafAndObject(path[..=depth].join(".")))?;
        }
        let last = path[path.len() - 1];
        if let Some(existing) = object.get(last) {
            return Err(if existing.is_object() {
                SyntaxError::LeafAndObject(key.to_string())
            } else {
                SyntaxError::Duplicate(key.to_string())
            });
        }
        object.insert(last.to_string(), parse_value(value));
    }
    Ok(arguments)
}

/// A QMP command from `name key=value ...` tokens.
pub fn build_command(name: &str, tokens: &[String]) -> Result<Value, SyntaxError> {
    let arguments = parse_arguments(tokens)?;
    let mut command = json!({"execute": name});
    if !arguments.is_empty() {
        command["arguments"] = Value::Object(arguments);
    }
    Ok(command)
}

/// Reads shell lines one at a time, keeping transaction state between them.
#[derive(Debug, Default)]
pub struct ShellParser {
    /// The actions of the open transaction; `None` outside one.
    actions: Option<Vec<Value>>,
}

impl ShellParser {
    /// A parser outside any transaction.
    pub fn new() -> Self {
        ShellParser::default()
    }

    /// True while a transaction is open (the prompt changes).
    pub fn in_transaction(&self) -> bool {
        self.actions.is_some()
    }

    /// Feeds one line: `Some(command)` when a command is complete, `None` for an empty line
    /// or a transaction still being written.
    pub fn feed(&mut self, line: &str) -> Result<Option<Value>, SyntaxError> {
        let mut tokens = tokenize(line)?;
        if tokens.is_empty() {
            return Ok(None);
        }
        if tokens[0] == "transaction(" {
            tokens.remove(0);
            self.actions = Some(Vec::new());
        } else if let Some(rest) = tokens[0].strip_prefix("transaction(") {
            let rest = rest.to_string();
            tokens[0] = rest;
            self.actions = Some(Vec::new());
        }
        let Some(actions) = &mut self.actions else {
            if tokens[0] == ")" {
                return Err(SyntaxError::NoTransaction);
            }
            return build_command(&tokens[0], &tokens[1..]).map(Some);
        };
        let closes = match tokens.last() {
            Some(last) if last == ")" => {
                tokens.pop();
                true
            }
            Some(last) if last.ends_with(')') && !last.contains('=') => {
                let trimmed = last.trim_end_matches(')').to_string();
                *tokens.last_mut().unwrap_or(&mut String::new()) = trimmed;
                true
            }
            _ => false,
        };
        tokens.retain(|t| !t.is_empty());
        if let Some((kind, rest)) = tokens.split_first() {
            let data = parse_arguments(rest)?;
            actions.push(json!({"type": kind, "data": data}));
        }
        if !closes {
            return Ok(None);
        }
        let actions = self.actions.take().unwrap_or_default();
        Ok(Some(
            json!({"execute": "transaction", "arguments": {"actions": actions}}),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Value {
        ShellParser::new().feed(text).unwrap().unwrap()
    }

    #[test]
    fn values_like_qmp_shell() {
        assert_eq!(
            line("blockdev-add driver=raw node-name=r0 file.driver=null-co file.size=4096 read-only=TRUE"),
            json!({"execute": "blockdev-add", "arguments": {
                "driver": "raw", "node-name": "r0", "read-only": true,
                "file": {"driver": "null-co", "size": 4096}}})
        );
        assert_eq!(parse_value("[1, 2]"), json!([1, 2]));
        assert_eq!(
            parse_value("{'a': True, \"b\": None}"),
            json!({"a": true, "b": null})
        );
        assert_eq!(parse_value("\"a b\""), json!("a b"));
        assert_eq!(parse_value("1.5"), json!("1.5"));
        assert_eq!(parse_value("-3"), json!(-3));
        assert_eq!(
            line("x msg=\"hello world\"")["arguments"]["msg"],
            "hello world"
        );
    }

    #[test]
    fn key_errors() {
        let mut p = ShellParser::new();
        assert_eq!(
            p.feed("cmd a=1 a=2"),
            Err(SyntaxError::Duplicate("a".into()))
        );
        assert_eq!(
            p.feed("cmd a=1 a.b=2"),
            Err(SyntaxError::LeafAndObject("a".into()))
        );
        assert_eq!(
            p.feed("cmd a.b=1 a=2"),
            Err(SyntaxError::LeafAndObject("a".into()))
        );
        assert_eq!(
            p.feed("cmd novalue"),
            Err(SyntaxError::NotKeyValue("novalue".into()))
        );
        assert_eq!(
            p.feed("cmd a..b=1"),
            Err(SyntaxError::EmptyKey("a..b=1".into()))
        );
        assert_eq!(
            p.feed("cmd a=\"open"),
            Err(SyntaxError::Unterminated("cmd a=\"open".into()))
        );
        assert_eq!(p.feed(")"), Err(SyntaxError::NoTransaction));
        assert_eq!(p.feed("   "), Ok(None));
    }

    #[test]
    fn transactions_over_lines_and_on_one_line() {
        let mut p = ShellParser::new();
        assert_eq!(p.feed("transaction("), Ok(None));
        assert!(p.in_transaction());
        assert_eq!(p.feed("block-dirty-bitmap-add node=n0 name=b0"), Ok(None));
        assert_eq!(p.feed("block-dirty-bitmap-add node=n0 name=b1"), Ok(None));
        let done = p.feed(")").unwrap().unwrap();
        assert!(!p.in_transaction());
        assert_eq!(done["execute"], "transaction");
        assert_eq!(done["arguments"]["actions"][1]["data"]["name"], "b1");
        assert_eq!(
            done["arguments"]["actions"][0]["type"],
            "block-dirty-bitmap-add"
        );

        let one = line("transaction( block-dirty-bitmap-add node=n0 name=b0 )");
        assert_eq!(one["arguments"]["actions"].as_array().unwrap().len(), 1);
    }
}
