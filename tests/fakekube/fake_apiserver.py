#!/usr/bin/env python3
"""A protocol-faithful fake Kubernetes API server for plexd-nodeapi's tests.

It serves the small part of the Kubernetes REST API that the daemon and its workloads
use, with the semantics of a real kube-apiserver where the daemon could get them wrong:

* TLS only (kubectl sends no token over plain HTTP); bearer tokens with audiences,
  expiry and revocation; 401 and 403 answers with real `Status` bodies and messages;
* RBAC evaluated from the Role/ClusterRole/RoleBinding/ClusterRoleBinding documents of
  the manifest files it is started with (the project's own `contrib/kubernetes`);
* custom resources from the project's own CRD: structural pruning or strict field
  validation (`fieldValidation`), JSON-schema validation with `details.causes` (422),
  name validation, optimistic concurrency (422 for an update without
  `resourceVersion`, 409 for a stale one), status-subresource isolation, `generation`;
* merge patch, JSON patch, and 415 for strategic merge and apply patches on CRs;
* watches: chunked JSON event streams with `fieldSelector`/`labelSelector`, replay from
  a resourceVersion, bookmarks, `timeoutSeconds`, and HTTP 200 + ERROR 410 after a
  compaction;
* v1 Secrets (base64, key names, 1 MiB limit, immutable type, ownerReferences) and a
  garbage collector deleting dependents whose owners are gone;
* TokenReview and SubjectAccessReview (also SelfSubjectAccessReview);
* discovery and Table output, so real kubectl can drive it.

Test control lives under /fake/ (loopback only, no authentication): tokens, faults
(`{"rules": [{"method", "path" (a prefix), "watch" (bool), "agent" (a User-Agent
prefix), "code" (0: cut the connection), "retry_after", "delay", "count"}]}`),
compaction, dropped or stalled watches, the request log and the stored objects.

It prints `LISTEN <port>` on stdout once it accepts connections. Standard library plus
PyYAML and jsonschema (with rfc3339-validator for `format: date-time`). Fidelity gaps
are listed in README.md beside this file.
"""

import argparse
import base64
import copy
import datetime
import hashlib
import http.server
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import uuid

import jsonschema
import yaml

API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
MAX_BODY = 3 * 1024 * 1024
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)

# Built-in cluster roles a real cluster has and the fake must know by name.
BUILTIN_CLUSTER_ROLES = {
    "system:auth-delegator": [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ],
    "cluster-admin": [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
        {"nonResourceURLs": ["*"], "verbs": ["*"]},
    ],
}
# What every authenticated user may do (system:basic-user, system:discovery).
AUTHENTICATED_RULES = [
    {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
    {"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/version", "/openapi", "/openapi/*", "/healthz", "/livez", "/readyz"], "verbs": ["get"]},
]


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code, reason, message, details=None):
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


class ApiError(Exception):
    def __init__(self, code, reason, message, details=None, headers=None):
        super().__init__(message)
        self.code = code
        self.body = status_body(code, reason, message, details)
        self.headers = headers or {}


def normalize_json(v):
    """What the apiserver's decoding into interface{} does to numbers: integral values
    become int64 (1.0 -> 1, 1e3 -> 1000), out-of-range integers become float64."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        if -(2 ** 63) <= v < 2 ** 63:
            return v
        return float(v)
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 2 ** 63:
            return int(v)
        return v
    if isinstance(v, list):
        return [normalize_json(x) for x in v]
    if isinstance(v, dict):
        return {k: normalize_json(x) for k, x in v.items()}
    return v


def encode_json(obj):
    """JSON as Go's encoder writes it: sorted map keys, <>& escaped."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return text.encode("utf-8")


# ---- JSON merge patch (RFC 7386) and JSON patch (RFC 6902) -------------------------------

def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def _pointer_parts(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError("invalid JSON pointer %r" % path)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc, parts):
    cur = doc
    for p in parts:
        if isinstance(cur, list):
            cur = cur[int(p)]
        elif isinstance(cur, dict):
            cur = cur[p]
        else:
            raise KeyError(p)
    return cur


