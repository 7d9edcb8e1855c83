//! The three renderings of an [`AuditReport`](super::model::AuditReport):
//! JSON (the full content for tools), Markdown (for tickets) and HTML (one
//! self-contained file for people). All are deterministic: same report,
//! same bytes.

pub mod html;
pub mod markdown;

use super::model::AuditReport;

/// Output format of `segwatch audit --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Html,
    Json,
    Markdown,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "html" => Ok(Format::Html),
            "json" => Ok(Format::Json),
            "md" | "markdown" => Ok(Format::Markdown),
            other => Err(format!(
                "--format: unknown format `{other}`; use html, json or md"
            )),
        }
    }
}

pub fn render(report: &AuditReport, format: Format) -> String {
    match format {
        Format::Json => json(report),
        Format::Markdown => markdown::render(report),
        Format::Html => html::render(report),
    }
}

pub fn json(report: &AuditReport) -> String {
    // Serialising plain data with string keys cannot fail.
    let mut s = serde_json::to_string_pretty(report).unwrap_or_default();
    s.push('\n');
    s
}

/// `1234567` → `1.2 MB`; exact numbers stay in JSON.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// RFC 3339 in UTC with seconds, as everywhere in the report.
pub fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
