"""Real apps the end-to-end tests put behind the sidecar; each records what it parsed
(tests/e2e/test_proxy_bypass.py)."""
