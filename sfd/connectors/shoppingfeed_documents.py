"""The `upload-documents` operation of Shoppingfeed's order API, as the official SDK sends it.

`multipart/form-data`: one `files[]` part per document, then a `body` part holding
`{"order": [{"id" | "reference" + "channelName", "documents": [{"type": "invoice"}]}]}`,
the documents in the same order as the files.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from sfd.connectors.shoppingfeed import WireError, decode_json
from sfd.domain.documents import MAX_DOCUMENTS

OPERATION = "upload-documents"


class _Document(msgspec.Struct):
    type: str = "invoice"


class _Entry(msgspec.Struct, rename="camel"):
    id: int | None = None
    reference: str | None = None
    channel_name: str | None = None
    documents: list[_Document] = msgspec.field(default_factory=list)


@dataclass(frozen=True)
class UploadEntry:
    """One document to attach: its order, its type, and which file (by position) it is."""

    order_id: int | None
    reference: str | None
    channel_name: str | None
    type: str
    file: int


def parse_upload_body(body: bytes, files: int) -> list[UploadEntry]:
    """Read the `body` part for `files` files, validated whole; raise WireError."""
    document = decode_json(body)
    if not isinstance(document, dict) or not isinstance(document.get("order"), list):
        raise WireError("order", 'is required: the body part is {"order": [...]}')
    try:
        entries = msgspec.convert(document["order"], list[_Entry])
    except msgspec.ValidationError as exc:
        raise WireError("order", str(exc)) from None
    if not entries:
        raise WireError("order", "is empty: name at least one order")
    parsed: list[UploadEntry] = []
    for index, entry in enumerate(entries):
        where = f"order[{index}]"
        if entry.id is None and not (entry.reference and entry.channel_name):
            raise WireError(
                f"{where}.id", "is required (or reference with channelName) to name the order"
            )
        if not entry.documents:
            raise WireError(f"{where}.documents", "is empty: name the document's type")
        for doc in entry.documents:
            parsed.append(
                UploadEntry(
                    order_id=entry.id,
                    reference=entry.reference,
                    channel_name=entry.channel_name,
                    type=doc.type,
                    file=len(parsed),
                )
            )
    if len(parsed) > MAX_DOCUMENTS:
        raise WireError(
            "order",
            f"names {len(parsed)} documents; at most {MAX_DOCUMENTS} a request: "
            "send them in several requests",
        )
    if len(parsed) != files:
        raise WireError(
            "files[]",
            f"{files} file(s) for {len(parsed)} document(s): send one files[] part per "
            "document, in the same order",
        )
    return parsed
