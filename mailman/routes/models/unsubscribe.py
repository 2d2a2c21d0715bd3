"""``POST /unsubscribe/{token}``'s body: what RFC 8058 has mail programs post."""

from __future__ import annotations

from typing import Literal, NotRequired

from typing_extensions import TypedDict

#: ``List-Unsubscribe=One-Click``, form-encoded (RFC 8058, section 3.1); optional here.
OneClickForm = TypedDict(
    "OneClickForm",
    {"List-Unsubscribe": NotRequired[Literal["One-Click"]]},
)
