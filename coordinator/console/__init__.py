"""The operator web console (`faultline console`): an aiohttp server that reads and acts only through the gRPC API.

Modules, one owner each:
  config.py    ConsoleConfig and every limit (named constants).
  rpc.py       the channels to the coordinators and the one place that calls the generated stubs.
  sessions.py  login sessions: the only holder of API keys; CSRF tokens; idle expiry; a bound on their number.
  live.py      the shared readers: one poller per distinct API key, alive only while a browser listens (SSE).
  bulk.py      background bulk cancel/requeue operations that loop resume tokens, bounded per session.
  html.py      escaping: every value reaches a page through it (job kinds, labels, errors and payloads are hostile).
  pages.py     what each page shows, rendered from API responses.
  app.py       routes, security headers, CSRF and Origin checks, error pages, the server's lifecycle.
"""
