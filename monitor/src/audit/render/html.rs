//! One self-contained HTML file: inline CSS, inline SVG, no script, no
//! external asset (fonts are the system's). Order: summary and scope of
//! evidence, the namespace matrix, the controls, the evidence tables, the
//! inputs with their SHA-256.
//!
//! Everything from the input (names, labels, reasons, paths) goes through
//! [`esc`]; nothing from the input ever lands in CSS, a URL or an attribute
//! other than escaped text.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{human_bytes, time};
use crate::audit::model::{
    AuditReport, Control, Edge, EdgeClass, EvidenceGroup, FlowEvidence, InputFile, Party, Verdict,
};

/// Escapes text for HTML/SVG text content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML (inline SVG) text.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Shortens a label for the SVG (the full text stays in the tooltip).
fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

const CSS: &str = r#"
:root{--pass:#1b7f3b;--fail:#c62828;--nv:#6b7280;--blocked:#e09b00;--allowed:#2e9e4f;--unjudged:#a3a3a3;--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f7f8fa}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:var(--bg)}
main{max-width:1320px;margin:0 auto;padding:28px 32px 48px}
header.top{background:#111827;color:#f9fafb;padding:26px 32px}
header.top .wrap{max-width:1320px;margin:0 auto;display:flex;justify-content:space-between;align-items:flex-end;gap:24px;flex-wrap:wrap}
header.top h1{margin:0 0 4px;font-size:26px;font-weight:650;letter-spacing:-.01em}
header.top .sub{color:#cbd5e1;font-size:13px}
.tiles{display:flex;gap:12px}
.tile{min-width:118px;padding:10px 14px;border-radius:10px;background:#1f2937;text-align:center}
.tile b{display:block;font-size:30px;line-height:1.1}
.tile span{font-size:11px;letter-spacing:.08em;text-transform:uppercase;color:#cbd5e1}
.tile.pass b{color:#4ade80}.tile.fail b{color:#f87171}.tile.nv b{color:#d1d5db}
h2{font-size:19px;margin:34px 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:15px;margin:0}
h4{font-size:13px;margin:18px 0 6px;color:#374151}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin:0 0 14px;box-shadow:0 1px 2px rgba(0,0,0,.03)}
.grid{display:grid;grid-template-columns:1.45fr 1fr 1fr;gap:14px}
@media (max-width:1100px){.grid{grid-template-columns:1fr}}
.grid .card{overflow:auto}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;font-size:13px}
.kv dt{color:var(--muted)}.kv dd{margin:0}
.badge{display:inline-block;min-width:104px;text-align:center;padding:3px 9px;border-radius:999px;font-size:11.5px;font-weight:700;letter-spacing:.05em;color:#fff;white-space:nowrap}
.badge.pass{background:var(--pass)}.badge.fail{background:var(--fail)}.badge.nv{background:var(--nv)}
.ctl{display:grid;grid-template-columns:120px 1fr;gap:4px 16px;align-items:start}
.ctl .id{font-weight:700;font-size:13px;color:#374151}
.ctl .req{color:var(--muted);font-size:12.5px;margin:2px 0 6px}
.ctl .reason{margin:0 0 8px}
.ctl.fail{border-left:5px solid var(--fail)}.ctl.pass{border-left:5px solid var(--pass)}.ctl.nv{border-left:5px solid var(--nv)}
.chips{display:flex;flex-wrap:wrap;gap:6px}
.chip{background:#f3f4f6;border:1px solid var(--line);border-radius:6px;padding:1px 7px;font-size:12px;color:#374151}
.chip b{font-weight:650}
.chip.hot{background:#fdecea;border-color:#f5c2c0;color:#8a1c1c}
table{border-collapse:collapse;width:100%;font-size:12.5px;background:#fff}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{background:#f3f4f6;font-weight:650;color:#374151;position:sticky;top:0}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td .minor{display:block;color:var(--muted);font-size:11.5px}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:11.5px;word-break:break-all}
.state{display:inline-block;white-space:nowrap;padding:0 6px;border-radius:4px;font-size:11.5px;font-weight:600}
.state.reached{background:#fdecea;color:#8a1c1c}.state.stopped{background:#fff4d6;color:#7a5300}.state.plain{background:#eef2f7;color:#374151}
table.ev{table-layout:fixed}table.ev td{overflow-wrap:anywhere}
.nw{white-space:nowrap}
.more{color:var(--muted);font-size:12px;margin:4px 0 0}
.matrix{overflow:auto;background:#fff;border:1px solid var(--line);border-radius:10px;padding:14px}
.note{color:var(--muted);font-size:12.5px}
details>summary{cursor:pointer;color:#374151;font-weight:600;margin:8px 0}
footer{color:var(--muted);font-size:12px;margin-top:36px}
@media print{body{background:#fff}.card{box-shadow:none}th{position:static}}
"#;

fn badge(v: Verdict) -> String {
    let class = match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::NotVerified => "nv",
    };
    format!(r#"<span class="badge {class}">{}</span>"#, v.as_str())
}

fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::NotVerified => "nv",
    }
}

fn class_colour(c: EdgeClass) -> &'static str {
    match c {
        EdgeClass::Violating => "#c62828",
        EdgeClass::Blocked => "#e09b00",
        EdgeClass::Allowed => "#2e9e4f",
        EdgeClass::Unjudged => "#a3a3a3",
    }
}

fn class_label(c: EdgeClass) -> &'static str {
    match c {
        EdgeClass::Violating => "violating: a forbidden flow got through",
        EdgeClass::Blocked => "blocked: forbidden flows were stopped",
        EdgeClass::Allowed => "allowed",
        EdgeClass::Unjudged => "no verdict",
    }
}

/// The namespace-to-namespace matrix as inline SVG: rows are the opening
/// side, columns the answering side; a cell's colour is its worst class and
/// its number the flow reports.
fn matrix_svg(r: &AuditReport) -> String {
    let m = &r.matrix;
    if m.edges.is_empty() {
        return r#"<p class="note">No flows were observed, so there is no matrix to draw.</p>"#
            .to_owned();
    }
    const CHAR: f64 = 7.0;
    const MAXLBL: usize = 30;
    const CW: f64 = 64.0;
    const CH: f64 = 40.0;
    let lbl_len = |v: &[String]| {
        v.iter()
            .map(|s| s.chars().count().min(MAXLBL))
            .max()
            .unwrap_or(4)
    };
    // Wide enough for the row labels and the "from" axis title.
    let left = (lbl_len(&m.sources) as f64 * CHAR + 28.0).max(150.0);
    // Column labels at -45°: their height is about their length / sqrt(2).
    let top = (lbl_len(&m.destinations) as f64 * CHAR * 0.72 + 40.0).max(70.0);
    let grid_w = m.destinations.len() as f64 * CW;
    let grid_h = m.sources.len() as f64 * CH;
    // The legend stands to the right of the grid.
    let legend_x = left + grid_w + 40.0;
    let width = legend_x + 330.0;
    let height = (top + grid_h + 16.0).max(top + 150.0);
    let edges: BTreeMap<(&str, &str), &Edge> = m
        .edges
        .iter()
        .map(|e| ((e.src.as_str(), e.dst.as_str()), e))
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" role="img" aria-label="Observed traffic between namespaces" font-family="system-ui,-apple-system,Segoe UI,Roboto,Arial,sans-serif">"#
    );
    let _ = write!(
        s,
        r##"<text x="{:.0}" y="16" font-size="12" fill="#6b7280">to (answering side) →</text>"##,
        left
    );
    let _ = write!(
        s,
        r##"<text x="{:.0}" y="{:.0}" font-size="12" text-anchor="end" fill="#6b7280">from (opening side) ↓</text>"##,
        left - 10.0,
        top - 8.0
    );
    for (j, d) in m.destinations.iter().enumerate() {
        let x = left + j as f64 * CW + CW / 2.0;
        let y = top - 8.0;
        let _ = write!(
            s,
            r##"<text x="{x:.1}" y="{y:.1}" font-size="13" fill="#1f2937" transform="rotate(-45 {x:.1} {y:.1})"><title>{}</title>{}</text>"##,
            esc(d),
            esc(&short(d, MAXLBL))
        );
    }
    for (i, src) in m.sources.iter().enumerate() {
        let y = top + i as f64 * CH;
        if i % 2 == 1 {
            let _ = write!(
                s,
                r##"<rect x="0" y="{y:.1}" width="{:.1}" height="{CH}" fill="#f9fafb"/>"##,
                left + grid_w
            );
        }
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="end" fill="#1f2937"><title>{}</title>{}</text>"##,
            left - 10.0,
            y + CH / 2.0 + 4.0,
            esc(src),
            esc(&short(src, MAXLBL))
        );
        for (j, dst) in m.destinations.iter().enumerate() {
            let x = left + j as f64 * CW;
            let same = src == dst;
            match edges.get(&(src.as_str(), dst.as_str())) {
                Some(e) => {
                    let tip = format!(
                        "{} → {}: {} ({} flow reports, {} violating, {} blocked, {}); ports {}",
                        e.src,
                        e.dst,
                        class_label(e.class),
                        e.flow_reports,
                        e.violating,
                        e.blocked,
                        human_bytes(e.bytes),
                        e.ports.join(", ")
                    );
                    let _ = write!(
                        s,
                        r##"<g><title>{}</title><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="5" fill="{}"{}/><text x="{:.1}" y="{:.1}" font-size="14" font-weight="700" text-anchor="middle" fill="#fff">{}</text></g>"##,
                        esc(&tip),
                        x + 3.0,
                        y + 3.0,
                        CW - 6.0,
                        CH - 6.0,
                        class_colour(e.class),
                        if same {
                            r##" stroke="#111827" stroke-width="2""##
                        } else {
                            ""
                        },
                        x + CW / 2.0,
                        y + CH / 2.0 + 4.0,
                        e.flow_reports
                    );
                }
                None => {
                    let _ = write!(
                        s,
                        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="5" fill="#f1f2f4"{}/>"##,
                        x + 3.0,
                        y + 3.0,
                        CW - 6.0,
                        CH - 6.0,
                        if same {
                            r##" stroke="#9ca3af" stroke-dasharray="3 2""##
                        } else {
                            ""
                        }
                    );
                }
            }
        }
    }
    // Legend, with how many cells of each class.
    let mut ly = top + 6.0;
    let _ = write!(
        s,
        r##"<text x="{legend_x:.1}" y="{ly:.1}" font-size="13" font-weight="700" fill="#1f2937">Legend</text>"##
    );
    ly += 14.0;
    for c in [
        EdgeClass::Violating,
        EdgeClass::Blocked,
        EdgeClass::Allowed,
        EdgeClass::Unjudged,
    ] {
        let cells = m.edges.iter().filter(|e| e.class == c).count();
        let _ = write!(
            s,
            r##"<rect x="{legend_x:.1}" y="{ly:.1}" width="18" height="18" rx="4" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="12.5" fill="#374151">{} ({cells})</text>"##,
            class_colour(c),
            legend_x + 26.0,
            ly + 13.5,
            esc(class_label(c))
        );
        ly += 26.0;
    }
    let _ = write!(
        s,
        r##"<rect x="{legend_x:.1}" y="{ly:.1}" width="18" height="18" rx="4" fill="#f1f2f4" stroke="#111827" stroke-width="2"/><text x="{:.1}" y="{:.1}" font-size="12.5" fill="#374151">outlined: inside one namespace</text>"##,
        legend_x + 26.0,
        ly + 13.5
    );
    ly += 34.0;
    let _ = write!(
        s,
        r##"<text x="{legend_x:.1}" y="{ly:.1}" font-size="11.5" fill="#6b7280">Number in a cell = flow reports.</text><text x="{legend_x:.1}" y="{:.1}" font-size="11.5" fill="#6b7280">Hover a cell for ports and bytes.</text>"##,
        ly + 16.0
    );
    s.push_str("</svg>");
    s
}

fn party_cell(p: &Party) -> String {
    let mut minor = Vec::new();
    if let Some(w) = &p.workload {
        minor.push(esc(w));
    }
    if let Some(sa) = &p.service_account {
        minor.push(format!("sa {}", esc(sa)));
    }
    let addr = match p.port {
        Some(port) if p.ip.contains(':') => format!("[{}]:{port}", p.ip),
        Some(port) => format!("{}:{port}", p.ip),
        None => p.ip.clone(),
    };
    minor.push(esc(&addr));
    format!(
        r#"<b>{}</b><span class="minor">{}</span>"#,
        esc(&p.name),
        minor.join(" · ")
    )
}

/// The state pill: red when a forbidden flow got through, amber when it
/// was stopped, neutral for allowed traffic.
fn state_cell(state: &str, forbidden: bool) -> String {
    let reached = matches!(state, "established" | "closed" | "answered");
    let class = match (forbidden, reached) {
        (true, true) => "reached",
        (true, false) => "stopped",
        (false, _) => "plain",
    };
    format!(r#"<span class="state {class}">{}</span>"#, esc(state))
}

fn flow_table(g: &EvidenceGroup) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<h4>{} <span class="note">({} flow report{}{})</span></h4>"#,
        esc(&g.title),
        g.total,
        if g.total == 1 { "" } else { "s" },
        if (g.flows.len() as u64) < g.total {
            format!(", first {} shown", g.flows.len())
        } else {
            String::new()
        }
    );
    s.push_str(r#"<table class="ev"><colgroup><col style="width:140px"><col style="width:17%"><col style="width:17%"><col style="width:80px"><col style="width:104px"><col style="width:104px"><col><col style="width:140px"></colgroup><thead><tr><th>Time (UTC)</th><th>Source</th><th>Destination</th><th>Port</th><th>State</th><th>Bytes sent / recv</th><th>Rule and reason</th><th>Observed by, at</th></tr></thead><tbody>"#);
    let forbidden = g.name != "allowed" && g.name != "unjudged";
    for f in &g.flows {
        s.push_str(&flow_row(f, forbidden));
    }
    s.push_str("</tbody></table>");
    if (g.flows.len() as u64) < g.total {
        let _ = write!(
            s,
            r#"<p class="more">{} more in the JSON report's counts; raise --max-evidence to list them.</p>"#,
            g.total - g.flows.len() as u64
        );
    }
    s
}

/// `2026-01-01 00:00:10` and the end, only its time of day when on the
/// same date.
fn span(f: &FlowEvidence) -> (String, String) {
    let start = f.start.format("%Y-%m-%d %H:%M:%S").to_string();
    let end = if f.end.date_naive() == f.start.date_naive() {
        f.end.format("%H:%M:%S").to_string()
    } else {
        f.end.format("%Y-%m-%d %H:%M:%S").to_string()
    };
    (start, end)
}

/// `file:line` without the directories (the full path is in the tooltip
/// and the JSON).
fn short_source(src: &str) -> &str {
    src.rsplit('/').next().unwrap_or(src)
}

fn flow_row(f: &FlowEvidence, forbidden: bool) -> String {
    let port = match f.port {
        Some(p) => format!("{p}/{}", esc(&f.protocol)),
        None => esc(&f.protocol),
    };
    let rule = match (&f.rule, &f.reason) {
        (Some(r), Some(why)) => format!(
            r#"<b>{}</b><span class="minor">{}</span>"#,
            esc(r),
            esc(why)
        ),
        (None, Some(why)) => esc(why),
        (Some(r), None) => format!("<b>{}</b>", esc(r)),
        (None, None) => String::new(),
    };
    format!(
        r#"<tr><td class="mono nw">{}<span class="minor">to {}</span></td><td>{}</td><td>{}</td><td class="nw">{}</td><td>{}</td><td class="num">{} / {}</td><td>{}</td><td>{}<span class="minor mono" title="{}">{}</span></td></tr>"#,
        esc(&span(f).0),
        esc(&span(f).1),
        party_cell(&f.src),
        party_cell(&f.dst),
        port,
        state_cell(&f.state, forbidden),
        esc(&human_bytes(f.bytes_sent)),
        esc(&human_bytes(f.bytes_received)),
        rule,
        f.observer.as_deref().map(esc).unwrap_or_default(),
        esc(&f.source),
        esc(short_source(&f.source))
    )
}

fn anchor(c: &Control) -> String {
    let slug: String =
        c.id.chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() {
                    ch.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
    format!("c-{slug}")
}

fn control_card(c: &Control) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<div class="card ctl {}" id="{}"><div>{}<div class="id" style="margin-top:6px">{}</div></div><div><h3>{}</h3><p class="req">{}</p><p class="reason">{}</p><div class="chips">"#,
        verdict_class(c.verdict),
        anchor(c),
        badge(c.verdict),
        esc(&c.id),
        esc(&c.title),
        esc(&c.requirement),
        esc(&c.reason)
    );
    for (k, v) in &c.counts {
        let hot = *v > 0
            && matches!(
                k.as_str(),
                "violating"
                    | "bypass"
                    | "on_default"
                    | "namespaces_fail"
                    | "namespaces_without_policies"
            );
        let _ = write!(
            s,
            r#"<span class="chip{}">{} <b>{}</b></span>"#,
            if hot { " hot" } else { "" },
            esc(&k.replace('_', " ")),
            v
        );
    }
    s.push_str("</div>");
    if !c.evidence.is_empty() {
        let _ = write!(
            s,
            r##"<p class="note" style="margin:8px 0 0"><a href="#e-{}">Evidence: {} flow reports in {} group{} ↓</a></p>"##,
            anchor(c),
            c.evidence.iter().map(|g| g.total).sum::<u64>(),
            c.evidence.len(),
            if c.evidence.len() == 1 { "" } else { "s" }
        );
    }
    s.push_str("</div></div>");
    s
}

fn scopes_table(c: &Control) -> String {
    let mut s = String::new();
    s.push_str("<table><thead><tr><th>Scope</th><th>Verdict</th><th>Reason</th><th>Details</th></tr></thead><tbody>");
    for sc in &c.scopes {
        let _ = write!(
            s,
            "<tr><td><b>{}</b></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&sc.name),
            badge(sc.verdict),
            esc(&sc.reason),
            sc.details
                .iter()
                .map(|d| esc(d))
                .collect::<Vec<_>>()
                .join("<br>")
        );
    }
    s.push_str("</tbody></table>");
    s
}

fn inputs_rows(s: &mut String, kind: &str, files: &[InputFile]) {
    for f in files {
        let _ = write!(
            s,
            r#"<tr><td>{kind}</td><td class="mono">{}</td><td class="num">{}</td><td class="num">{}</td><td class="mono">{}</td></tr>"#,
            esc(&f.path),
            f.bytes,
            f.records,
            esc(&f.sha256)
        );
    }
}

fn names(v: &[String]) -> String {
    if v.is_empty() {
        "<span class=\"note\">none</span>".to_owned()
    } else {
        v.iter().map(|s| esc(s)).collect::<Vec<_>>().join(", ")
    }
}

pub fn render(r: &AuditReport) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    s.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    // No script, no remote anything: forbid it outright.
    s.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">");
    let _ = write!(
        s,
        "<title>segwatch audit report {}</title><style>{CSS}</style></head><body>",
        esc(&time(&r.generated_at))
    );
    let window = match (&r.window.first, &r.window.last) {
        (Some(a), Some(b)) => format!("{} → {}", esc(&time(a)), esc(&time(b))),
        _ => "no flows observed".to_owned(),
    };
    let _ = write!(
        s,
        r#"<header class="top"><div class="wrap"><div><h1>Network segmentation audit</h1><div class="sub">Observation window {window} · {} flow reports from {} node{} · generated {} by {} {}</div></div><div class="tiles"><div class="tile fail"><b>{}</b><span>Fail</span></div><div class="tile pass"><b>{}</b><span>Pass</span></div><div class="tile nv"><b>{}</b><span>Not verified</span></div></div></div></header><main>"#,
        r.window.flow_reports,
        r.coverage.nodes_observed.len(),
        if r.coverage.nodes_observed.len() == 1 {
            ""
        } else {
            "s"
        },
        esc(&time(&r.generated_at)),
        esc(&r.tool.name),
        esc(&r.tool.version),
        r.summary.fail,
        r.summary.pass,
        r.summary.not_verified
    );

    // Verdicts at a glance.
    s.push_str(r#"<h2>Verdicts</h2><table><thead><tr><th style="width:130px">Verdict</th><th style="width:210px">Control</th><th>Reason</th></tr></thead><tbody>"#);
    for c in &r.controls {
        let _ = write!(
            s,
            r##"<tr><td>{}</td><td><a href="#{}"><b>{}</b></a><span class="minor">{}</span></td><td>{}</td></tr>"##,
            badge(c.verdict),
            anchor(c),
            esc(&c.id),
            esc(&c.title),
            esc(&c.reason)
        );
    }
    s.push_str("</tbody></table>");

    // Scope of the evidence: a quiet week is not proof of isolation.
    s.push_str(r#"<h2>Scope of the evidence</h2><div class="grid"><div class="card"><h3>Observation window</h3>"#);
    if r.window.observers.is_empty() {
        s.push_str(r#"<p class="note">No flow reports: nothing was observed.</p>"#);
    } else {
        s.push_str(r#"<table style="margin-top:8px"><thead><tr><th>Observer node</th><th>First</th><th>Last</th><th>Reports</th></tr></thead><tbody>"#);
        for w in &r.window.observers {
            let _ = write!(
                s,
                r#"<tr><td><b>{}</b></td><td class="mono nw">{}</td><td class="mono nw">{}</td><td class="num">{}</td></tr>"#,
                esc(&w.node),
                esc(&w.first.format("%Y-%m-%d %H:%M:%S").to_string()),
                esc(&w.last.format("%Y-%m-%d %H:%M:%S").to_string()),
                w.flow_reports
            );
        }
        s.push_str("</tbody></table>");
    }
    let c = &r.coverage;
    let _ = write!(
        s,
        r#"</div><div class="card"><h3>Coverage</h3><dl class="kv" style="margin-top:8px"><dt>Nodes observed</dt><dd>{}</dd><dt>Nodes silent</dt><dd>{}</dd><dt>Namespaces observed</dt><dd>{}</dd><dt>Namespaces never seen</dt><dd>{}</dd><dt>Unattributed reports</dt><dd>{}</dd></dl></div><div class="card"><h3>How flows were judged</h3><p style="margin:8px 0 0">{}</p><dl class="kv" style="margin-top:8px"><dt>Segmentation</dt><dd>{}</dd><dt>NetworkPolicy</dt><dd>{}</dd><dt>Declared policies</dt><dd>{}</dd></dl></div></div>"#,
        names(&c.nodes_observed),
        names(&c.nodes_not_observed),
        names(&c.namespaces_observed),
        names(&c.namespaces_not_observed),
        c.unattributed_flow_reports,
        esc(&r.judgement.note),
        r.judgement.segmentation.as_str(),
        r.judgement.networkpolicy.as_str(),
        names(&r.judgement.policies)
    );

    // The matrix.
    s.push_str(r#"<h2>Observed traffic between namespaces</h2><p class="note">Rows open the flow, columns answer it. This is the observed matrix to set beside the declared plan (BSI APP.4.4.A1).</p><div class="matrix">"#);
    s.push_str(&matrix_svg(r));
    s.push_str("</div>");
    if !r.matrix.edges.is_empty() {
        s.push_str(r#"<details><summary>Matrix as a table</summary><table><thead><tr><th>From</th><th>To</th><th>Class</th><th>Reports</th><th>Violating</th><th>Blocked</th><th>Bytes</th><th>Ports</th></tr></thead><tbody>"#);
        for e in &r.matrix.edges {
            let _ = write!(
                s,
                r#"<tr><td>{}</td><td>{}</td><td><span class="state" style="background:{};color:#fff">{}</span></td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="mono">{}</td></tr>"#,
                esc(&e.src),
                esc(&e.dst),
                class_colour(e.class),
                e.class.as_str(),
                e.flow_reports,
                e.violating,
                e.blocked,
                esc(&human_bytes(e.bytes)),
                esc(&e.ports.join(", "))
            );
        }
        s.push_str("</tbody></table></details>");
    }

    // Controls.
    for sp in &r.staged {
        s.push_str(&format!(
            "<h2>Staged policy {} {}</h2>",
            esc(&sp.kind),
            esc(&sp.name)
        ));
        if let Some(why) = &sp.invalid {
            s.push_str(&format!("<p>Invalid, left out: {}</p>", esc(why)));
            continue;
        }
        s.push_str(&format!(
            "<p>Action {}: {} connection(s) judged by NetworkPolicy in the window, {} selected by this policy; would deny <b>{}</b> (recorded by segwatch run: {}), would allow {}.</p>",
            esc(&sp.action),
            sp.connections_judged,
            sp.connections_selected,
            sp.would_deny,
            sp.recorded_would_deny,
            sp.would_allow
        ));
        if !sp.would_deny_evidence.is_empty() {
            s.push_str("<ul>");
            for e in &sp.would_deny_evidence {
                s.push_str(&format!("<li>would deny: {}</li>", esc(e)));
            }
            s.push_str("</ul>");
        }
    }
    s.push_str("<h2>Controls</h2>");
    for c in &r.controls {
        s.push_str(&control_card(c));
        if !c.scopes.is_empty() {
            let _ = write!(
                s,
                r#"<details{} style="margin:-6px 0 16px 16px"><summary>{} — per scope ({})</summary>{}</details>"#,
                if c.verdict == Verdict::Fail {
                    " open"
                } else {
                    ""
                },
                esc(&c.id),
                c.scopes.len(),
                scopes_table(c)
            );
        }
    }

    // Evidence.
    if r.controls.iter().any(|c| !c.evidence.is_empty()) {
        s.push_str("<h2>Evidence</h2>");
        for c in r.controls.iter().filter(|c| !c.evidence.is_empty()) {
            let _ = write!(
                s,
                r#"<div class="card" id="e-{}"><h3>{} {} — {}</h3>"#,
                anchor(c),
                badge(c.verdict),
                esc(&c.id),
                esc(&c.title)
            );
            for g in &c.evidence {
                s.push_str(&flow_table(g));
            }
            s.push_str("</div>");
        }
    }

    // Inputs.
    s.push_str(r#"<h2>Inputs</h2><p class="note">SHA-256 of every file read; re-run segwatch audit on the same files to reproduce this report.</p><table><thead><tr><th>Kind</th><th>Path</th><th>Bytes</th><th>Records</th><th>SHA-256</th></tr></thead><tbody>"#);
    inputs_rows(&mut s, "flows", &r.inputs.flows);
    inputs_rows(&mut s, "inventory", &r.inputs.inventory);
    inputs_rows(&mut s, "policy", &r.inputs.policy);
    inputs_rows(&mut s, "probes", &r.inputs.probes);
    s.push_str("</tbody></table>");
    if !r.warnings.is_empty() {
        s.push_str("<h2>Warnings</h2><ul>");
        for w in &r.warnings {
            let _ = write!(s, "<li>{}</li>", esc(w));
        }
        s.push_str("</ul>");
    }
    let _ = write!(
        s,
        "<footer>{} {} · report schema {} · generated {}</footer></main></body></html>\n",
        esc(&r.tool.name),
        esc(&r.tool.version),
        esc(&r.schema),
        esc(&time(&r.generated_at))
    );
    s
}
