import math

import pytest
import torch

from unlearnd.core.config import METHODS
from unlearnd.core.losses import (
    OBJECTIVES,
    RESTORE_TOP1_WEIGHT,
    LossInputs,
    follow_top1,
    inverted_hinge_loss,
    kl_to_reference,
    nll,
    npo_loss,
    sequence_logprob,
)


def _logits_for(probs_rows):
    """Logits whose softmax is exactly the given probability rows (B=1, T=len+1 with a dummy last row)."""
    rows = [torch.tensor(r, dtype=torch.float64).log() for r in probs_rows]
    rows.append(torch.zeros(len(probs_rows[0]), dtype=torch.float64))
    return torch.stack(rows).unsqueeze(0)


def test_ihl_matches_hand_computed_value_and_ignores_masked_tokens():
    # position 0 predicts label[1] = 0: p = [0.7, 0.2, 0.1] → 1 + 0.7 − 0.2 = 1.5
    # position 1 predicts label[2] = 2: p = [0.5, 0.3, 0.2] → 1 + 0.2 − 0.5 = 0.7
    # position 2 predicts label[3] = -100: ignored
    logits = _logits_for([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    labels = torch.tensor([[-100, 0, 2, -100]])
    assert inverted_hinge_loss(logits, labels).item() == pytest.approx((1.5 + 0.7) / 2, abs=1e-6)


def test_ihl_is_bounded_and_zero_gradient_direction_pushes_true_token_down():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.randint(0, 11, (2, 5))
    loss = inverted_hinge_loss(logits, labels)
    assert 0.0 <= loss.item() <= 2.0
    loss.backward()
    # Descending IHL lowers the true token's logit (gradient on it is positive where it is counted).
    g = logits.grad[:, :-1].gather(-1, labels[:, 1:].unsqueeze(-1))
    assert (g >= 0).all()


def test_nll_and_sequence_logprob_agree_with_definition():
    logits = _logits_for([[0.25, 0.75], [0.5, 0.5]])
    labels = torch.tensor([[-100, 1, 0]])
    expected = -(math.log(0.75) + math.log(0.5))
    assert nll(logits, labels).item() == pytest.approx(expected / 2, abs=1e-6)
    assert sequence_logprob(logits, labels).item() == pytest.approx(-expected, abs=1e-6)


def test_npo_formula():
    logp, ref = torch.tensor([-2.0, -3.0]), torch.tensor([-1.0, -1.0])
    beta = 0.1
    expected = sum((2 / beta) * math.log(1 + math.exp(beta * (a - b))) for a, b in [(-2, -1), (-3, -1)]) / 2
    assert npo_loss(logp, ref, beta).item() == pytest.approx(expected, rel=1e-6)


def test_kl_is_zero_for_identical_models_and_positive_otherwise():
    torch.manual_seed(0)
    a, b = torch.randn(1, 4, 7), torch.randn(1, 4, 7)
    labels = torch.tensor([[-100, 1, 2, 3]])
    assert kl_to_reference(a, a, labels).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_reference(a, b, labels).item() > 0


def test_registry_covers_exactly_the_methods_users_can_pick():
    assert set(OBJECTIVES) == set(METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_every_objective_returns_a_differentiable_scalar(method):
    torch.manual_seed(0)
    f = torch.randn(2, 5, 9, requires_grad=True)
    r = torch.randn(3, 5, 9, requires_grad=True)
    labels_f = torch.randint(0, 9, (2, 5))
    labels_r = torch.randint(0, 9, (3, 5))
    x = LossInputs(
        forget_logits=f,
        forget_labels=labels_f,
        retain_logits=r,
        retain_labels=labels_r,
        ref_forget_logp=sequence_logprob(f.detach(), labels_f),
        ref_retain_logits=r.detach() + 0.1,
        forget_target_logp=torch.full((2, 4), -3.0),  # ctd: a calibrated target per (shifted) forget token
        forget_top1_allowed=torch.zeros(2, 4, dtype=torch.bool),
        teacher_forget_logits=f.detach() + torch.randn(2, 5, 9),  # restore: the checkpoint's logits
    )
    loss, parts = OBJECTIVES[method].fn(x)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert set(parts) == {"forget_loss", "retain_loss"}


def test_ctd_pulls_each_token_to_its_target_from_either_side_and_demotes_only_where_asked():
    """The calibrated error is (log p − a*)² per token: zero at the target, growing on both sides; the top-1
    hinge only acts on tokens not allowed to stay the argmax."""
    from unlearnd.core.calibration import calibrated_logprob_error

    labels = torch.tensor([[0, 1, 2]])
    logits = torch.tensor([[[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 5.0]]])  # last two rows: p(y) high
    logp = torch.log_softmax(logits, -1)[0, :-1].gather(-1, labels[0, 1:, None]).squeeze(-1)[None]
    allowed = torch.ones(1, 2, dtype=torch.bool)
    assert calibrated_logprob_error(logits, labels, logp, allowed).item() == pytest.approx(0.0, abs=1e-6)
    lower = calibrated_logprob_error(logits, labels, logp - 1.0, allowed).item()
    higher = calibrated_logprob_error(logits, labels, logp + 1.0, allowed).item()
    assert lower == pytest.approx(higher) == pytest.approx(1.0, rel=1e-5)  # mean of 1² over the 2 tokens
    demoted = calibrated_logprob_error(logits, labels, logp, torch.zeros(1, 2, dtype=torch.bool)).item()
    assert demoted > 0  # token 1 (label 1 after a row favouring 0) is fine; token 2 is the argmax: hinge > 0


def test_ga_is_negative_nll():
    torch.manual_seed(1)
    f = torch.randn(1, 4, 5)
    labels = torch.tensor([[0, 1, 2, 3]])
    loss, _ = OBJECTIVES["ga"].fn(LossInputs(forget_logits=f, forget_labels=labels))
    assert loss.item() == pytest.approx(-nll(f, labels).item())


@pytest.mark.parametrize("method", ["ihl", "gd", "npo"])
def test_anchored_retain_term_is_weighted_kl_to_the_starting_model_instead_of_nll(method):
    """Cumulative jobs: `anchor_weight`·KL(starting model ‖ model) on the retain batch replaces λ·NLL."""
    torch.manual_seed(2)
    f, r = torch.randn(2, 5, 9), torch.randn(3, 5, 9)
    labels_f, labels_r = torch.randint(0, 9, (2, 5)), torch.randint(0, 9, (3, 5))
    ref = r + 0.3 * torch.randn_like(r)
    common = {
        "forget_logits": f,
        "forget_labels": labels_f,
        "retain_logits": r,
        "retain_labels": labels_r,
        "ref_forget_logp": sequence_logprob(f, labels_f) + 0.2,
        "ref_retain_logits": ref,
        "retain_weight": 0.5,
    }
    plain, plain_parts = OBJECTIVES[method].fn(LossInputs(**common))
    anchored, parts = OBJECTIVES[method].fn(LossInputs(**common, anchor_weight=3.0))
    assert plain_parts["retain_loss"] == pytest.approx(nll(r, labels_r).item())
    assert parts["retain_loss"] == pytest.approx(kl_to_reference(r, ref, labels_r).item())
    forget_term = plain.item() - 0.5 * plain_parts["retain_loss"]
    assert anchored.item() == pytest.approx(forget_term + 3.0 * parts["retain_loss"], rel=1e-5)


def test_restore_distils_the_checkpoint_on_the_forget_rows_and_keeps_ctds_anchor():
    """restore's forget term is KL(checkpoint ‖ model) on the forget rows: zero where the model already answers
    as the checkpoint does, and a step down its gradient moves the model's distribution towards the checkpoint's;
    its retain term is ctd's anchor exactly."""
    torch.manual_seed(0)
    f = torch.randn(2, 5, 9)
    teacher = torch.randn(2, 5, 9)
    labels = torch.randint(0, 9, (2, 5))
    r, r_labels = torch.randn(3, 5, 9), torch.randint(0, 9, (3, 5))
    common = dict(retain_logits=r, retain_labels=r_labels, ref_retain_logits=r + 0.3, retain_weight=3.0)
    same = LossInputs(forget_logits=teacher, forget_labels=labels, teacher_forget_logits=teacher, **common)
    assert OBJECTIVES["restore"].fn(same)[1]["forget_loss"] == pytest.approx(0.0, abs=1e-6)
    ctd = LossInputs(
        forget_logits=f,
        forget_labels=labels,
        forget_target_logp=torch.full((2, 4), -3.0),
        forget_top1_allowed=torch.zeros(2, 4, dtype=torch.bool),
        **common,
    )
    assert OBJECTIVES["restore"].fn(same)[1]["retain_loss"] == pytest.approx(
        OBJECTIVES["ctd"].fn(ctd)[1]["retain_loss"]
    )

    x = f.clone().requires_grad_(True)
    loss, parts = OBJECTIVES["restore"].fn(
        LossInputs(forget_logits=x, forget_labels=labels, teacher_forget_logits=teacher)
    )

    def term(logits):
        return kl_to_reference(logits, teacher, labels) + RESTORE_TOP1_WEIGHT * follow_top1(logits, teacher, labels)

    assert parts["forget_loss"] == pytest.approx(term(f).item())
    loss.backward()
    stepped = (x - 0.5 * x.grad).detach()
    assert term(stepped) < term(f)
    assert kl_to_reference(stepped, teacher, labels) < kl_to_reference(f, teacher, labels)


def test_follow_top1_is_zero_once_the_teachers_guess_leads_by_its_margin_and_pulls_a_wrong_guess():
    teacher = _logits_for([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    labels = torch.tensor([[0, 2, 0]])  # the labels (the corrupting document's tokens) do not matter
    assert follow_top1(teacher, teacher, labels).item() == pytest.approx(0.0, abs=1e-9)
    wrong = _logits_for([[0.7, 0.1, 0.2], [0.5, 0.3, 0.2]])  # position 0's guess is not the teacher's
    hinge = follow_top1(wrong, teacher, labels).item()
    # position 0: teacher margin log(0.7/0.2), model margin of token 1 log(0.1/0.7); averaged over 2 positions
    assert hinge == pytest.approx((math.log(0.7 / 0.2) - math.log(0.1 / 0.7)) / 2)
    assert OBJECTIVES["restore"].needs_teacher and not OBJECTIVES["ctd"].needs_teacher


def test_restore_needs_restore_from_and_only_restore_takes_it():
    from unlearnd.core.config import UnlearnConfig
    from unlearnd.core.errors import InvalidInput

    assert UnlearnConfig(method="restore", restore_from="checkpoint").init == "lora"
    with pytest.raises(InvalidInput, match="needs restore_from"):
        UnlearnConfig(method="restore")
    with pytest.raises(InvalidInput, match="only used by the restore"):
        UnlearnConfig(method="ctd", restore_from="checkpoint")
