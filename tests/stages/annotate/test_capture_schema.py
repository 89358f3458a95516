"""Every Capture body streamproc can produce is one Retina accepts.

The schema below is transcribed from Retina's Capture CRD, microsoft/retina v1.2.6,
``deploy/standard/manifests/controller/helm/retina/crds/retina.sh_captures.yaml`` (the fields
streamproc writes: names, types, required lists, the duration pattern), made stricter than the
API server in one way: unknown fields are refused here (the API server would silently prune a
misspelt one, and the capture would then do something else). The operator's own checks are
added from the CRD's field descriptions: ``hostPath`` is a relative subpath without ``..``
(v1.2.1, PR #2335), and ``podNames`` stands alone (it "is incompatible with NodeSelector,
NamespaceSelector, and PodSelector").
"""

from __future__ import annotations

import itertools
from typing import Any

import jsonschema
import pytest

from streamproc.model import captures
from streamproc.model.topologies import Capture

_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
CAPTURE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "retina.sh/v1alpha1"},
        "kind": {"const": "Capture"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"name": _NAME, "namespace": _NAME},
        },
        "spec": {
            "type": "object",
            "required": ["captureConfiguration", "outputConfiguration"],
            "additionalProperties": False,
            "properties": {
                "captureConfiguration": {
                    "type": "object",
                    "required": ["captureTarget"],
                    "additionalProperties": False,
                    "properties": {
                        "captureOption": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "duration": {
                                    "type": "string",
                                    "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$",
                                },
                                "maxCaptureSize": {"type": "integer"},
                                "packetSize": {"type": "integer"},
                            },
                        },
                        "captureTarget": {
                            "type": "object",
                            "additionalProperties": False,
                            "minProperties": 1,
                            "properties": {
                                "namespaceSelector": _SELECTOR,
                                "podSelector": _SELECTOR,
                                "nodeSelector": _SELECTOR,
                                "podNames": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {"type": "string"},
                                },
                            },
                            # podNames is incompatible with every selector
                            "if": {"required": ["podNames"]},
                            "then": {"maxProperties": 1},
                        },
                        "includeMetadata": {"type": "boolean"},
                    },
                },
                "outputConfiguration": {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "properties": {
                        "hostPath": {
                            "type": "string",
                            "minLength": 1,
                            # the operator: relative, no '..' segment (v1.2.1, PR #2335)
                            "not": {"pattern": r"(^[/\\])|(^[A-Za-z]:)|(^|[/\\])\.\.([/\\]|$)"},
                        },
                        "blobUpload": {"type": "string"},
                        "persistentVolumeClaim": {"type": "string"},
                        "s3Upload": {
                            "type": "object",
                            "required": ["bucket", "secretName"],
                            "additionalProperties": False,
                            "properties": {
                                "bucket": {"type": "string"},
                                "secretName": {"type": "string"},
                                "region": {"type": "string"},
                                "endpoint": {"type": "string"},
                                "path": {"type": "string"},
                            },
                        },
                    },
                },
                "cleanUpAfterUpload": {"type": "boolean"},
            },
        },
    },
}

OUTPUTS: list[dict[str, Any]] = [
    {},  # the default
    {"hostPath": "captures/streamproc"},
    {"blobUpload": "blob-sas-url"},
    {"persistentVolumeClaim": "captures"},
    {"s3Upload": {"bucket": "captures", "secretName": "s3-keys"}},
    {
        "s3Upload": {
            "bucket": "captures",
            "secretName": "s3-keys",
            "region": "eu-west-1",
            "endpoint": "https://s3.example.com",
            "path": "retina/captures",
        }
    },
]
PODS = [
    {"metadata": {"name": "api-7d4b9-aaaaa", "labels": {"app": "api", "pod-template-hash": "1"}}},
    {"metadata": {"name": "api-7d4b9-bbbbb", "labels": {"app": "api", "pod-template-hash": "2"}}},
]


def shapes() -> list[dict[str, Any]]:
    found = []
    for output, target, duration, clean in itertools.product(
        OUTPUTS, ("podNames", "podSelector"), ("1s", "90s", "1h"), (False, True)
    ):
        uploads = "blobUpload" in output or "s3Upload" in output
        if clean and not uploads:
            continue
        found.append(
            {
                "target": target,
                "duration": duration,
                "cleanUpAfterUpload": clean,
                **({"output": output} if output else {}),
            }
        )
    return found


@pytest.mark.parametrize("spec", shapes())
def test_every_capture_body_matches_retinas_capture_crd(spec: dict[str, Any]) -> None:
    """Each target, output and duration streamproc can configure yields a valid Capture."""
    capture = Capture.model_validate(spec)
    body = captures.body(
        action_id="retina-observe/shop/Deployment/api/1796000000000",
        namespace="shop",
        capture_target=captures.target(capture, "shop", PODS),
        capture=capture,
        topology="retina-observe",
        rule="Read sensitive file untrusted",
    )
    jsonschema.validate(body, CAPTURE_SCHEMA)


def test_pod_names_target_exactly_the_workloads_pods_whatever_their_labels() -> None:
    """Retina >= v1.1: the pods by name, alone (no shared-label guess needed)."""
    unlabelled = [{"metadata": {"name": "b"}}, {"metadata": {"name": "a"}}]
    assert captures.target(Capture(), "shop", unlabelled) == {"podNames": ["a", "b"]}
    assert captures.target(Capture(target="podSelector"), "shop", unlabelled) == {}


@pytest.mark.parametrize(
    ("host_path", "why"),
    [
        ("/mnt/retina/captures", "absolute"),
        ("/var/log/retina/captures/x", "absolute"),
        ("C:\\captures", "absolute"),
        ("captures/../../etc", "'..'"),
        ("..", "'..'"),
    ],
)
def test_the_schema_and_the_loader_both_refuse_what_retinas_operator_refuses(
    host_path: str, why: str
) -> None:
    """The schema above is not a rubber stamp, and the topology loader says why."""
    body = {
        "apiVersion": "retina.sh/v1alpha1",
        "kind": "Capture",
        "metadata": {"name": "x", "namespace": "shop"},
        "spec": {
            "captureConfiguration": {"captureTarget": {"podNames": ["a"]}},
            "outputConfiguration": {"hostPath": host_path},
        },
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, CAPTURE_SCHEMA)
    with pytest.raises(ValueError, match=why):
        Capture.model_validate({"output": {"hostPath": host_path}})


def test_the_schema_refuses_pod_names_beside_a_selector_and_unknown_fields() -> None:
    """podNames stands alone; a misspelt field is caught rather than pruned."""
    base = {
        "apiVersion": "retina.sh/v1alpha1",
        "kind": "Capture",
        "metadata": {"name": "x", "namespace": "shop"},
        "spec": {
            "captureConfiguration": {"captureTarget": {"podNames": ["a"]}},
            "outputConfiguration": {"hostPath": "x"},
        },
    }
    jsonschema.validate(base, CAPTURE_SCHEMA)
    both = {"podNames": ["a"], "podSelector": {"matchLabels": {"app": "a"}}}
    mixed = {**base, "spec": {**base["spec"], "captureConfiguration": {"captureTarget": both}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(mixed, CAPTURE_SCHEMA)
    typo = {**base, "spec": {**base["spec"], "cleanupAfterUpload": True}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, CAPTURE_SCHEMA)


def test_clean_up_after_upload_needs_an_upload() -> None:
    """Retina only cleans up after a blob or S3 upload; the loader says so at start."""
    with pytest.raises(ValueError, match="cleanUpAfterUpload needs"):
        Capture.model_validate({"cleanUpAfterUpload": True})
