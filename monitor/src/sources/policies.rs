//! SegmentationPolicies from the cluster sources (API watch, inventory
//! files) are checked before they reach the index: an invalid version is
//! reported and the previous valid version of that document stays in force.
//!
//! ```text
//!  SegmentationPolicy version ─► compile ─ok──► index (and remembered as the last valid one)
//!                                   └─ error ─► segwatch_policy_errors_total{policy} +1,
//!                                               one warn line (once per version),
//!                                               status condition Accepted=False (API),
//!                                               index keeps the last valid version (or none)
//! ```
//!
//! The rule for partially valid sets: every document stands on its own.
//! Valid documents take effect; an invalid one (one bad rule makes the whole
//! document invalid, none of its new rules is taken) is replaced by its
//! last valid version, by name, or contributes nothing if it has not been
//! valid since the agent started. Since documents only ever allow, a
//! missing document means more violations, never fewer.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use crate::metrics::Metrics;
use crate::segpolicy::{CompiledDoc, SegmentationPolicy};

/// The condition type segwatch sets on a SegmentationPolicy's status.
pub const CONDITION: &str = "Accepted";

/// What to do with one version of a policy.
#[derive(Debug)]
pub struct Admitted {
    /// What the index should hold for this name now.
    pub keep: Option<SegmentationPolicy>,
    /// `Err(problem)` when this version is invalid.
    pub verdict: Result<(), String>,
}

/// The last valid version of every policy, and which invalid versions were
/// already reported.
pub struct PolicyGate {
    metrics: Metrics,
    last_valid: HashMap<String, SegmentationPolicy>,
    /// name → version of the invalid one already reported.
    reported: HashMap<String, String>,
}

impl PolicyGate {
    pub fn new(metrics: Metrics) -> Self {
        PolicyGate {
            metrics,
            last_valid: HashMap::new(),
            reported: HashMap::new(),
        }
    }

    /// Checks one version of a policy (`version`: its resourceVersion, or
    /// anything that changes when it changes).
    pub fn admit(&mut self, sp: SegmentationPolicy, version: &str) -> Admitted {
        let name = sp.metadata.name.clone().unwrap_or_default();
        match CompiledDoc::compile(&sp) {
            Ok(_) => {
                if self.reported.remove(&name).is_some() {
                    tracing::info!(policy = %name, "SegmentationPolicy valid again, in force");
                }
                self.last_valid.insert(name, sp.clone());
                Admitted {
                    keep: Some(sp),
                    verdict: Ok(()),
                }
            }
            Err(e) => {
                let problem = e.to_string();
                let keep = self.reject(&name, version, &problem);
                Admitted {
                    keep,
                    verdict: Err(problem),
                }
            }
        }
    }

    /// A version of policy `name` that is invalid (`problem` says why):
    /// reported once per version; returns the last valid version, if any.
    pub fn reject(
        &mut self,
        name: &str,
        version: &str,
        problem: &str,
    ) -> Option<SegmentationPolicy> {
        let keep = self.last_valid.get(name).cloned();
        if self.reported.get(name).map(String::as_str) != Some(version) {
            self.reported.insert(name.to_owned(), version.to_owned());
            self.metrics.policy_errors.with_label_values(&[name]).inc();
            let what = if keep.is_some() {
                "its previous valid version stays in force"
            } else {
                "it has no valid version, so it allows nothing"
            };
            tracing::warn!(policy = %name, version, "SegmentationPolicy {name} is invalid, {what}: {problem}");
        }
        keep
    }

    /// The policy is gone from its source.
    pub fn forget(&mut self, name: &str) {
        self.last_valid.remove(name);
        self.reported.remove(name);
    }

    /// Only these policies exist now (a re-list or a reload).
    pub fn retain(&mut self, names: &HashSet<String>) {
        self.last_valid.retain(|n, _| names.contains(n));
        self.reported.retain(|n, _| names.contains(n));
    }
}

/// The `Accepted` condition for a verdict, as it should be on the object.
pub fn condition(verdict: &Result<(), String>, generation: Option<i64>) -> Value {
    let (status, reason, message) = match verdict {
        Ok(()) => (
            "True",
            "Valid",
            "in force on every segwatch agent".to_string(),
        ),
        Err(problem) => (
            "False",
            "Invalid",
            format!("{problem}; the previous valid version (if any) stays in force"),
        ),
    };
    let mut c = json!({
        "type": CONDITION, "status": status, "reason": reason, "message": message,
    });
    if let Some(g) = generation {
        c["observedGeneration"] = json!(g);
    }
    c
}

/// Whether the object's status already carries `want` (all but the
/// transition time), so no agent needs to write it again.
pub fn has_condition(object_status: Option<&Value>, want: &Value) -> bool {
    let Some(conds) = object_status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
    else {
        return false;
    };
    conds.iter().any(|c| {
        ["type", "status", "reason", "message", "observedGeneration"]
            .iter()
            .all(|k| c.get(k) == want.get(k))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, port: &str) -> SegmentationPolicy {
        serde_json::from_value(json!({
            "apiVersion": "segwatch.dev/v1alpha1", "kind": "SegmentationPolicy",
            "metadata": {"name": name},
            "spec": {"hostAccess": {"allow": [{"ports": [port]}]}}
        }))
        .expect("policy")
    }

    #[test]
    fn an_invalid_version_is_reported_once_and_the_last_valid_one_stays() {
        let m = Metrics::new();
        let mut g = PolicyGate::new(m.clone());
        let first = g.admit(policy("p", "22/TCP"), "1");
        assert!(first.verdict.is_ok());
        let bad = g.admit(policy("p", "22/TCPX"), "2");
        let problem = bad.verdict.expect_err("a bad port is invalid");
        assert!(problem.contains("TCPX"), "{problem}");
        assert_eq!(
            bad.keep.map(|p| p.spec),
            Some(policy("p", "22/TCP").spec),
            "the previous valid version stays"
        );
        // The same version again (a re-list): not counted twice.
        g.admit(policy("p", "22/TCPX"), "2");
        assert!(m
            .render()
            .contains("segwatch_policy_errors_total{policy=\"p\"} 1\n"));
        g.admit(policy("p", "22/UDPX"), "3");
        assert!(m
            .render()
            .contains("segwatch_policy_errors_total{policy=\"p\"} 2\n"));
        // Never valid: nothing to keep.
        assert!(g.admit(policy("q", "x"), "1").keep.is_none());
        g.forget("p");
        assert!(g.reject("p", "4", "bad").is_none(), "forgotten");
    }

    #[test]
    fn conditions_compare_without_the_transition_time() {
        let want = condition(&Err("bad port".into()), Some(3));
        assert_eq!(want["status"], "False");
        let mut on_object = want.clone();
        on_object["lastTransitionTime"] = json!("2026-12-02T07:00:00Z");
        let status = json!({"conditions": [on_object]});
        assert!(has_condition(Some(&status), &want));
        assert!(!has_condition(
            Some(&status),
            &condition(&Err("bad port".into()), Some(4))
        ));
        assert!(!has_condition(None, &want));
    }
}
