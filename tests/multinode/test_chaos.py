"""One chaos run (tests/chaos.py): five faults in one two-node job, which must end bit-identical to a fault-free
run, each fault's effect being the one docs/operations.md's truth table predicts."""

from __future__ import annotations

import sys

import pytest
from chaos import HOST_NAMES, run_chaos
from endings_table import ending
from netns_cluster import make_hosts
from training_run import final_state

from partialfc.common.exit_codes import ExitCode

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces and /proc are Linux-only")


def test_a_chaos_run_ends_bit_identical_with_each_fault_as_the_truth_table_predicts(tiny_dataset, tmp_path):
    with make_hosts(HOST_NAMES) as hosts:
        outcome = run_chaos(hosts, tiny_dataset, tmp_path / "run", tmp_path / "reference")
    lines = [f"{'fault':<48} {'row':<28} {'records':<14} {'resumed at':>10} {'expected':>8} {'seconds':>8}"]
    for fault in outcome.faults:
        records = ",".join(f"{node}:{codes}" for node, codes in fault.records.items())
        lines.append(
            f"{fault.name:<48} {fault.row:<28} {records:<14} {fault.resumed_at:>10} {fault.expected_resume:>8} "
            f"{fault.seconds:>8.1f}"
        )
    print(
        f"\nchaos run (JobSet, 2 nodes, 5 faults) in {outcome.seconds:.1f} s, fault-free run included\n"
        + "\n".join(lines)
    )
    assert outcome.returncodes == [0, 0], outcome.log
    for fault in outcome.faults:
        row = ending(fault.row)
        for node, codes in fault.records.items():
            assert set(codes) == set(row.codes), (fault.name, node, codes, row)
        if fault.node1_exit is not None:
            assert fault.node1_exit == row.exit_code(), (fault.name, fault.node1_exit)
        assert fault.resumed_at == fault.expected_resume, (fault, outcome.resumed)
    drained = next(fault for fault in outcome.faults if fault.row == "pod SIGTERM")
    assert drained.node1_exit == ExitCode.PREEMPTED
    expected, actual = final_state(outcome.reference), final_state(outcome.output)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert expected[key].equal(actual[key]), key
