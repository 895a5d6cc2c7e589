"""Margin families beyond exactness (tested in test_partial_fc_exact): running state carried by
checkpoints, untouched by evaluation passes, reproducible random margins, config construction."""

from __future__ import annotations

import pytest
import torch
from reference import CASES, record_sample_inputs, relative_error, spread_norms

from partialfc import PartialFC

DIM, NUM_CLASSES = 16, 23
STATEFUL = ["adaface", "curricularface"]


def one_step(pfc: PartialFC, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    embeddings = spread_norms(torch.randn(6, DIM, generator=generator, dtype=torch.float64), seed).float()
    loss = pfc(embeddings.requires_grad_(), torch.randint(0, NUM_CLASSES, (6,), generator=generator))
    loss.backward()
    pfc.step()
    return loss.detach()


@pytest.mark.parametrize("family", STATEFUL)
def test_state_dict_carries_the_running_state(family):
    pfc = PartialFC(DIM, NUM_CLASSES, 0.5, CASES[family].make_margin(), seed=3)
    fresh_state = CASES[family].make_margin().state_dict()
    for seed in range(2):
        one_step(pfc, seed)
    state = pfc.state_dict()
    saved = state["_extra_state"]["margin"]
    assert any(not torch.equal(saved[k], fresh_state[k]) for k in saved), "two steps must move the running state"
    resumed = PartialFC(DIM, NUM_CLASSES, 0.5, CASES[family].make_margin(), seed=3)
    resumed.load_state_dict(state)
    assert torch.equal(one_step(pfc, 10), one_step(resumed, 10))
    assert torch.equal(pfc.weight, resumed.weight)


@pytest.mark.parametrize("family", STATEFUL)
def test_forward_without_gradient_leaves_the_running_state(family):
    pfc = PartialFC(DIM, NUM_CLASSES, 1.0, CASES[family].make_margin())
    before = pfc.margin.state_dict()
    with torch.no_grad():
        pfc(spread_norms(torch.randn(4, DIM, dtype=torch.float64), 0).float(), torch.arange(4))
    after = pfc.margin.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_elastic_margins_repeat_for_the_same_seed_and_differ_for_another():
    def first_margins(seed: int) -> torch.Tensor:
        pfc = PartialFC(DIM, NUM_CLASSES, 1.0, CASES["elasticface_arc"].make_margin(), seed=seed)
        drawn = record_sample_inputs(pfc)
        pfc(torch.randn(4, DIM), torch.arange(4))
        return drawn[0]

    assert torch.equal(first_margins(1), first_margins(1))
    assert not torch.equal(first_margins(1), first_margins(2))


@pytest.mark.parametrize(
    "family, margin",
    [
        ("combined", "CombinedMargin"),
        ("softmax", "Softmax"),
        ("adaface", "AdaFace"),
        ("curricularface", "CurricularFace"),
        ("magface", "MagFace"),
        ("elasticface", "ElasticFace"),
    ],
)
def test_every_family_builds_from_the_config(family, margin):
    from partialfc.config import LossConfig

    assert type(LossConfig(family=family).build_margin()).__name__ == margin


def test_every_registered_family_has_its_config_section():
    """The registry is the family list: ``loss.family``'s choices (then the named margins of ``combined``), and
    one ``loss.<family>`` section each."""
    import dataclasses

    from partialfc.config import LossConfig
    from partialfc.core.margins import COMBINED_PRESETS, MARGIN_FAMILIES

    sections = {f.name: f.default_factory for f in dataclasses.fields(LossConfig) if f.name in MARGIN_FAMILIES}
    assert sections == MARGIN_FAMILIES
    choices = dataclasses.fields(LossConfig)[0].metadata["domain"].choices
    assert choices == (*MARGIN_FAMILIES, *COMBINED_PRESETS)


def test_config_error_names_the_fields_of_the_family():
    from partialfc.config import ConfigError, LossConfig
    from partialfc.core.margins import ElasticFaceConfig, MagFaceConfig

    margin = LossConfig(family="elasticface", elasticface=ElasticFaceConfig(m=0.3, std=0.02, kind="cos")).build_margin()
    assert (margin.m, margin.std, margin.kind) == (0.3, 0.02, "cos")
    with pytest.raises(ConfigError, match=r"loss.family=magface \(loss.s, loss.magface.l_a, loss.magface.u_a.*l_a=120"):
        LossConfig(family="magface", magface=MagFaceConfig(l_a=120.0)).build_margin()


def test_magface_regulariser_without_the_magnitudes_says_where_they_come_from():
    from partialfc.core.margins import MagFace

    with pytest.raises(ValueError, match=r"MagFace.regulariser needs the magnitudes from sample_inputs"):
        MagFace().regulariser(None)


def test_loading_another_familys_state_is_refused():
    pfc = PartialFC(DIM, NUM_CLASSES, 1.0, CASES["adaface"].make_margin())
    state = pfc.state_dict()
    with pytest.raises(ValueError, match=r"\['batch_mean', 'batch_std'\].*another margin family \(loss.family\)"):
        PartialFC(DIM, NUM_CLASSES, 1.0, CASES["arcface"].make_margin()).load_state_dict(state)


@pytest.mark.parametrize("name", list(CASES))
def test_sampled_step_equals_the_reference_on_the_sampled_centres(name):
    """With r < 1 a step is the dense reference restricted to the sampled centres (labels remapped),
    so hard-negative rewriting, per-sample inputs and regularisers see only sampled columns."""
    case = CASES[name]
    pfc = PartialFC(DIM, 200, 0.1, case.make_margin(), seed=5, init_std=0.5)
    drawn = record_sample_inputs(pfc)
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(8, DIM, generator=generator, dtype=torch.float64)
    embeddings = spread_norms(embeddings, 0) if case.spread_norms else embeddings
    labels = torch.randint(0, 200, (8,), generator=generator)
    ours = embeddings.float().requires_grad_()
    loss = pfc(ours, labels)
    loss.backward()
    rows = pfc.last_sampled_rows
    assert 8 < rows.numel() < 200

    weight = pfc.weight.detach()[rows].double().requires_grad_()
    reference_embeddings = embeddings.clone().requires_grad_()
    state = {k: v.clone() for k, v in case.initial_state.items()}
    expected = case.loss(reference_embeddings, weight, torch.searchsorted(rows, labels), state, drawn[0])
    expected.backward()
    assert relative_error(loss, expected) < 1e-5
    assert relative_error(ours.grad, reference_embeddings.grad) < 1e-5
    assert relative_error(pfc._pending[0].grad, weight.grad) < 1e-5


@pytest.mark.parametrize("family", ["combined", "adaface", "curricularface", "magface", "elasticface"])
def test_a_familys_parameters_are_its_config_sections_fields(family):
    """Declared once: the margin takes exactly its section's fields (by name or in order), with their
    defaults, and refuses a value outside a field's domain naming the field, as loading the config does."""
    import dataclasses

    from partialfc.core.margins import _MARGIN_OF, MARGIN_FAMILIES

    section = MARGIN_FAMILIES[family]
    margin_type = _MARGIN_OF[section]
    fields = dataclasses.fields(section)
    default = margin_type(30.0)
    assert (
        repr(default) == f"{margin_type.__name__}(s=30.0" + "".join(f", {f.name}={f.default!r}" for f in fields) + ")"
    )
    values = [getattr(default, f.name) for f in fields]
    assert repr(margin_type(30.0, *values)) == repr(default) == repr(section().build(30.0))
    with pytest.raises(TypeError, match="no_such_parameter"):
        margin_type(30.0, no_such_parameter=1.0)
    for f in fields:
        outside = f.metadata["domain"].outside
        with pytest.raises(ValueError, match=f"{margin_type.__name__}: {f.name}={outside!r}"):
            margin_type(30.0, **{f.name: outside})
