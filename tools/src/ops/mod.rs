//! What the operator commands (`casefeed dlq`, `casefeed failures`, `casefeed audit`,
//! `casefeed approve|discard`) share: the SQS walk that reads a queue without consuming it,
//! the operator's view of a dead letter (attributes and envelope metadata, never a row's
//! fields), the caller's identity for audit records, progress bars and output.
//!
//! * [`letters`] — PURE: a dead letter's view, filters and grouping;
//! * [`queue`] — the SQS calls: receive, hide/release, copy to another queue, delete;
//! * [`caller`] — who runs the command (STS `GetCallerIdentity`, else the credentials' key id);
//! * this file — progress bars (drawn only when stderr is a terminal) and `--json` output.

pub mod caller;
pub mod letters;
pub mod queue;

use std::io::IsTerminal;

/// A progress bar on stderr for a walk over about `len` items: hidden unless stderr is a
/// terminal (indicatif's default stderr target hides itself then too; this makes it
/// explicit), so it never mixes into piped output or `--json` stdout.
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// An error writing a command's output.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the output as JSON: {0}")]
pub struct OutputError(#[from] serde_json::Error);

/// Print `value` as one pretty JSON document on stdout (the whole of `--json` output).
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), OutputError> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    Ok(())
}

/// A `--reason` as given, trimmed; `None` when it is empty.
pub fn reason(given: &str) -> Option<String> {
    let r = given.trim();
    (!r.is_empty()).then(|| r.to_string())
}

/// An SDK error's message with its causes (`DisplayErrorContext`), for error messages.
pub fn sdk_message<E: std::error::Error>(e: &E) -> String {
    aws_smithy_types::error::display::DisplayErrorContext(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_bar_is_hidden_when_stderr_is_not_a_terminal() {
        let bar = progress(10, "walking");
        if !std::io::stderr().is_terminal() {
            assert!(bar.is_hidden());
        }
        // indicatif's own default target behaves the same
        if !std::io::stderr().is_terminal() {
            assert!(indicatif::ProgressBar::new(10).is_hidden());
        }
    }

    #[test]
    fn an_empty_reason_is_no_reason() {
        assert_eq!(reason("  "), None);
        assert_eq!(
            reason(" fixed the mapping "),
            Some("fixed the mapping".into())
        );
    }
}
