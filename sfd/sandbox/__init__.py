"""Local stand-ins for marketplaces, served over HTTP on 127.0.0.1: for tests and `sfd demo`."""

from sfd.sandbox.marketplace import CARRIERS, RecordedCall, SandboxMarketplace, run_sandbox

__all__ = ["CARRIERS", "RecordedCall", "SandboxMarketplace", "run_sandbox"]
