//! Label selectors (`metav1.LabelSelector`) compiled into requirements:
//! the one implementation of label matching, shared by NetworkPolicies and
//! cluster policies (`netpol`), SegmentationPolicies (`segpolicy`) and
//! the suggestions (`suggest`). Each maps [`SelectorError`] to its own
//! messages.
//!
//! API reference, LabelSelector: "The requirements of matchLabels and
//! matchExpressions are ANDed. An empty label selector matches all objects."
//! matchLabels "{key,value} ... is equivalent to an element of
//! matchExpressions, whose key field is "key", the operator is "In", and the
//! values array contains only "value"". LabelSelectorRequirement: "operator
//! represents a key's relationship to a set of values. Valid operators are
//! In, NotIn, Exists and DoesNotExist. If the operator is In or NotIn, the
//! values array must be non-empty. If the operator is Exists or DoesNotExist,
//! the values array must be empty."

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("matchExpressions[{index}]: unknown operator {operator:?} (expected In, NotIn, Exists or DoesNotExist)")]
    BadOperator { index: usize, operator: String },
    #[error("matchExpressions[{index}]: operator {operator} needs a non-empty values list")]
    MissingValues {
        index: usize,
        operator: &'static str,
    },
    #[error("matchExpressions[{index}]: operator {operator} takes no values")]
    UnexpectedValues {
        index: usize,
        operator: &'static str,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    /// Semantics of apimachinery `labels.Requirement.Matches`: `NotIn` and
    /// `DoesNotExist` also match objects that lack the key.
    fn matches(&self, labels: &Labels) -> bool {
        let v = labels.get(&self.key);
        match &self.op {
            Op::In(vals) => v.is_some_and(|v| vals.iter().any(|x| x == v)),
            Op::NotIn(vals) => v.is_none_or(|v| !vals.iter().any(|x| x == v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
        }
    }
}

/// A validated label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every object (`{}`).
    pub fn everything() -> Self {
        Selector::default()
    }

    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| r.matches(labels))
    }

    /// A selector from plain `key: value` pairs (matchLabels only).
    pub fn from_match_labels(m: &Labels) -> Self {
        Selector {
            reqs: m
                .iter()
                .map(|(k, v)| Requirement {
                    key: k.clone(),
                    op: Op::In(vec![v.clone()]),
                })
                .collect(),
        }
    }
}

/// Whether every `key: value` pair of `match_labels` is in `labels` (a
/// Service selector, or a `matchLabels`-only selector): what
/// [`Selector::from_match_labels`] matches, without building it.
pub fn selects(match_labels: &Labels, labels: &Labels) -> bool {
    match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl TryFrom<&LabelSelector> for Selector {
    type Error = SelectorError;

    fn try_from(sel: &LabelSelector) -> Result<Self, Self::Error> {
        let mut s = sel
            .match_labels
            .as_ref()
            .map(Selector::from_match_labels)
            .unwrap_or_default();
        for (index, e) in sel.match_expressions.iter().flatten().enumerate() {
            let values = e.values.clone().unwrap_or_default();
            let op = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    let operator = if e.operator == "In" { "In" } else { "NotIn" };
                    return Err(SelectorError::MissingValues { index, operator });
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    let operator = if e.operator == "Exists" {
                        "Exists"
                    } else {
                        "DoesNotExist"
                    };
                    return Err(SelectorError::UnexpectedValues { index, operator });
                }
                "In" => Op::In(values),
                "NotIn" => Op::NotIn(values),
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => {
                    return Err(SelectorError::BadOperator {
                        index,
                        operator: other.to_string(),
                    })
                }
            };
            s.reqs.push(Requirement {
                key: e.key.clone(),
                op,
            });
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> Selector {
        let ls = LabelSelector {
            match_labels: (!ml.is_empty()).then(|| labels(ml)),
            match_expressions: (!exprs.is_empty()).then_some(exprs),
        };
        Selector::try_from(&ls).expect("valid selector")
    }

    #[test]
    fn table() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let db = labels(&[("app", "db")]);
        let none = labels(&[]);
        // (selector, labels, expected, why)
        let cases: Vec<(Selector, &Labels, bool, &str)> = vec![
            (
                sel(&[], vec![]),
                &none,
                true,
                "empty selector matches everything",
            ),
            (
                sel(&[], vec![]),
                &web,
                true,
                "empty selector matches everything",
            ),
            (
                sel(&[("app", "web")], vec![]),
                &web,
                true,
                "matchLabels equal",
            ),
            (
                sel(&[("app", "web")], vec![]),
                &db,
                false,
                "matchLabels different value",
            ),
            (
                sel(&[("app", "web")], vec![]),
                &none,
                false,
                "matchLabels missing key",
            ),
            (
                sel(&[("app", "web"), ("tier", "back")], vec![]),
                &web,
                false,
                "matchLabels are ANDed",
            ),
            (
                sel(&[], vec![expr("app", "In", &["web", "db"])]),
                &db,
                true,
                "In: value in set",
            ),
            (
                sel(&[], vec![expr("app", "In", &["web"])]),
                &none,
                false,
                "In: missing key",
            ),
            (
                sel(&[], vec![expr("app", "NotIn", &["web"])]),
                &db,
                true,
                "NotIn: other value",
            ),
            (
                sel(&[], vec![expr("app", "NotIn", &["web"])]),
                &web,
                false,
                "NotIn: value in set",
            ),
            (
                sel(&[], vec![expr("app", "NotIn", &["web"])]),
                &none,
                true,
                "NotIn: missing key matches",
            ),
            (
                sel(&[], vec![expr("tier", "Exists", &[])]),
                &web,
                true,
                "Exists",
            ),
            (
                sel(&[], vec![expr("tier", "Exists", &[])]),
                &db,
                false,
                "Exists: missing",
            ),
            (
                sel(&[], vec![expr("tier", "DoesNotExist", &[])]),
                &db,
                true,
                "DoesNotExist",
            ),
            (
                sel(&[], vec![expr("tier", "DoesNotExist", &[])]),
                &web,
                false,
                "DoesNotExist: present",
            ),
            (
                sel(&[("app", "web")], vec![expr("tier", "In", &["back"])]),
                &web,
                false,
                "matchLabels AND matchExpressions",
            ),
        ];
        for (i, (s, l, expected, why)) in cases.into_iter().enumerate() {
            assert_eq!(s.matches(l), expected, "case {i}: {why}");
        }
    }

    #[test]
    fn selects_is_match_labels_matching() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        for ml in [
            labels(&[]),
            labels(&[("app", "web")]),
            labels(&[("app", "db")]),
            labels(&[("app", "web"), ("tier", "back")]),
            labels(&[("zone", "a")]),
        ] {
            assert_eq!(
                selects(&ml, &web),
                Selector::from_match_labels(&ml).matches(&web),
                "{ml:?}"
            );
        }
    }

    #[test]
    fn invalid_expressions() {
        let bad = |e| {
            Selector::try_from(&LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![e]),
            })
            .unwrap_err()
        };
        assert!(
            matches!(
                bad(expr("a", "in", &["x"])),
                SelectorError::BadOperator { .. }
            ),
            "operators are case-sensitive"
        );
        assert!(matches!(
            bad(expr("a", "In", &[])),
            SelectorError::MissingValues { .. }
        ));
        assert!(matches!(
            bad(expr("a", "Exists", &["x"])),
            SelectorError::UnexpectedValues { .. }
        ));
    }
}
