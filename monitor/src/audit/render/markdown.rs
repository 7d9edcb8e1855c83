//! Markdown for tickets: GitHub-flavoured tables, every value from the input
//! escaped so a hostile label cannot break the table or inject links/HTML.

use std::fmt::Write as _;

use super::{human_bytes, time};
use crate::audit::model::{AuditReport, FlowEvidence, InputFile, Party};

/// Escapes text for a Markdown table cell or paragraph.
pub fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '|' | '!' | '~' | '&' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn party(p: &Party) -> String {
    let mut s = md(&p.name);
    let mut extra = Vec::new();
    if let Some(w) = &p.workload {
        extra.push(md(w));
    }
    if let Some(sa) = &p.service_account {
        extra.push(format!("sa {}", md(sa)));
    }
    if !extra.is_empty() {
        let _ = write!(s, " ({})", extra.join(", "));
    }
    s
}

fn flow_row(f: &FlowEvidence) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
        time(&f.start),
        party(&f.src),
        party(&f.dst),
        match f.port {
            Some(p) => format!("{p}/{}", md(&f.protocol)),
            None => md(&f.protocol),
        },
        md(&f.state),
        human_bytes(f.bytes_sent),
        human_bytes(f.bytes_received),
        f.rule.as_deref().map(md).unwrap_or_default(),
        f.reason.as_deref().map(md).unwrap_or_default(),
        md(&format!(
            "{}{}",
            f.observer
                .as_deref()
                .map(|o| format!("{o} "))
                .unwrap_or_default(),
            f.source
        )),
    )
}

fn inputs(out: &mut String, kind: &str, files: &[InputFile]) {
    for f in files {
        let _ = writeln!(
            out,
            "| {kind} | {} | {} | {} | `{}` |",
            md(&f.path),
            f.bytes,
            f.records,
            f.sha256
        );
    }
}

