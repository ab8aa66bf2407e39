#!/usr/bin/env python3
"""Kubernetes JSON schemas for kubeconform, generated offline.

Input: the OpenAPI v2 document an API server serves (shipped in the Kubernetes Go module as
api/openapi-spec/swagger.json) and, optionally, CustomResourceDefinition files (e.g. the
prometheus-operator's ServiceMonitor). Output: one JSON schema per kind and version in the
directory layout kubeconform looks up by default,

    <out>/v<k8s-version>-standalone-strict/<kind><-group-prefix>-<version>.json

e.g. deployment-apps-v1.json, service-v1.json, servicemonitor-monitoring-v1.json.

Each file is standalone (every definition it uses is copied into its own "definitions", so
recursive types such as JSONSchemaProps stay finite) and strict: an object that lists its
properties allows no others, which is what makes a misspelt field (`readinesProbe`) an error.
Two OpenAPI formats have no JSON-schema type of their own and are widened the way the API
server reads them: int-or-string (e.g. a port name or number) and resource quantities
(`cpu: 1` or `cpu: 500m`).
"""

import argparse
import copy
import json
import os
import sys

import yaml

REF_PREFIX = "#/definitions/"
INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}
QUANTITY_DEFINITION = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def file_name(kind, group, version):
    """kubeconform's default name: lower-case kind, first label of the group, version."""
    suffix = f"-{group.split('.')[0].lower()}" if group else ""
    return f"{kind.lower()}{suffix}-{version.lower()}.json"


def strict(node):
    """Widens the special formats and closes every object that lists its properties."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
        widened = {k: v for k, v in node.items() if k not in ("type", "format")}
        widened.update(copy.deepcopy(INT_OR_STRING))
        return widened
    out = {key: strict(value) for key, value in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def referenced(schema, definitions, seen):
    """Names of every definition reachable from schema, transitively."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(REF_PREFIX):
                name = ref[len(REF_PREFIX):]
                if name not in seen:
                    seen.add(name)
                    stack.append(definitions[name])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return seen


def from_swagger(path):
    with open(path, encoding="utf-8") as handle:
        definitions = json.load(handle)["definitions"]
    definitions[QUANTITY_DEFINITION] = dict(
        QUANTITY, description=definitions.get(QUANTITY_DEFINITION, {}).get("description", "")
    )
    for name, schema in definitions.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            used = sorted(referenced(schema, definitions, set()))
            document = copy.deepcopy(schema)
            if used:
                document["definitions"] = {n: copy.deepcopy(definitions[n]) for n in used}
            yield file_name(gvk["kind"], gvk.get("group", ""), gvk["version"]), document


def from_crd(path):
    with open(path, encoding="utf-8") as handle:
        for crd in yaml.safe_load_all(handle):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = version.get("schema", {}).get("openAPIV3Schema")
                if version.get("served", True) and schema:
                    yield file_name(spec["names"]["kind"], spec["group"], version["name"]), schema


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--swagger", required=True, help="Kubernetes swagger.json")
    parser.add_argument("--version", required=True, help="Kubernetes version, e.g. 1.36.3")
    parser.add_argument("--crd", action="append", default=[], help="CRD YAML file (repeatable)")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args()

    target = os.path.join(args.out, f"v{args.version.lstrip('v')}-standalone-strict")
    os.makedirs(target, exist_ok=True)
    count = 0
    sources = [from_swagger(args.swagger)] + [from_crd(crd) for crd in args.crd]
    for source in sources:
        for name, schema in source:
            document = strict(schema)
            document["$schema"] = "http://json-schema.org/schema#"
            with open(os.path.join(target, name), "w", encoding="utf-8") as handle:
                json.dump(document, handle, sort_keys=True)
            count += 1
    if count < 50:
        sys.exit(f"only {count} schemas generated: is {args.swagger} a Kubernetes OpenAPI document?")
    print(f"{count} schemas in {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
