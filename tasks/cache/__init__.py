"""Caches (Redis): invalidate, warm and sample them after a recovery; plant values for drills.

The client and its error rule are in :mod:`tasks.cache.client`; the steps in
:mod:`tasks.cache.flush`, :mod:`tasks.cache.warm`, :mod:`tasks.cache.probe` and, all three
in order, :mod:`tasks.cache.recover`.
"""
