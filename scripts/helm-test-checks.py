#!/usr/bin/env python3
"""What scripts/helm-test.sh asks the API server, and the checks of what it holds.

  path NAMESPACE < object.json        the API path to create the object at
  secrets NAMESPACE                   the production release's Secrets (what an operator creates)
  check NAMESPACE RELEASE PHASE ...   PHASE: installed | upgraded | uninstalled | refused

Runs with the deployment tools' Python (PyYAML); talks to the API server with the standard
library only.
"""

import argparse
import base64
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

import yaml

SERVICES = ["gateway", "user-service", "catalog-service", "inventory-service",
            "order-service", "payment-service", "notification-service"]
# Pods of these components exist only while a hook runs (the seed Job, `helm test`).
HOOK_COMPONENTS = {"catalog-seed", "smoke-test"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def plural(kind):
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    if lower.endswith("s"):
        return lower + "es"
    return lower + "s"


def api_path(api_version, kind, namespace):
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if kind in CLUSTER_SCOPED or not namespace:
        return f"{base}/{plural(kind)}"
    return f"{base}/namespaces/{namespace}/{plural(kind)}"


# ------------------------------------------------------------------------ production secrets

def production_secrets(namespace):
    """One Secret per service, named as ci/production-values.yaml says, with every key the
    chart reads from it (placeholders in the right format: nothing here runs)."""
    with open(os.path.join(os.path.dirname(__file__), "../deploy/helm/shop/ci/production-values.yaml")) as f:
        values = yaml.safe_load(f)
    stores = {"gateway": "REDIS_URL", "catalog-service": "MONGODB_URL", "notification-service": "MONGODB_URL"}
    for service in SERVICES:
        data = {"AMQP_URL": "amqps://user:password@broker.example.com:5671/%2f"}
        store = stores.get(service, "DATABASE_URL")
        data[store] = {
            "REDIS_URL": "rediss://cache.example.com:6379",
            "MONGODB_URL": "mongodb://user:password@mongo.example.com:27017/db",
            "DATABASE_URL": "postgres://user:password@db.example.com:5432/db",
        }[store]
        if service in ("order-service", "notification-service"):
            data["SERVICE_SECRET"] = "x" * 40
        if service == "order-service":
            data["ORDER_CARD_KEY"] = base64.b64encode(b"k" * 32).decode()
        if service == "user-service":
            data.update(SERVICE_CLIENTS="order-service=" + "x" * 40, ADMIN_PASSWORD="y" * 24,
                        JWT_SIGNING_KEY="(an Ed25519 PEM)")
        yield {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": values["services"][service]["existingSecret"], "namespace": namespace},
               "stringData": data}


# ---------------------------------------------------------------------------------- checking

class Api:
    def __init__(self, url, token, ca):
        self.url, self.token = url, token
        self.context = ssl.create_default_context(cafile=ca)

    def get(self, path):
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
            return json.load(response)

    def items(self, api_version, kind, namespace, release):
        selector = urllib.request.quote(f"app.kubernetes.io/instance={release}")
        return self.get(f"{api_path(api_version, kind, namespace)}?labelSelector={selector}")["items"]


def matches(selector, labels):
    """A LabelSelector (matchLabels + matchExpressions) against a label set."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


class Report:
    def __init__(self):
        self.problems = []

    def expect(self, condition, problem):
        if not condition:
            self.problems.append(problem)

    def finish(self, what):
        if self.problems:
            sys.exit(f"helm-test: {what}:\n  " + "\n  ".join(self.problems))
        print(f"helm-test: {what}: ok")


def wait_for(description, condition, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"helm-test: gave up after {timeout} s waiting for {description}")
        time.sleep(1)


def check_installed(api, namespace, release, phase, hooks):
    report = Report()
    get = lambda api_version, kind: api.items(api_version, kind, namespace, release)
    deployments = get("apps/v1", "Deployment")
    statefulsets = get("apps/v1", "StatefulSet")
    components = {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments}
    report.expect(set(SERVICES) <= components, f"Deployments for {set(SERVICES) - components} are missing")

    # Every Deployment: probes, and the security context (also enforced: Pod Security restricted).
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = deployment["spec"]["template"]["spec"]
        context = pod.get("securityContext", {})
        report.expect(context.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot is not true")
        report.expect(context.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp is not RuntimeDefault")
        report.expect(pod.get("automountServiceAccountToken") is False, f"{name}: mounts a service account token")
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name}/{container['name']}"
            security = container.get("securityContext", {})
            report.expect(security.get("readOnlyRootFilesystem") is True, f"{where}: root filesystem is writable")
            report.expect(security.get("allowPrivilegeEscalation") is False, f"{where}: allows privilege escalation")
            report.expect("ALL" in security.get("capabilities", {}).get("drop", []), f"{where}: does not drop ALL capabilities")
        if component in SERVICES:
            # Pods roll when their Secret changes: the generated one hashed as rendered, an
            # existingSecret as the chart's `lookup` read it from this server (the operator's
            # Secrets exist before the install), which `helm template` cannot show.
            annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
            report.expect("checksum/secret" in annotations, f"{name}: no checksum/secret annotation")
        for container in pod["containers"]:
            where = f"{name}/{container['name']}"
            probes = ["livenessProbe", "readinessProbe"] + (["startupProbe"] if component in SERVICES else [])
            for probe in probes:
                report.expect(probe in container, f"{where}: no {probe}")

    # The controllers made the pods (so Pod Security admitted them): one per replica.
    expected = sum(d["spec"].get("replicas", 1) for d in deployments + statefulsets)
    pods = wait_for(f"{expected} pods", lambda: (lambda p: p if len(p) >= expected else None)(
        [p for p in get("v1", "Pod") if not p["metadata"].get("deletionTimestamp")]))
    report.expect(all(p["status"].get("phase") == "Pending" for p in pods), "a pod is not Pending (there is no kubelet)")
    pod_labels = [p["metadata"]["labels"] for p in pods]
    hook_labels = [o["spec"]["template"]["metadata"]["labels"] if o["kind"] == "Job" else o["metadata"]["labels"]
                   for o in hooks]

    for service in get("v1", "Service"):
        selector = {"matchLabels": service["spec"].get("selector", {})}
        report.expect(any(matches(selector, labels) for labels in pod_labels),
                      f"Service {service['metadata']['name']} selects no pod")
    for policy in get("networking.k8s.io/v1", "NetworkPolicy"):
        component = policy["metadata"]["labels"]["app.kubernetes.io/component"]
        candidates = hook_labels if component in HOOK_COMPONENTS else pod_labels
        report.expect(any(matches(policy["spec"]["podSelector"], labels) for labels in candidates),
                      f"NetworkPolicy {policy['metadata']['name']} selects no pod")
    for pdb in get("policy/v1", "PodDisruptionBudget"):
        report.expect(any(matches(pdb["spec"]["selector"], labels) for labels in pod_labels),
                      f"PodDisruptionBudget {pdb['metadata']['name']} selects no pod")
    deployment_names = {d["metadata"]["name"] for d in deployments}
    hpas = get("autoscaling/v2", "HorizontalPodAutoscaler")
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        report.expect(target["kind"] == "Deployment" and target["name"] in deployment_names,
                      f"HPA {hpa['metadata']['name']} targets {target['kind']} {target['name']}, which does not exist")
    services = {s["metadata"]["name"]: s for s in get("v1", "Service")}
    for ingress in get("networking.k8s.io/v1", "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = services.get(backend["name"])
                report.expect(service is not None and any(p["name"] == backend["port"]["name"] for p in service["spec"]["ports"]),
                              f"Ingress {ingress['metadata']['name']} points at {backend}, which does not exist")
    try:
        monitors = get("monitoring.coreos.com/v1", "ServiceMonitor")
    except urllib.error.HTTPError:
        monitors = []  # no CRD in this mode
    for monitor in monitors:
        selected = [s for s in services.values() if matches(monitor["spec"]["selector"], s["metadata"]["labels"])]
        report.expect(len(selected) == len(SERVICES), f"ServiceMonitor {monitor['metadata']['name']} selects {len(selected)} Services, not the seven")

    if phase == "upgraded":
        autoscaled = {h["spec"]["scaleTargetRef"]["name"] for h in hpas}
        for deployment in deployments:
            name = deployment["metadata"]["name"]
            if deployment["metadata"]["labels"]["app.kubernetes.io/component"] in SERVICES and name not in autoscaled:
                report.expect(deployment["spec"]["replicas"] == 3, f"{name}: the upgrade did not set 3 replicas")
        for hpa in hpas:
            report.expect(hpa["spec"]["minReplicas"] == 3, f"HPA {hpa['metadata']['name']}: the upgrade did not set minReplicas 3")
        for config in get("v1", "ConfigMap"):
            if "RUST_LOG" in config.get("data", {}):
                report.expect(config["data"]["RUST_LOG"] == "debug", f"ConfigMap {config['metadata']['name']}: RUST_LOG not upgraded")
        # The changed ConfigMap checksum rolled every service: a second ReplicaSet each. The
        # deployment controller creates them asynchronously, after `helm upgrade` returns.
        def rolled():
            sets = get("apps/v1", "ReplicaSet")
            components = [r["metadata"]["labels"].get("app.kubernetes.io/component") for r in sets]
            return all(components.count(service) >= 2 for service in SERVICES) and sets

        wait_for("a new ReplicaSet per service", rolled, timeout=60)
        replicasets = get("apps/v1", "ReplicaSet")
        for service in SERVICES:
            owned = [r for r in replicasets if r["metadata"]["labels"].get("app.kubernetes.io/component") == service]
            report.expect(len(owned) >= 2, f"{service}: the upgrade made no new ReplicaSet ({len(owned)})")

    report.finish(f"{namespace}: {phase}: {len(deployments)} Deployments, {len(statefulsets)} StatefulSets, "
                  f"{len(pods)} pods (Pending), {len(services)} Services, {len(hpas)} HPAs, "
                  f"{len(monitors)} ServiceMonitors checked")


def check_refused(api, namespace, release):
    """The selftest: a chart copy whose containers may escalate privileges. Pod Security
    "restricted" must refuse every service's pods, which the ReplicaSets report."""
    def refusals():
        refused = set()
        for replicaset in api.items("apps/v1", "ReplicaSet", namespace, release):
            for condition in replicaset.get("status", {}).get("conditions", []):
                if condition["type"] == "ReplicaFailure" and "PodSecurity" in condition.get("message", ""):
                    refused.add(replicaset["metadata"]["labels"].get("app.kubernetes.io/component"))
        return refused if set(SERVICES) <= refused else None

    wait_for("Pod Security to refuse the pods of every service", refusals)
    pods = api.items("v1", "Pod", namespace, release)
    services = [p for p in pods if p["metadata"]["labels"].get("app.kubernetes.io/component") in SERVICES]
    if services:
        sys.exit(f"helm-test: selftest: {len(services)} pods of a privileged copy were admitted")
    print("helm-test: selftest: Pod Security refused every service pod of a copy that allows privilege escalation")


def check_uninstalled(api, namespace, release):
    kinds = [("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("apps/v1", "ReplicaSet"), ("v1", "Service"),
             ("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "ServiceAccount"), ("v1", "Pod"),
             ("networking.k8s.io/v1", "NetworkPolicy"), ("policy/v1", "PodDisruptionBudget"),
             ("autoscaling/v2", "HorizontalPodAutoscaler"), ("networking.k8s.io/v1", "Ingress"), ("batch/v1", "Job")]

    def leftovers():
        left = []
        for api_version, kind in kinds:
            left += [f"{kind}/{o['metadata']['name']}" for o in api.items(api_version, kind, namespace, release)]
        return left

    wait_for("the release's objects to go", lambda: not leftovers() or None, timeout=120)
    # PersistentVolumeClaims of StatefulSets are kept by Kubernetes on purpose (the data).
    claims = api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims")["items"]
    print(f"helm-test: {namespace}: uninstalled: nothing of the release left"
          + (f" (kept by design: {len(claims)} PersistentVolumeClaims of the in-chart stores)" if claims else ""))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    path = sub.add_parser("path")
    path.add_argument("namespace")
    secrets = sub.add_parser("secrets")
    secrets.add_argument("namespace")
    check = sub.add_parser("check")
    check.add_argument("namespace")
    check.add_argument("release")
    check.add_argument("phase", choices=["installed", "upgraded", "uninstalled", "refused"])
    check.add_argument("--api", required=True)
    check.add_argument("--token", required=True)
    check.add_argument("--ca", required=True)
    check.add_argument("--hooks", required=True)
    args = parser.parse_args()

    if args.command == "path":
        obj = json.load(sys.stdin)
        print(api_path(obj["apiVersion"], obj["kind"], args.namespace))
    elif args.command == "secrets":
        yaml.safe_dump_all(production_secrets(args.namespace), sys.stdout)
    else:
        api = Api(args.api, args.token, args.ca)
        if args.phase == "uninstalled":
            check_uninstalled(api, args.namespace, args.release)
        elif args.phase == "refused":
            check_refused(api, args.namespace, args.release)
        else:
            with open(args.hooks) as f:
                hooks = [d for d in yaml.safe_load_all(f) if d]
            check_installed(api, args.namespace, args.release, args.phase, hooks)


if __name__ == "__main__":
    main()
