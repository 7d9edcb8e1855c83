//! The audit report's staged-policy sections: the window's connections
//! replayed through the live policies with the staged ones applied
//! ([`crate::netpol::staged::replay_window`]), per staged object.

use super::model::{AuditReport, StagedSection};
use crate::inventory::Object;
use crate::netpol::staged::{replay_window, StagedAction, StagedObjects};
use crate::report::FlowReport;

/// Adds one section per staged object of `objects` (none without any).
pub fn apply(report: &mut AuditReport, objects: &[Object], flows: &[FlowReport], cap: usize) {
    let staged = StagedObjects::from_inventory(objects);
    if staged.is_empty() {
        return;
    }
    let live = crate::netpol::Objects::from_inventory(objects);
    report.staged = replay_window(&live, &staged, flows)
        .into_iter()
        .map(|(info, st)| StagedSection {
            kind: info.kind.as_str().to_owned(),
            name: info.reference(),
            action: match info.action {
                StagedAction::Set => "Set",
                StagedAction::Delete => "Delete",
            }
            .to_owned(),
            invalid: info.invalid.clone(),
            connections_judged: st.judged,
            connections_selected: st.selected,
            would_deny: st.would_deny.len() as u64,
            would_allow: st.would_allow,
            recorded_would_deny: st.recorded_would_deny,
            would_deny_evidence: st.would_deny.into_iter().take(cap).collect(),
        })
        .collect();
}
