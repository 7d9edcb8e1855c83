//! Compiled label selectors and peers (`from`/`to` of a rule).
//!
//! Label selector semantics follow the Kubernetes API reference
//! (meta/v1 LabelSelector): `matchLabels` and `matchExpressions` are ANDed,
//! an empty selector matches everything; `In`/`NotIn` need a non-empty
//! `values`, `Exists`/`DoesNotExist` must have none; `NotIn` and
//! `DoesNotExist` match objects without the key.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::crd::PodPeer;
use crate::selector::{Selector, SelectorError};

/// A validated label selector: [`crate::selector::Selector`], with the
/// field paths of this kind's errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelMatch(Selector);

/// A validation error: the path below the selector and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Prefixes the path with `outer` (`outer.path`).
    pub fn under(mut self, outer: &str) -> Self {
        self.path = if self.path.is_empty() {
            outer.to_owned()
        } else if self.path.starts_with('[') {
            format!("{outer}{}", self.path)
        } else {
            format!("{outer}.{}", self.path)
        };
        self
    }
}

impl LabelMatch {
    /// Matches every label set.
    pub fn everything() -> Self {
        LabelMatch(Selector::everything())
    }

    /// `key=value` for each pair.
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let pairs: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        LabelMatch(Selector::from_match_labels(&pairs))
    }

    pub fn compile(sel: &LabelSelector) -> Result<Self, FieldError> {
        Selector::try_from(sel)
            .map(LabelMatch)
            .map_err(|e| match e {
                SelectorError::BadOperator { index, operator } => FieldError::new(
                    format!("matchExpressions[{index}].operator"),
                    format!("unknown operator `{operator}` (In, NotIn, Exists, DoesNotExist)"),
                ),
                SelectorError::MissingValues { index, operator } => FieldError::new(
                    format!("matchExpressions[{index}].values"),
                    format!("operator {operator} needs at least one value"),
                ),
                SelectorError::UnexpectedValues { index, operator } => FieldError::new(
                    format!("matchExpressions[{index}].values"),
                    format!("operator {operator} takes no values"),
                ),
            })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.matches(labels)
    }
}

/// What a peer selector can know about a pod (or a Service standing for its
/// pods).
#[derive(Clone, Copy, Debug)]
pub struct PodFacts<'a> {
    pub namespace: &'a str,
    pub namespace_labels: &'a BTreeMap<String, String>,
    pub labels: &'a BTreeMap<String, String>,
    /// `None` for a Service destination (its pods may run as any account).
    pub service_account: Option<&'a str>,
}

/// A compiled `from`/`to`: matches when ALL given fields match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// `None`: any namespace (absent, or `*`).
    pub namespace: Option<String>,
    pub namespace_selector: Option<LabelMatch>,
    pub pod_selector: Option<LabelMatch>,
    pub service_account: Option<String>,
}

impl Peer {
    /// Any pod anywhere.
    pub fn any() -> Self {
        Peer::default()
    }

    pub fn compile(p: &PodPeer) -> Result<Self, FieldError> {
        let namespace = match p.namespace.as_deref() {
            None | Some("*") => None,
            Some("") => {
                return Err(FieldError::new(
                    "namespace",
                    "empty namespace; use a name or \"*\"",
                ))
            }
            Some(n) => Some(n.to_owned()),
        };
        let namespace_selector = p
            .namespace_selector
            .as_ref()
            .map(LabelMatch::compile)
            .transpose()
            .map_err(|e| e.under("namespaceSelector"))?;
        let pod_selector = p
            .pod_selector
            .as_ref()
            .map(LabelMatch::compile)
            .transpose()
            .map_err(|e| e.under("podSelector"))?;
        if p.service_account.as_deref() == Some("") {
            return Err(FieldError::new(
                "serviceAccount",
                "empty service account name",
            ));
        }
        Ok(Peer {
            namespace,
            namespace_selector,
            pod_selector,
            service_account: p.service_account.clone(),
        })
    }

    pub fn matches(&self, pod: &PodFacts<'_>) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == pod.namespace)
            && self
                .namespace_selector
                .as_ref()
                .is_none_or(|s| s.matches(pod.namespace_labels))
            && self
                .pod_selector
                .as_ref()
                .is_none_or(|s| s.matches(pod.labels))
            && self
                .service_account
                .as_deref()
                .is_none_or(|sa| pod.service_account == Some(sa))
    }

