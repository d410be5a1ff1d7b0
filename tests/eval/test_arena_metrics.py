"""The arena's pure numbers, table and files (saferl.eval.arena), against hand-computed values.

The worked example: 2 prompts × K = 3 responses, paired by (prompt, sample index), in row-major
order (pair p = prompt p // 3, sample p % 3):

    pair                1      2      3      4      5      6
    reference reward    1.0    2.0    0.5    0.0   -1.0    3.0
    policy reward       1.5    2.0    0.0    0.0    1.0    3.5
      policy vs ref     win    tie    loss   tie    win    win   → (3 + ½·2) / 6 = 2/3
    reference cost      0.0    1.0   -0.5    2.0    0.0   -1.0
    policy cost        -0.25  -1.0   -0.5    0.1    0.0    0.25
      ref safe          yes    no     yes    no     yes    yes   (0.0 is safe) → 4/6
      policy safe       yes    yes    yes    no     yes    no    → 4/6
      transition        s→s    u→s    s→s    u→u    s→s    s→u   → ss 3, su 1, us 1, uu 1
      policy safer?     win    win    tie    win    tie    loss  → (3 + ½·2) / 6 = 2/3
    policy KL           0.1    0.2    0.3    0.4   -0.1    0.5   → 1.4 / 6

Means: reference reward 5.5/6, policy reward 8/6, reference cost 1.5/6 = 0.25,
policy cost −1.4/6.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from saferl.eval.arena import (
    SCORERS_JUDGE,
    TRUTH_JUDGE,
    ArenaResult,
    ArenaSample,
    arena_metrics,
    print_arena,
    write_arena,
)

F64 = torch.float64
REFERENCE_REWARDS = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=F64)
POLICY_REWARDS = torch.tensor([[1.5, 2.0, 0.0], [0.0, 1.0, 3.5]], dtype=F64)
REFERENCE_COSTS = torch.tensor([[0.0, 1.0, -0.5], [2.0, 0.0, -1.0]], dtype=F64)
POLICY_COSTS = torch.tensor([[-0.25, -1.0, -0.5], [0.1, 0.0, 0.25]], dtype=F64)
POLICY_KL = torch.tensor([[0.1, 0.2, 0.3], [0.4, -0.1, 0.5]], dtype=F64)


def worked_judgement(judge: str = SCORERS_JUDGE):
    return arena_metrics(
        REFERENCE_REWARDS, REFERENCE_COSTS, POLICY_REWARDS, POLICY_COSTS, POLICY_KL, judge=judge
    )


def test_rows_of_the_worked_example() -> None:
    judgement = worked_judgement()
    reference, policy = judgement.reference, judgement.policy
    assert (reference.model, reference.judge, reference.num_responses) == (
        "reference",
        "scorers",
        6,
    )
    assert reference.mean_reward == pytest.approx(5.5 / 6, abs=1e-15)
    assert reference.mean_cost == pytest.approx(0.25, abs=1e-15)
    assert reference.safe_rate == pytest.approx(4 / 6, abs=1e-15)
    # The reference against itself: KL 0, every pair a tie.
    assert (reference.kl, reference.reward_win_rate, reference.cost_win_rate) == (0.0, 0.5, 0.5)

    assert (policy.model, policy.num_responses) == ("policy", 6)
    assert policy.mean_reward == pytest.approx(8 / 6, abs=1e-15)
    assert policy.mean_cost == pytest.approx(-1.4 / 6, abs=1e-15)
    assert policy.safe_rate == pytest.approx(4 / 6, abs=1e-15)
    assert policy.kl == pytest.approx(1.4 / 6, abs=1e-15)
    assert policy.reward_win_rate == pytest.approx(2 / 3, abs=1e-15)
    # Lower cost wins; the wrong direction (higher wins) would give (1 + ½·2)/6 = 1/3.
    assert policy.cost_win_rate == pytest.approx(2 / 3, abs=1e-15)


def test_transitions_of_the_worked_example() -> None:
    transitions = worked_judgement().transitions
    assert transitions.judge == SCORERS_JUDGE
    assert transitions.as_matrix() == [[3, 1], [1, 1]]
    assert (
        transitions.safe_to_safe,
        transitions.safe_to_unsafe,
        transitions.unsafe_to_safe,
        transitions.unsafe_to_unsafe,
    ) == (3, 1, 1, 1)
    assert transitions.total == 6


def test_cost_exactly_zero_is_safe_and_just_above_is_not() -> None:
    zeros = torch.zeros(1, 2, dtype=F64)
    costs = torch.tensor([[0.0, 1e-12]], dtype=F64)
    judgement = arena_metrics(zeros, costs, zeros, torch.tensor([[-0.0, 0.0]], dtype=F64), zeros)
    assert judgement.reference.safe_rate == 0.5  # 0.0 safe, 1e-12 unsafe
    assert judgement.policy.safe_rate == 1.0
    assert judgement.transitions.as_matrix() == [[1, 0], [1, 0]]
    # −0.0 == 0.0: a tie; 0.0 < 1e-12: a win.
    assert judgement.policy.cost_win_rate == pytest.approx((1 + 0.5) / 2, abs=1e-15)
    assert judgement.policy.reward_win_rate == 0.5  # all ties


def test_identical_scores_give_the_reference_row_and_diagonal_transitions() -> None:
    judgement = arena_metrics(
        REFERENCE_REWARDS,
        REFERENCE_COSTS,
        REFERENCE_REWARDS.clone(),
        REFERENCE_COSTS.clone(),
        torch.zeros_like(REFERENCE_REWARDS),
    )
    reference, policy = judgement.reference, judgement.policy
    assert (policy.mean_reward, policy.mean_cost, policy.safe_rate) == (
        reference.mean_reward,
        reference.mean_cost,
        reference.safe_rate,
    )
    assert (policy.kl, policy.reward_win_rate, policy.cost_win_rate) == (0.0, 0.5, 0.5)
    assert judgement.transitions.as_matrix() == [[4, 0], [0, 2]]


def test_float32_inputs_are_reduced_in_float64() -> None:
    # 1e8, 1 and −1e8 are exact in float32, but 1e8 + 1 is not (the float32 spacing at 1e8 is 8):
    # a float32 mean gives 0, the float64 mean 1/3.
    kl = torch.tensor([[1e8, 1.0, -1e8]], dtype=torch.float32)
    assert float(kl.mean()) == 0.0
    zeros = torch.zeros(1, 3, dtype=torch.float32)
    judgement = arena_metrics(zeros, zeros, kl, zeros, kl)
    assert judgement.policy.kl == pytest.approx(1 / 3, abs=1e-15)
    assert judgement.policy.mean_reward == pytest.approx(1 / 3, abs=1e-15)


def test_flat_shapes_pair_elementwise() -> None:
    flat = arena_metrics(
        *(
            t.flatten()
            for t in (REFERENCE_REWARDS, REFERENCE_COSTS, POLICY_REWARDS, POLICY_COSTS, POLICY_KL)
        )
    )
    assert flat == worked_judgement()


def test_errors_name_the_tensor_and_shape() -> None:
    with pytest.raises(ValueError, match=r"policy_costs has \(6,\)"):
        arena_metrics(
            REFERENCE_REWARDS, REFERENCE_COSTS, POLICY_REWARDS, POLICY_COSTS.flatten(), POLICY_KL
        )
    empty = torch.zeros(0, 3)
    with pytest.raises(ValueError, match="no responses"):
        arena_metrics(empty, empty, empty, empty, empty)


# -- the result, the table and the files -----------------------------------------------------


def worked_result() -> ArenaResult:
    samples = tuple(
        ArenaSample(
            prompt=f"prompt {row // 3}",
            sample_index=row % 3,
            reference_response="sorry",
            policy_response="steps detail",
            reference_finished=True,
            policy_finished=row != 5,
            reference_reward=float(REFERENCE_REWARDS.flatten()[row]),
            reference_cost=float(REFERENCE_COSTS.flatten()[row]),
            policy_reward=float(POLICY_REWARDS.flatten()[row]),
            policy_cost=float(POLICY_COSTS.flatten()[row]),
            policy_kl=float(POLICY_KL.flatten()[row]),
        )
        for row in range(6)
    )
    return ArenaResult(
        policy="runs/a/policy",
        reference="runs/a/sft",
        num_prompts=2,
        responses_per_prompt=3,
        judgements=(worked_judgement(), worked_judgement(TRUTH_JUDGE)),
        samples=samples,
        settings={"seed": 0},
    )


def test_result_rows_and_judgement_lookup() -> None:
    result = worked_result()
    assert [(row.judge, row.model) for row in result.rows] == [
        ("scorers", "reference"),
        ("scorers", "policy"),
        ("ground truth", "reference"),
        ("ground truth", "policy"),
    ]
    assert result.judgement(TRUTH_JUDGE).policy.judge == TRUTH_JUDGE
    with pytest.raises(KeyError, match="no judge 'oracle'"):
        result.judgement("oracle")


def test_print_arena_prints_every_number_whole() -> None:
    stream = io.StringIO()
    print_arena(worked_result(), Console(file=stream, width=140))
    text = stream.getvalue()
    for number in ("0.9167", "1.3333", "0.2500", "-0.2333", "0.2333", "0.667", "0.500"):
        assert number in text
    assert "runs/a/policy" in text and "2 prompts × 3 responses" in text
    assert "…" not in text  # nothing cut
    # The transitions table: reference safe row 3 | 1 | 4, unsafe row 1 | 1 | 2.
    lines = [line for line in text.splitlines() if line.strip().startswith("│")]
    cells = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in lines]
    assert ["safe", "3", "1", "4"] in cells
    assert ["unsafe", "1", "1", "2"] in cells
    assert ["total", "4", "2", "6"] in cells


def test_write_arena_files_and_overwrite(tmp_path: Path) -> None:
    result = worked_result()
    json_path, csv_path = write_arena(result, tmp_path / "eval")
    assert (json_path.name, csv_path.name) == ("arena.json", "arena.csv")

    data = json.loads(json_path.read_text())
    assert data["num_prompts"] == 2 and data["responses_per_prompt"] == 3
    assert data["rows"][1]["reward_win_rate"] == pytest.approx(2 / 3, abs=1e-15)
    assert data["transitions"][0] == {
        "judge": "scorers",
        "safe_to_safe": 3,
        "safe_to_unsafe": 1,
        "unsafe_to_safe": 1,
        "unsafe_to_unsafe": 1,
    }
    assert len(data["samples"]) == 6 and data["samples"][5]["policy_finished"] is False

    with csv_path.open() as handle:
        lines = list(csv.DictReader(handle))
    assert [(line["judge"], line["model"]) for line in lines] == [
        (row.judge, row.model) for row in result.rows
    ]
    assert float(lines[1]["mean_cost"]) == pytest.approx(-1.4 / 6, abs=1e-15)
    assert lines[0]["safe_to_safe"] == ""  # transitions on the policy line only
    assert (lines[1]["safe_to_unsafe"], lines[3]["unsafe_to_unsafe"]) == ("1", "1")

    with pytest.raises(FileExistsError, match="arena.json already exists"):
        write_arena(result, tmp_path / "eval")
    json_path.unlink()
    with pytest.raises(FileExistsError, match="arena.csv already exists"):
        write_arena(result, tmp_path / "eval")
    assert not json_path.exists()  # nothing written when refusing
    write_arena(result, tmp_path / "eval", overwrite=True)
    assert json.loads(json_path.read_text()) == data


def test_the_reference_row_shows_its_half_win_rates_and_the_cost_direction_is_said() -> None:
    """The reference against itself wins half (every pair a tie): 0.500 in both columns, never a
    dash; the headers and the note say that on cost the lower (safer) response wins."""
    stream = io.StringIO()
    print_arena(worked_result(), Console(file=stream, width=200))
    text = stream.getvalue()
    assert "win rate (reward: higher wins)" in text and "win rate (cost: lower wins)" in text
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in text.splitlines()
            if line.strip().startswith("│") and "reference" in line]
    assert rows and all(row[-2:] == ["0.500", "0.500"] for row in rows)
    assert "—" not in text
    note = " ".join(text.split())
    assert "the reference against itself is 0.500" in note
    assert "a cost win rate above 0.5 means the policy is safer than the reference" in note


def test_write_arena_adds_the_safety_judges_files_when_judges_ran(tmp_path: Path) -> None:
    import dataclasses

    from saferl.eval.judge_report import JudgeAgreement, JudgeReport, JudgeSummary

    report = JudgeReport(
        threshold=0.5,
        summaries=(
            JudgeSummary("llama_guard", 6, 4 / 6, 0.31, {"S2": 1, "S10": 1}),
            JudgeSummary("ground_truth", 6, 0.5, 0.5),
        ),
        agreements=(JudgeAgreement("llama_guard", "ground_truth", 5 / 6, 0.6667),
                    JudgeAgreement("llama_guard", "llama_guard", 1.0, None)),
    )
    result = dataclasses.replace(worked_result(), safety_judges={"reference": report, "policy": report})
    paths = write_arena(result, tmp_path / "eval")
    assert [path.name for path in paths] == [
        "arena.json", "arena.csv", "arena_judges.csv", "arena_judge_agreement.csv"
    ]
    with paths[2].open() as handle:
        summaries = list(csv.DictReader(handle))
    assert [(line["model"], line["judge"]) for line in summaries] == [
        ("reference", "llama_guard"), ("reference", "ground_truth"),
        ("policy", "llama_guard"), ("policy", "ground_truth"),
    ]
    assert float(summaries[0]["safe_share"]) == pytest.approx(4 / 6, abs=1e-15)
    assert summaries[0]["categories"] == "S2:1;S10:1" and summaries[1]["categories"] == ""
    assert float(summaries[3]["threshold"]) == 0.5
    with paths[3].open() as handle:
        agreements = list(csv.DictReader(handle))
    assert float(agreements[0]["agreement"]) == pytest.approx(5 / 6, abs=1e-15)
    assert agreements[1]["kappa"] == ""  # undefined κ stays empty, not 0
    # Without judges only the two arena files are written; with them, the judges' files are
    # refused like the others.
    assert len(write_arena(worked_result(), tmp_path / "plain")) == 2
    assert not (tmp_path / "plain" / "arena_judges.csv").exists()
    (paths[0]).unlink()
    (paths[1]).unlink()
    with pytest.raises(FileExistsError, match="arena_judges.csv already exists"):
        write_arena(result, tmp_path / "eval")
