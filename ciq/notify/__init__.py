"""Notifications when a branch changes state: what an event means (:mod:`.events`),
where it goes and what it says there (:mod:`.targets`), and the delivery thread that
sends it (:mod:`.delivery`). The events themselves live in Redis (:mod:`ciq.store.events`).
"""
