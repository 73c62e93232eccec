//! A minimal Kubernetes `LabelSelector` (matchLabels + matchExpressions) for ClusterRole
//! aggregation.

use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed `metav1.LabelSelector`. An empty selector matches everything; an unparseable one
/// matches nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    requirements: Vec<Requirement>,
    valid: bool,
}

impl LabelSelector {
    /// Parses `{"matchLabels": {…}, "matchExpressions": [{key, operator, values}]}`.
    pub(crate) fn parse(v: &Value) -> Self {
        let mut requirements = Vec::new();
        let mut valid = v.is_object() || v.is_null();
        if let Some(labels) = v.get("matchLabels").and_then(Value::as_object) {
            for (k, val) in labels {
                match val.as_str() {
                    Some(s) => requirements.push(Requirement {
                        key: k.clone(),
                        op: Op::In,
                        values: vec![s.to_string()],
                    }),
                    None => valid = false,
                }
            }
        }
        if let Some(exprs) = v.get("matchExpressions").and_then(Value::as_array) {
            for e in exprs {
                let key = e.get("key").and_then(Value::as_str).unwrap_or("");
                let values = super::strings(e.get("values"));
                let op = match e.get("operator").and_then(Value::as_str) {
                    Some("In") if !values.is_empty() => Op::In,
                    Some("NotIn") if !values.is_empty() => Op::NotIn,
                    Some("Exists") if values.is_empty() => Op::Exists,
                    Some("DoesNotExist") if values.is_empty() => Op::DoesNotExist,
                    _ => {
                        valid = false;
                        continue;
                    }
                };
                if key.is_empty() {
                    valid = false;
                    continue;
                }
                requirements.push(Requirement {
                    key: key.to_string(),
                    op,
                    values,
                });
            }
        }
        LabelSelector {
            requirements,
            valid,
        }
    }

    /// Whether `labels` satisfy every requirement.
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.valid
            && self.requirements.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.op {
                    Op::In => got.is_some_and(|g| r.values.contains(g)),
                    Op::NotIn => got.is_none_or(|g| !r.values.contains(g)),
                    Op::Exists => got.is_some(),
                    Op::DoesNotExist => got.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions() {
        let s = LabelSelector::parse(&json!({
            "matchLabels": {"a": "1"},
            "matchExpressions": [
                {"key": "b", "operator": "In", "values": ["x", "y"]},
                {"key": "c", "operator": "DoesNotExist"},
                {"key": "d", "operator": "NotIn", "values": ["bad"]},
            ]
        }));
        assert!(s.matches(&labels(&[("a", "1"), ("b", "y")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", "z")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", "x"), ("c", "")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", "x"), ("d", "bad")])));
        assert!(!s.matches(&labels(&[("a", "2"), ("b", "x")])));
        assert!(LabelSelector::parse(&json!({})).matches(&labels(&[])));
        let bad =
            LabelSelector::parse(&json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}));
        assert!(!bad.matches(&labels(&[("a", "1")])));
    }
}
