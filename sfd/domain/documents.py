"""Documents a shop attaches to an order (invoices): what is accepted, checked by content."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

#: The largest document taken: marketplaces take about this much (Mirakl 10 MB, Amazon 10 MB).
MAX_DOCUMENT_BYTES = 10 * 1024**2
#: The most documents one request may carry, as the official SDK batches them.
MAX_DOCUMENTS = 20
#: The document types sfd knows; the SDK sends `invoice`.
DOCUMENT_TYPES = frozenset({"invoice"})

#: Leading bytes → the content type they prove. Names and declared types are never trusted.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "application/pdf"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)
EXTENSIONS = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png"}


class DocumentRefused(ValueError):
    """A document that is not taken, and why; names the file."""

    def __init__(self, file_name: str, message: str) -> None:
        super().__init__(f"{file_name}: {message}")
        self.file_name = file_name
        self.message = message


def sniff(content: bytes) -> str | None:
    """The content type the bytes themselves show (PDF, JPEG, PNG), or None."""
    for magic, content_type in _MAGIC:
        if content.startswith(magic):
            return content_type
    return None


@dataclass(frozen=True)
class Document:
    """One document's bytes, checked: its type, content type, name and digest."""

    type: str
    file_name: str
    content_type: str
    content: bytes
    sha256: str

    @property
    def size(self) -> int:
        """Its length in bytes."""
        return len(self.content)


def check_document(file_name: str, content: bytes, doc_type: str = "invoice") -> Document:
    """The document if it is taken; raise DocumentRefused, naming the file, otherwise."""
    name = (file_name or "").strip() or "document"
    if doc_type not in DOCUMENT_TYPES:
        known = ", ".join(sorted(DOCUMENT_TYPES))
        raise DocumentRefused(name, f"document type {doc_type[:40]!r} is not known ({known})")
    if not content:
        raise DocumentRefused(name, "is empty")
    if len(content) > MAX_DOCUMENT_BYTES:
        raise DocumentRefused(
            name, f"is {len(content)} bytes; at most {MAX_DOCUMENT_BYTES} (10 MiB) a file"
        )
    content_type = sniff(content)
    if content_type is None:
        raise DocumentRefused(
            name, "is not a PDF, JPEG or PNG file (checked by its content, not its name)"
        )
    # Keep a name the marketplace will take: its extension matches the content.
    stem = name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
    extension = EXTENSIONS[content_type]
    if not stem.lower().endswith("." + extension) and not (
        extension == "jpg" and stem.lower().endswith(".jpeg")
    ):
        stem = f"{stem.rsplit('.', 1)[0] if '.' in stem else stem}.{extension}"
    return Document(
        type=doc_type,
        file_name=stem,
        content_type=content_type,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
    )
