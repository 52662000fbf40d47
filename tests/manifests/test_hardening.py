"""Every pod the manifests make is locked down, and every Secret is referenced, documented and never committed.

* Containers (the InferenceService's predictor and transformer, the Knative Services, MLflow, the RayJob's head,
  workers and submitter): non-root, a read-only root filesystem with an emptyDir at /tmp (the only place
  besides its volumes a process writes), every capability dropped, no privilege escalation, the runtime's
  seccomp profile, no host namespaces or host paths, no service-account token but the retrain service's.
* Secrets: none rendered or in a file; every Secret a pod uses is in manifests/README.md's table of the
  Secrets you create (with the keys the pods read), and readable by the image's user (``fsGroup`` when the
  files are not world-readable).
* Trusted proxies: the servers trust ``x-forwarded-for`` from the queue-proxy and the gateway's pods only,
  never a whole private range (issue 23: any pod could then choose its own rate-limit budget).
"""

from __future__ import annotations

import ipaddress
import re

from tests.support import MANIFESTS, by_target, find, pods, render

UID = 10001  # the images' user (Dockerfile)
SECRETS_TABLE = "### Secrets you create"  # the heading of the table in manifests/README.md


def volume_of(spec: dict, name: str) -> dict:
    [volume] = [v for v in spec.get("volumes", []) if v["name"] == name]
    return volume


@by_target
def test_every_container_is_locked_down(target):
    found = pods(render(target))
    assert found
    for label, _, spec in found:
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), label
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], label
        retrain = spec.get("serviceAccountName") == "storecast-retrain"
        assert retrain or spec.get("automountServiceAccountToken") is False, f"{label}: a service-account token"
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{label} {c['name']}"
            own = c.get("securityContext", {})
            merged = {**spec.get("securityContext", {}), **own}
            assert merged.get("runAsNonRoot") is True, where
            assert own.get("readOnlyRootFilesystem") is True, f"{where}: a writable root filesystem"
            assert own.get("allowPrivilegeEscalation") is False and not own.get("privileged"), where
            assert own.get("capabilities") == {"drop": ["ALL"]}, f"{where}: capabilities {own.get('capabilities')}"
            assert merged.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: no writable /tmp"
            tmp = volume_of(spec, mounts["/tmp"])
            assert "emptyDir" in tmp and tmp["emptyDir"].get("sizeLimit"), f"{where}: /tmp is no bounded emptyDir"
            for m in c.get("volumeMounts", []):
                volume = volume_of(spec, m["name"])  # every mount names a volume of its pod
                if "secret" in volume or "configMap" in volume:
                    assert m.get("readOnly") is True, f"{where}: {m['mountPath']} writable"


def secret_refs(docs: list[dict]) -> dict[str, set[str]]:
    """Secret name -> the keys the pods read of it (``*``: every key, as environment variables)."""
    refs: dict[str, set[str]] = {}
    for _, _, spec in pods(docs):
        for v in spec.get("volumes", []):
            if "secret" in v:
                refs.setdefault(v["secret"]["secretName"], set()).add("*files*")
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                if "secretKeyRef" in e.get("valueFrom", {}):
                    ref = e["valueFrom"]["secretKeyRef"]
                    refs.setdefault(ref["name"], set()).add(ref["key"])
            for e in c.get("envFrom", []):
                if "secretRef" in e:
                    refs.setdefault(e["secretRef"]["name"], set()).add("*env*")
    return refs


def documented_secrets() -> dict[str, str]:
    """Secret name -> its row of manifests/README.md's table of the Secrets you create."""
    text = (MANIFESTS / "README.md").read_text()
    section = text[text.index(SECRETS_TABLE):].split("\n#")[0]  # up to the next heading
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {re.match(r"\| `([a-z0-9-]+)`", row).group(1): row for row in rows}


@by_target
def test_secrets_are_referenced_documented_and_never_committed(target):
    docs = render(target)
    assert not find(docs, ("", "Secret")), "a Secret is rendered: secrets never go into the repository"
    refs, documented = secret_refs(docs), documented_secrets()
    assert refs and set(refs) <= set(documented), f"undocumented: {set(refs) - set(documented)}"
    for name, keys in refs.items():
        for key in keys - {"*files*", "*env*"}:
            assert f"`{key}`" in documented[name], f"{name}: README names no key {key}"
    for label, _, spec in pods(docs):  # files the image's user can read
        for v in spec.get("volumes", []):
            mode = v.get("secret", {}).get("defaultMode", 0o644)
            if "secret" in v and not mode & 0o004:
                assert spec.get("securityContext", {}).get("fsGroup") == UID, f"{label}: cannot read {v['name']}"
                assert mode & 0o040, f"{label}: {v['name']} not group-readable"


def test_every_documented_secret_is_used_somewhere():
    used = set().union(*(secret_refs(render(t)) for t in ("base", "overlays/ray")))
    assert set(documented_secrets()) == used


def test_no_secret_in_any_manifest_file():
    for path in MANIFESTS.rglob("*.yaml"):
        assert not re.search(r"^kind:\s*Secret\s*$", path.read_text(), re.M), path
        assert "secretGenerator" not in path.read_text(), path


@by_target
def test_forwarded_addresses_are_trusted_from_the_gateway_only(target):
    values = {}
    for label, _, spec in pods(render(target)):
        for c in spec["containers"]:
            for e in c.get("env", []):
                if e["name"] == "STORECAST_TRUSTED_PROXIES":
                    values[label] = e["value"]
    assert len(values) == 2 and len(set(values.values())) == 1, values  # transformer and retrain service, alike
    networks = [ipaddress.ip_network(cidr) for cidr in next(iter(values.values())).split(",")]
    assert ipaddress.ip_network("127.0.0.1/32") in networks  # the queue-proxy, in the pod
    for network in networks:
        assert network.prefixlen >= 24, f"{network}: a range that wide holds pods that are no proxy"
        for private in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"):
            assert not ipaddress.ip_network(private).subnet_of(network), network
    placeholders = [n for n in networks if not n.is_loopback]
    readme = (MANIFESTS / "README.md").read_text()
    assert placeholders and all(str(n) in readme for n in placeholders), "document the placeholders"
