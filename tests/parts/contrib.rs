//! Keeps `contrib/` honest: the OpenAPI document describes exactly the routes and
//! methods the router knows, every `$ref` in it resolves, and the example config and
//! the Kubernetes ConfigMap's config are accepted by the daemon's own settings parser.
//!
//! Pure file and string work (no daemon, no sockets): these run in milliseconds.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use plexd_nodeapi::api::route::{resolve, Resource};
use plexd_nodeapi::cli::config::Settings;
use serde_json::Value;

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(contrib(path))
        .unwrap_or_else(|e| panic!("cannot read contrib/{path}: {e}"))
}

fn openapi() -> Value {
    serde_json::from_str(&read("openapi.json")).expect("contrib/openapi.json is not valid JSON")
}

/// The path template OpenAPI uses for each resource. An exhaustive match: a new
/// `Resource` variant does not compile until it is listed here (and then the
/// document must describe it).
fn template(resource: &Resource) -> &'static str {
    match resource {
        Resource::Summary => "/v1/state",
        Resource::Metadata => "/v1/state/metadata",
        Resource::MetadataKey(_) => "/v1/state/metadata/{key}",
        Resource::Data => "/v1/state/data",
        Resource::DataKey(_) => "/v1/state/data/{key}",
        Resource::Secrets => "/v1/state/secrets",
        Resource::SecretKey(_) => "/v1/state/secrets/{key}",
        Resource::Reports => "/v1/state/report",
        Resource::ReportKey(_) => "/v1/state/report/{key}",
        Resource::Health => "/v1/health",
        Resource::Metrics => "/metrics",
    }
}

/// One of each resource.
fn all_resources() -> Vec<Resource> {
    let k = || "k".to_owned();
    vec![
        Resource::Summary,
        Resource::Metadata,
        Resource::MetadataKey(k()),
        Resource::Data,
        Resource::DataKey(k()),
        Resource::Secrets,
        Resource::SecretKey(k()),
        Resource::Reports,
        Resource::ReportKey(k()),
        Resource::Health,
        Resource::Metrics,
    ]
}

/// The routes of the router (`Resource::label()`), as the OpenAPI `paths` keys.
fn router_routes() -> BTreeSet<String> {
    all_resources()
        .iter()
        .map(|r| {
            assert_eq!(r.label(), template(r), "label of {r:?}");
            r.label().to_owned()
        })
        .collect()
}

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn paths(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["paths"].as_object().expect("paths is an object")
}

fn operations(item: &Value) -> BTreeSet<String> {
    item.as_object()
        .expect("path item is an object")
        .keys()
        .filter(|k| HTTP_METHODS.contains(&k.as_str()))
        .cloned()
        .collect()
}

/// Follows a local `$ref` (`#/components/...`), once.
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.strip_prefix('#').expect("local $ref"))
            .unwrap_or_else(|| panic!("unresolved $ref {r}")),
        None => v,
    }
}

#[test]
fn openapi_parses_and_is_3_0_3() {
    let doc = openapi();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["info"]["title"].is_string());
    assert!(doc["info"]["version"].is_string());
    let servers: Vec<&str> = doc["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["url"].as_str().expect("server url"))
        .collect();
    assert_eq!(servers, ["http://localhost", "http://127.0.0.1:9100"]);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[test]
fn openapi_paths_are_exactly_the_router_routes() {
    let doc = openapi();
    let documented: BTreeSet<String> = paths(&doc).keys().cloned().collect();
    let routes = router_routes();
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from openapi.json: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "openapi.json paths the router does not know: {unknown:?}"
    );
}

#[test]
fn openapi_paths_resolve_to_their_resource() {
    // Each documented path, with `{key}` filled in (percent-encoded, as clients send
    // it), is resolved by the router to the resource it documents.
    let doc = openapi();
    for path in paths(&doc).keys() {
        let concrete = path.replace("{key}", "db%2Fpassword");
        let resource = resolve(&concrete).unwrap_or_else(|e| panic!("{concrete}: {e:?}"));
        assert_eq!(resource.label(), path);
        if path.contains("{key}") {
            let key = match &resource {
                Resource::MetadataKey(k)
                | Resource::DataKey(k)
                | Resource::SecretKey(k)
                | Resource::ReportKey(k) => k.as_str(),
                other => panic!("{path} resolved to the unkeyed {other:?}"),
            };
            assert_eq!(key, "db/password", "{path}: key is percent-decoded");
        }
    }
}

