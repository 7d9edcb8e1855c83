//! `segwatch crd`: the CustomResourceDefinition of our own resource, generated
//! from the Rust type, so the manifest users apply and the type the daemon
//! reads can never disagree.
//!
//! ```text
//!  segpolicy::SegmentationPolicy ──CustomResourceExt::crd()──► YAML ──► stdout
//!                                                                  └─► deploy/base/crd.yaml
//!                                                                      (monitor/tests/deploy/crd.rs
//!                                                                       compares byte for byte)
//! ```

use anyhow::Context as _;
use std::io::Write as _;
use std::process::ExitCode;

use crate::segpolicy::SegmentationPolicy;

/// Print the SegmentationPolicy CustomResourceDefinition (segwatch.dev/v1alpha1)
/// as YAML, generated from the type the daemon reads policies with.
///
/// Examples:
///   segwatch crd | kubectl apply -f -
///   segwatch crd > deploy/base/crd.yaml
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Comment lines the YAML starts with: what the file is and how it is made.
const HEADER: &str = "\
# The SegmentationPolicy CustomResourceDefinition (segwatch.dev/v1alpha1),
# generated from the Rust type by `segwatch crd`. Do not edit by hand:
# regenerate with `cargo run -p monitor -- crd > deploy/base/crd.yaml`
# (monitor/tests/deploy/crd.rs fails when that file and the code disagree).
";

/// The CRD as YAML, header included.
pub fn crd_yaml() -> Result<String, serde_yaml_ng::Error> {
    let crd = <SegmentationPolicy as kube::CustomResourceExt>::crd();
    Ok(format!("{HEADER}{}", serde_yaml_ng::to_string(&crd)?))
}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    let yaml = crd_yaml().context("serialising the SegmentationPolicy CRD")?;
    let mut out = std::io::stdout().lock();
    match out.write_all(yaml.as_bytes()).and_then(|()| out.flush()) {
        // `segwatch crd | head` is fine.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => {
            other.context("writing the CRD to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_yaml_is_the_segmentation_policy_crd_behind_a_comment_header() {
        let yaml = crd_yaml().expect("the CRD serialises");
        assert!(yaml.starts_with("# "), "a header says how the file is made");
        let v: serde_json::Value = serde_yaml_ng::from_str(&yaml).expect("the output is YAML");
        assert_eq!(v["kind"], "CustomResourceDefinition");
        assert_eq!(v["metadata"]["name"], "segmentationpolicies.segwatch.dev");
        assert_eq!(v["spec"]["versions"][0]["name"], "v1alpha1");
    }
}
