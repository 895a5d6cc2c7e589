"""docs/operations.md's truth table of endings is the generated one (tests/endings_table.py): the launcher's own
exit-code logic and the shipped manifests' own failure rules."""

from __future__ import annotations

from endings_table import ending, markdown
from k8s_policies import Pod, policy_verdicts
from training_run import REPO

from partialfc.common.exit_codes import ExitCode


def test_the_operations_doc_holds_the_generated_truth_table():
    doc = (REPO / "docs" / "operations.md").read_text()
    assert markdown() in doc, "docs/operations.md's endings table is stale: run `python tests/endings_table.py`"


def test_only_a_pods_sigterm_or_an_agreed_stop_is_uncounted():
    """A crash must be counted by every shipped policy; a pre-emption by none."""
    crash = ending("worker killed by a signal")
    assert crash.exit_code() == ExitCode.FAILED
    assert all(v.counted for v in policy_verdicts(Pod(crash.exit_code(), False, False)).values())
    preemption = ending("pod SIGTERM")
    assert preemption.exit_code() == ExitCode.PREEMPTED
    assert not any(v.counted for v in policy_verdicts(Pod(preemption.exit_code(), True, True)).values())
    for deterministic in ("config or data error", "divergence"):
        code = ending(deterministic).exit_code()
        verdicts = policy_verdicts(Pod(code, False, False))
        assert not verdicts["indexed-job"].retried and not verdicts["jobset"].retried, (deterministic, verdicts)
