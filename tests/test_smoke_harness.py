import pytest

pytestmark = pytest.mark.anyio


async def test_register_then_list(client, register):
    process = await register(key_set_size=3)
    response = await client.get("/api/v1/process")
    assert response.status_code == 200
    assert process in response.json()
