//! One module per `segwatch` subcommand: argument parsing at the edge, then a
//! call into the pure core.

pub mod audit;
pub mod crd;
pub mod netpol;
pub mod probe;
pub mod run;
pub mod staged;
pub mod suggest;
mod suggest_baseline;

/// `text` on one line: a message that quotes user input (a YAML key, a
/// file name) may carry line breaks, which would split the error line.
pub fn one_line(text: &str) -> String {
    text.replace("\r\n", "\\n").replace(['\n', '\r'], "\\n")
}
