//! Golden QMP logs, as iotests' `qmp_log`: every command and its reply (and any events you
//! add) as key-sorted JSON lines, through filters that take out what changes from run to
//! run, so a test can compare the whole log with a reference text.

use serde_json::{json, Value};

use crate::error::Result;
use crate::machine::Machine;

/// A filter rewrites a message before it is logged.
pub type Filter = Box<dyn Fn(Value) -> Value + Send + Sync>;

/// A log of QMP traffic for golden-output tests.
///
/// ```
/// use qemu_machine::qmp_log::{filter_timestamps, QmpLog};
/// use serde_json::json;
///
/// let mut log = QmpLog::new().with_filter(filter_timestamps);
/// log.log(&json!({"event": "STOP", "timestamp": {"seconds": 17, "microseconds": 3}}));
/// assert_eq!(log.text(), "{\"event\": \"STOP\", \"timestamp\": {\"microseconds\": \"USECS\", \"seconds\": \"SECS\"}}\n");
/// ```
#[derive(Default)]
pub struct QmpLog {
    lines: Vec<String>,
    filters: Vec<Filter>,
}

impl std::fmt::Debug for QmpLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpLog")
            .field("lines", &self.lines)
            .field("filters", &self.filters.len())
            .finish()
    }
}

impl QmpLog {
    /// An empty log without filters.
    pub fn new() -> QmpLog {
        QmpLog::default()
    }

    /// Adds a filter; filters run in the order added.
    pub fn with_filter(mut self, filter: impl Fn(Value) -> Value + Send + Sync + 'static) -> Self {
        self.filters.push(Box::new(filter));
        self
    }

    /// Logs one message.
    pub fn log(&mut self, message: &Value) {
        let filtered = self
            .filters
            .iter()
            .fold(message.clone(), |value, filter| filter(value));
        self.lines.push(canonical(&filtered));
    }

    /// Logs a line of text as it is (after the filters, which see it as a JSON string), as
    /// iotests' `log("...")` does.
    ///
    /// ```
    /// let mut log = qemu_machine::qmp_log::QmpLog::new();
    /// log.log_line("Job failed: oops");
    /// assert_eq!(log.text(), "Job failed: oops\n");
    /// ```
    pub fn log_line(&mut self, line: &str) {
        let filtered = self
            .filters
            .iter()
            .fold(Value::String(line.to_string()), |value, filter| {
                filter(value)
            });
        match filtered {
            Value::String(s) => self.lines.push(s),
            other => self.lines.push(canonical(&other)),
        }
    }

    /// Logs the command, runs it (a QMP error is logged, not raised), logs the reply, and
    /// returns the reply.
    ///
    /// # Errors
    ///
    /// As [`Machine::qmp`](crate::Machine::qmp), but a QMP error reply is returned as the
    /// reply, not raised.
    pub async fn execute(
        &mut self,
        vm: &mut Machine,
        name: &str,
        arguments: Value,
    ) -> Result<Value> {
        let mut command = json!({"execute": name});
        if !arguments.is_null() {
            command["arguments"] = arguments.clone();
        }
        self.log(&command);
        let reply = vm.qmp(name, arguments).await?;
        self.log(&reply);
        Ok(reply)
    }

    /// The log, one message per line.
    pub fn text(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// JSON with sorted keys and `", "`/`": "` separators, like Python's `json.dumps`.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}: {}", Value::String(k.clone()), canonical(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// Replaces event timestamps with `SECS`/`USECS`.
pub fn filter_timestamps(mut value: Value) -> Value {
    if let Some(timestamp) = value.get_mut("timestamp").and_then(Value::as_object_mut) {
        timestamp.insert("seconds".into(), json!("SECS"));
        timestamp.insert("microseconds".into(), json!("USECS"));
    }
    value
}

/// Replaces node names QEMU generated (`#block123`) with `NODE_NAME`, anywhere.
pub fn filter_generated_node_names(value: Value) -> Value {
    match value {
        Value::String(s)
            if s.len() > 6
                && s.starts_with("#block")
                && s[6..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            json!("NODE_NAME")
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(filter_generated_node_names).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, filter_generated_node_names(v)))
                .collect(),
        ),
        other => other,
    }
}

/// A filter that replaces `prefix` with `replacement` inside every string value, at any
/// depth (keys are left alone).
///
/// ```
/// use qemu_machine::qmp_log::filter_path;
/// use serde_json::json;
///
/// let filter = filter_path("/tmp/t1", "TEST_DIR");
/// let value = filter(json!({"file": {"filename": "/tmp/t1/a.qcow2"}, "n": 1}));
/// assert_eq!(value, json!({"file": {"filename": "TEST_DIR/a.qcow2"}, "n": 1}));
/// ```
pub fn filter_path(
    prefix: impl AsRef<std::path::Path>,
    replacement: &str,
) -> impl Fn(Value) -> Value + Send + Sync + 'static {
    let prefix = prefix.as_ref().to_string_lossy().into_owned();
    let replacement = replacement.to_string();
    move |value| replace_in_strings(value, &prefix, &replacement)
}

/// The test directory `dir` becomes `TEST_DIR`, as iotests' `filter_testfiles`:
/// `filter_path(dir, "TEST_DIR")`.
///
/// ```
/// use qemu_machine::qmp_log::{filter_test_paths, QmpLog};
/// use serde_json::json;
///
/// let dir = std::env::temp_dir().join("t2");
/// let mut log = QmpLog::new().with_filter(filter_test_paths(&dir));
/// log.log(&json!({"filename": dir.join("dst.qcow2")}));
/// assert_eq!(log.text(), "{\"filename\": \"TEST_DIR/dst.qcow2\"}\n");
/// ```
pub fn filter_test_paths(
    dir: impl AsRef<std::path::Path>,
) -> impl Fn(Value) -> Value + Send + Sync + 'static {
    filter_path(dir, "TEST_DIR")
}

fn replace_in_strings(value: Value, prefix: &str, replacement: &str) -> Value {
    match value {
        Value::String(s) if !prefix.is_empty() && s.contains(prefix) => {
            Value::String(s.replace(prefix, replacement))
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|v| replace_in_strings(v, prefix, replacement))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, replace_in_strings(v, prefix, replacement)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_generated_node_names_deeply() {
        let value = json!({"return": [{"node-name": "#block142", "file": {"node-name": "mine"}}]});
        assert_eq!(
            canonical(&filter_generated_node_names(value)),
            "{\"return\": [{\"file\": {\"node-name\": \"mine\"}, \"node-name\": \"NODE_NAME\"}]}"
        );
    }
}