def json_patch(doc, ops):
    doc = copy.deepcopy(doc)
    if not isinstance(ops, list):
        raise ValueError("a JSON patch must be a list of operations")
    for op in ops:
        kind = op.get("op")
        parts = _pointer_parts(op.get("path", ""))
        if kind == "test":
            try:
                have = _resolve(doc, parts)
            except (KeyError, IndexError, ValueError):
                raise PatchTestFailed(op.get("path"))
            if normalize_json(have) != normalize_json(op.get("value")):
                raise PatchTestFailed(op.get("path"))
            continue
        if kind in ("move", "copy"):
            value = copy.deepcopy(_resolve(doc, _pointer_parts(op["from"])))
            if kind == "move":
                fparts = _pointer_parts(op["from"])
                parent = _resolve(doc, fparts[:-1])
                if isinstance(parent, list):
                    parent.pop(int(fparts[-1]))
                else:
                    del parent[fparts[-1]]
            kind, op = "add", {"value": value}
        if not parts:
            if kind in ("add", "replace"):
                doc = copy.deepcopy(op["value"])
                continue
            raise ValueError("cannot remove the whole document")
        parent = _resolve(doc, parts[:-1])
        last = parts[-1]
        if kind == "add":
            if isinstance(parent, list):
                if last == "-":
                    parent.append(copy.deepcopy(op["value"]))
                else:
                    i = int(last)
                    if i > len(parent):
                        raise IndexError(last)
                    parent.insert(i, copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                del parent[last]
        elif kind == "replace":
            if isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(op["value"])
            else:
                if last not in parent:
                    raise KeyError(last)
                parent[last] = copy.deepcopy(op["value"])
        else:
            raise ValueError("unknown JSON patch operation %r" % kind)
    return doc


class PatchTestFailed(Exception):
    pass


class Dropped(Exception):
    """The connection was cut on purpose (a fault); nothing is answered."""


# ---- structural schemas ---------------------------------------------------------------------

def unknown_fields(schema, value, path):
    """Paths of fields the structural schema does not know (they would be pruned)."""
    out = []
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return out
    if isinstance(value, dict):
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        for k, v in value.items():
            sub = "%s.%s" % (path, k) if path else k
            if props is not None and k in props:
                out += unknown_fields(props[k], v, sub)
            elif isinstance(addl, dict):
                out += unknown_fields(addl, v, sub)
            elif props is not None or addl is False:
                out.append(sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += unknown_fields(schema["items"], v, "%s[%d]" % (path, i))
    return out


def prune(schema, value):
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        out = {}
        for k, v in value.items():
            if props is not None and k in props:
                out[k] = prune(props[k], v)
            elif isinstance(addl, dict):
                out[k] = prune(addl, v)
            elif props is None and addl is None:
                out[k] = v
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(schema["items"], v) for v in value]
    return value


def field_path(error):
    out = ""
    for p in error.absolute_path:
        if isinstance(p, int):
            out += "[%d]" % p
        else:
            out += ("." if out else "") + str(p)
    return out


def schema_causes(validator, obj, only=None):
    """`details.causes` for every schema violation (only under the top-level key `only`)."""
    causes = []
    target = obj if only is None else {only: obj.get(only)} if only in obj else {}
    for err in sorted(validator.iter_errors(target), key=lambda e: list(map(str, e.absolute_path))):
        path = field_path(err)
        if err.validator == "type":
            expected = err.validator_value
            got = type_name(err.instance)
            causes.append({
                "reason": "FieldValueTypeInvalid",
                "message": 'Invalid value: "%s": %s in body must be of type %s: "%s"' % (got, path, expected, got),
                "field": path,
            })
        elif err.validator == "format":
            causes.append({
                "reason": "FieldValueInvalid",
                "message": 'Invalid value: "%s": %s in body must be of type %s: "%s"' % (err.instance, path, err.validator_value, err.instance),
                "field": path,
            })
        else:
            causes.append({"reason": "FieldValueInvalid", "message": "Invalid value: %s" % err.message, "field": path})
    return causes


def type_name(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


# ---- resources ------------------------------------------------------------------------------

class Resource:
    def __init__(self, group, version, plural, kind, namespaced, singular, short_names=(), schema=None,
                 status_subresource=False, columns=(), verbs=None, list_kind=None):
        self.group = group
        self.version = version
        self.plural = plural
        self.kind = kind
        self.namespaced = namespaced
        self.singular = singular
        self.short_names = list(short_names)
        self.schema = schema
        self.status_subresource = status_subresource
        self.columns = list(columns)
        self.verbs = verbs or ["create", "delete", "get", "list", "patch", "update", "watch"]
        self.list_kind = list_kind or kind + "List"
        self.validator = None
        if schema is not None:
            self.validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)

    @property
    def api_version(self):
        return "%s/%s" % (self.group, self.version) if self.group else self.version

    @property
    def qualified(self):
        return "%s.%s" % (self.plural, self.group) if self.group else self.plural

    @property
    def is_custom(self):
        return self.schema is not None


class Rbac:
    def __init__(self):
        self.roles = {}           # (ns, name) -> rules
        self.cluster_roles = dict(BUILTIN_CLUSTER_ROLES)
        self.role_bindings = []   # dicts
        self.cluster_role_bindings = []

    def load(self, doc):
        kind = doc.get("kind")
        meta = doc.get("metadata") or {}
        if kind == "Role":
            self.roles[(meta.get("namespace", "default"), meta["name"])] = doc.get("rules") or []
        elif kind == "ClusterRole":
            self.cluster_roles[meta["name"]] = doc.get("rules") or []
        elif kind == "RoleBinding":
            self.role_bindings.append(doc)
        elif kind == "ClusterRoleBinding":
            self.cluster_role_bindings.append(doc)
        else:
            return False
        return True

    @staticmethod
    def _subject_matches(subject, user, groups, binding_ns):
        kind = subject.get("kind")
        if kind == "ServiceAccount":
            ns = subject.get("namespace") or binding_ns
            return user == "system:serviceaccount:%s:%s" % (ns, subject.get("name"))
        if kind == "User":
            return user == subject.get("name")
        if kind == "Group":
            return subject.get("name") in groups
        return False

    @staticmethod
    def _rule_allows(rule, attrs):
        verbs = rule.get("verbs") or []
        if "*" not in verbs and attrs["verb"] not in verbs:
            return False
        if attrs.get("nonresource"):
            for url in rule.get("nonResourceURLs") or []:
                if url == attrs["path"] or url == "*" or (url.endswith("*") and attrs["path"].startswith(url[:-1])):
                    return True
            return False
        if rule.get("nonResourceURLs"):
            return False
        groups = rule.get("apiGroups") or []
        if "*" not in groups and attrs["group"] not in groups:
            return False
        res = attrs["resource"] + ("/" + attrs["subresource"] if attrs.get("subresource") else "")
        resources = rule.get("resources") or []
        ok = "*" in resources or res in resources
        if not ok and attrs.get("subresource"):
            ok = ("*/" + attrs["subresource"]) in resources
        if not ok:
            return False
        names = rule.get("resourceNames") or []
        if names and attrs.get("name") not in names:
            return False
        return True

    def allowed(self, user, groups, attrs):
        """(allowed, reason) for a request with these attributes."""
        if "system:masters" in groups:
            return True, "system:masters"
        for rule in AUTHENTICATED_RULES:
            if "system:authenticated" in groups and self._rule_allows(rule, attrs):
                return True, "allowed for authenticated users"
        ns = attrs.get("namespace") or ""
        for b in self.cluster_role_bindings:
            if any(self._subject_matches(s, user, groups, "") for s in b.get("subjects") or []):
                for rule in self.cluster_roles.get(b["roleRef"]["name"], []):
                    if self._rule_allows(rule, attrs):
                        return True, 'RBAC: allowed by ClusterRoleBinding "%s" of ClusterRole "%s"' % (b["metadata"]["name"], b["roleRef"]["name"])
        if ns and not attrs.get("nonresource"):
            for b in self.role_bindings:
                bns = b["metadata"].get("namespace", "default")
                if bns != ns:
                    continue
                if not any(self._subject_matches(s, user, groups, bns) for s in b.get("subjects") or []):
                    continue
                ref = b["roleRef"]
                rules = self.roles.get((bns, ref["name"]), []) if ref["kind"] == "Role" else self.cluster_roles.get(ref["name"], [])
                for rule in rules:
                    if self._rule_allows(rule, attrs):
                        return True, 'RBAC: allowed by RoleBinding "%s/%s" of %s "%s"' % (b["metadata"]["name"], bns, ref["kind"], ref["name"])
        return False, ""


class Token:
    def __init__(self, token, user, uid, groups, audiences, expires, extra, audience_unaware):
        self.token = token
        self.user = user
        self.uid = uid
        self.groups = groups
        self.audiences = audiences
        self.expires = expires
        self.extra = extra
        self.audience_unaware = audience_unaware
        self.revoked = False

    def valid(self):
        return not self.revoked and (self.expires is None or time.time() < self.expires)


class State:
    def __init__(self):
        self.cond = threading.Condition()
        self.rv = 1000
        self.objects = {}        # (plural, ns, name) -> object
        self.events = []         # (rv, type, plural, ns, object)
        self.compacted = 0
        self.tokens = {}
        self.rbac = Rbac()
        self.resources = {}      # (group, plural) -> Resource
        self.requests = []
        self.faults = []
        self.down = False
        self.watch_generation = 0
        self.stalled = False
        self.bookmark_interval = 60.0
        self.gc_delay = 1.0
        self.orphans = {}        # key -> first seen orphaned
        self.max_object_bytes = 1536 * 1024
        self.stats = {"tokenreviews": 0, "subjectaccessreviews": 0, "watches": 0}
        self.open_watches = 0
        self.crd_served = True

    def next_rv(self):
        self.rv += 1
        return self.rv

    def record_event(self, etype, res, ns, obj):
        self.events.append((int(obj["metadata"]["resourceVersion"]), etype, res.plural, ns, copy.deepcopy(obj)))
        if len(self.events) > 50000:
            cut = len(self.events) - 40000
            self.compacted = self.events[cut - 1][0]
            del self.events[:cut]
        self.cond.notify_all()


STATE = State()


def add_secret_resource():
    STATE.resources[("", "secrets")] = Resource("", "v1", "secrets", "Secret", True, "secret")


def load_manifests(paths):
    for path in paths:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc:
                    continue
                if doc.get("kind") == "CustomResourceDefinition":
                    load_crd(doc)
                else:
                    STATE.rbac.load(doc)


def load_crd(doc):
    spec = doc["spec"]
    names = spec["names"]
    for v in spec["versions"]:
        if not v.get("served"):
            continue
        columns = v.get("additionalPrinterColumns") or []
        res = Resource(
            spec["group"], v["name"], names["plural"], names["kind"], spec.get("scope") == "Namespaced",
            names.get("singular", names["kind"].lower()), names.get("shortNames") or [],
            schema=v["schema"]["openAPIV3Schema"],
            status_subresource="status" in (v.get("subresources") or {}),
            columns=columns, list_kind=names.get("listKind"),
        )
        STATE.resources[(spec["group"], names["plural"])] = res


# ---- request handling -------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-apiserver"

    def log_message(self, fmt, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        try:
            self.connection.settimeout(30)
        except OSError:
            pass

    # ---- plumbing

    def send_json(self, code, obj, headers=None):
        body = encode_json(obj)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._code = code

    def read_body(self):
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
                if len(data) > MAX_BODY:
                    raise ApiError(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728")
            return data
        n = int(length or 0)
        if n > MAX_BODY:
            self.rfile.read(n)
            raise ApiError(413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728")
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_PATCH(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def dispatch(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        if path.startswith("/fake/"):
            return self.admin(path, query)
        if STATE.down:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._code = 0
        self._req = {
            "method": self.command, "path": path, "query": query, "user": None,
            "content_type": self.headers.get("Content-Type"), "accept": self.headers.get("Accept"),
            "user_agent": self.headers.get("User-Agent"), "body": None, "time": time.time(), "code": 0,
        }
        # Recorded now (long watches included), completed as the request goes on.
        with STATE.cond:
            STATE.requests.append(self._req)
            if len(STATE.requests) > 200000:
                del STATE.requests[:100000]
        try:
            raw = self.read_body() if self.command in ("POST", "PUT", "PATCH") else b""
            if raw:
                try:
                    self._req["body"] = json.loads(raw)
                except ValueError:
                    self._req["body"] = raw.decode("utf-8", "replace")
            self.fault(path)
            user = self.authenticate()
            self._req["user"] = user.user
            self.route(path, query, raw, user)
        except ApiError as e:
            self.send_json(e.code, e.body, e.headers)
        except (Dropped, BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        finally:
            self._req["code"] = self._code

    def fault(self, path):
        with STATE.cond:
            for rule in STATE.faults:
                if rule.get("count", 1) <= 0:
                    continue
                if rule.get("method") and rule["method"] != self.command:
                    continue
                if not path.startswith(rule.get("path", "")):
                    continue
                if rule.get("watch") is not None and rule["watch"] != ("watch=" in self.path):
                    continue
                if rule.get("agent") and not (self.headers.get("User-Agent") or "").startswith(rule["agent"]):
                    continue
                rule["count"] = rule.get("count", 1) - 1
                delay = rule.get("delay")
                code = rule.get("code")
                break
            else:
                return
        self._req["fault"] = True
        if delay:
            time.sleep(delay)
        if code == 0:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            raise Dropped()
        if code:
            headers = {}
            if rule.get("retry_after") is not None:
                headers["Retry-After"] = str(rule["retry_after"])
            reasons = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
            raise ApiError(code, reasons.get(code, "InternalError"), rule.get("message") or "injected fault", headers=headers)

    def authenticate(self):
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        with STATE.cond:
            tok = STATE.tokens.get(token) if token else None
            if tok is None or not tok.valid() or (API_AUDIENCE not in tok.audiences and not tok.audience_unaware):
                raise ApiError(401, "Unauthorized", "Unauthorized")
            return tok

    def authorize(self, user, attrs, res_label, name):
        with STATE.cond:
            ok, _ = STATE.rbac.allowed(user.user, user.groups, attrs)
        if ok:
            return
        subject = ("%s \"%s\"" % (res_label, name)) if name else res_label
        if attrs.get("nonresource"):
            msg = 'forbidden: User "%s" cannot %s path "%s"' % (user.user, attrs["verb"], attrs["path"])
            raise ApiError(403, "Forbidden", msg, {})
        resource = attrs["resource"] + ("/" + attrs["subresource"] if attrs.get("subresource") else "")
        where = ('in the namespace "%s"' % attrs["namespace"]) if attrs.get("namespace") else "at the cluster scope"
        msg = '%s is forbidden: User "%s" cannot %s resource "%s" in API group "%s" %s' % (
            subject, user.user, attrs["verb"], resource, attrs["group"], where)
        details = {"kind": attrs["resource"]}
        if name:
            details["name"] = name
        if attrs["group"]:
            details["group"] = attrs["group"]
        raise ApiError(403, "Forbidden", msg, details)

    # ---- routing

    def route(self, path, query, raw, user):
        parts = [p for p in path.split("/") if p]
        if self.command == "GET" and self.discovery(parts, user, path):
            return
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        plural, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
        if len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if group == "authentication.k8s.io" and plural == "tokenreviews" and not ns and not name:
            return self.review(user, raw, "tokenreviews", group)
        if group == "authorization.k8s.io" and plural in ("subjectaccessreviews", "selfsubjectaccessreviews") and not ns and not name:
            return self.review(user, raw, plural, group)
        res = STATE.resources.get((group, plural))
        if res is None or res.version != version or (res.is_custom and not STATE.crd_served):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if res.namespaced != (ns is not None) and not (ns is None and name is None and self.command == "GET"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub is not None and not (sub == "status" and res.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        watch = query.get("watch") in ("1", "true")
        verb = {"GET": "get" if name else ("watch" if watch else "list"), "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}[self.command]
        attr_name = name
        if verb in ("list", "watch"):
            fs = parse_selector(query.get("fieldSelector", ""))
            attr_name = fs.get("metadata.name")
        attrs = {"verb": verb, "group": group, "resource": plural, "subresource": sub, "namespace": ns or "", "name": attr_name or ""}
        self._req.update({"verb": verb, "resource": plural, "subresource": sub, "namespace": ns, "name": attr_name, "group": group})
        self.authorize(user, attrs, res.plural if not group else res.qualified, name)
        if verb == "watch":
            return self.watch(res, ns, query)
        if verb == "list":
            return self.list(res, ns, query)
        if verb == "get":
            return self.get(res, ns, name)
        if verb == "create":
            return self.create(res, ns, raw, query, user)
        if verb == "update":
            return self.update(res, ns, name, sub, raw, query, user)
        if verb == "patch":
            return self.patch(res, ns, name, sub, raw, query, user)
        if verb == "delete":
            return self.delete(res, ns, name)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def discovery(self, parts, user, path):
        attrs = {"verb": "get", "nonresource": True, "path": path}
        if parts == ["version"]:
            self.authorize(user, attrs, "", None)
            self.send_json(200, {"major": "1", "minor": "32", "gitVersion": "v1.32.0-fake", "platform": "linux/amd64"})
            return True
        if parts == ["api"]:
            self.authorize(user, attrs, "", None)
            self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                 "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
            return True
        if parts == ["apis"]:
            self.authorize(user, attrs, "", None)
            groups = {}
            for res in STATE.resources.values():
                if res.group and (not res.is_custom or STATE.crd_served):
                    groups[res.group] = res.version
            groups.setdefault("authentication.k8s.io", "v1")
            groups.setdefault("authorization.k8s.io", "v1")
            items = [{"name": g, "versions": [{"groupVersion": "%s/%s" % (g, v), "version": v}],
                      "preferredVersion": {"groupVersion": "%s/%s" % (g, v), "version": v}} for g, v in sorted(groups.items())]
            self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": items})
            return True
        gv = None
        if parts == ["api", "v1"]:
            gv = ("", "v1")
        elif len(parts) == 3 and parts[0] == "apis":
            gv = (parts[1], parts[2])
        if gv is None:
            if parts[:1] == ["openapi"]:
                self.authorize(user, attrs, "", None)
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return False
        self.authorize(user, attrs, "", None)
        resources = []
        for res in STATE.resources.values():
            if (res.group, res.version) != gv or (res.is_custom and not STATE.crd_served):
                continue
            resources.append({"name": res.plural, "singularName": res.singular, "namespaced": res.namespaced,
                              "kind": res.kind, "verbs": res.verbs, "shortNames": res.short_names})
            if res.status_subresource:
                resources.append({"name": res.plural + "/status", "singularName": "", "namespaced": res.namespaced,
                                  "kind": res.kind, "verbs": ["get", "patch", "update"]})
        if gv == ("authentication.k8s.io", "v1"):
            resources.append({"name": "tokenreviews", "singularName": "", "namespaced": False, "kind": "TokenReview", "verbs": ["create"]})
        if gv == ("authorization.k8s.io", "v1"):
            for n, k in (("subjectaccessreviews", "SubjectAccessReview"), ("selfsubjectaccessreviews", "SelfSubjectAccessReview")):
                resources.append({"name": n, "singularName": "", "namespaced": False, "kind": k, "verbs": ["create"]})
        if not resources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        self.send_json(200, {"kind": "APIResourceList", "apiVersion": "v1",
                             "groupVersion": "%s/%s" % gv if gv[0] else "v1", "resources": resources})
        return True

    # ---- reads

    def get(self, res, ns, name):
        with STATE.cond:
            obj = STATE.objects.get((res.plural, ns, name))
        if obj is None:
            raise not_found(res, name)
        self.send_json(200, obj)

    def list(self, res, ns, query):
        fs = parse_selector(query.get("fieldSelector", ""))
        ls = parse_selector(query.get("labelSelector", ""))
        with STATE.cond:
            items = [copy.deepcopy(o) for (p, n, _), o in sorted(STATE.objects.items())
                     if p == res.plural and (ns is None or n == ns) and matches(o, fs, ls)]
            rv = str(STATE.rv)
        accept = self.headers.get("Accept", "")
        if "as=Table" in accept:
            return self.send_json(200, table(res, items, rv))
        self.send_json(200, {"kind": res.list_kind, "apiVersion": res.api_version,
                             "metadata": {"resourceVersion": rv}, "items": items})

    def watch(self, res, ns, query):
        fs = parse_selector(query.get("fieldSelector", ""))
        ls = parse_selector(query.get("labelSelector", ""))
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = time.time() + timeout
        rv_param = query.get("resourceVersion", "")
        with STATE.cond:
            STATE.stats["watches"] += 1
            STATE.open_watches += 1
            generation = STATE.watch_generation
            pending = []
            expired = False
            if rv_param in ("", "0"):
                for (p, n, _), o in sorted(STATE.objects.items()):
                    if p == res.plural and (ns is None or n == ns) and matches(o, fs, ls):
                        pending.append({"type": "ADDED", "object": copy.deepcopy(o)})
                cursor = STATE.rv
            else:
                try:
                    cursor = int(rv_param)
                except ValueError:
                    STATE.open_watches -= 1
                    raise ApiError(400, "BadRequest", 'invalid resource version "%s"' % rv_param)
                if cursor < STATE.compacted:
                    expired = True
                elif cursor > STATE.rv:
                    cursor = STATE.rv
        self._code = 200
        self._req["code"] = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.close_connection = True
        try:
            if expired:
                self.chunk({"type": "ERROR", "object": status_body(
                    410, "Expired", "too old resource version: %s (%d)" % (rv_param, STATE.compacted))})
                self.end_chunks()
                return
            for ev in pending:
                self.chunk(ev)
            last_bookmark = time.time()
            while True:
                with STATE.cond:
                    while True:
                        now = time.time()
                        if STATE.watch_generation != generation:
                            self.abort()
                            return
                        if now >= deadline and not STATE.stalled:
                            break
                        new = [e for e in STATE.events if e[0] > cursor]
                        if new and not STATE.stalled:
                            break
                        if bookmarks and not STATE.stalled and now - last_bookmark >= STATE.bookmark_interval:
                            break
                        wait = deadline - now
                        if bookmarks:
                            wait = min(wait, max(0.01, STATE.bookmark_interval - (now - last_bookmark)))
                        STATE.cond.wait(min(wait, 0.5))
                    if time.time() >= deadline and not STATE.stalled and not [e for e in STATE.events if e[0] > cursor]:
                        break
                    out = []
                    for (erv, etype, plural, ens, obj) in STATE.events:
                        if erv <= cursor:
                            continue
                        cursor = erv
                        if plural == res.plural and (ns is None or ens == ns) and matches(obj, fs, ls):
                            out.append({"type": etype, "object": obj})
                    if bookmarks and time.time() - last_bookmark >= STATE.bookmark_interval:
                        out.append({"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version,
                                                                   "metadata": {"resourceVersion": str(STATE.rv)}}})
                        cursor = max(cursor, STATE.rv)
                        last_bookmark = time.time()
                for ev in out:
                    self.chunk(ev)
            self.end_chunks()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        finally:
            with STATE.cond:
                STATE.open_watches -= 1

    def chunk(self, event):
        data = encode_json(event) + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunks(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def abort(self):
        """Cut the stream without a terminating chunk, as an apiserver restart does."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- writes

    def decode(self, raw):
        if not raw:
            raise ApiError(400, "BadRequest", "the body of the request was empty")
        try:
            return normalize_json(json.loads(raw))
        except ValueError as e:
            raise ApiError(400, "BadRequest", "the body of the request could not be decoded: %s" % e)

    def content_type_ok(self, allowed):
        ct = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ct not in allowed:
            raise ApiError(415, "UnsupportedMediaType",
                           'the body of the request was in an unknown format - accepted media types include: %s' % ", ".join(allowed))
        return ct

    def check_field_validation(self, query):
        fv = query.get("fieldValidation", "Warn")
        if fv not in ("Ignore", "Warn", "Strict"):
            raise ApiError(400, "BadRequest", 'fieldValidation parameter unsupported: "%s"' % fv)
        return fv

    def prepare(self, res, obj, query, ns, name_expected=None, create=False, only=None):
        """Type checks, pruning/strict validation, schema validation. Returns (object, warnings)."""
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
        if obj.get("apiVersion") != res.api_version or obj.get("kind") != res.kind:
            raise ApiError(400, "BadRequest", "the API version in the data (%s) does not match the expected API version (%s)" % (obj.get("apiVersion"), res.api_version) if obj.get("apiVersion") != res.api_version else 'Object kind "%s" does not match "%s"' % (obj.get("kind"), res.kind))
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if meta.get("namespace") not in (None, ns):
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
        name = meta.get("name")
        if name_expected is not None and name != name_expected:
            raise ApiError(400, "BadRequest", "the name of the object (%s) does not match the name on the URL (%s)" % (name, name_expected))
        warnings = []
        fv = self.check_field_validation(query)
        if res.is_custom:
            unknown = [f for f in unknown_fields(res.schema, {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, "")]
            if unknown and fv == "Strict":
                raise ApiError(400, "BadRequest", "strict decoding error: " + ", ".join('unknown field "%s"' % f for f in unknown))
            if unknown and fv == "Warn":
                warnings = ['unknown field "%s"' % f for f in unknown]
            body = prune(res.schema, {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")})
            obj = dict(body, apiVersion=obj["apiVersion"], kind=obj["kind"], metadata=meta)
        causes = []
        if create or name_expected is not None:
            if not name:
                causes.append({"reason": "FieldValueRequired", "message": "Required value: name or generateName is required", "field": "metadata.name"})
            elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
                causes.append({"reason": "FieldValueInvalid", "message": 'Invalid value: "%s": %s' % (name, SUBDOMAIN_MSG), "field": "metadata.name"})
        for k, v in (meta.get("labels") or {}).items():
            key_name = k.split("/")[-1]
            if not isinstance(v, str) or len(v) > 63 or not LABEL_VALUE.match(v):
                causes.append({"reason": "FieldValueInvalid", "message": 'Invalid value: "%s": a valid label must be an empty string or consist of alphanumeric characters, \'-\', \'_\' or \'.\', and must start and end with an alphanumeric character' % v, "field": "metadata.labels"})
            if not key_name or len(key_name) > 63 or not LABEL_VALUE.match(key_name):
                causes.append({"reason": "FieldValueInvalid", "message": 'Invalid value: "%s": name part of a label key is invalid' % k, "field": "metadata.labels"})
        for i, ref in enumerate(meta.get("ownerReferences") or []):
            for f in ("apiVersion", "kind", "name", "uid"):
                if not ref.get(f):
                    causes.append({"reason": "FieldValueRequired", "message": "Required value", "field": "metadata.ownerReferences[%d].%s" % (i, f)})
        if res.is_custom and res.validator is not None:
            causes += schema_causes(res.validator, obj, only)
        if res.plural == "secrets":
            obj = self.prepare_secret(obj, causes)
        if causes:
            msg = "%s.%s \"%s\" is invalid: %s" % (res.kind, res.group, name, ", ".join("%s: %s" % (c["field"], c["message"]) for c in causes)) if res.group \
                else "%s \"%s\" is invalid: %s" % (res.kind, name, ", ".join("%s: %s" % (c["field"], c["message"]) for c in causes))
            raise ApiError(422, "Invalid", msg, {"name": name, "group": res.group, "kind": res.kind, "causes": causes})
        return obj, warnings

    def prepare_secret(self, obj, causes):
        data = obj.get("data") or {}
        if not isinstance(data, dict):
            raise ApiError(400, "BadRequest", "data must be a map")
        out = {}
        total = 0
        for k, v in data.items():
            if not SECRET_KEY.match(k):
                causes.append({"reason": "FieldValueInvalid", "message": "Invalid value: \"%s\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'" % k, "field": "data[%s]" % k})
            try:
                raw = base64.b64decode(v, validate=True) if isinstance(v, str) else None
            except ValueError:
                raw = None
            if raw is None:
                raise ApiError(400, "BadRequest", "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 0")
            total += len(raw)
            out[k] = base64.b64encode(raw).decode()
        for k, v in (obj.get("stringData") or {}).items():
            out[k] = base64.b64encode(v.encode()).decode()
            total += len(v.encode())
        if total > 1024 * 1024:
            causes.append({"reason": "FieldValueTooLong", "message": "Too long: must have at most 1048576 bytes", "field": "data"})
        obj = dict(obj)
        obj.pop("stringData", None)
        if out:
            obj["data"] = out
        else:
            obj.pop("data", None)
        obj.setdefault("type", "Opaque")
        return obj

    def store_write(self, res, ns, name, obj, created):
        if len(encode_json(obj)) > STATE.max_object_bytes:
            raise ApiError(500, "InternalError", "etcdserver: request is too large")
        obj["metadata"]["resourceVersion"] = str(STATE.next_rv())
        STATE.objects[(res.plural, ns, name)] = obj
        STATE.record_event("ADDED" if created else "MODIFIED", res, ns, obj)
        return copy.deepcopy(obj)

    def warning_headers(self, warnings):
        return {"Warning": ", ".join('299 - "%s"' % w.replace('"', '\\"') for w in warnings)} if warnings else None

    def managed(self, query, user, sub):
        return [{"manager": query.get("fieldManager") or (user.user or "unknown"), "operation": "Update",
                 "apiVersion": "", "time": now_rfc3339(), **({"subresource": sub} if sub else {})}]

    def create(self, res, ns, raw, query, user):
        self.content_type_ok(["application/json"])
        obj = self.decode(raw)
        obj, warnings = self.prepare(res, obj, query, ns, create=True)
        name = obj["metadata"]["name"]
        meta = obj["metadata"]
        with STATE.cond:
            if (res.plural, ns, name) in STATE.objects:
                raise ApiError(409, "AlreadyExists", '%s "%s" already exists' % (res.qualified, name),
                               {"name": name, "group": res.group, "kind": res.plural})
            for k in ("resourceVersion", "uid", "generation", "creationTimestamp", "managedFields", "deletionTimestamp"):
                meta.pop(k, None)
            meta["namespace"] = ns
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["managedFields"] = self.managed(query, user, None)
            if res.is_custom:
                meta["generation"] = 1
                if res.status_subresource:
                    obj.pop("status", None)
            out = self.store_write(res, ns, name, obj, True)
        self.send_json(201, out, self.warning_headers(warnings))

    def precondition(self, res, current, body_meta, require_rv):
        rv = body_meta.get("resourceVersion")
        if not rv:
            if require_rv:
                name = current["metadata"]["name"]
                raise ApiError(422, "Invalid",
                               '%s.%s "%s" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update' % (res.kind, res.group, name),
                               {"name": name, "group": res.group, "kind": res.kind, "causes": [{"reason": "FieldValueInvalid", "message": "Invalid value: 0x0: must be specified for an update", "field": "metadata.resourceVersion"}]})
            return
        if rv != current["metadata"]["resourceVersion"]:
            raise conflict(res, current["metadata"]["name"])
        uid = body_meta.get("uid")
        if uid and uid != current["metadata"]["uid"]:
            raise ApiError(409, "Conflict", "Precondition failed: UID in precondition: %s, UID in object meta: %s" % (uid, current["metadata"]["uid"]))

    def apply_update(self, res, ns, name, sub, current, new, query, user, require_rv):
        """Shared by PUT and PATCH: preconditions, status isolation, generation."""
        self.precondition(res, current, new.get("metadata") or {}, require_rv)
        if res.plural == "secrets" and new.get("type", "Opaque") != current.get("type", "Opaque"):
            raise ApiError(422, "Invalid", 'Secret "%s" is invalid: type: Invalid value: "%s": field is immutable' % (name, new.get("type")),
                           {"name": name, "kind": "Secret", "causes": [{"reason": "FieldValueInvalid", "message": "field is immutable", "field": "type"}]})
        if sub == "status":
            result = copy.deepcopy(current)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = copy.deepcopy(new)
            meta = result["metadata"]
            for k in ("uid", "creationTimestamp", "namespace", "generation", "deletionTimestamp"):
                if k in current["metadata"]:
                    meta[k] = current["metadata"][k]
            if res.status_subresource:
                if "status" in current:
                    result["status"] = current["status"]
                else:
                    result.pop("status", None)
                if normalize_json(current.get("spec")) != normalize_json(result.get("spec")):
                    meta["generation"] = current["metadata"].get("generation", 1) + 1
        result["metadata"]["managedFields"] = self.managed(query, user, sub)
        if normalize_json(strip_volatile(result)) == normalize_json(strip_volatile(current)):
            return copy.deepcopy(current)  # a no-op write does not bump the resourceVersion
        return self.store_write(res, ns, name, result, False)

    def update(self, res, ns, name, sub, raw, query, user):
        self.content_type_ok(["application/json"])
        obj = self.decode(raw)
        obj, warnings = self.prepare(res, obj, query, ns, name_expected=name, only="status" if sub else None)
        with STATE.cond:
            current = STATE.objects.get((res.plural, ns, name))
            if current is None:
                raise not_found(res, name)
            out = self.apply_update(res, ns, name, sub, current, obj, query, user, require_rv=res.is_custom)
        self.send_json(200, out, self.warning_headers(warnings))

    def patch(self, res, ns, name, sub, raw, query, user):
        ct = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ct == "application/strategic-merge-patch+json" and res.is_custom:
            raise ApiError(415, "UnsupportedMediaType",
                           "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
        if ct == "application/apply-patch+yaml":
            raise ApiError(415, "UnsupportedMediaType", "server-side apply is out of scope for this fake API server")
        if ct not in ("application/merge-patch+json", "application/json-patch+json", "application/strategic-merge-patch+json"):
            raise ApiError(415, "UnsupportedMediaType",
                           "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
        patch = self.decode(raw)
        with STATE.cond:
            current = STATE.objects.get((res.plural, ns, name))
            if current is None:
                raise not_found(res, name)
            base = copy.deepcopy(current)
            base["metadata"].pop("managedFields", None)
            try:
                if ct == "application/json-patch+json":
                    patched = json_patch(base, patch)
                else:
                    if not isinstance(patch, dict):
                        raise ValueError("a merge patch must be a JSON object")
                    patched = merge_patch(base, patch)
            except PatchTestFailed as e:
                raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request: testing value %s failed" % e)
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request: %s" % e)
            patched = normalize_json(patched)
            obj, warnings = self.prepare(res, patched, query, ns, name_expected=name, only="status" if sub else None)
            out = self.apply_update(res, ns, name, sub, current, obj, query, user, require_rv=False)
        self.send_json(200, out, self.warning_headers(warnings))

    def delete(self, res, ns, name):
        with STATE.cond:
            obj = STATE.objects.pop((res.plural, ns, name), None)
            if obj is None:
                raise not_found(res, name)
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(STATE.next_rv())
            STATE.record_event("DELETED", res, ns, obj)
        if res.is_custom:
            self.send_json(200, obj)
        else:
            self.send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                 "details": {"name": name, "kind": res.plural, "uid": obj["metadata"]["uid"]}})

    # ---- reviews

    def review(self, user, raw, plural, group):
        attrs = {"verb": "create", "group": group, "resource": plural, "namespace": "", "name": ""}
        self._req.update({"verb": "create", "resource": plural, "group": group, "namespace": None, "name": None, "subresource": None})
        if self.command != "POST":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        self.authorize(user, attrs, "%s.%s" % (plural, group), None)
        self.content_type_ok(["application/json"])
        body = self.decode(raw)
        kinds = {"tokenreviews": "TokenReview", "subjectaccessreviews": "SubjectAccessReview", "selfsubjectaccessreviews": "SelfSubjectAccessReview"}
        if body.get("apiVersion") != group + "/v1" or body.get("kind") != kinds[plural]:
            raise ApiError(400, "BadRequest", "wrong apiVersion or kind for %s" % plural)
        spec = body.get("spec") or {}
        if plural == "tokenreviews":
            status = self.token_review(spec)
        else:
            if plural == "selfsubjectaccessreviews":
                spec = dict(spec, user=user.user, groups=user.groups, uid=user.uid, extra=user.extra)
            status = self.access_review(spec, body)
        out = {"kind": kinds[plural], "apiVersion": group + "/v1", "metadata": {"creationTimestamp": None},
               "spec": body.get("spec") or {}, "status": status}
        self.send_json(201, out)

    def token_review(self, spec):
        token = spec.get("token")
        if not token:
            raise ApiError(422, "Invalid", "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value",
                           {"causes": [{"reason": "FieldValueRequired", "field": "spec.token", "message": "Required value"}]})
        with STATE.cond:
            STATE.stats["tokenreviews"] += 1
            tok = STATE.tokens.get(token)
            if tok is None or not tok.valid():
                return {"user": {}, "error": "[invalid bearer token, service account token is not valid]"}
            if tok.audience_unaware:
                return {"authenticated": True, "user": user_info(tok), "audiences": []}
            wanted = spec.get("audiences") or [API_AUDIENCE]
            common = [a for a in wanted if a in tok.audiences]
            if not common:
                return {"user": {}, "error": "[invalid bearer token, token audiences %s is invalid for the target audiences %s]" % (json.dumps(tok.audiences), json.dumps(wanted))}
            return {"authenticated": True, "user": user_info(tok), "audiences": common}

    def access_review(self, spec, body):
        ra = spec.get("resourceAttributes")
        nra = spec.get("nonResourceAttributes")
        if not spec.get("user") and not spec.get("groups"):
            raise ApiError(422, "Invalid", "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified",
                           {"causes": [{"reason": "FieldValueInvalid", "field": "spec.user", "message": "at least one of user or group must be specified"}]})
        if bool(ra) == bool(nra):
            raise ApiError(422, "Invalid", "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
                           {"causes": [{"reason": "FieldValueInvalid", "field": "spec.resourceAttributes", "message": "exactly one must be specified"}]})
        if ra:
            attrs = {"verb": ra.get("verb", ""), "group": ra.get("group", ""), "resource": ra.get("resource", ""),
                     "subresource": ra.get("subresource") or None, "namespace": ra.get("namespace", ""), "name": ra.get("name", "")}
        else:
            attrs = {"verb": nra.get("verb", ""), "nonresource": True, "path": nra.get("path", "")}
        with STATE.cond:
            STATE.stats["subjectaccessreviews"] += 1
            ok, reason = STATE.rbac.allowed(spec.get("user", ""), spec.get("groups") or [], attrs)
        return {"allowed": ok, "reason": reason} if ok else {"allowed": False}

    # ---- test control

    def admin(self, path, query):
        if self.client_address[0] not in ("127.0.0.1", "::1"):
            return self.send_json(403, {"error": "loopback only"})
        try:
            raw = self.read_body()
            body = json.loads(raw) if raw else {}
        except (ValueError, ApiError):
            return self.send_json(400, {"error": "bad body"})
        name = path[len("/fake/"):]
        with STATE.cond:
            if name == "tokens" and self.command == "POST":
                tok = make_token(body)
                STATE.tokens[tok.token] = tok
                return self.send_json(200, {"token": tok.token, "user": tok.user, "uid": tok.uid, "groups": tok.groups})
            if name == "revoke":
                tok = STATE.tokens.get(body.get("token"))
                if tok:
                    tok.revoked = True
                return self.send_json(200, {"revoked": tok is not None})
            if name == "rbac":
                n = 0
                for doc in yaml.safe_load_all(body.get("yaml", "")):
                    if doc and STATE.rbac.load(doc):
                        n += 1
                return self.send_json(200, {"loaded": n})
            if name == "faults":
                if self.command == "DELETE":
                    STATE.faults = []
                else:
                    STATE.faults.extend(body.get("rules", []))
                return self.send_json(200, {"faults": STATE.faults})
            if name == "compact":
                STATE.compacted = STATE.rv
                STATE.events = []
                return self.send_json(200, {"compacted": STATE.compacted})
            if name == "drop-watches":
                STATE.watch_generation += 1
                STATE.cond.notify_all()
                return self.send_json(200, {})
            if name == "config":
                for key in ("bookmark_interval", "gc_delay", "max_object_bytes", "stalled", "down", "crd_served"):
                    if key in body:
                        setattr(STATE, key, body[key])
                STATE.cond.notify_all()
                return self.send_json(200, {})
            if name == "requests":
                if self.command == "DELETE":
                    STATE.requests = []
                    return self.send_json(200, {})
                return self.send_json(200, {"requests": STATE.requests})
            if name == "objects":
                items = [o for (p, n, _), o in sorted(STATE.objects.items()) if not query.get("resource") or p == query["resource"]]
                return self.send_json(200, {"items": items})
            if name == "stats":
                return self.send_json(200, dict(STATE.stats, open_watches=STATE.open_watches, rv=STATE.rv))
        self.send_json(404, {"error": "unknown test control route"})


def strip_volatile(obj):
    o = copy.deepcopy(obj)
    o["metadata"].pop("managedFields", None)
    o["metadata"].pop("resourceVersion", None)
    return o


def user_info(tok):
    info = {"username": tok.user, "uid": tok.uid, "groups": tok.groups}
    if tok.extra:
        info["extra"] = tok.extra
    return info


def make_token(body):
    token = body.get("token") or base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
    if body.get("sa"):
        ns, name = body["sa"].split("/", 1)
        user = "system:serviceaccount:%s:%s" % (ns, name)
        groups = ["system:serviceaccounts", "system:serviceaccounts:%s" % ns, "system:authenticated"]
    else:
        user = body.get("user", "admin")
        groups = list(body.get("groups", [])) + ["system:authenticated"]
    expires = time.time() + body["expires_in"] if body.get("expires_in") else None
    extra = {}
    if body.get("node"):
        extra["authentication.kubernetes.io/node-name"] = [body["node"]]
    if body.get("pod"):
        extra["authentication.kubernetes.io/pod-name"] = [body["pod"]]
        extra["authentication.kubernetes.io/pod-uid"] = [str(uuid.uuid5(uuid.NAMESPACE_OID, body["pod"]))]
    extra.update(body.get("extra") or {})
    return Token(token, user, body.get("uid") or str(uuid.uuid4()), groups, body.get("audiences") or [API_AUDIENCE],
                 expires, extra, bool(body.get("audience_unaware")))


def parse_selector(text):
    out = {}
    for part in filter(None, text.split(",")):
        if "==" in part:
            k, v = part.split("==", 1)
        elif "=" in part:
            k, v = part.split("=", 1)
        else:
            k, v = part, None
        out[k.strip()] = v
    return out


def matches(obj, fs, ls):
    meta = obj["metadata"]
    for k, v in fs.items():
        have = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}.get(k)
        if have != v:
            return False
    labels = meta.get("labels") or {}
    for k, v in ls.items():
        if v is None:
            if k not in labels:
                return False
        elif labels.get(k) != v:
            return False
    return True


def not_found(res, name):
    return ApiError(404, "NotFound", '%s "%s" not found' % (res.qualified, name),
                    {"name": name, "group": res.group, "kind": res.plural})


def conflict(res, name):
    return ApiError(409, "Conflict",
                    'Operation cannot be fulfilled on %s "%s": the object has been modified; please apply your changes to the latest version and try again' % (res.qualified, name),
                    {"name": name, "group": res.group, "kind": res.plural})


def json_path(obj, path):
    cur = obj
    for part in path.strip(".").split("."):
        m = re.match(r"^(\w+)(\[\*\])?$", part)
        if not m or not isinstance(cur, dict):
            return None
        cur = cur.get(m.group(1))
        if m.group(2):
            # The apiextensions table convertor uses only the first result of a
            # multi-result path; for an integer column of string keys that is nil.
            return None
    return cur


def human_age(timestamp):
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    s = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    if s < 120:
        return "%ds" % s
    if s < 3600:
        return "%dm" % (s // 60)
    return "%dh" % (s // 3600)


def table(res, items, rv):
    cols = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
    for c in res.columns:
        cols.append({"name": c["name"], "type": c["type"], "format": c.get("format", ""), "description": c.get("description", ""), "priority": c.get("priority", 0)})
    rows = []
    for o in items:
        cells = [o["metadata"]["name"]]
        for c in res.columns:
            v = json_path(o, c["jsonPath"])
            if c["type"] == "integer" and not isinstance(v, int):
                v = None
            if c["type"] == "date" and isinstance(v, str):
                v = human_age(v)
            cells.append(v)
        rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "columnDefinitions": cols, "rows": rows}


def garbage_collector():
    while True:
        time.sleep(0.1)
        with STATE.cond:
            now = time.time()
            present = {}
            for (p, ns, name), o in STATE.objects.items():
                present[(ns, o["metadata"]["uid"])] = True
            for key, o in list(STATE.objects.items()):
                refs = o["metadata"].get("ownerReferences") or []
                if not refs:
                    continue
                ns = key[1]
                if any((ns, r.get("uid")) in present for r in refs):
                    STATE.orphans.pop(key, None)
                    continue
                first = STATE.orphans.setdefault(key, now)
                if now - first < STATE.gc_delay:
                    continue
                del STATE.objects[key]
                STATE.orphans.pop(key, None)
                o = copy.deepcopy(o)
                o["metadata"]["resourceVersion"] = str(STATE.next_rv())
                res = next(r for r in STATE.resources.values() if r.plural == key[0])
                STATE.record_event("DELETED", res, ns, o)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, context):
        self.context = context
        super().__init__(addr, Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--manifest", action="append", default=[], help="YAML with the CRD and RBAC documents")
    ap.add_argument("--bookmark-interval", type=float, default=60.0)
    ap.add_argument("--gc-delay", type=float, default=1.0)
    args = ap.parse_args()
    add_secret_resource()
    load_manifests(args.manifest)
    STATE.bookmark_interval = args.bookmark_interval
    STATE.gc_delay = args.gc_delay
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server = Server(("127.0.0.1", args.port), ctx)
    threading.Thread(target=garbage_collector, daemon=True).start()
    print("LISTEN %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