pub fn render(r: &AuditReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# segwatch audit report\n");
    let _ = writeln!(
        o,
        "Generated {} by {} {} (schema `{}`).\n",
        time(&r.generated_at),
        md(&r.tool.name),
        md(&r.tool.version),
        r.schema
    );
    let _ = writeln!(
        o,
        "**PASS {} · FAIL {} · NOT VERIFIED {}**\n",
        r.summary.pass, r.summary.fail, r.summary.not_verified
    );
    let _ = writeln!(o, "| Control | Verdict | Reason |\n|---|---|---|");
    for c in &r.controls {
        let _ = writeln!(
            o,
            "| {} — {} | **{}** | {} |",
            md(&c.id),
            md(&c.title),
            c.verdict.as_str(),
            md(&c.reason)
        );
    }

    let _ = writeln!(o, "\n## Observation window and coverage\n");
    match (&r.window.first, &r.window.last) {
        (Some(a), Some(b)) => {
            let _ = writeln!(
                o,
                "From {} to {}: {} flow reports.\n",
                time(a),
                time(b),
                r.window.flow_reports
            );
        }
        _ => {
            let _ = writeln!(o, "No flow reports: nothing was observed.\n");
        }
    }
    if !r.window.observers.is_empty() {
        let _ = writeln!(
            o,
            "| Observer node | First | Last | Flow reports |\n|---|---|---|---|"
        );
        for w in &r.window.observers {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                md(&w.node),
                time(&w.first),
                time(&w.last),
                w.flow_reports
            );
        }
        o.push('\n');
    }
    let c = &r.coverage;
    let names = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.iter().map(|s| md(s)).collect::<Vec<_>>().join(", ")
        }
    };
    let _ = writeln!(o, "- Nodes observed: {}", names(&c.nodes_observed));
    let _ = writeln!(
        o,
        "- Nodes in the inventory that reported nothing: {}",
        names(&c.nodes_not_observed)
    );
    let _ = writeln!(
        o,
        "- Namespaces observed: {}",
        names(&c.namespaces_observed)
    );
    let _ = writeln!(
        o,
        "- Namespaces in the inventory never seen in a flow: {}",
        names(&c.namespaces_not_observed)
    );
    let _ = writeln!(
        o,
        "- Flow reports with an unattributed end: {}\n",
        c.unattributed_flow_reports
    );
    let _ = writeln!(o, "{}\n", md(&r.judgement.note));

    let _ = writeln!(o, "## Namespace matrix (observed)\n");
    if r.matrix.edges.is_empty() {
        let _ = writeln!(o, "No flows.\n");
    } else {
        let _ = writeln!(
            o,
            "| From | To | Class | Flow reports | Violating | Blocked | Bytes | Ports |\n|---|---|---|---|---|---|---|---|"
        );
        for e in &r.matrix.edges {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                md(&e.src),
                md(&e.dst),
                e.class.as_str(),
                e.flow_reports,
                e.violating,
                e.blocked,
                human_bytes(e.bytes),
                md(&e.ports.join(", "))
            );
        }
        o.push('\n');
    }

    for sp in &r.staged {
        let _ = writeln!(o, "## Staged policy {} {}\n", sp.kind, md(&sp.name));
        if let Some(why) = &sp.invalid {
            let _ = writeln!(o, "Invalid, left out: {}\n", md(why));
            continue;
        }
        let _ = writeln!(
            o,
            "- Action: {}\n- Window: {} connection(s) judged by NetworkPolicy, {} selected by this policy\n- Would deny: **{}** (recorded by segwatch run: {})\n- Would allow: {}\n",
            sp.action,
            sp.connections_judged,
            sp.connections_selected,
            sp.would_deny,
            sp.recorded_would_deny,
            sp.would_allow
        );
        for e in &sp.would_deny_evidence {
            let _ = writeln!(o, "  - would deny: {}", md(e));
        }
        if !sp.would_deny_evidence.is_empty() {
            o.push('\n');
        }
    }

    let _ = writeln!(o, "## Controls\n");
    for c in &r.controls {
        let _ = writeln!(
            o,
            "### {} — {}: **{}**\n",
            md(&c.id),
            md(&c.title),
            c.verdict.as_str()
        );
        let _ = writeln!(o, "*{}*\n", md(&c.requirement));
        let _ = writeln!(o, "{}\n", md(&c.reason));
        let counts: Vec<String> = c.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(o, "Counts: {}\n", md(&counts.join(" · ")));
        if !c.scopes.is_empty() {
            let _ = writeln!(
                o,
                "| Scope | Verdict | Reason | Details |\n|---|---|---|---|"
            );
            for s in &c.scopes {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} |",
                    md(&s.name),
                    s.verdict.as_str(),
                    md(&s.reason),
                    md(&s.details.join(", "))
                );
            }
            o.push('\n');
        }
        for g in &c.evidence {
            let _ = writeln!(
                o,
                "#### {} ({} of {} shown)\n",
                md(&g.title),
                g.flows.len(),
                g.total
            );
            let _ = writeln!(
                o,
                "| Start | Source | Destination | Port | State | Bytes sent / received | Rule | Reason | Observed at |\n|---|---|---|---|---|---|---|---|---|"
            );
            for f in &g.flows {
                let _ = writeln!(o, "{}", flow_row(f));
            }
            o.push('\n');
        }
    }

    let _ = writeln!(o, "## Inputs\n");
    let _ = writeln!(
        o,
        "| Kind | Path | Bytes | Records | SHA-256 |\n|---|---|---|---|---|"
    );
    inputs(&mut o, "flows", &r.inputs.flows);
    inputs(&mut o, "inventory", &r.inputs.inventory);
    inputs(&mut o, "policy", &r.inputs.policy);
    inputs(&mut o, "probes", &r.inputs.probes);
    if !r.warnings.is_empty() {
        let _ = writeln!(o, "\n## Warnings\n");
        for w in &r.warnings {
            let _ = writeln!(o, "- {}", md(w));
        }
    }
    o
}
