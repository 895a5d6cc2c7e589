"""Validate custom resources (PyTorchJob, JobSet, PodMonitor, Kueue queues) against their CRDs' published schemas.

    .venv-lint/bin/python tests/multinode/check_custom_kinds.py [--pod-templates OUT.yaml] FILE...

Runs in the lint venv (it needs jsonschema). The schemas are vendored in k8s/schemas/ (origin in
its README.md). Like the API server's strict field validation, an object schema that lists its
properties rejects any other field. With ``--pod-templates`` the pod templates embedded in custom
resources are written out as core/v1 PodTemplate objects, so that ``kubernetes-validate --strict``
checks them against the built-in pod schema too. Exit status 1 on any error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "k8s" / "schemas"
SCHEMAS = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob_kubeflow.org_v1.json",
    ("jobset.x-k8s.io/v1alpha2", "JobSet"): "jobset_jobset.x-k8s.io_v1alpha2.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor_monitoring.coreos.com_v1.json",
    # The Kueue objects docs/deploy.md tells users to create (checked from the document's YAML block).
    ("kueue.x-k8s.io/v1beta2", "ResourceFlavor"): "resourceflavor_kueue.x-k8s.io_v1beta2.json",
    ("kueue.x-k8s.io/v1beta2", "ClusterQueue"): "clusterqueue_kueue.x-k8s.io_v1beta2.json",
    ("kueue.x-k8s.io/v1beta2", "LocalQueue"): "localqueue_kueue.x-k8s.io_v1beta2.json",
}


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its properties."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {
        key: strict(value) if key not in ("properties", "enum", "required") else value for key, value in schema.items()
    }
    if "properties" in schema:
        result["properties"] = {name: strict(value) for name, value in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            result["additionalProperties"] = False
    return result


def pod_templates(document: dict) -> list[tuple[str, dict]]:
    """(where, template) for each pod template embedded in a PyTorchJob or JobSet."""
    spec = document.get("spec", {})
    if document["kind"] == "PyTorchJob":
        return [
            (f"pytorchReplicaSpecs.{name}", replica["template"])
            for name, replica in spec.get("pytorchReplicaSpecs", {}).items()
        ]
    if document["kind"] == "JobSet":
        return [
            (f"replicatedJobs.{job['name']}", job["template"]["spec"]["template"])
            for job in spec.get("replicatedJobs", [])
        ]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--pod-templates", type=Path, help="write embedded pod templates here as PodTemplate objects")
    args = parser.parse_args(argv)
    validators = {
        key: jsonschema.Draft7Validator(strict(json.loads((SCHEMA_DIR / name).read_text())))
        for key, name in SCHEMAS.items()
    }
    errors, templates = 0, []
    for path in args.files:
        for document in yaml.safe_load_all(path.read_text()):
            key = (document.get("apiVersion"), document.get("kind"))
            if key not in validators:
                continue
            name = f"{path}: {key[1]}/{document['metadata']['name']}"
            problems = sorted(validators[key].iter_errors(document), key=lambda e: list(e.absolute_path))
            for problem in problems:
                print(f"FAIL {name}: {'.'.join(map(str, problem.absolute_path)) or '(root)'}: {problem.message}")
            errors += len(problems)
            if not problems:
                print(f"PASS {name} against k8s/schemas/{SCHEMAS[key]}")
            for where, template in pod_templates(document):
                templates.append(
                    {
                        "apiVersion": "v1",
                        "kind": "PodTemplate",
                        "metadata": {"name": f"{document['metadata']['name']}-{where}".lower().replace(".", "-")},
                        "template": template,
                    }
                )
    if args.pod_templates:
        args.pod_templates.write_text(yaml.safe_dump_all(templates, sort_keys=False))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
