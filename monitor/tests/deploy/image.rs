//! deploy/Containerfile: multi-stage, distroless, pinned like the build.

use super::*;

#[test]
fn containerfile_is_multistage_distroless_and_pinned_like_the_build() {
    let text = std::fs::read_to_string(deploy().join("Containerfile")).expect("read Containerfile");
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("FROM "))
        .map(|(i, _)| i)
        .collect();
    assert!(
        froms.len() >= 2,
        "multi-stage: a build stage and a final stage"
    );
    let final_stage = &instructions[*froms.last().expect("a FROM")..];
    assert!(
        final_stage[0].contains("gcr.io/distroless/static")
            || final_stage[0].contains("gcr.io/distroless/cc"),
        "the final image must be distroless static or cc (no shell): {}",
        final_stage[0]
    );
    assert!(
        !final_stage[0].contains(":debug"),
        "distroless :debug images carry a shell"
    );
    for l in final_stage {
        assert!(
            !l.starts_with("RUN "),
            "no RUN in the final stage (there is no shell): {l}"
        );
        if let Some(src) = l.strip_prefix("COPY ") {
            assert!(
                src.starts_with("--from=build /out/segwatch "),
                "the final stage copies the binary only: {l}"
            );
        }
    }
    let entry = final_stage
        .iter()
        .find(|l| l.starts_with("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    assert!(
        entry.contains("[\"/usr/local/bin/segwatch\"]"),
        "exec-form ENTRYPOINT of the binary: {entry}"
    );

    // Toolchain pins equal to the build's, so the image builds what CI tests.
    let build_rs = std::fs::read_to_string(root().join("monitor/build.rs")).expect("build.rs");
    let setup = std::fs::read_to_string(root().join("xtask/src/setup.rs")).expect("setup.rs");
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml");
    let quoted = |src: &str, key: &str| -> String {
        let line = src
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("`{key}` not found"));
        line.split('"').nth(1).expect("a quoted value").to_string()
    };
    let arg = |key: &str| -> String {
        instructions
            .iter()
            .find_map(|l| l.strip_prefix(&format!("ARG {key}=")))
            .unwrap_or_else(|| panic!("ARG {key} in the Containerfile"))
            .to_string()
    };
    assert_eq!(
        arg("EBPF_NIGHTLY"),
        quoted(&build_rs, "const EBPF_TOOLCHAIN")
    );
    assert_eq!(arg("EBPF_NIGHTLY"), quoted(&setup, "pub const NIGHTLY"));
    assert_eq!(
        arg("BPF_LINKER_VERSION"),
        quoted(&setup, "const BPF_LINKER_VERSION")
    );
    let rust_version = quoted(&manifest, "rust-version");
    assert!(
        instructions[froms[0]].contains(&format!("rust:{rust_version}-")),
        "the build stage uses the workspace's rust-version {rust_version}: {}",
        instructions[froms[0]]
    );
    // The image's name matches the DaemonSet's.
    let objects = kustomize(&deploy());
    let image = find(&objects, "DaemonSet").value["spec"]["template"]["spec"]["containers"][0]
        ["image"]
        .as_str()
        .expect("image")
        .to_string();
    assert!(
        text.contains(&format!("-t {image} ")),
        "the build command in the Containerfile tags {image}"
    );
}
