"""A run's tenant is the prefix of its id: per-tenant idempotency, no cross-tenant ids."""

from __future__ import annotations

import pytest

from apex.gateway.tenancy import check_tenant, owns, run_prefix, tenant_run_id


def test_a_tenant_run_id_starts_with_the_tenant_and_its_idempotency_key_is_per_tenant() -> None:
    first = tenant_run_id("acme", "triage", "order-1")

    assert first.startswith("acme:") and owns("acme", first)
    assert tenant_run_id("acme", "triage", "order-1") == first
    assert tenant_run_id("globex", "triage", "order-1") != first
    assert not owns("acme", tenant_run_id("acme-eu", "triage", "order-1"))
    assert tenant_run_id("acme", "triage") != tenant_run_id("acme", "triage")


@pytest.mark.parametrize("tenant", ["", "Acme", "a:b", "a b", "-acme", "x" * 41, "ac%me"])
def test_a_tenant_name_that_could_blur_the_prefix_is_refused(tenant: str) -> None:
    with pytest.raises(ValueError, match="not a valid tenant name"):
        check_tenant(tenant)


def test_the_prefix_ends_at_a_colon() -> None:
    assert run_prefix("acme") == "acme:"
    assert check_tenant("acme-eu-1") == "acme-eu-1"
