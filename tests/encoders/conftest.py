"""Session fixtures: tiny seeded encoders in eval mode."""

import pytest

from encoder_helpers import tiny


@pytest.fixture(scope="session", params=["conformer", "transformer"])
def encoder(request):
    return tiny(request.param).eval()


@pytest.fixture(scope="session")
def conformer():
    return tiny("conformer").eval()
