//! The wire format of the policy kinds segwatch reads: plain serde types,
//! no validation and no evaluation.
//!
//! ```text
//!  objects (wire types) ◄── inventory (Object, loading files) ◄── netpol, segpolicy
//!                       ◄───────────────────────────────────────── (validate, evaluate)
//! ```
//!
//! They sit below the object model ([`crate::inventory`]) so that loading
//! files never depends on a policy kind: `netpol` and `segpolicy` read the
//! objects and turn them into their own validated forms.

pub mod cluster_policy;
pub mod segmentation;
pub mod staged;
