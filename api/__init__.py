"""unlearnd HTTP service: validates, authorises, persists, dispatches and serves reads and downloads.

Never imports torch (a test checks it), so the API process starts fast and fits a slim image; the ML work
happens in worker/, reached only through the dispatcher.
"""
