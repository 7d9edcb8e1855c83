//! Runtime wiring between the sources, the judge and the daemon: the shared
//! cluster index, readiness, and the health of the API sources. State the
//! running parts hand each other, no judging and no watching.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::index::ClusterIndex;

pub mod health;

pub use health::SourceHealth;

/// The index shared between the sources (writers) and the judge (reader).
pub type SharedIndex = Arc<RwLock<ClusterIndex>>;

/// Set once the sources finished their initial sync (for /readyz).
#[derive(Clone, Debug, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
