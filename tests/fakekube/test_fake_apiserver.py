#!/usr/bin/env python3
"""Self-tests of the fake API server: the Kubernetes semantics the daemon's tests rely
on, checked over TLS against a running fake loaded with the project's manifests.

Run: python3 -m unittest tests/fakekube/test_fake_apiserver.py (tests/kube_fake.rs
does this as part of `make test`).
"""

import http.client
import json
import os
import ssl
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
MANIFESTS = [os.path.join(ROOT, "contrib", "kubernetes", f)
             for f in ("crd.yaml", "rbac.yaml", "consumer-roles.yaml", "workload-example.yaml")]
NS = "plexd-system"
CR = "/apis/plexd.plexsphere.com/v1alpha1/namespaces/%s/plexdnodestates" % NS
SECRETS = "/api/v1/namespaces/%s/secrets" % NS


class Fake:
    def __init__(self):
        args = [sys.executable, os.path.join(HERE, "fake_apiserver.py"),
                "--cert", os.path.join(FIXTURES, "test-server.pem"),
                "--key", os.path.join(FIXTURES, "test-server.key"),
                "--bookmark-interval", "0.3", "--gc-delay", "0.2"]
        for m in MANIFESTS:
            args += ["--manifest", m]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("LISTEN "), line
        self.port = int(line.split()[1])
        self.ctx = ssl.create_default_context(cafile=os.path.join(FIXTURES, "test-ca.pem"))

    def close(self):
        self.proc.kill()
        self.proc.wait()

    def request(self, method, path, body=None, token=None, ctype="application/json", headers=None):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        h = dict(headers or {})
        if token:
            h["Authorization"] = "Bearer " + token
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            h["Content-Type"] = ctype
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        raw = r.read()
        conn.close()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = raw
        return r.status, doc, r

    def admin(self, name, body=None, method="POST"):
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
        conn.request(method, "/fake/" + name, body=json.dumps(body or {}), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        doc = json.loads(r.read())
        conn.close()
        return doc

    def token(self, **kw):
        return self.admin("tokens", kw)["token"]


def cr(name="node-n-abc123", **spec):
    return {"apiVersion": "plexd.plexsphere.com/v1alpha1", "kind": "PlexdNodeState",
            "metadata": {"name": name, "labels": {"plexd.plexsphere.com/node-id": "n_abc123"}},
            "spec": dict({"nodeId": "n_abc123"}, **spec)}


class FakeApiServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fake = Fake()
        cls.admin_token = cls.fake.token(user="admin", groups=["system:masters"])
        cls.daemon = cls.fake.token(sa="plexd-system/plexd-nodeapi")
        cls.web = cls.fake.token(sa="apps/web")

    @classmethod
    def tearDownClass(cls):
        cls.fake.close()

    def setUp(self):
        # Each test starts without the resource.
        self.fake.request("DELETE", CR + "/node-n-abc123", token=self.admin_token)

    def create(self, obj=None):
        code, doc, _ = self.fake.request("POST", CR + "?fieldValidation=Strict", obj or cr(), token=self.daemon)
        self.assertEqual(code, 201, doc)
        return doc

    def test_authentication(self):
        code, doc, _ = self.fake.request("GET", CR + "/x")
        self.assertEqual((code, doc["reason"], doc["kind"]), (401, "Unauthorized", "Status"))
        plexd_aud = self.fake.token(sa="apps/web", audiences=["plexd"])
        code, _, _ = self.fake.request("GET", CR + "/x", token=plexd_aud)
        self.assertEqual(code, 401, "a plexd-audience token is useless against the API server")
        expired = self.fake.token(sa="plexd-system/plexd-nodeapi", expires_in=0.01)
        time.sleep(0.05)
        self.assertEqual(self.fake.request("GET", CR + "/x", token=expired)[0], 401)

    def test_rbac_messages(self):
        code, doc, _ = self.fake.request("GET", SECRETS, token=self.daemon)
        self.assertEqual(code, 403)
        self.assertEqual(doc["message"], 'secrets is forbidden: User "system:serviceaccount:plexd-system:plexd-nodeapi" '
                                         'cannot list resource "secrets" in API group "" in the namespace "plexd-system"')
        code, doc, _ = self.fake.request("DELETE", CR + "/node-n-abc123", token=self.daemon)
        self.assertEqual(code, 403)
        self.assertIn('cannot delete resource "plexdnodestates" in API group "plexd.plexsphere.com"', doc["message"])
        self.create()
        code, doc, _ = self.fake.request("PATCH", CR + "/node-n-abc123", {"spec": {"meshIp": "x"}}, token=self.web,
                                         ctype="application/merge-patch+json")
        self.assertEqual(code, 403, "a reporter may not touch the spec")
        code, doc, _ = self.fake.request("PATCH", CR + "/node-n-abc123/status", {"status": {"report": []}}, token=self.web,
                                         ctype="application/merge-patch+json")
        self.assertEqual(code, 200, doc)
        code, doc, _ = self.fake.request("GET", CR + "?watch=1&fieldSelector=metadata.name%3Dnode-n-abc123&timeoutSeconds=1",
                                         token=self.daemon)
        self.assertEqual(code, 200, "watch by name is authorised with the name from the fieldSelector")
        nobody = self.fake.token(sa="apps/nobody")
        code, doc, _ = self.fake.request("GET", CR + "?watch=1&timeoutSeconds=1", token=nobody)
        self.assertEqual(code, 403, "no binding, no watch")

    def test_create_validation(self):
        code, doc, _ = self.fake.request("POST", CR, cr("node-n_abc123"), token=self.daemon)
        self.assertEqual((code, doc["reason"]), (422, "Invalid"))
        self.assertEqual(doc["details"]["causes"][0]["field"], "metadata.name")
        bad = cr(data=[{"key": "a", "version": "3", "updatedAt": "yesterday", "payload": 1}])
        code, doc, _ = self.fake.request("POST", CR, bad, token=self.daemon)
        self.assertEqual(code, 422, doc)
        fields = sorted(c["field"] for c in doc["details"]["causes"])
        self.assertEqual(fields, ["spec.data[0].updatedAt", "spec.data[0].version"])
        with_status = cr()
        with_status["status"] = {"report": [{"key": "r", "payload": 1}]}
        doc = self.create(with_status)
        self.assertNotIn("status", doc, "status is dropped on create")
        self.assertEqual(doc["metadata"]["generation"], 1)
        code, doc, _ = self.fake.request("POST", CR, cr(), token=self.daemon)
        self.assertEqual((code, doc["reason"]), (409, "AlreadyExists"))

    def test_field_validation(self):
        typo = cr(data=[{"key": "a", "content_type": "x", "payload": {"b": 1}}])
        code, doc, _ = self.fake.request("POST", CR + "?fieldValidation=Strict", typo, token=self.daemon)
        self.assertEqual(code, 400)
        self.assertEqual(doc["message"], 'strict decoding error: unknown field "spec.data[0].content_type"')
        code, doc, resp = self.fake.request("POST", CR, typo, token=self.daemon)
        self.assertEqual(code, 201)
        self.assertIn('unknown field \\"spec.data[0].content_type\\"', resp.getheader("Warning"))
        self.assertEqual(doc["spec"]["data"], [{"key": "a", "payload": {"b": 1}}], "pruned, payload kept")

    def test_updates_need_a_current_resource_version(self):
        doc = self.create()
        body = dict(doc, spec={"nodeId": "n_abc123", "meshIp": "10.0.0.1"})
        body["metadata"] = {k: v for k, v in doc["metadata"].items() if k != "resourceVersion"}
        code, err, _ = self.fake.request("PUT", CR + "/node-n-abc123", body, token=self.daemon)
        self.assertEqual(code, 422)
        self.assertIn("must be specified for an update", err["message"])
        body["metadata"]["resourceVersion"] = "1"
        code, err, _ = self.fake.request("PUT", CR + "/node-n-abc123", body, token=self.daemon)
        self.assertEqual((code, err["reason"]), (409, "Conflict"))
        body["metadata"]["resourceVersion"] = doc["metadata"]["resourceVersion"]
        body["status"] = {"report": [{"key": "ignored"}]}
        code, new, _ = self.fake.request("PUT", CR + "/node-n-abc123", body, token=self.daemon)
        self.assertEqual(code, 200, new)
        self.assertEqual(new["metadata"]["generation"], 2)
        self.assertNotIn("status", new, "a main-resource update ignores status")
        patch = {"metadata": {"resourceVersion": new["metadata"]["resourceVersion"]},
                 "spec": {"meshIp": "ignored"}, "status": {"report": [{"key": "k", "payload": {"n": 1.0}}]}}
        code, st, _ = self.fake.request("PATCH", CR + "/node-n-abc123/status", patch, token=self.web,
                                        ctype="application/merge-patch+json")
        self.assertEqual(code, 200, st)
        self.assertEqual(st["spec"]["meshIp"], "10.0.0.1", "a status patch ignores spec")
        self.assertEqual(st["metadata"]["generation"], 2)
        self.assertEqual(st["status"]["report"][0]["payload"], {"n": 1}, "numbers normalised")
        code, err, _ = self.fake.request("PATCH", CR + "/node-n-abc123/status", patch, token=self.web,
                                         ctype="application/merge-patch+json")
        self.assertEqual(code, 409, "the resourceVersion in a merge patch is a precondition")
        code, _, _ = self.fake.request("PATCH", CR + "/node-n-abc123/status", {"status": {}}, token=self.web,
                                       ctype="application/strategic-merge-patch+json")
        self.assertEqual(code, 415)
        ops = [{"op": "test", "path": "/status/report/0/key", "value": "other"}]
        code, _, _ = self.fake.request("PATCH", CR + "/node-n-abc123/status", ops, token=self.web,
                                       ctype="application/json-patch+json")
        self.assertEqual(code, 422)
        ops = [{"op": "add", "path": "/status/report/-", "value": {"key": "j", "payload": "x"}}]
        code, st, _ = self.fake.request("PATCH", CR + "/node-n-abc123/status", ops, token=self.web,
                                        ctype="application/json-patch+json")
        self.assertEqual([r["key"] for r in st["status"]["report"]], ["k", "j"])

    def test_watch(self):
        doc = self.create()
        rv = doc["metadata"]["resourceVersion"]
        path = CR + "?watch=1&fieldSelector=metadata.name%3Dnode-n-abc123&allowWatchBookmarks=true&timeoutSeconds=1&resourceVersion="
        conn = http.client.HTTPSConnection("127.0.0.1", self.fake.port, context=self.fake.ctx, timeout=10)
        conn.request("GET", path + rv, headers={"Authorization": "Bearer " + self.daemon})
        resp = conn.getresponse()
        self.assertEqual(resp.getheader("Transfer-Encoding"), "chunked")
        self.fake.request("PATCH", CR + "/node-n-abc123/status", {"status": {"report": []}}, token=self.web,
                          ctype="application/merge-patch+json")
        events = [json.loads(line) for line in resp.read().decode().splitlines()]
        conn.close()
        types = [e["type"] for e in events]
        self.assertEqual(types[0], "MODIFIED")
        self.assertIn("BOOKMARK", types)
        # Without a resourceVersion: the current object as a synthetic ADDED.
        code, body, _ = self.fake.request("GET", path, token=self.daemon)
        self.assertEqual(body if isinstance(body, dict) else json.loads(body.splitlines()[0])["type"], "ADDED")
        # After a compaction the old resourceVersion is gone: HTTP 200 + ERROR 410.
        self.fake.admin("compact")
        code, body, _ = self.fake.request("GET", path + rv, token=self.daemon)
        self.assertEqual(code, 200)
        event = body if isinstance(body, dict) else json.loads(body.splitlines()[0])
        self.assertEqual((event["type"], event["object"]["code"], event["object"]["reason"]), ("ERROR", 410, "Expired"))

    def test_secrets_and_gc(self):
        owner = self.create()
        secret = {"apiVersion": "v1", "kind": "Secret",
                  "metadata": {"name": "plexd-secret-n-abc123-tls-cert",
                               "ownerReferences": [{"apiVersion": "plexd.plexsphere.com/v1alpha1", "kind": "PlexdNodeState",
                                                    "name": "node-n-abc123", "uid": owner["metadata"]["uid"]}]},
                  "type": "Opaque", "data": {"value": "not base64!"}}
        code, doc, _ = self.fake.request("POST", SECRETS, secret, token=self.daemon)
        self.assertEqual(code, 400)
        secret["data"] = {"value": "Y2lwaGVydGV4dA==", "nonce": "bm9uY2U="}
        code, doc, _ = self.fake.request("POST", SECRETS, secret, token=self.daemon)
        self.assertEqual(code, 201, doc)
        code, doc, _ = self.fake.request("GET", SECRETS + "/plexd-secret-n-abc123-tls-cert", token=self.web)
        self.assertEqual(code, 200, "web may get the names its Role lists")
        code, doc, _ = self.fake.request("GET", SECRETS + "/plexd-secret-n-abc123-other", token=self.web)
        self.assertEqual(code, 403, "and no other")
        self.fake.request("DELETE", CR + "/node-n-abc123", token=self.admin_token)
        deadline = time.time() + 5
        while time.time() < deadline:
            code, _, _ = self.fake.request("GET", SECRETS + "/plexd-secret-n-abc123-tls-cert", token=self.daemon)
            if code == 404:
                break
            time.sleep(0.05)
        self.assertEqual(code, 404, "the garbage collector deletes a Secret whose owner is gone")

    def test_reviews(self):
        plexd_tok = self.fake.token(sa="apps/web", audiences=["plexd"], node="node-1", pod="web-1")
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": plexd_tok, "audiences": ["plexd"]}}
        code, doc, _ = self.fake.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", review, token=self.daemon)
        self.assertEqual(code, 201, doc)
        st = doc["status"]
        self.assertTrue(st["authenticated"])
        self.assertEqual(st["audiences"], ["plexd"])
        self.assertEqual(st["user"]["username"], "system:serviceaccount:apps:web")
        self.assertEqual(st["user"]["extra"]["authentication.kubernetes.io/node-name"], ["node-1"])
        review["spec"]["audiences"] = ["other"]
        st = self.fake.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", review, token=self.daemon)[1]["status"]
        self.assertFalse(st.get("authenticated", False))
        code, doc, _ = self.fake.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", review, token=self.web)
        self.assertEqual(code, 403, "only auth delegators may review tokens")
        sar = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "spec": {"user": "system:serviceaccount:apps:web", "groups": ["system:serviceaccounts"],
                        "resourceAttributes": {"namespace": NS, "verb": "get", "resource": "secrets",
                                               "name": "plexd-secret-n-abc123-tls-cert"}}}
        code, doc, _ = self.fake.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar, token=self.daemon)
        self.assertEqual((code, doc["status"]["allowed"]), (201, True))
        sar["spec"]["resourceAttributes"]["name"] = "plexd-secret-n-abc123-other"
        doc = self.fake.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", sar, token=self.daemon)[1]
        self.assertFalse(doc["status"]["allowed"])

    def test_faults(self):
        self.fake.admin("faults", {"rules": [{"method": "GET", "path": CR, "code": 429, "retry_after": 2, "count": 1}]})
        code, doc, resp = self.fake.request("GET", CR + "/node-n-abc123", token=self.daemon)
        self.assertEqual((code, resp.getheader("Retry-After")), (429, "2"))
        code, _, _ = self.fake.request("GET", CR + "/node-n-abc123", token=self.daemon)
        self.assertEqual(code, 404)


if __name__ == "__main__":
    unittest.main()
