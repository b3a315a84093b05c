//! `qemu-machine shell`: qmp-shell, interactive or scripted.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use qemu_machine_cli::shell_syntax::ShellParser;
use qmp::{Client, EventFilter, Request};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::history::DefaultHistory;
use rustyline::{Editor, ExternalPrinter, Helper, Highlighter, Hinter, Validator};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::args::{optional_seconds, ShellArgs};
use crate::failure::{qmp_error_text, Failure, Outcome};
use crate::output::print_json;
use crate::term::sanitize;
use crate::tools::client_builder;

/// What one shell line turned into.
enum Reply {
    /// A QMP response (or a syntax error shaped like one).
    Json(Value),
    /// HMP text.
    Text(String),
    /// Nothing to show (an empty line, an open transaction, a local command).
    Nothing,
}

impl Reply {
    /// Prints the reply on stdout: JSON on one line (or pretty), HMP text as it is.
    fn print(self, pretty: bool) {
        match self {
            Reply::Json(value) => print_json(&value, pretty),
            Reply::Text(text) => print!("{text}"),
            Reply::Nothing => {}
        }
    }
}

/// A connection and what the shell keeps between lines.
struct Session {
    /// The QMP (or guest agent) connection.
    client: Client,
    /// qmp-shell syntax, with an open transaction if there is one.
    parser: ShellParser,
    /// Lines are HMP commands (`-H`).
    hmp: bool,
    /// The CPU HMP commands run on (`cpu N`).
    cpu: i64,
    /// Echo the JSON sent (`-v`).
    verbose: bool,
    /// Where commands and replies are appended (`-l`), redacted.
    log: Option<File>,
}

impl Session {
    /// Runs one input line.
    async fn line(&mut self, line: &str) -> Result<Reply, Failure> {
        if self.hmp {
            return self.hmp_line(line).await;
        }
        let command = match self.parser.feed(line) {
            Ok(Some(command)) => command,
            Ok(None) => return Ok(Reply::Nothing),
            Err(e) => {
                return Ok(Reply::Json(
                    json!({"error": {"class": "SyntaxError", "desc": e.to_string()}}),
                ))
            }
        };
        // Secrets (a `secret` object's data, passwords) never reach the screen or the log.
        let mut shown = command.clone();
        qmp::redact::redact_json(&mut shown);
        if self.verbose {
            eprintln!("{shown}");
        }
        let name = command["execute"].as_str().unwrap_or_default().to_string();
        let arguments = command.get("arguments").cloned().unwrap_or(Value::Null);
        let response = self
            .client
            .send(Request::new(name).arguments(arguments))
            .await?;
        let reply = response.to_json_without_id();
        if let Some(log) = &mut self.log {
            let mut merged = shown.as_object().cloned().unwrap_or_default();
            merged.extend(reply.as_object().cloned().unwrap_or_default());
            let mut merged = Value::Object(merged);
            qmp::redact::redact_json(&mut merged);
            writeln!(log, "{merged}")?;
        }
        Ok(Reply::Json(reply))
    }

    /// Runs one line in HMP mode; `cpu N` only switches the CPU (when it exists).
    async fn hmp_line(&mut self, line: &str) -> Result<Reply, Failure> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(Reply::Nothing);
        }
        if let Some(index) = line.strip_prefix("cpu ") {
            let index: i64 = match index.trim().parse() {
                Ok(index) => index,
                Err(_) => return Ok(Reply::Text(format!("invalid CPU index {index:?}"))),
            };
            let probe = json!({"command-line": "info version", "cpu-index": index});
            return Ok(
                match self.client.execute("human-monitor-command", probe).await {
                    Ok(_) => {
                        self.cpu = index;
                        Reply::Nothing
                    }
                    Err(e) => Reply::Text(format!("{}: CPU {index}", qmp_error_text(&e))),
                },
            );
        }
        let arguments = json!({"command-line": line, "cpu-index": self.cpu});
        Ok(
            match self
                .client
                .execute("human-monitor-command", arguments)
                .await
            {
                Ok(text) => Reply::Text(text.as_str().unwrap_or_default().to_string()),
                Err(e) if e.class().is_some() => Reply::Text(qmp_error_text(&e)),
                Err(e) => return Err(e.into()),
            },
        )
    }
}