#[test]
fn openapi_operations_are_the_methods_the_router_allows() {
    let doc = openapi();
    for resource in all_resources() {
        let path = resource.label();
        let allowed: BTreeSet<String> = resource
            .allowed()
            .iter()
            .map(|m| m.as_str().to_ascii_lowercase())
            .collect();
        let documented = operations(&paths(&doc)[path]);
        assert_eq!(documented, allowed, "operations of {path}");
        // And the 405 `Allow` header lists the same methods.
        let allow: BTreeSet<String> = resource
            .allow_header()
            .split(", ")
            .map(str::to_ascii_lowercase)
            .collect();
        assert_eq!(allow, allowed, "Allow header of {path}");
        let expected: &[&str] = if matches!(resource, Resource::ReportKey(_)) {
            &["delete", "get", "head", "put"]
        } else {
            &["get", "head"]
        };
        assert_eq!(
            documented.iter().map(String::as_str).collect::<Vec<_>>(),
            expected,
            "{path}"
        );
    }
}

#[test]
fn openapi_operations_declare_their_parameters() {
    let doc = openapi();
    for (path, item) in paths(&doc) {
        for method in operations(item) {
            let op = &item[&method];
            let params: Vec<&Value> = op["parameters"]
                .as_array()
                .map(|a| a.iter().map(|p| deref(&doc, p)).collect())
                .unwrap_or_default();
            let has = |name: &str, place: &str| {
                params.iter().any(|p| p["name"] == name && p["in"] == place)
            };
            assert_eq!(
                path.contains("{key}"),
                has("key", "path"),
                "{method} {path}: path parameter key"
            );
            if path.contains("{key}") {
                let key = params.iter().find(|p| p["name"] == "key").unwrap();
                assert_eq!(key["required"], true, "{method} {path}: key is required");
            }
            // Every cache read takes blocking-query parameters and validators.
            let cache_read = path.starts_with("/v1/state")
                && !path.starts_with("/v1/state/secrets/")
                && (method == "get" || method == "head");
            if cache_read {
                for (name, place) in [
                    ("index", "query"),
                    ("wait", "query"),
                    ("If-None-Match", "header"),
                    ("If-Modified-Since", "header"),
                ] {
                    assert!(has(name, place), "{method} {path}: {place} {name}");
                }
                assert!(op["responses"]["304"].is_object(), "{method} {path}: 304");
                assert!(op["responses"]["429"].is_object(), "{method} {path}: 429");
            }
            if method == "put" {
                assert!(has("If-Match", "header"), "PUT {path}: If-Match");
                let body = deref(&doc, &op["requestBody"]);
                assert_eq!(
                    body["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/PutReportBody"
                );
            }
        }
        if path == "/v1/health" {
            let get = &item["get"];
            let params: Vec<&Value> = get["parameters"]
                .as_array()
                .expect("health parameters")
                .iter()
                .map(|p| deref(&doc, p))
                .collect();
            assert!(params.iter().any(|p| p["name"] == "ready"));
            assert!(get["responses"]["503"].is_object());
        }
    }
}

fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push(v.as_str().expect("$ref is a string"));
                } else {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn openapi_refs_resolve() {
    let doc = openapi();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r
            .strip_prefix("#/components/")
            .unwrap_or_else(|| panic!("$ref outside #/components: {r}"));
        assert_eq!(pointer.split('/').count(), 2, "$ref depth: {r}");
        assert!(
            doc.pointer(&r[1..]).is_some_and(Value::is_object),
            "unresolved $ref {r}"
        );
    }
}

