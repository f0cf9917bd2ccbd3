"""Code shared by several test files; test files import from here, never from each other.

- :mod:`tests.helpers.runs`: a small photo dataset, CSV reading and in-process ``editfriendly run``;
- :mod:`tests.helpers.attention_editors`: a hand-built DDIM inversion and a failing backbone proxy;
- :mod:`tests.helpers.metric_standins`: tiny offline stand-ins for the metric networks;
- :mod:`tests.helpers.demo_server`: ``editfriendly demo`` in a subprocess, and ``/edit`` requests;
- :mod:`tests.helpers.browser`: Debian's headless Chromium through Playwright.
"""
