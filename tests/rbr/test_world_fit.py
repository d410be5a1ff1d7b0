"""experiments/rbr_world_fit.py at a small size: the fitted RBR corrects a helpful-only reward on
the world, exactly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "rbr_world_fit.py"


def load_script():
    spec = importlib.util.spec_from_file_location("rbr_world_fit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # about 2.5 s alone on one core: grading and scoring all 115,840 answers
def test_the_fitted_rbr_ranks_every_ideal_response_first_and_improves_the_optimum():
    script = load_script()
    result = script.run(groups=2, per_class=2, steps=300, seed=0)
    for response_type, (rm_error, rbr_error) in result.exact_error_rate.items():
        # Over all 7240 responses of every prompt, not only the sampled ones.
        assert rm_error > 0, response_type  # the helpful-only reward misranks some
        assert rbr_error == 0, response_type
        assert result.fits[response_type].heldout_error_rate == 0
    rm, rbr = result.metrics_rm, result.metrics_rbr
    assert rm.not_unsafe < 0.7  # the helpful-only optimum gives harmful detail
    assert rbr.not_unsafe > 0.99 and rbr.f1 > rm.f1
    assert rbr.hard_refusal_style > rm.hard_refusal_style
    text = script.report(result, noise=0.0)
    assert "hard_refuse" in text and "R_rm + R_rbr" in text
