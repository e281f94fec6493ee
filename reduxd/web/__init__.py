"""The live web page: what reduxd has reduced, in a browser, as it happens.

``server`` runs uvicorn in a thread (``reduxd watch``) or alone (``reduxd
serve``); ``app`` is the Starlette application; ``live`` follows the ledger
read-only and keeps the page's snapshot and event log; ``queries`` turns ledger
rows into what the page shows. ``static/`` holds the page (plain JavaScript,
DOM built with ``textContent``) and uPlot 1.6.32 (MIT, vendored: nothing is
fetched at run time).
"""
