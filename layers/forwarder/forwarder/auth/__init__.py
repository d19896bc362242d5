"""Caller authentication: verification of AWS Signature Version 4 requests, as API Gateway does it."""
