//! `userspace_flows_per_sec`: attribution + verdict per flow record on one
//! core, through the public API of the cluster index and the segmentation
//! evaluator.

use anyhow::Result;

use crate::report::{Figure, Target};
use crate::Ctx;

pub fn phase(ctx: &mut Ctx) -> Result<Vec<Figure>> {
    let _ = ctx.plan.userspace_records;
    Ok(vec![Figure::missing(
        "userspace_flows_per_sec",
        "flows/s",
        Some(Target::AtLeast(1_000_000.0)),
        "this build has no cluster index (segwatch::index) to attribute flows with".into(),
    )])
}
