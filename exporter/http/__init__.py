"""The HTTP API: the app, its routes, the documents and problems it answers with, and
downloads (``download``, ``ranges``, ``zerocopy``).

Imports nothing itself: ``exporter worker`` loads ``health`` alone, without Quart.
"""
