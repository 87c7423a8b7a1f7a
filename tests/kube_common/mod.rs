//! Test support for the Kubernetes mode: the fake API server (`tests/fakekube`, Python)
//! as a subprocess over TLS, loaded with the project's own manifests, and a small
//! client for its API and its `/fake/` test controls.
//!
//! It needs `python3` (or `$PLEXD_TEST_PYTHON`) with PyYAML, jsonschema and
//! rfc3339-validator; `.ci/run` installs them. Nothing of the daemon is mocked.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const NS: &str = "plexd-system";
pub const DAEMON_SA: &str = "plexd-system/plexd-nodeapi";

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(probe, exec command)` of each probe in the shipped DaemonSet, the command as
/// written (a YAML flow sequence of double-quoted strings, which is also JSON).
pub fn daemonset_probes() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("contrib/kubernetes/daemonset.yaml"))
        .expect("contrib/kubernetes/daemonset.yaml");
    let mut out = Vec::new();
    let mut probe = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_suffix("Probe:") {
            probe = Some(name.to_owned());
        } else if let (Some(name), Some(command)) = (&probe, line.strip_prefix("command: ")) {
            out.push((name.clone(), command.to_owned()));
            probe = None;
        }
    }
    out
}

pub fn ca_file() -> PathBuf {
    root().join("tests/fixtures/test-ca.pem")
}

pub fn python() -> String {
    std::env::var("PLEXD_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// The manifests the fake loads by default: the shipped CRD, RBAC, consumer Roles and
/// the workload example.
pub fn shipped_manifests() -> Vec<PathBuf> {
    [
        "crd.yaml",
        "rbac.yaml",
        "consumer-roles.yaml",
        "workload-example.yaml",
    ]
    .iter()
    .map(|f| root().join("contrib/kubernetes").join(f))
    .collect()
}

/// A running fake API server.
pub struct FakeKube {
    child: Option<Child>,
    pub port: u16,
    agent: ureq::Agent,
}

impl FakeKube {
    pub fn start() -> FakeKube {
        FakeKube::start_with(0, &shipped_manifests(), &[])
    }

    /// On a given port (0: any), with these manifests and extra arguments.
    pub fn start_with(port: u16, manifests: &[PathBuf], extra: &[&str]) -> FakeKube {
        let mut cmd = Command::new(python());
        cmd.arg(root().join("tests/fakekube/fake_apiserver.py"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--cert")
            .arg(root().join("tests/fixtures/test-server.pem"))
            .arg("--key")
            .arg(root().join("tests/fixtures/test-server.key"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for m in manifests {
            cmd.arg("--manifest").arg(m);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {} for the fake Kubernetes API server: {e} (install python3 with PyYAML, jsonschema and rfc3339-validator, see .ci/run)",
                python()
            )
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("fake api server output");
        let port = line
            .trim()
            .strip_prefix("LISTEN ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("the fake API server did not start (needs PyYAML, jsonschema, rfc3339-validator); said {line:?}")
            });
        FakeKube {
            child: Some(child),
            port,
            agent: agent(),
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A test control (`/fake/{name}`), POST with a JSON body.
    pub fn control(&self, name: &str, body: Value) -> Value {
        self.raw(
            "POST",
            &format!("/fake/{name}"),
            None,
            Some(&body),
            "application/json",
        )
        .1
    }

    pub fn control_get(&self, name: &str) -> Value {
        self.raw("GET", &format!("/fake/{name}"), None, None, "").1
    }

    pub fn control_delete(&self, name: &str) {
        self.raw("DELETE", &format!("/fake/{name}"), None, None, "");
    }

    /// A new token (`{"sa": "ns/name"}` or `{"user": …, "groups": […]}`, plus
    /// `audiences`, `node`, `pod`, `expires_in`, `audience_unaware`).
    pub fn token(&self, spec: Value) -> String {
        self.control("tokens", spec)["token"]
            .as_str()
            .expect("token")
            .to_owned()
    }

    pub fn admin_token(&self) -> String {
        self.token(json!({"user": "admin", "groups": ["system:masters"]}))
    }

    /// Every API request the fake saw (not the test controls).
    pub fn requests(&self) -> Vec<Value> {
        self.control_get("requests")["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn stats(&self) -> Value {
        self.control_get("stats")
    }

    /// Stored objects of one resource (`plexdnodestates`, `secrets`).
    pub fn objects(&self, resource: &str) -> Vec<Value> {
        self.raw(
            "GET",
            &format!("/fake/objects?resource={resource}"),
            None,
            None,
            "",
        )
        .1["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A Kubernetes API call: (status, body).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
        content_type: &str,
    ) -> (u16, Value) {
        self.raw(method, path, Some(token), body, content_type)
    }

    fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        content_type: &str,
    ) -> (u16, Value) {
        let mut req = self.agent.request(method, &format!("{}{path}", self.url()));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        let result = match body {
            Some(b) => req
                .set("Content-Type", content_type)
                .send_bytes(&serde_json::to_vec(b).unwrap()),
            None => req.call(),
        };
        let resp = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let mut text = String::new();
        resp.into_reader().read_to_string(&mut text).unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Kills the fake (an API server outage).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.kill();
    }
}

fn agent() -> ureq::Agent {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_file()).unwrap();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    plexd_nodeapi::cp::tls::agent_builder(Some(&plexd_nodeapi::cp::tls::Trust::Ready(Arc::new(
        tls,
    ))))
    .timeout(Duration::from_secs(30))
    .build()
}

/// A free TCP port on loopback (for an API server that is started later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Writes `token` to `dir/name` and returns the path.
pub fn token_file(dir: &Path, name: &str, token: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

/// Polls `f` until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Validates objects offline (`tests/fakekube/validate_objects.py`): PlexdNodeStates
/// against the shipped CRD's schema, built-in kinds with kubernetes-validate's strict
/// schemas where that package is installed (CI). Panics on any invalid object.
pub fn validate_objects(files: &[PathBuf]) -> bool {
    let out = Command::new(python())
        .arg(root().join("tests/fakekube/validate_objects.py"))
        .arg(root().join("contrib/kubernetes/crd.yaml"))
        .args(files)
        .output()
        .expect("run the object validator");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => true,
        Some(77) => {
            eprintln!(
                "built-in kinds not validated (kubernetes-validate is not installed): {text}"
            );
            false
        }
        _ => panic!("invalid Kubernetes objects:\n{text}"),
    }
}

/// Writes `objects` as a JSON list into `dir` and validates them.
pub fn validate_values(dir: &Path, objects: &[Value]) -> bool {
    let path = dir.join(format!(
        "objects-{}.json",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&path, serde_json::to_vec(objects).unwrap()).unwrap();
    validate_objects(&[path])
}
