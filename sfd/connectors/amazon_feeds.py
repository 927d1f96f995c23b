"""Amazon's Feeds API 2021-06-30, as far as invoices need it: UPLOAD_VAT_INVOICE.

A feed is a document uploaded to a presigned URL, then a feed naming it; Amazon processes it
later, and its processing report says whether the invoice was taken.
"""

from __future__ import annotations

import gzip
from typing import Final

import msgspec
from defusedxml import ElementTree

from sfd.domain.documents import Document

FEEDS_PATH: Final = "/feeds/2021-06-30"
VAT_INVOICE: Final = "UPLOAD_VAT_INVOICE"
#: Feed states after which the feed will not change.
DONE, FAILED_STATES = "DONE", frozenset({"CANCELLED", "FATAL"})


class FeedDocumentAnswer(msgspec.Struct):
    """createFeedDocument's (and getFeedDocument's) answer."""

    feedDocumentId: str
    url: str
    compressionAlgorithm: str | None = None


class FeedAnswer(msgspec.Struct):
    """createFeed's answer."""

    feedId: str


class Feed(msgspec.Struct):
    """getFeed's answer, as far as sfd reads it."""

    feedId: str
    processingStatus: str
    resultFeedDocumentId: str | None = None


def invoice_number(document: Document) -> str:
    """The invoice number Amazon is given: the file's name without its extension.

    Shop modules name invoice files by their number (FA000123.pdf); Amazon shows it to the
    buyer beside the invoice."""
    stem = document.file_name.rsplit(".", 1)[0].strip()
    return stem or document.sha256[:16]


def vat_invoice_feed(
    reference: str, marketplace_id: str, document_id: str, number: str
) -> dict[str, object]:
    """createFeed's body for one invoice of one order."""
    return {
        "feedType": VAT_INVOICE,
        "marketplaceIds": [marketplace_id],
        "inputFeedDocumentId": document_id,
        "feedOptions": {
            "metadata:orderid": reference,
            "metadata:invoicenumber": number,
            "metadata:documenttype": "Invoice",
        },
    }


def report_errors(raw: bytes, compression: str | None) -> list[str]:
    """The errors a processing report lists; empty when the invoice was taken.

    Reports come as XML (`ProcessingReport`) or JSON (`summary.errors` and `issues`)."""
    if compression == "GZIP":
        raw = gzip.decompress(raw)
    text = raw.strip()
    if text.startswith(b"{"):
        report = msgspec.json.decode(text)
        issues = [
            str(i.get("message", i))
            for i in report.get("issues", [])
            if isinstance(i, dict) and i.get("severity", "ERROR") == "ERROR"
        ]
        errors = int((report.get("summary") or {}).get("errors", len(issues)) or 0)
        return issues or ([f"{errors} error(s)"] if errors else [])
    root = ElementTree.fromstring(text)
    failed = int(root.findtext(".//MessagesWithError") or "0")
    messages = [
        (r.findtext("ResultDescription") or "").strip()
        for r in root.iter("Result")
        if (r.findtext("ResultCode") or "") == "Error"
    ]
    messages = [m for m in messages if m]
    return messages or ([f"{failed} message(s) with an error"] if failed else [])
