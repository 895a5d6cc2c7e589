"""What each shipped manifest's failure policy does with a pod's ending, evaluated on the manifests' own rules.

The controllers' semantics, as their sources implement them:
- Job ``podFailurePolicy`` (kubernetes pkg/controller/job/pod_failure_policy.go, matchPodFailurePolicy;
  https://kubernetes.io/docs/tasks/job/pod-failure-policy/): the rules are tried in order and the first match
  applies; ``onExitCodes`` matches a container (``containerName``, all when absent) whose exit code is
  ``In``/``NotIn`` the values (0 never matches); ``onPodConditions`` matches a condition by type and status.
  ``Ignore``: the pod is replaced without counting; ``FailJob``: the Job fails at once with reason
  ``PodFailurePolicy`` and the message "Container NAME for pod NS/POD failed with exit code N matching FailJob rule
  at index I" (or "Pod NS/POD has condition TYPE matching FailJob rule at index I"); ``Count`` or no match: counted
  against ``backoffLimit`` (a Job past it fails with reason ``BackoffLimitExceeded``).
- JobSet ``failurePolicy`` (jobset pkg/controllers/failure_policy.go, ruleIsApplicable, v0.10+ for message
  patterns): when a child Job fails, the rules are tried in order; a rule applies when the Job's failure reason
  is in ``onJobFailureReasons`` (any when empty) and its message matches one of ``onJobFailureMessagePatterns``
  (Go regexp, unanchored; any when empty); no match means ``RestartJobSet``, which counts against
  ``maxRestarts``. ``RestartJobSetAndIgnoreMaxRestarts`` does not count; ``FailJobSet`` ends the JobSet.
- Kubeflow PyTorchJob v1 (training-operator v1.9.4): ``restartPolicy: OnFailure`` on the replica makes kubelet
  restart a container that exits non-zero in its pod, and ``runPolicy.backoffLimit`` sums those restart counts
  (pkg/core/job.go, PastBackoffLimit). A pod that is deleted (drain, eviction, Kueue suspending the job) is
  recreated by the operator with a restart count of 0: not counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = {
    "indexed-job": REPO / "k8s/indexed-job/job.yaml",
    "jobset": REPO / "k8s/jobset/jobset.yaml",
    "pytorchjob": REPO / "k8s/pytorchjob/pytorchjob.yaml",
}
CONTAINER = "pytorch"


@dataclass(frozen=True)
class Pod:
    """How one training pod ended: its container's exit code, whether it carries the DisruptionTarget
    condition (set by a drain's or the API's eviction and by pre-emption), and whether it was deleted
    (its SIGTERM came from a deletion, so no container restart in place follows)."""

    exit_code: int
    disrupted: bool
    deleted: bool


@dataclass(frozen=True)
class Verdict:
    action: str  # the controller's own word for what it does
    counted: bool  # counts against backoffLimit / maxRestarts
    retried: bool  # the job goes on (a new pod, a restarted container or a restarted JobSet)


def _kind(path: Path, kind: str) -> dict:
    return next(doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == kind)


def pod_failure_rule(job_spec: dict, pod: Pod) -> tuple[str, str]:
    """(action, failure message) of a Job's podFailurePolicy for a failed pod; ("Count", "") when no rule matches."""
    for index, rule in enumerate(job_spec.get("podFailurePolicy", {}).get("rules", [])):
        exit_codes = rule.get("onExitCodes")
        if exit_codes and exit_codes.get("containerName", CONTAINER) == CONTAINER and pod.exit_code != 0:
            inside = pod.exit_code in exit_codes["values"]
            if inside == (exit_codes["operator"] == "In"):
                return rule["action"], (
                    f"Container {CONTAINER} for pod partialfc/pod failed with exit code {pod.exit_code} "
                    f"matching {rule['action']} rule at index {index}"
                )
        for condition in rule.get("onPodConditions", []):
            if condition["type"] == "DisruptionTarget" and condition.get("status", "True") == "True" and pod.disrupted:
                return rule["action"], (
                    f"Pod partialfc/pod has condition DisruptionTarget matching {rule['action']} rule at index {index}"
                )
    return "Count", ""


def indexed_job(pod: Pod) -> Verdict:
    action, _ = pod_failure_rule(_kind(MANIFESTS["indexed-job"], "Job")["spec"], pod)
    return Verdict(f"podFailurePolicy: {action}", counted=action == "Count", retried=action in ("Ignore", "Count"))


def jobset(pod: Pod) -> Verdict:
    spec = _kind(MANIFESTS["jobset"], "JobSet")["spec"]
    (replicated,) = spec["replicatedJobs"]
    child = replicated["template"]["spec"]
    action, message = pod_failure_rule(child, pod)
    if action == "Ignore" or (action == "Count" and child.get("backoffLimit", 6) > 0):
        return Verdict(f"child Job: podFailurePolicy {action}", counted=action == "Count", retried=True)
    reason = "PodFailurePolicy" if action == "FailJob" else "BackoffLimitExceeded"
    for rule in spec.get("failurePolicy", {}).get("rules", []):
        reasons, patterns = rule.get("onJobFailureReasons", []), rule.get("onJobFailureMessagePatterns", [])
        if (not reasons or reason in reasons) and (not patterns or any(re.search(p, message) for p in patterns)):
            return _jobset_action(rule["action"], f"rule {rule['name']}")
    return _jobset_action("RestartJobSet", "no rule matched")


def _jobset_action(action: str, why: str) -> Verdict:
    return Verdict(f"{action} ({why})", counted=action == "RestartJobSet", retried=action.startswith("RestartJobSet"))


def pytorchjob(pod: Pod) -> Verdict:
    spec = _kind(MANIFESTS["pytorchjob"], "PyTorchJob")["spec"]
    policy = spec["pytorchReplicaSpecs"]["Worker"]["restartPolicy"]
    if pod.deleted:
        return Verdict("pod recreated by the operator (restart count 0)", counted=False, retried=True)
    if policy == "OnFailure":
        return Verdict("container restarted in its pod (restartPolicy OnFailure)", counted=True, retried=True)
    raise AssertionError(f"k8s/pytorchjob: restartPolicy {policy} is not modelled here")


def policy_verdicts(pod: Pod) -> dict[str, Verdict]:
    """What each shipped variant does with a pod that ended so."""
    return {"indexed-job": indexed_job(pod), "jobset": jobset(pod), "pytorchjob": pytorchjob(pod)}