#[test]
fn openapi_defines_the_component_schemas() {
    let doc = openapi();
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for name in [
        "DataEntry",
        "ReportEntry",
        "SecretRef",
        "KeyVersion",
        "DataKey",
        "Summary",
        "MetadataValue",
        "SecretValue",
        "PutReportBody",
        "Error",
        "Health",
    ] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    assert_eq!(schemas["Error"]["required"], serde_json::json!(["error"]));
    assert_eq!(
        schemas["Summary"]["required"],
        serde_json::json!(["metadata", "data_keys", "secret_keys", "report_keys"])
    );
}

#[test]
fn openapi_response_codes_are_valid_and_errors_use_the_error_schema() {
    let doc = openapi();
    for (path, item) in paths(&doc) {
        for method in operations(item) {
            let responses = item[&method]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}: responses"));
            assert!(!responses.is_empty(), "{method} {path}: no responses");
            let mut has_success = false;
            for (code, response) in responses {
                let n: u16 = code
                    .parse()
                    .unwrap_or_else(|_| panic!("{method} {path}: response code {code:?}"));
                assert!(
                    (100..=599).contains(&n) && code.len() == 3,
                    "{method} {path}: {code}"
                );
                has_success |= (200..300).contains(&n);
                let response = deref(&doc, response);
                assert!(
                    response["description"].is_string(),
                    "{method} {path} {code}: description"
                );
                // HEAD answers carry no body; the others' error bodies are `{"error"}`,
                // except the readiness 503 of /v1/health (the health document).
                let content = &response["content"];
                if method == "head" {
                    assert!(content.is_null(), "HEAD {path} {code}: body");
                } else if n >= 400 && !(path == "/v1/health" && n == 503) {
                    assert_eq!(
                        content["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
                        "{method} {path} {code}: error schema"
                    );
                }
                let header = |name: &str| response["headers"][name].is_object();
                match n {
                    405 => assert!(header("Allow"), "{method} {path}: 405 Allow"),
                    429 => assert!(header("Retry-After"), "{method} {path}: 429 Retry-After"),
                    _ => {}
                }
            }
            assert!(has_success, "{method} {path}: no 2xx response");
            assert!(
                responses.contains_key("401"),
                "{method} {path}: 401 (TCP token)"
            );
            assert!(responses.contains_key("405"), "{method} {path}: 405");
        }
    }
}

