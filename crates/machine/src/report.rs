//! Error reports people can read, for `main`.
//!
//! Returning an [`Error`] from `main` prints its `Debug` form: every field, the whole argv
//! as a list. Return a [`Report`] instead: its `Debug` (what `main` prints) is the error's
//! multi-line text (command line, exit status, QEMU's output) followed by its causes, as
//! `anyhow` prints them.
//!
//! ```no_run
//! use qemu_machine::{Machine, Report};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Report> {
//!     let mut vm = Machine::new(Machine::builder("qemu-system-x86_64").args(["-bogus"]));
//!     vm.launch().await?; // prints "Error: vm-...: launching QEMU failed: ..." and exits 1
//!     Ok(())
//! }
//! ```

use std::fmt::{self, Write as _};

use crate::error::Error;

/// An error for `fn main() -> Result<(), Report>`: prints the whole chain readably.
/// Made from a machine [`Error`], a [`qmp::Error`] or an [`std::io::Error`] with `?`.
///
/// ```
/// use qemu_machine::Report;
/// let report = Report::from(std::io::Error::other("disk full"));
/// assert_eq!(format!("{report:?}"), "disk full");
/// ```
pub struct Report(Box<dyn std::error::Error + Send + Sync + 'static>);

impl Report {
    /// The error inside.
    ///
    /// ```
    /// let report = qemu_machine::Report::from(std::io::Error::other("x"));
    /// assert_eq!(report.error().to_string(), "x");
    /// ```
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.0.as_ref()
    }
}

impl From<Error> for Report {
    fn from(error: Error) -> Self {
        Report(Box::new(error))
    }
}

impl From<qmp::Error> for Report {
    fn from(error: qmp::Error) -> Self {
        Report(Box::new(error))
    }
}

impl From<std::io::Error> for Report {
    fn from(error: std::io::Error) -> Self {
        Report(Box::new(error))
    }
}

/// The error and its causes, one per paragraph; a cause whose text the previous one
/// already quoted is left out.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut shown = text.clone();
    let mut source = error.source();
    let mut first = true;
    while let Some(cause) = source {
        let line = cause.to_string();
        if !shown.contains(&line) {
            if first {
                text.push_str("\n\nCaused by:");
                first = false;
            }
            let _ = write!(text, "\n    {}", line.replace('\n', "\n    "));
            shown.push_str(&line);
        }
        source = cause.source();
    }
    text
}

impl Error {
    /// The readable report: this error's text (with its command line, exit status and
    /// output when it has them) and every cause.
    ///
    /// ```
    /// # fn f(error: qemu_machine::Error) {
    /// eprintln!("{}", error.report());
    /// # }
    /// ```
    pub fn report(&self) -> String {
        chain(self)
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0.as_ref()))
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "reading the image failed")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn chains_causes_once() {
        let text = chain(&Outer(std::io::Error::other("no space\nleft")));
        assert_eq!(
            text,
            "reading the image failed\n\nCaused by:\n    no space\n    left"
        );
    }
}
