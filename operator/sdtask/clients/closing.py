"""The async context-manager protocol of the clients that hold connections: `async with Client(...) as c:` ends in
`aclose()`, which each client defines (closing only what it owns)."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncClosable:
    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        raise NotImplementedError
