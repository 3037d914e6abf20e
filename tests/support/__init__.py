"""Test-support code shared by several test modules (real servers, proxies)."""
