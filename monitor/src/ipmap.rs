//! The address lookup table both the cluster index and the NetworkPolicy
//! engine build: below both, so neither reaches into the other for it.

use std::collections::HashMap;
use std::net::IpAddr;

/// A table keyed by address, looked up for both ends of every flow.
/// foldhash instead of SipHash: several times faster on a 4- or 16-byte
/// key, and still seeded per process (the keys come from the cluster's
/// objects; packets only choose what is looked up).
pub type IpMap<V> = HashMap<IpAddr, V, foldhash::fast::RandomState>;