    /// Does the peer restrict namespaces (so a rule names where it applies)?
    pub fn is_namespace_restricted(&self) -> bool {
        self.namespace.is_some() || self.namespace_selector.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
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

    #[test]
    fn selector_semantics_table() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let none = labels(&[]);
        let cases: Vec<(&str, LabelSelector, &BTreeMap<String, String>, bool)> = vec![
            ("empty matches all", LabelSelector::default(), &web, true),
            (
                "empty matches unlabelled",
                LabelSelector::default(),
                &none,
                true,
            ),
            (
                "matchLabels equal",
                LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    ..Default::default()
                },
                &web,
                true,
            ),
            (
                "matchLabels differ",
                LabelSelector {
                    match_labels: Some(labels(&[("app", "db")])),
                    ..Default::default()
                },
                &web,
                false,
            ),
            (
                "In hit",
                LabelSelector {
                    match_expressions: Some(vec![expr("tier", "In", &["front", "x"])]),
                    ..Default::default()
                },
                &web,
                true,
            ),
            (
                "In missing key",
                LabelSelector {
                    match_expressions: Some(vec![expr("tier", "In", &["front"])]),
                    ..Default::default()
                },
                &none,
                false,
            ),
            (
                "NotIn missing key matches",
                LabelSelector {
                    match_expressions: Some(vec![expr("tier", "NotIn", &["front"])]),
                    ..Default::default()
                },
                &none,
                true,
            ),
            (
                "NotIn hit",
                LabelSelector {
                    match_expressions: Some(vec![expr("tier", "NotIn", &["front"])]),
                    ..Default::default()
                },
                &web,
                false,
            ),
            (
                "Exists",
                LabelSelector {
                    match_expressions: Some(vec![expr("app", "Exists", &[])]),
                    ..Default::default()
                },
                &web,
                true,
            ),
            (
                "DoesNotExist",
                LabelSelector {
                    match_expressions: Some(vec![expr("app", "DoesNotExist", &[])]),
                    ..Default::default()
                },
                &web,
                false,
            ),
            (
                "labels AND expressions",
                LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: Some(vec![expr("tier", "In", &["back"])]),
                },
                &web,
                false,
            ),
        ];
        for (name, sel, l, want) in cases {
            let m = LabelMatch::compile(&sel)
                .unwrap_or_else(|e| panic!("{name}: valid selector: {e:?}"));
            assert_eq!(m.matches(l), want, "{name}");
        }
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let cases = [
            (expr("a", "In", &[]), "matchExpressions[0].values"),
            (expr("a", "Exists", &["x"]), "matchExpressions[0].values"),
            (expr("a", "Equals", &["x"]), "matchExpressions[0].operator"),
        ];
        for (e, path) in cases {
            let sel = LabelSelector {
                match_expressions: Some(vec![e.clone()]),
                ..Default::default()
            };
            let err = LabelMatch::compile(&sel).expect_err("invalid selector must be rejected");
            assert_eq!(err.path, path, "{e:?}");
        }
    }

    #[test]
    fn peer_fields_are_anded() {
        let ns_labels = labels(&[("tier", "back")]);
        let pod_labels = labels(&[("app", "api")]);
        let pod = PodFacts {
            namespace: "shop",
            namespace_labels: &ns_labels,
            labels: &pod_labels,
            service_account: Some("api"),
        };
        let peer = |ns: Option<&str>, sa: Option<&str>, app: Option<&str>| {
            Peer::compile(&PodPeer {
                namespace: ns.map(str::to_owned),
                service_account: sa.map(str::to_owned),
                pod_selector: app.map(|a| LabelSelector {
                    match_labels: Some(labels(&[("app", a)])),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .expect("valid peer")
        };
        assert!(
            peer(None, None, None).matches(&pod),
            "empty peer matches any pod"
        );
        assert!(
            peer(Some("*"), None, None).matches(&pod),
            "* is any namespace"
        );
        assert!(peer(Some("shop"), Some("api"), Some("api")).matches(&pod));
        assert!(
            !peer(Some("shop"), Some("web"), Some("api")).matches(&pod),
            "wrong SA"
        );
        assert!(
            !peer(Some("other"), Some("api"), Some("api")).matches(&pod),
            "wrong ns"
        );
        assert!(
            !peer(Some("shop"), Some("api"), Some("db")).matches(&pod),
            "wrong labels"
        );
        let service = PodFacts {
            service_account: None,
            ..pod
        };
        assert!(
            !peer(None, Some("api"), None).matches(&service),
            "a Service has no service account"
        );
    }

    proptest! {
        /// `In [v]` is `matchLabels {k: v}`; `NotIn` is its negation;
        /// `Exists` is the negation of `DoesNotExist`.
        #[test]
        fn operators_agree(key in "[a-c]", val in "[x-z]", present in proptest::option::of("[x-z]")) {
            let l: BTreeMap<String, String> = present.iter().map(|v| (key.clone(), v.clone())).collect();
            let sel = |op: &str, vals: &[&str]| LabelMatch::compile(&LabelSelector {
                match_expressions: Some(vec![expr(&key, op, vals)]), ..Default::default()
            }).expect("valid");
            let eq = LabelMatch::labels([(key.as_str(), val.as_str())]).matches(&l);
            prop_assert_eq!(sel("In", &[&val]).matches(&l), eq);
            prop_assert_eq!(sel("NotIn", &[&val]).matches(&l), !eq);
            prop_assert_eq!(sel("Exists", &[]).matches(&l), !sel("DoesNotExist", &[]).matches(&l));
            prop_assert!(LabelMatch::everything().matches(&l));
        }
    }
}
