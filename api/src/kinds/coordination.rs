//! The `coordination/v1` group: Lease (leader election, node heartbeats).

use super::common::{age_cell, age_column, check_non_negative, col, name_cell, name_column};
use super::core::kind_struct;
use super::typed::Kind;
use crate::error::FieldError;
use crate::registry::Column;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use serde_json::{json, Value};

kind_struct! {
    /// Lease is a lock with a holder and a duration, used for leader election and heartbeats.
    Lease, "io.tugboat.coordination.v1.Lease" {
        /// Holder, duration and renew time of the lease.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub spec: Option<LeaseSpec>,
    }
}

impl Kind for Lease {
    fn validate(&self, _old: Option<&Self>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if let Some(spec) = &self.spec {
            if let Some(d) = spec.lease_duration_seconds.filter(|d| *d <= 0) {
                errs.push(FieldError::invalid(
                    "spec.leaseDurationSeconds",
                    &json!(d),
                    "must be greater than 0",
                ));
            }
            check_non_negative(
                spec.lease_transitions.map(i64::from),
                "spec.leaseTransitions",
                &mut errs,
            );
        }
        errs
    }

    fn columns() -> Vec<Column> {
        vec![
            name_column(),
            col("Holder", "string", "Current holder of the lease.", 0),
            age_column(),
        ]
    }

    fn cells(&self, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
        let holder = self
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default();
        vec![name_cell(obj), json!(holder), age_cell(obj, now)]
    }

    fn selectable_fields() -> &'static [&'static str] {
        &["spec.holderIdentity"]
    }
}
