"""The jobs of the web example: what ``conveyor worker`` runs, apart from the web processes.

conveyor worker --db signups.db --handlers jobs:registry --workers 4
"""

import anyio

import conveyor

registry = conveyor.Registry()


@registry.handler("send_welcome", max_attempts=5, timeout=30)
async def send_welcome(payload: dict[str, str]) -> str:
    await anyio.sleep(0.01)  # the mail server would be called here
    return f"welcome mail sent to {payload['email']}"