/// The bounds the document states are the daemon's own constants, and what CI's
/// schemathesis run relies on is there: no `index`/`wait` on the secret value (always
/// 400), a `payload` that is never `null`, and links chaining PUT → GET → DELETE of one
/// report key (for the stateful phase).
#[test]
fn openapi_bounds_and_links_are_the_daemons() {
    use plexd_nodeapi::api::reports::MAX_CONTENT_TYPE;
    use plexd_nodeapi::store::keys::MAX_REPORT_KEY_LEN;
    let doc = openapi();
    let params = &doc["components"]["parameters"];
    assert_eq!(params["index"]["schema"]["maximum"], u64::MAX);
    assert_eq!(params["index"]["schema"]["minimum"], 0);
    assert!(params["wait"]["schema"]["pattern"].is_string());
    assert_eq!(params["reportKey"]["name"], "key");
    assert_eq!(
        params["reportKey"]["schema"]["maxLength"],
        MAX_REPORT_KEY_LEN
    );
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["PutReportBody"]["properties"]["content_type"]["maxLength"],
        MAX_CONTENT_TYPE
    );
    for schema in ["PutReportBody", "ReportEntry"] {
        let payload = &schemas[schema]["properties"]["payload"];
        assert!(
            payload["nullable"].is_null(),
            "{schema}: payload is never null"
        );
        assert!(payload["anyOf"].is_array(), "{schema}: payload types");
    }
    let ops = paths(&doc);
    for (path, item) in ops {
        for method in operations(item) {
            let names: Vec<String> = item[&method]["parameters"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| p["$ref"].as_str().unwrap_or("inline").to_owned())
                        .collect()
                })
                .unwrap_or_default();
            if path == "/v1/state/report/{key}" {
                assert!(names.contains(&"#/components/parameters/reportKey".to_owned()));
            }
            if path == "/v1/state/secrets/{key}" {
                assert_eq!(
                    names,
                    ["#/components/parameters/secretKey"],
                    "{method} {path}"
                );
            }
            if method == "put" || method == "delete" {
                for code in ["409", "503", "507"] {
                    assert!(
                        item[&method]["responses"][code].is_object(),
                        "{method} {path}: {code}"
                    );
                }
            }
        }
    }
    // PUT → GET → DELETE, by operationId, each link naming the key it passes on.
    let ids: BTreeSet<&str> = ops
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    let report = &ops["/v1/state/report/{key}"];
    let links = |method: &str, code: &str| -> Vec<(String, String)> {
        report[method]["responses"][code]["links"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {code}: links"))
            .values()
            .map(|l| {
                assert_eq!(l["parameters"]["key"], "$request.path.key");
                let id = l["operationId"].as_str().unwrap().to_owned();
                assert!(ids.contains(id.as_str()), "link to unknown {id}");
                (
                    id,
                    l["parameters"]["If-Match"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                )
            })
            .collect()
    };
    let from_put = links("put", "200");
    assert!(from_put.iter().any(|(id, _)| id == "getReportKey"));
    assert!(from_put
        .iter()
        .any(|(id, tag)| id == "deleteReportKey" && tag == "$response.header.ETag"));
    assert!(links("get", "200")
        .iter()
        .any(|(id, _)| id == "deleteReportKey"));
}

#[test]
fn example_config_is_accepted_by_the_daemon() {
    let settings = Settings::from_file(&contrib("plexd-nodeapi.json"))
        .unwrap_or_else(|e| panic!("contrib/plexd-nodeapi.json: {e}"));
    assert_eq!(
        settings.data_dir.as_deref(),
        Some(Path::new("/var/lib/plexd"))
    );
}

const CONFIGMAP_BEGIN: &str = "# BEGIN plexd-nodeapi.json";
const CONFIGMAP_END: &str = "# END plexd-nodeapi.json";

/// The JSON block scalar between the marker comments of the ConfigMap: the line
/// after BEGIN is `nodeapi.json: |`, the lines up to END are the JSON, indented.
fn configmap_json() -> String {
    let yaml = read("kubernetes/configmap.yaml");
    let lines: Vec<&str> = yaml.lines().collect();
    let begin = lines
        .iter()
        .position(|l| l.trim() == CONFIGMAP_BEGIN)
        .expect("BEGIN marker in configmap.yaml");
    let end = lines
        .iter()
        .position(|l| l.trim() == CONFIGMAP_END)
        .expect("END marker in configmap.yaml");
    assert!(begin + 2 < end, "markers out of order");
    assert_eq!(lines[begin + 1].trim(), "nodeapi.json: |");
    let key_indent = lines[begin + 1].len() - lines[begin + 1].trim_start().len();
    let body = &lines[begin + 2..end];
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .expect("a JSON body");
    assert!(indent > key_indent, "block scalar must be indented");
    body.iter()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn configmap_config_is_accepted_by_the_daemon() {
    let json = configmap_json();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nodeapi.json");
    std::fs::write(&file, &json).unwrap();
    let settings =
        Settings::from_file(&file).unwrap_or_else(|e| panic!("ConfigMap config: {e}\n{json}"));
    assert_eq!(
        settings.data_dir.as_deref(),
        Some(Path::new("/var/lib/plexd"))
    );
    assert_eq!(
        settings.socket.as_deref(),
        Some(Path::new("/var/run/plexd/api.sock"))
    );
    // The listener's address comes from the DaemonSet (the node's IP, with
    // --kubernetes checking workload tokens); the static token from the Secret.
    assert_eq!(settings.http_listen, None);
    assert_eq!(
        settings.http_token_file.as_deref(),
        Some(Path::new("/etc/plexd/http-token"))
    );

    // The DaemonSet runs with this file and mounts what it names.
    let ds = read("kubernetes/daemonset.yaml");
    for needle in [
        r#"args: ["serve", "--config", "/etc/plexd/nodeapi.json", "--kubernetes", "--http-listen", "$(HOST_IP):9100"]"#,
        "automountServiceAccountToken: true",
        "- name: MY_NODE_NAME\n              valueFrom:\n                fieldRef:\n                  fieldPath: spec.nodeName",
        "- name: POD_NAMESPACE\n              valueFrom:\n                fieldRef:\n                  fieldPath: metadata.namespace",
        "- name: HOST_IP\n              valueFrom:\n                fieldRef:\n                  fieldPath: status.hostIP",
        "mountPath: /etc/plexd\n",
        "path: nodeapi.json",
        "path: http-token",
        "path: /var/lib/plexd\n",
        "path: /var/run/plexd\n",
    ] {
        assert!(ds.contains(needle), "daemonset.yaml lacks {needle:?}");
    }
    // Every probe asks for readiness only: a degraded daemon (control plane down)
    // keeps serving its cache and must be neither restarted nor taken out of the
    // rollout (tests/blackbox/kube.rs runs these commands against a live daemon).
    let probes = crate::kube_common::daemonset_probes();
    assert_eq!(probes.len(), 3, "startup, liveness, readiness: {probes:?}");
    for (probe, command) in &probes {
        assert_eq!(
            command,
            r#"["/plexd-nodeapi", "state", "health", "--ready", "--socket", "/var/run/plexd/api.sock"]"#,
            "{probe}"
        );
    }
}

#[test]
fn the_manifests_hold_no_placeholder_and_no_secret() {
    for entry in std::fs::read_dir(contrib("kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for bad in ["REPLACE-ME", "CHANGE-ME", "TODO", "\nkind: Secret\n"] {
            assert!(
                !text.contains(bad),
                "{} contains {bad:?}: a generated value belongs in a documented command",
                path.display()
            );
        }
    }
}

#[test]
fn the_crd_names_what_the_daemon_uses() {
    use plexd_nodeapi::kube::{CRD_NAME, GROUP, KIND, PLURAL, VERSION};
    let crd = read("kubernetes/crd.yaml");
    for needle in [
        format!("  name: {CRD_NAME}\n"),
        format!("  group: {GROUP}\n"),
        format!("    kind: {KIND}\n"),
        format!("    plural: {PLURAL}\n"),
        "    shortNames:\n      - pns\n".to_owned(),
        "  scope: Namespaced\n".to_owned(),
        format!("    - name: {VERSION}\n"),
        "      subresources:\n        status: {}\n".to_owned(),
    ] {
        assert!(crd.contains(&needle), "crd.yaml lacks {needle:?}");
    }
    // The daemon's Role covers the resource and its status; never `list` on Secrets.
    let rbac = read("kubernetes/rbac.yaml");
    assert!(rbac.contains(&format!("resources: [\"{PLURAL}\"]")));
    assert!(rbac.contains(&format!("resources: [\"{PLURAL}/status\"]")));
    assert!(rbac.contains("verbs: [\"get\", \"create\", \"update\", \"delete\"]"));
    assert!(rbac.contains("name: system:auth-delegator"));
    assert!(
        !rbac.contains("\nkind: ClusterRole\n"),
        "no cluster-wide grants of our own"
    );
    let consumers = read("kubernetes/consumer-roles.yaml");
    for role in [
        "plexd-state-reader",
        "plexd-state-reporter",
        "plexd-secrets-reader",
    ] {
        assert!(consumers.contains(&format!("name: {role}\n")), "{role}");
    }
    let example = read("kubernetes/workload-example.yaml");
    assert!(example.contains("audience: plexd\n"));
}

#[test]
fn kubernetes_settings_are_config_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.json");
    std::fs::write(
        &file,
        r#"{"kubernetes": true, "k8s_api_server": "https://10.96.0.1:443",
            "k8s_token_file": "/t", "k8s_ca_file": "/c", "k8s_namespace": "plexd-system",
            "k8s_node_name": "n1", "mesh_ip": "10.0.0.1", "k8s_token_audience": "plexd"}"#,
    )
    .unwrap();
    let s = Settings::from_file(&file).unwrap();
    assert_eq!(s.kubernetes, Some(true));
    assert_eq!(s.k8s_namespace.as_deref(), Some("plexd-system"));
    assert_eq!(s.mesh_ip.as_deref(), Some("10.0.0.1"));
}
