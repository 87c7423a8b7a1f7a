#!/usr/bin/env python3
"""Offline validation of Kubernetes objects, for the tests.

    validate_objects.py CRD_YAML FILE...

Each FILE is YAML (one or more documents) or JSON (an object, or a list of objects).
`PlexdNodeState` objects are checked against the CRD's openAPIV3Schema with jsonschema,
unknown fields included (they would be pruned by a real API server). Every other object
is checked with the strict schemas of the PyPI package `kubernetes-validate` (Kubernetes
1.32). Without that package (it is installed in CI only) built-in kinds are skipped and
the exit status is 77, unless PLEXD_REQUIRE_KUBERNETES_VALIDATE is set, which makes its
absence an error. Exit 0: all valid; 1: something is invalid (printed).
"""

import json
import os
import sys

import jsonschema
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_apiserver import unknown_fields  # noqa: E402

K8S_VERSION = "1.32.0"


def load(path):
    with open(path) as f:
        text = f.read()
    if path.endswith(".json"):
        doc = json.loads(text)
        return doc if isinstance(doc, list) else [doc]
    return [d for d in yaml.safe_load_all(text) if d]


def main():
    crd = next(d for d in load(sys.argv[1]) if d.get("kind") == "CustomResourceDefinition")
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    try:
        import kubernetes_validate
    except ImportError:
        kubernetes_validate = None
        if os.environ.get("PLEXD_REQUIRE_KUBERNETES_VALIDATE"):
            print("kubernetes-validate is required here but not installed")
            return 1
    failures, skipped, checked = 0, 0, 0
    for path in sys.argv[2:]:
        for obj in load(path):
            name = "%s %s/%s" % (path, obj.get("kind"), (obj.get("metadata") or {}).get("name"))
            if obj.get("kind") == kind and obj.get("apiVersion", "").startswith(group + "/"):
                body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
                errors = [e.message for e in validator.iter_errors(obj)]
                errors += ["unknown field %s" % f for f in unknown_fields(schema, body, "")]
            elif kubernetes_validate is None:
                skipped += 1
                continue
            else:
                try:
                    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
                    errors = []
                except Exception as e:  # the package raises several error types
                    errors = [str(e)[:500]]
            checked += 1
            for e in errors:
                failures += 1
                print("INVALID %s: %s" % (name, e))
    print("checked %d objects, skipped %d, %d problems" % (checked, skipped, failures))
    if failures:
        return 1
    return 77 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
