"""A Server-Sent Events decoder (the WHATWG parsing rules), fed one line at a time."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Message:
    event: str  # "message" when the server named none
    data: str
    id: str | None  # the last event id seen on the stream so far
    retry: int | None = None


@dataclass(frozen=True)
class Comment:
    text: str  # e.g. "ping": proof the connection is alive


class Decoder:
    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._retry: int | None = None
        self.last_id: str | None = None

    def feed(self, line: str) -> Message | Comment | None:
        """One line without its terminator; a blank line dispatches the message in progress."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return Comment(line[1:].strip())
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> Message | None:
        event, data, retry = self._event or "message", self._data, self._retry
        self._event, self._data, self._retry = "", [], None
        if not data and retry is None:
            return None
        return Message(event, "\n".join(data), self.last_id, retry)
