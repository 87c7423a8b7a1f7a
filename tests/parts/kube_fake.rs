//! The fake Kubernetes API server's own self-tests (`tests/fakekube/
//! test_fake_apiserver.py`): the Kubernetes semantics every other kube test relies
//! on, checked over TLS with the shipped manifests loaded.

use crate::kube_common;

#[test]
fn the_fake_api_server_behaves_like_kubernetes() {
    let out = std::process::Command::new(kube_common::python())
        .args(["-m", "unittest", "tests/fakekube/test_fake_apiserver.py"])
        .current_dir(kube_common::root())
        .output()
        .expect("run python3 (install python3 with PyYAML, jsonschema, rfc3339-validator)");
    assert!(
        out.status.success(),
        "self-tests of the fake failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
