"""Strict JSON schemas for the custom resources deploy/k8s uses (KEDA ScaledObject,
Prometheus Operator ServiceMonitor and PrometheusRule), limited to the fields their
CRDs define at the levels used here: kubernetes-validate has no CRD schemas, and a
misspelt field (`cooldownPeriods`) would otherwise be accepted silently."""

from __future__ import annotations

INT = {"type": "integer", "minimum": 0}
STR = {"type": "string"}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def strict(properties: dict, required: list[str] = ()) -> dict:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


METADATA = {"type": "object", "required": ["name"]}

# keda.sh/v1alpha1 ScaledObject; trigger metadata of the prometheus scaler.
PROMETHEUS_TRIGGER_METADATA = strict({
    "serverAddress": STR, "query": STR, "threshold": STR, "activationThreshold": STR,
    "namespace": STR, "customHeaders": STR, "ignoreNullValues": {"enum": ["true", "false"]},
    "unsafeSsl": {"enum": ["true", "false"]}, "queryParameters": STR, "authModes": STR,
    "timeout": STR,
}, ["serverAddress", "query", "threshold"])

SCALED_OBJECT = strict({
    "apiVersion": {"const": "keda.sh/v1alpha1"},
    "kind": {"const": "ScaledObject"},
    "metadata": METADATA,
    "spec": strict({
        "scaleTargetRef": strict({"apiVersion": STR, "kind": STR, "name": STR,
                                  "envSourceContainerName": STR}, ["name"]),
        "pollingInterval": INT, "cooldownPeriod": INT, "initialCooldownPeriod": INT,
        "idleReplicaCount": INT, "minReplicaCount": INT, "maxReplicaCount": INT,
        "fallback": strict({"failureThreshold": INT, "replicas": INT, "behavior": STR},
                           ["failureThreshold", "replicas"]),
        "advanced": strict({
            "restoreToOriginalReplicaCount": {"type": "boolean"},
            # behavior is an autoscaling/v2 HPA behavior: validated as such separately.
            "horizontalPodAutoscalerConfig": strict({"name": STR, "behavior": {"type": "object"}}),
            "scalingModifiers": {"type": "object"},
        }),
        "triggers": {"type": "array", "minItems": 1, "items": strict({
            "type": STR, "name": STR, "metadata": {"type": "object"},
            "authenticationRef": {"type": "object"},
            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
            "useCachedMetrics": {"type": "boolean"},
        }, ["type", "metadata"])},
    }, ["scaleTargetRef", "triggers"]),
}, ["apiVersion", "kind", "metadata", "spec"])

# monitoring.coreos.com/v1 ServiceMonitor.
SERVICE_MONITOR = strict({
    "apiVersion": {"const": "monitoring.coreos.com/v1"},
    "kind": {"const": "ServiceMonitor"},
    "metadata": METADATA,
    "spec": strict({
        "selector": strict({"matchLabels": STR_MAP, "matchExpressions": {"type": "array"}}),
        "namespaceSelector": {"type": "object"},
        "jobLabel": STR, "targetLabels": {"type": "array"}, "podTargetLabels": {"type": "array"},
        "sampleLimit": INT,
        "endpoints": {"type": "array", "minItems": 1, "items": strict({
            "port": STR, "targetPort": {}, "path": STR, "scheme": {"enum": ["http", "https"]},
            "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
            "scrapeTimeout": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
            "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
            "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"},
            "params": {"type": "object"}, "tlsConfig": {"type": "object"},
        })},
    }, ["selector", "endpoints"]),
}, ["apiVersion", "kind", "metadata", "spec"])

RULE = {"type": "object", "properties": {
    "alert": STR, "record": STR, "expr": STR,
    "for": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h|d|w|y)$"},
    "keep_firing_for": STR, "labels": STR_MAP, "annotations": STR_MAP,
}, "required": ["expr"], "additionalProperties": False,
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}

RULE_GROUPS = {"type": "array", "minItems": 1, "items": strict({
    "name": STR, "interval": STR, "limit": INT, "partial_response_strategy": STR,
    "rules": {"type": "array", "minItems": 1, "items": RULE},
}, ["name", "rules"])}

# monitoring.coreos.com/v1 PrometheusRule (and, for `groups`, a plain rules file).
PROMETHEUS_RULE = strict({
    "apiVersion": {"const": "monitoring.coreos.com/v1"},
    "kind": {"const": "PrometheusRule"},
    "metadata": METADATA,
    "spec": strict({"groups": RULE_GROUPS}, ["groups"]),
}, ["apiVersion", "kind", "metadata", "spec"])

BY_KIND = {"ScaledObject": SCALED_OBJECT, "ServiceMonitor": SERVICE_MONITOR,
           "PrometheusRule": PROMETHEUS_RULE}