/// `qemu-machine shell`: line editing, completion and history on a terminal, else one reply
/// per input line for scripts.
pub(crate) async fn shell(args: ShellArgs) -> Outcome {
    let address = args.address.parse()?;
    let timeout = optional_seconds(args.timeout, "--timeout")?;
    let mut builder = client_builder("shell", timeout);
    if args.no_negotiate {
        builder = builder.await_greeting(false).negotiate(false);
    }
    let client = builder.connect(&address).await?;
    let log = args.log.as_deref().map(open_log).transpose()?;
    let session = Session {
        client,
        parser: ShellParser::new(),
        hmp: args.hmp,
        cpu: 0,
        verbose: args.verbose,
        log,
    };
    if std::io::stdin().is_terminal() {
        interactive(session, args.pretty).await
    } else {
        scripted(session, args.pretty).await
    }
}

/// Opens the `--log` file for appending: created 0600 whatever the umask; never through a
/// symlink, and anything but a regular file (a FIFO would block the open) is refused.
fn open_log(path: &Path) -> Result<File, Failure> {
    qmp::fsutil::open_private_append(path)
        .map_err(|e| Failure::new(format!("--log {}: {e}", path.display())))
}

/// One reply per input line on stdout, for scripts.
async fn scripted(mut session: Session, pretty: bool) -> Outcome {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        session.line(&line).await?.print(pretty);
    }
    if session.parser.in_transaction() {
        return Err(Failure::new(
            "input ended inside an open transaction( ... )",
        ));
    }
    Ok(0)
}

/// Tab completion of command names (first word, or an action in a transaction).
#[derive(Helper, Highlighter, Hinter, Validator)]
struct Commands {
    /// The server's commands, sorted.
    names: Vec<String>,
}

impl Completer for Commands {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos].rfind(char::is_whitespace).map_or(0, |i| i + 1);
        if start > 0 && !line[..start].trim_start().starts_with("transaction(") {
            return Ok((pos, Vec::new()));
        }
        let word = &line[start..pos];
        let matches = self
            .names
            .iter()
            .filter(|n| n.starts_with(word))
            .map(|n| Pair {
                display: n.clone(),
                replacement: n.clone(),
            })
            .collect();
        Ok((start, matches))
    }
}

/// Where history is kept between sessions: `~/.qmp-shell_history`, as qmp-shell does.
fn history_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".qmp-shell_history"))
}

/// The shell on a terminal: prompts, events printed above the prompt as they come.
async fn interactive(mut session: Session, pretty: bool) -> Outcome {
    let names = if session.hmp {
        Vec::new()
    } else {
        let commands = session
            .client
            .execute("query-commands", Value::Null)
            .await
            .unwrap_or(Value::Null);
        let mut names: Vec<String> = commands
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect();
        names.sort();
        names
    };
    let mut editor: Editor<Commands, DefaultHistory> =
        Editor::new().map_err(|e| Failure::new(format!("cannot start line editing: {e}")))?;
    editor.set_helper(Some(Commands { names }));
    let history = history_file();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!("Welcome to the QMP low-level shell!");
    if let Some(greeting) = session.client.greeting() {
        println!("Connected to QEMU {}\n", greeting.version.qemu);
    }
    // Events are printed as they arrive, above the prompt.
    let mut printer = editor
        .create_external_printer()
        .map_err(|e| Failure::new(format!("cannot print events: {e}")))?;
    let mut events = session.client.subscribe(EventFilter::all());
    let event_task = tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if printer.print(format!("{event}\n")).is_err() {
                break;
            }
        }
    });
    let runtime = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || -> Outcome {
        loop {
            let prompt = match (session.hmp, session.parser.in_transaction()) {
                (true, _) => "(HMP) ",
                (false, true) => "TRANS> ",
                (false, false) => "(QEMU) ",
            };
            let line = match editor.readline(prompt) {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(Failure::new(format!("reading input: {e}"))),
            };
            let _ = editor.add_history_entry(line.as_str());
            match runtime.block_on(session.line(&line)) {
                Ok(reply) => reply.print(pretty),
                Err(failure) if !session.client.is_connected() => return Err(failure),
                Err(failure) => eprintln!("error: {}", sanitize(failure.message_text())),
            }
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
        Ok(0)
    })
    .await
    .map_err(|e| Failure::new(format!("the shell stopped: {e}")))?;
    event_task.abort();
    result
}
