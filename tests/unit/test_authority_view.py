"""The one-page authority and rollback view shows the governance of a workflow too (issue 17)."""

from __future__ import annotations

from rich.console import Console

from llmpulse.commands.control import authority_view
from llmpulse.processors.contracts import ContractsConfig
from llmpulse.processors.governance import GovernanceConfig


def _render(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_the_page_says_who_approves_which_models_and_what_is_kept() -> None:
    contracts = ContractsConfig.from_config({"support-bot": {"owner": "support-team", "irreversible_tools": ["refund"],
                                                             "allowed_tools": ["refund", "search"]}})
    governance = GovernanceConfig.model_validate({
        "groups": {"ml-leads": ["alice", "bob"]},
        "approved_models": {"owner": "platform", "models": ["openai/gpt-4o*"]},
        "workflows": {"support-bot": {"approvals": {"model_swap": {"approvers": ["group:ml-leads"], "require_gate": True}},
                                      "content": {"capture": "metadata"}, "retention_days": 14}}})
    page = _render(authority_view("support-bot", contracts, [], "", governance, 90))
    assert "support-team" in page and "refund" in page
    assert "model_swap: group:ml-leads + passing eval gate" in page
    assert "openai/gpt-4o* (owner platform)" in page
    assert "metadata only (no text)" in page and "14 days" in page
    other = _render(authority_view("billing", contracts, [], "", governance, 90))
    assert "not governed" in other and "full" in other and "90 days" in other
